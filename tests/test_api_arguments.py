"""The Python API validates its input: every public function's arguments, ``resume`` with other
settings, a damaged ``bench-plan.json``, and ``results.json`` files it cannot read. Nothing here trains."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import reml_core
from reml_core import api
from reml_core.api import ArgumentError
from reml_core.errors import ConfigError, UserError
from reml_core.folders import release_all


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    """Every test in its own working directory: a refused call must leave it empty (no runs/ folder)."""
    monkeypatch.chdir(tmp_path)
    yield
    release_all()


def _results(tmp_path: Path) -> api.Results:
    data = {
        "schema": "reml.results/2",
        "plugin": "sine",
        "config": {"seed": 0},
        "loss_name": "MSE",
        "methods": {"reml": {"5": {"0": {"mse_mean": 1.0, "mse_ci95": 0.1, "nan_tasks": 0}}}},
        "curves": {"reml": [1.0]},
    }
    folder = tmp_path / "loaded"
    folder.mkdir()
    (folder / "results.json").write_text(json.dumps(data))
    return reml_core.load(folder)


# Every public function, each argument given a value of the wrong type: (call, the argument named).
WRONG = [
    (lambda r: reml_core.run(out=3), "out"),
    (lambda r: reml_core.run(config=5), "config"),
    (lambda r: reml_core.run(overrides=["train.env_steps=400"]), "overrides"),
    (lambda r: reml_core.run(baselines="scratch"), "baselines"),
    (lambda r: reml_core.run(force="yes"), "force"),
    (lambda r: reml_core.run(resume=7), "resume"),
    (lambda r: reml_core.run(trust_checkpoint=1), "trust_checkpoint"),
    (lambda r: reml_core.bench(seeds="x"), "seeds"),
    (lambda r: reml_core.bench(seeds=1.5), "seeds"),
    (lambda r: reml_core.bench(seeds=True), "seeds"),
    (lambda r: reml_core.bench(seeds=0), "seeds"),
    (lambda r: reml_core.bench(methods="scratch"), "methods"),
    (lambda r: reml_core.bench(methods=["reml", 3]), "methods"),
    (lambda r: reml_core.bench(methods=[]), "methods"),
    (lambda r: reml_core.bench(encoders="oracle"), "encoders"),
    (lambda r: reml_core.bench(from_dir=1), "from_dir"),
    (lambda r: reml_core.bench(out=3), "out"),
    (lambda r: reml_core.bench(config=5), "config"),
    (lambda r: reml_core.bench(overrides=[1]), "overrides"),
    (lambda r: reml_core.bench(executor=None), "executor"),
    (lambda r: reml_core.bench(ray_address=6379), "ray_address"),
    (lambda r: reml_core.load(3), "folder"),
    (lambda r: reml_core.load(None), "folder"),
    (lambda r: api.user_settings(5), "config"),
    (lambda r: api.user_settings(overrides=[("a", 1)]), "overrides"),
    (lambda r: api.prepare_run([("plugin", "sine")]), "user"),
    (lambda r: api.prepare_run(registry="installed"), "registry"),
    (lambda r: api.prepare_bench(seeds="2"), "seeds"),
    (lambda r: api.prepare_bench(methods="maml"), "methods"),
    (lambda r: r.table(1), "method"),
    (lambda r: r.cell("reml", "5", 0), "shots"),
    (lambda r: r.cell("reml", 5, 0.0), "steps"),
    (lambda r: r.plot(3), "path"),
    (lambda r: r.plot("x.png", curves="yes"), "curves"),
]


@pytest.mark.parametrize(("call", "argument"), WRONG, ids=[f"{i}-{a}" for i, (_, a) in enumerate(WRONG)])
def test_every_public_function_names_an_argument_of_the_wrong_type(call, argument, tmp_path):
    results = _results(tmp_path)
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(ArgumentError, match=rf"argument '{argument}'") as caught:
        call(results)
    assert isinstance(caught.value, UserError) and isinstance(caught.value, TypeError)
    assert len(str(caught.value).splitlines()) == 1
    assert sorted(os.listdir(tmp_path)) == before  # nothing written


def test_a_string_where_a_list_belongs_is_not_read_letter_by_letter():
    with pytest.raises(ArgumentError, match=r"'scratch' would be read letter by letter; give \['scratch'\]"):
        reml_core.bench(plugin="sine", methods="scratch")


def test_an_unknown_argument_of_a_function_without_settings_is_named():
    with pytest.raises(ArgumentError, match="unexpected keyword argument 'folders'"):
        reml_core.load("x", folders="x")


def test_results_lookups_name_what_there_is(tmp_path):
    results = _results(tmp_path)
    assert results.cell("reml", 5, 0).mean == 1.0
    with pytest.raises(KeyError, match=r"no K = 10 in reml's results \(K: 5\)"):
        results.cell("reml", 10, 0)
    with pytest.raises(KeyError, match=r"no 3 steps in reml's results at K = 5 \(steps: 0\)"):
        results.cell("reml", 5, 3)


def test_the_signatures_stay_visible_through_the_checks():
    import inspect

    assert list(inspect.signature(reml_core.run).parameters)[:2] == ["config", "out"]
    assert "seeds" in inspect.signature(reml_core.bench).parameters
    assert "Meta-train REML" in reml_core.run.__doc__


# -- resume takes every setting from the folder ------------------------------------------------------

RUN_WITH_RESUME = [
    ({"config": {"plugin": "sine"}}, "config"),
    ({"out": "elsewhere"}, "out"),
    ({"force": True}, "force"),
    ({"baselines": ["scratch"]}, "baselines"),
    ({"overrides": {"train.env_steps": 10}}, "overrides"),
    ({"plugin": "sine"}, "plugin"),
    ({"seed": 3}, "seed"),
    ({"preset": "smoke"}, "preset"),
]


@pytest.mark.parametrize(("given", "name"), RUN_WITH_RESUME)
def test_run_with_resume_refuses_every_other_setting(given, name, tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    with pytest.raises(UserError, match=rf"^resume takes every setting from {folder}/config.json; drop {name}$"):
        reml_core.run(resume=folder, **given)
    assert os.listdir(folder) == []


BENCH_WITH_RESUME = [
    ({"config": {"plugin": "sine"}}, "config"),
    ({"methods": ["reml"]}, "methods"),
    ({"encoders": ["oracle"]}, "encoders"),
    ({"seeds": 1}, "seeds"),
    ({"from_dir": "x"}, "from_dir"),
    ({"out": "x"}, "out"),
    ({"force": True}, "force"),
    ({"overrides": {"eval.test_tasks": 3}}, "overrides"),
    ({"plugin": "sine"}, "plugin"),
]


@pytest.mark.parametrize(("given", "name"), BENCH_WITH_RESUME)
def test_bench_with_resume_refuses_every_other_setting(given, name, tmp_path):
    folder = tmp_path / "bench"
    folder.mkdir()
    with pytest.raises(UserError, match=rf"^resume takes every setting from {folder}/bench-plan.json; drop {name}$"):
        reml_core.bench(resume=folder, **given)
    lower = {k: v for k, v in given.items() if k not in ("config", "overrides", "plugin")}
    with pytest.raises(UserError, match="resume takes every setting"):  # the lower-level entry point too
        api.prepare_bench(None if lower else {"plugin": "sine"}, resume=folder, **lower)
    assert os.listdir(folder) == []


def test_the_clis_use_the_api_s_check(tmp_path, capsys):
    from reml_core.cli import bench, run

    assert run.main(["--resume", str(tmp_path), "--seed", "3", "--force"]) == 2
    assert (
        capsys.readouterr().err.strip()
        == f"reml-run: error: --resume takes every setting from {tmp_path}/config.json; drop --seed, --force"
    )
    assert bench.main(["--resume", str(tmp_path), "--seeds", "2"]) == 2
    assert (
        capsys.readouterr().err.strip()
        == f"reml-bench: error: --resume takes every setting from {tmp_path}/bench-plan.json; drop --seeds"
    )


# -- a damaged bench-plan.json ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def planned_bench(tmp_path_factory) -> Path:
    """A claimed benchmark folder with its plan (nothing trained: the plan is all --resume reads first)."""
    out = tmp_path_factory.mktemp("plan") / "bench"
    try:
        api.prepare_bench({"plugin": "sine", "preset": "smoke"}, methods=["scratch"], out=out)
    finally:
        release_all()
    return out


def _damaged_plan(planned_bench: Path, tmp_path: Path, change) -> Path:
    import shutil

    folder = tmp_path / "copy"
    shutil.copytree(planned_bench, folder)
    plan = json.loads((folder / "bench-plan.json").read_text())
    change(plan)
    (folder / "bench-plan.json").write_text(json.dumps(plan))
    return folder


PLAN_DAMAGE = [
    ("format", lambda p: p.update(format="reml.bench-plan/9")),
    ("user", lambda p: p.update(user=["plugin", "sine"])),
    ("methods", lambda p: p.update(methods="scratch")),
    ("methods", lambda p: p.update(methods=[])),
    ("methods.0", lambda p: p.update(methods=[3])),
    ("encoders", lambda p: p.update(encoders="oracle")),
    ("seeds", lambda p: p.update(seeds="2")),
    ("seeds", lambda p: p.update(seeds=0)),
    ("seeds", lambda p: p.update(seeds=True)),
    ("seeds", lambda p: p.pop("seeds")),
    ("from_dir", lambda p: p.update(from_dir=5)),
    ("trust_checkpoint", lambda p: p.update(trust_checkpoint="no")),
    ("surprise", lambda p: p.update(surprise=1)),
]


@pytest.mark.parametrize(("field", "change"), PLAN_DAMAGE, ids=[f"{i}-{f}" for i, (f, _) in enumerate(PLAN_DAMAGE)])
def test_a_damaged_bench_plan_is_one_error_naming_the_file_and_field(planned_bench, tmp_path, field, change):
    folder = _damaged_plan(planned_bench, tmp_path, change)
    before = sorted(p.name for p in folder.iterdir())
    with pytest.raises(UserError, match=rf"{folder}/bench-plan.json is damaged: {field}: ") as caught:
        reml_core.bench(resume=folder)
    assert len(str(caught.value).splitlines()) == 1
    assert sorted(p.name for p in folder.iterdir()) == before


def test_saved_settings_that_no_longer_resolve_name_the_plan(planned_bench, tmp_path):
    folder = _damaged_plan(planned_bench, tmp_path, lambda p: p["user"].update(env={"depth": "deep"}))
    with pytest.raises(ConfigError, match=rf"^{folder}/bench-plan.json: env.depth: "):
        reml_core.bench(resume=folder)


# -- results files this version cannot read -----------------------------------------------------------


def _results_file(tmp_path: Path, change) -> Path:
    data = {
        "schema": "reml.results/2",
        "plugin": "sine",
        "config": {"seed": 0},
        "seed": 0,
        "encoder_privileged": False,
        "methods": {"reml": {"5": {"0": {"mse_mean": 1.0, "mse_ci95": 0.1, "nan_tasks": 0}}}},
        "curves": {"reml": [1.0, 0.5]},
        "timing_s": {"total_this_invocation": 1.0},
        "budgets": {"reml": "400 env steps"},
        "sources": {"reml": "trained"},
        "training": {"reml": {"env_steps": 400}},
    }
    change(data)
    folder = tmp_path / "results"
    folder.mkdir(exist_ok=True)
    (folder / "results.json").write_text(json.dumps(data))  # json.dumps writes inf and nan as Infinity and NaN
    return folder


def test_an_unknown_schema_is_refused_by_name(tmp_path):
    folder = _results_file(tmp_path, lambda d: d.update(schema="reml.results/3"))
    with pytest.raises(
        UserError,
        match=r"schema 'reml.results/3', which REML .* cannot read \(it reads reml.results/1 and reml.results/2\)",
    ):
        reml_core.load(folder)


RESULTS_DAMAGE = [
    ("methods.reml.5.0.mse_mean", lambda d: d["methods"]["reml"]["5"]["0"].update(mse_mean=float("inf"))),
    ("methods.reml.5.0.mse_ci95", lambda d: d["methods"]["reml"]["5"]["0"].update(mse_ci95=float("nan"))),
    ("methods.reml.5.0.nan_tasks", lambda d: d["methods"]["reml"]["5"]["0"].update(nan_tasks="2")),
    ("methods.reml", lambda d: d["methods"]["reml"].update({"five": {}})),
    (r"curves.reml\[1\]", lambda d: d["curves"].update(reml=[1.0, float("-inf")])),
    ("timing_s.total_this_invocation", lambda d: d["timing_s"].update(total_this_invocation=float("inf"))),
    ("seed", lambda d: d.update(seed="0")),
    ("plugin", lambda d: d.update(plugin=5)),
    ("encoder_privileged", lambda d: d.update(encoder_privileged="false")),
    ("budgets.reml", lambda d: d["budgets"].update(reml=400)),
    ("training.reml.env_steps", lambda d: d["training"]["reml"].update(env_steps=-1)),
    ("sources.reml", lambda d: d["sources"].update(reml=None)),
]


@pytest.mark.parametrize(("field", "change"), RESULTS_DAMAGE, ids=[f.replace("\\", "") for f, _ in RESULTS_DAMAGE])
def test_a_results_field_of_the_wrong_type_or_not_finite_is_named(tmp_path, field, change):
    folder = _results_file(tmp_path, change)
    with pytest.raises(UserError, match=rf"is not a REML results file \(\w+: {field}: "):
        reml_core.load(folder)


def test_a_well_formed_results_file_still_loads(tmp_path):
    loaded = reml_core.load(_results_file(tmp_path, lambda d: None))
    assert loaded.cell("reml", 5, 0).mean == 1.0 and loaded.curves == {"reml": [1.0, 0.5]}


# -- StopRequested is not an Exception -----------------------------------------------------------------


def test_a_stop_request_is_not_swallowed_by_except_exception(tmp_path):
    from reml_core.training import StopRequested

    assert issubclass(StopRequested, BaseException) and not issubclass(StopRequested, Exception)
    with pytest.raises(StopRequested):
        try:
            raise StopRequested(tmp_path / "checkpoints" / "step-000000200")
        except Exception:  # what a notebook's or a web handler's code does
            pytest.fail("except Exception swallowed the stop request")


def test_the_local_executor_lets_a_stop_request_through(monkeypatch, tmp_path):
    """One job stopped by Ctrl-C ends the benchmark (to be resumed), it is not a failed job beside the others."""
    from reml_core import jobs
    from reml_core.training import StopRequested

    def stopped(job, workdir, echo=True):
        raise StopRequested(workdir / "checkpoints" / "step-000000200")

    monkeypatch.setattr(jobs, "run_job", stopped)
    job = jobs.BenchJob(
        seed=0, key="reml", method="reml", encoder="support-set", config={}, baselines=(), folder="seed-0/reml"
    )
    with pytest.raises(StopRequested):
        list(jobs.LocalExecutor().run([job, job], tmp_path))
