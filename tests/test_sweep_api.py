"""``reml_core.sweep()`` beside ``run()`` and ``bench()``: typed arguments checked before anything is
written, the same plan as ``reml-sweep``'s flags, nothing on stdout; and a sweep's folder is a REML
folder like a run's (one marker), a sweep written with the former marker still recognised."""

from __future__ import annotations

import json
import os

import pytest

import reml_core
from reml_core.api import ArgumentError, SweepResults, prepare_sweep
from reml_core.errors import UserError
from reml_core.folders import LEDGER, LEGACY_SWEEP_MARKER, LOCK, MARKER, claim_new_folder, read_marker, release_all
from reml_core.storage import atomic_write_json
from reml_core.sweep import SCHEMA, claim_sweep_folder, claim_sweep_to_resume, parse_grid_flag


@pytest.fixture(autouse=True)
def _release():
    yield
    release_all()


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"grid": "env.depth=3,4"}, "argument 'grid' must be"),
        ({"grid": {"env.depth": [3]}, "seeds": 0}, "argument 'seeds' must be at least 1"),
        ({"grid": {"env.depth": [3]}, "seeds": "2"}, "argument 'seeds' must be"),
        ({"grid": {"env.depth": [3]}, "out": 3}, "argument 'out' must be"),
        ({"grid": {"env.depth": 3}}, "argument 'grid' must be a mapping (dict) with str keys or None, not dict"),
        ({"grid": {"env.depth": []}}, "reml_core.sweep(): grid env.depth is empty; give at least one value"),
        ({"grid": {"seed": [1, 2]}}, "sweep seeds with --seeds N"),
        ({"random": {"env.depth": "normal:0:1"}, "samples": 2}, "unknown distribution 'normal'"),
        ({"resume": "somewhere", "seeds": 2}, "resume takes every setting from somewhere/sweep.json; drop seeds"),
    ],
)
def test_bad_arguments_raise_before_anything_is_written(tmp_path, capsys, kwargs, expected):
    out = tmp_path / "sweep"
    with pytest.raises(UserError) as raised:
        reml_core.sweep(**({"plugin": "sine", "out": out, **kwargs} if "resume" not in kwargs else kwargs))
    assert expected in str(raised.value)
    assert not out.exists() and capsys.readouterr().out == ""


def test_a_wrong_type_is_an_argument_error_naming_the_function():
    with pytest.raises(ArgumentError, match=r"^reml_core.sweep\(\): argument 'samples' must be"):
        reml_core.sweep(plugin="sine", random={"env.depth": "randint:3:5"}, samples=2.5)


def test_the_api_plans_what_the_flags_plan_and_names_its_own_arguments_in_messages(
    tmp_path, installed_registry, capsys
):
    from reml_core.sweep.space import parse_sweep_table

    user = {"plugin": "sine", "preset": "smoke"}
    by_api = prepare_sweep(
        user,
        grid=parse_sweep_table({"grid": {"env.inner_adam_lr": [0.001, 0.02]}}, "reml_core.sweep()").grid,
        seeds=2,
        out=tmp_path / "a",
        registry=installed_registry,
    )
    by_flag = prepare_sweep(
        user,
        grid=[parse_grid_flag("env.inner_adam_lr=0.001,0.02")],
        seeds=2,
        out=tmp_path / "b",
        registry=installed_registry,
    )
    assert by_api.plan.trial_configs == by_flag.plan.trial_configs and len(by_api.plan.trials) == 4
    assert not (tmp_path / "a").exists() and capsys.readouterr().out == ""
    bad = parse_sweep_table({"grid": {"env.inner_adam_lr": [0.001, -1]}}, "reml_core.sweep()").grid
    with pytest.raises(
        UserError, match=r"^reml_core.sweep\(\) env.inner_adam_lr=-1: env.inner_adam_lr: Input should be greater than 0"
    ):
        prepare_sweep(user, grid=bad, out=tmp_path / "c", registry=installed_registry)


def test_sweep_results_read_sweep_json(tmp_path):
    document = {
        "status": "incomplete",
        "configurations": [{"id": "abc", "mean": 1.0}],
        "trials": [{"id": "abc-s0", "status": "finished"}, {"id": "abc-s1", "status": "failed"}],
        "best": {"configuration": "abc", "values": {"env.depth": 3}, "mean": 1.0},
    }
    result = SweepResults(tmp_path, document)
    assert result.status == "incomplete" and [t["id"] for t in result.unfinished] == ["abc-s1"]
    assert result.best["values"] == {"env.depth": 3} and result.best_config == tmp_path / "best.toml"
    assert SweepResults(tmp_path, {**document, "best": None}).best_config is None


def test_a_sweep_folder_has_the_same_marker_as_a_run_s(tmp_path):
    sweep = claim_sweep_folder(tmp_path / "sweep", force=False)
    marker = read_marker(sweep)
    assert (
        marker is not None and (marker.kind, marker.tool) == ("sweep", "reml-sweep") and "sweep.json" in marker.entries
    )
    assert sorted(os.listdir(sweep)) == sorted([MARKER, LOCK, LEDGER])
    release_all()
    # reml-run refuses it (naming what it is), and reml-sweep refuses a run folder for --resume
    with pytest.raises(UserError, match="already holds a sweep; continue it with reml-sweep --resume"):
        claim_new_folder(sweep, kind="run", force=False)
    run = claim_new_folder(tmp_path / "run", kind="run", force=False)
    (run / "sweep.json").write_text("{}")
    with pytest.raises(UserError, match="is a reml-run folder; reml-sweep --resume continues only reml-sweep sweeps"):
        claim_sweep_to_resume(run)


def test_a_sweep_written_with_the_former_marker_is_still_a_sweep(tmp_path):
    """Before sweeps shared .reml.json they had .reml-sweep.json: such a folder is resumed and --forced as a sweep."""
    old = tmp_path / "old"
    old.mkdir()
    (old / LEGACY_SWEEP_MARKER).write_text(
        json.dumps({"format": "reml.sweep-folder/1", "tool": "reml-sweep", "created": "", "entries": ["sweep.json"]})
    )
    (old / LEDGER).write_text("sweep.json\n")
    atomic_write_json(old / "sweep.json", {"schema": SCHEMA})
    assert read_marker(old).kind == "sweep"
    folder, data = claim_sweep_to_resume(old)
    assert data == {"schema": SCHEMA}
    release_all()
    claim_sweep_folder(old, force=True)  # replaced: the former marker goes, the shared one is written
    assert sorted(os.listdir(old)) == sorted([MARKER, LOCK, LEDGER]) and read_marker(old).kind == "sweep"
