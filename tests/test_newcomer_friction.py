"""What a new user tripped over (issue 25): misspelt settings, options that added baselines,
an oracle with nothing to read, an empty ``dir(reml_core)``, and the reports' and terminal's words."""

from __future__ import annotations

import json

import numpy as np
import pytest

import reml_core
from reml_core.api import prepare_run
from reml_core.cli import run as run_cli
from reml_core.config import resolve_config
from reml_core.errors import ConfigError

# -- dir(reml_core) ---------------------------------------------------------------------------


def test_dir_of_the_package_lists_its_public_api_for_tab_completion():
    listed = dir(reml_core)
    assert set(reml_core.__all__) <= set(listed) and "Any" not in listed
    for name in ("run", "bench", "load", "Results", "ArgumentError", "Learner", "save_network", "hookimpl", "hookspec"):
        assert name in reml_core.__all__ and name in listed
        assert getattr(reml_core, name) is not None  # every listed name resolves


# -- did you mean -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("user", "line"),
    [
        ({"trian": {"env_steps": 5}}, "trian: Extra inputs are not permitted; did you mean 'train'?"),
        ({"train": {"env_step": 5}}, "train.env_step: Extra inputs are not permitted; did you mean 'env_steps'?"),
        ({"eval": {"shot": [5]}}, "eval.shot: Extra inputs are not permitted; did you mean 'shots'?"),
        (
            {"pool": {"hiden_layers": 3}},
            "pool.hiden_layers: Extra inputs are not permitted; did you mean 'hidden_layers'",
        ),
        (
            {"policy": {"learning_rat": 0.1}},
            "policy.learning_rat: Extra inputs are not permitted; did you mean 'learning_rate'",
        ),
        (
            {"baselines": {"maml": {"iteratons": 3}}},
            "baselines.maml.iteratons: Extra inputs are not permitted; did you mean 'iterations'?",
        ),
    ],
)
def test_a_misspelt_setting_is_answered_with_the_closest_valid_names(installed_registry, user, line):
    with pytest.raises(ConfigError) as raised:
        resolve_config(installed_registry, {"plugin": "sine", "preset": "smoke", **user}, baselines=["maml"])
    assert any(problem.startswith(line) for problem in raised.value.problems), raised.value.problems


def test_a_setting_with_no_close_name_gets_no_guess(installed_registry):
    with pytest.raises(ConfigError) as raised:
        resolve_config(installed_registry, {"plugin": "sine", "colour": "red"})
    assert raised.value.problems == ["colour: Extra inputs are not permitted"]


def test_the_command_line_and_the_python_api_suggest_too(tmp_path, capsys):
    assert (
        run_cli.main(["--plugin", "sine", "--preset", "smoke", "--set", "env.detph=4", "--out", str(tmp_path / "r")])
        == 2
    )
    assert "env.detph: Extra inputs are not permitted; did you mean 'depth'?" in capsys.readouterr().err
    config = tmp_path / "c.toml"
    config.write_text('plugin = "sine"\n[task]\namplitude_hig = 3.0\n')
    assert run_cli.main(["--config", str(config), "--out", str(tmp_path / "r")]) == 2
    assert (
        "task.amplitude_hig: Extra inputs are not permitted; did you mean 'amplitude_high'" in capsys.readouterr().err
    )
    with pytest.raises(ConfigError, match="did you mean 'env_steps'"):
        reml_core.run(plugin="sine", preset="smoke", out=tmp_path / "api", train={"env_step": 5})
    assert not (tmp_path / "r").exists() and not (tmp_path / "api").exists()


# -- a baseline's options configure it, never add it -----------------------------------------


def test_a_baselines_options_do_not_add_it_to_a_run(installed_registry, tmp_path, capsys):
    user = {"plugin": "sine", "preset": "smoke", "baselines": {"maml": {"iterations": 3}}}
    prepared = prepare_run(user, out=tmp_path / "run", registry=installed_registry)
    assert "maml" not in prepared.config.baselines
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert "maml" not in saved["baselines"]  # a --resume evaluates what the run did
    note = capsys.readouterr().err
    assert (
        "baselines.maml configures a baseline this run does not evaluate" in note
        and "--baselines" in note
        and "maml" in note
    )

    chosen = prepare_run(user, out=tmp_path / "with", baselines=["maml"], registry=installed_registry)
    assert set(chosen.config.baselines) == {"maml"} and chosen.config.baselines["maml"].config.iterations == 3
    assert "does not evaluate" not in capsys.readouterr().err


def test_a_misspelt_option_of_a_baseline_not_evaluated_is_still_refused(installed_registry, tmp_path):
    with pytest.raises(ConfigError, match="baselines.maml.iteratons"):
        prepare_run(
            {"plugin": "sine", "preset": "smoke", "baselines": {"maml": {"iteratons": 3}}},
            out=tmp_path / "r",
            registry=installed_registry,
        )
    assert not (tmp_path / "r").exists()


# -- the oracle needs a descriptor -------------------------------------------------------------


def _files_family(root):
    rng = np.random.default_rng(0)
    for split, count in (("train", 4), ("validation", 2), ("test", 2)):
        (root / split).mkdir(parents=True)
        for i in range(count):
            t = rng.uniform(0, 5, 30)
            np.savez(root / split / f"task-{i}.npz", t=t, y=np.sin(t))


def test_the_oracle_on_a_family_without_descriptors_is_one_config_error(tmp_path, capsys):
    _files_family(tmp_path / "data")
    config = tmp_path / "files.toml"
    config.write_text(
        f'plugin = "files"\npreset = "smoke"\n[task]\nroot = "{tmp_path / "data"}"\ninputs = ["t"]\noutputs = ["y"]\n'
        "support_points = 5\nquery_points = 8\n[env]\nshots = [2, 5]\n[eval]\nshots = [2, 5]\n"
    )
    code = run_cli.main(["--config", str(config), "--encoder", "oracle", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    [line] = [text for text in err.splitlines() if "oracle" in text]
    assert "encoder" in line and "'oracle'" in line and "'files'" in line and "descriptor" in line
    assert not (tmp_path / "r").exists()


# -- trivial references, smoke numbers, the validation line ------------------------------------


def _sine_tasks(registry, count=20):
    from reml_core.experiment import build_components

    config = resolve_config(registry, {"plugin": "sine", "preset": "smoke"})
    sampler = build_components(config).task_sampler
    return sampler, sampler.test_tasks(count)


def test_trivial_references_are_what_predicting_zero_and_the_support_mean_score(installed_registry):
    import torch

    from reml_core.evaluation import PREDICT_ZERO, SUPPORT_MEAN, trivial_references

    sampler, tasks = _sine_tasks(installed_registry)
    state = torch.random.get_rng_state()
    references = trivial_references(tasks, sampler.loss, [5, 10], sampler.output_size)
    assert torch.equal(state, torch.random.get_rng_state())  # draws nothing: no method's numbers move
    zero = np.mean([float((task.y_query**2).mean()) for task in tasks])
    assert references[PREDICT_ZERO][5][0].mse_mean == pytest.approx(zero)
    for k in (5, 10):
        mean = np.mean([float(((task.y_query - task.support(k)[1].mean()) ** 2).mean()) for task in tasks])
        assert references[SUPPORT_MEAN][k][0].mse_mean == pytest.approx(mean, rel=1e-5)
        assert references[SUPPORT_MEAN][k][0].tasks == len(tasks)


def test_for_classification_the_reference_is_chance(installed_registry):
    from reml_core.evaluation import PREDICT_ZERO, trivial_references
    from reml_core.experiment import build_components

    config = resolve_config(installed_registry, {"plugin": "digits", "preset": "smoke"})
    sampler = build_components(config).task_sampler
    references = trivial_references(sampler.test_tasks(10), sampler.loss, [1], sampler.output_size, sampler.metrics)
    assert set(references) == {PREDICT_ZERO}  # the mean of class labels is no prediction
    cell = references[PREDICT_ZERO][1][0]
    assert cell.mse_mean == pytest.approx(np.log(sampler.output_size))  # equal scores: cross-entropy log(ways)
    assert cell.metrics["accuracy"][0] == pytest.approx(1 / sampler.output_size, abs=0.1)


def _run_document(preset="smoke"):
    from reml_core.results import CellResult, ResultsDocument, SelectedCheckpoint, TrainingRecord

    config = {
        "plugin": "sine",
        "preset": preset,
        "seed": 0,
        "reward": {"name": "neg-mse"},
        "pool": {"name": "dense"},
        "train": {"validation_tasks": 7},
        "eval": {"sgd_lr": 0.01, "curve_steps": 0, "curve_adam_lr": 0.005, "curve_tasks": 2, "steps": [0, 1, 10]},
    }
    history = [{"timesteps": 1024, "validation/score": 1.36, "validation/finetune_gain": 0.3}]
    return ResultsDocument(
        kind="run",
        plugin="sine",
        policy="ppo-mlp",
        encoder="support-set",
        encoder_privileged=False,
        seed=0,
        test_tasks=50,
        tables={"reml": {5: {0: CellResult(5.0, 1.0), 1: CellResult(4.9, 1.0), 10: CellResult(4.8, 1.0)}}},
        curves={},
        timing={},
        config=config,
        loss_name="MSE",
        training={
            "reml": TrainingRecord(
                1024, 0, SelectedCheckpoint("step-1024", 1024, 1.36), history, {"invalid_argmax_rate": 0.5}
            )
        },
        references={"predict zero": {5: {0: CellResult(4.94, 1.1)}}, "support mean": {5: {0: CellResult(5.43, 1.2)}}},
    )


def test_reports_show_the_trivial_references_and_read_them_back(tmp_path):
    from reml_core.reports import render_run_report
    from reml_core.results import ResultsDocument

    document = _run_document()
    again = ResultsDocument.from_json(json.loads(json.dumps(document.to_json())))
    assert again.references == document.references
    report = render_run_report(again)
    assert "Trivial references on the same 50 test tasks" in report
    assert "predicting 0 for every query point" in report and "K=5: query MSE 4.940" in report
    assert "predicting the mean of the K support targets" in report and "K=5: query MSE 5.430" in report


def test_a_smoke_report_says_its_numbers_mean_nothing_and_others_do_not():
    from reml_core.reports import render_run_report

    assert "plumbing check" in render_run_report(_run_document("smoke"))
    assert "plumbing check" not in render_run_report(_run_document("default"))


def test_the_validation_numbers_say_what_they_are_measured_on_and_terms_are_explained():
    from reml_core.reports import render_run_report

    report = render_run_report(_run_document())
    assert "on the 7 validation tasks that choose the checkpoint (not the test tasks" in report
    assert (
        '"Gain from fine-tuning" is the validation loss before fine-tuning minus the loss after 10 SGD steps' in report
    )
    assert "Invalid argmax rate: the share of the policy's decisions" in report


def test_the_terminal_summary_shows_the_references_and_the_smoke_warning(tmp_path, capsys):
    from reml_core.cli.common import print_summary

    print_summary(_run_document(), tmp_path)
    out = capsys.readouterr().out
    assert "Trivial references" in out and "predicting 0" in out and "plumbing check" in out


# -- the terminal ------------------------------------------------------------------------------


def test_counts_are_pluralised():
    from reml_core.training import plural

    assert plural(1, "step") == "1 step" and plural(2, "step") == "2 steps" and plural(0, "task") == "0 tasks"
    assert plural(2048, "env step") == "2,048 env steps"


def test_long_lists_of_numbers_wrap_within_the_log_width():
    from reml_core.training import LOG_WIDTH, wrap_items

    items = [f"weight norm layer {i} 1.234" for i in range(12)]
    lines = wrap_items("step 1024: pool: ", items)
    assert len(lines) > 1 and all(len("[reml 12:34:56] " + line) <= LOG_WIDTH for line in lines)
    assert ", ".join(line.strip().rstrip(",") for line in lines).replace("step 1024: pool: ", "") == ", ".join(items)
    assert wrap_items("pool: ", []) == []


def test_the_training_bar_stops_at_its_total_when_the_backend_overshoots():
    """PPO collects whole rollouts: 2,048 steps for a budget of 2,000. The bar must not read 2,048/2,000."""
    from types import SimpleNamespace

    from reml_core.training import MetaTrainer

    class Bar:
        n = 0

        def update(self, steps):
            self.n += steps

    train = SimpleNamespace(env_steps=2000, checkpoint_every=10**9)
    trainer = SimpleNamespace(
        _stop=False,
        _bar=Bar(),
        _bar_steps=0,
        _bar_end=2000,
        env=SimpleNamespace(training_progress=0.0),
        config=SimpleNamespace(core=SimpleNamespace(train=train)),
        state=SimpleNamespace(timesteps=0),
    )
    for timesteps in (512, 1024, 1536, 2048):
        assert MetaTrainer.on_step(trainer, timesteps) is True
    assert trainer._bar.n == 2000 and trainer.env.training_progress == 1.0


# -- the docs agree with each other ------------------------------------------------------------

ROOT = __import__("pathlib").Path(__file__).resolve().parent.parent


def test_every_mention_of_a_smoke_runs_duration_agrees():
    import re

    from reml_core.cli.run import build_parser

    help_text = " ".join(build_parser().format_help().split())
    said = {"--help": re.search(r"smoke \(about ([^)]*?)\)", help_text).group(1)}
    readme = (ROOT / "README.md").read_text()
    said["README command"] = re.search(r"reml-run --plugin sine --preset smoke\s+# about ([a-z0-9 ]+?):", readme).group(
        1
    )
    said["README presets"] = re.search(r"Presets `smoke` \(about ([a-z0-9 ]+?)[;)]", readme).group(1)
    for path in (ROOT / "README.md", ROOT / "docs" / "index.md", ROOT / "docs" / "benchmark.md"):  # the newcomer's path
        for line in path.read_text().splitlines():
            if "smoke" in line and "reml-run" in line:
                assert not re.search(r"\b\d+ ?s\b|seconds", line), f"{path.name}: {line}"
    assert set(said.values()) == {"a minute"}, said


def test_the_benchmark_docs_reproduce_command_makes_the_readme_table():
    import re
    import shlex

    readme = (ROOT / "README.md").read_text()
    made = shlex.split(re.search(r"Generated from `(reml-bench --plugin sine [^`]*)`", readme).group(1))
    block = re.search(
        r"## Reproducing the README.*?```sh\n(.*?)```", (ROOT / "docs" / "benchmark.md").read_text(), re.S
    ).group(1)
    command = shlex.split(block.replace("\\\n", " ").splitlines()[0])
    for flag in ("--plugin", "--seed", "--seeds", "--methods", "--encoder"):
        assert flag in command and command[command.index(flag) + 1] == made[made.index(flag) + 1], flag
    assert "--from" not in command  # reproducible from nothing


class _Terminal(__import__("io").StringIO):
    def isatty(self):
        return True


def test_a_terminal_gets_a_first_line_before_torch_and_the_plugins_load(monkeypatch, tmp_path):
    from reml_core.cli import bench as bench_cli

    for main, prog in ((run_cli.main, "reml-run"), (bench_cli.main, "reml-bench")):
        terminal = _Terminal()
        monkeypatch.setattr("sys.stderr", terminal)
        order = []
        import reml_core.cli.common as common

        real = common.discover_plugins
        monkeypatch.setattr(
            f"reml_core.cli.{prog.split('-')[1]}.discover_plugins",
            lambda: order.append(terminal.getvalue()) or real(),  # noqa: B023 - runs within this iteration
        )
        assert main(["--plugin", "sine", "--set", "env.detph=4", "--out", str(tmp_path / prog)]) == 2
        assert order and order[0] == f"{prog}: loading torch and the plugins...\n"  # printed before the imports began
        assert terminal.getvalue().splitlines()[-1].startswith("env.detph: ")  # then the one error line


def test_off_a_terminal_a_users_mistake_stays_one_line(tmp_path, capsys):
    assert run_cli.main(["--plugin", "sine", "--set", "env.detph=4", "--out", str(tmp_path / "r")]) == 2
    assert capsys.readouterr().err.count("\n") == 1


# -- one implementation of the pools' index bookkeeping and of the families' held-out splits ----


def test_role_index_numbers_a_pools_layers_role_by_role():
    from reml_core.interfaces import Role
    from reml_core.pools import RoleIndex

    index = RoleIndex({Role.INPUT: 2, Role.HIDDEN: 3, Role.OUTPUT: 1})
    assert index.size == 6 and [index.locate(i) for i in (0, 1, 2, 4, 5)] == [
        (Role.INPUT, 0),
        (Role.INPUT, 1),
        (Role.HIDDEN, 0),
        (Role.HIDDEN, 2),
        (Role.OUTPUT, 0),
    ]
    with pytest.raises(IndexError, match="outside 0..5"):
        index.locate(6)
    slots = index.slot_rows([[0, 2, 5], [1, 4, 5]])
    assert [(role, rows.tolist()) for role, rows in slots] == [
        (Role.INPUT, [0, 1]),
        (Role.HIDDEN, [0, 2]),
        (Role.OUTPUT, [0, 0]),
    ]
    for bad, message in (
        ([[0, 2, 5], [1, 5]], "one depth"),
        ([[0, 2, 5], [2, 0, 5]], "one role per slot"),
        ([], "at least one"),
    ):
        with pytest.raises(ValueError, match=message):
            index.slot_rows(bad)


def test_the_dense_and_conv_pools_share_the_role_index(installed_registry):
    from reml_core.experiment import build_components
    from reml_core.pools import RoleIndex

    for family in ("sine", "digits"):
        pool = build_components(resolve_config(installed_registry, {"plugin": family, "preset": "smoke"})).pool
        assert isinstance(pool._index, RoleIndex) and pool.size == pool._index.size
        assert [pool.locate(i) for i in range(pool.size)] == [pool._index.locate(i) for i in range(pool.size)]


def test_sine_and_the_image_families_share_the_held_out_split(installed_registry):
    from reml_core.experiment import build_components
    from reml_core.samplers import SeededSplits

    for family in ("sine", "digits"):
        config = resolve_config(installed_registry, {"plugin": family, "preset": "smoke"})
        sampler = build_components(config).task_sampler
        assert isinstance(sampler, SeededSplits)
        first, again = sampler.test_tasks(3), sampler.test_tasks(3)
        assert [t.task_id for t in first] == ["test-0", "test-1", "test-2"]
        assert all(np.array_equal(a.y_query, b.y_query) for a, b in zip(first, again))  # the config alone fixes them
        train = next(iter(sampler.train_stream(0)))
        assert train.task_id == "train-s0-0" and not any(
            np.array_equal(train.x_query, t.x_query) and np.array_equal(train.y_query, t.y_query) for t in first
        )


def test_setting_descriptions_say_what_a_setting_does_not_what_it_measured():
    import re

    from reml_core.settings import EnvConfig, EvalConfig, TrainConfig

    for model in (EnvConfig, TrainConfig, EvalConfig):
        for name, info in model.model_fields.items():
            assert not re.search(r"steps/s|~\d|\bmeasured \d", info.description or ""), (
                f"{model.__name__}.{name}: {info.description}"
            )


def test_reports_never_say_1_steps():
    from reml_core.reports import curve_table, render_run_report
    from reml_core.results import CellResult

    table = curve_table({"reml": [3.0, 2.0, 1.5]})
    assert "| 1 step |" in table and "1 steps" not in table
    document = _run_document()
    document.training["reml"] = __import__("dataclasses").replace(document.training["reml"], resumes=1)
    document.tables["reml"][5][1] = CellResult(None, None, None, 1)
    report = render_run_report(document)
    assert "resumed 1 time." in report and "1 task diverged" in report
    assert not __import__("re").search(r"\b1 (steps|tasks|times)\b", report)


def test_a_benchmark_reports_the_references_over_its_seeds(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    out = tmp_path / "bench"
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "reml-bench"),
            "--plugin",
            "sine",
            "--preset",
            "smoke",
            "--methods",
            "scratch",
            "--seeds",
            "2",
            "--test-tasks",
            "5",
            "--set",
            "eval.curve_steps=2",
            "--set",
            "eval.curve_tasks=2",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    seed = json.loads((out / "seed-0" / "results.json").read_text())["references"]
    merged = json.loads((out / "results.json").read_text())["references"]
    assert set(merged) == {"predict zero", "support mean"} and set(merged["predict zero"]) == {"5", "10"}
    assert merged["predict zero"]["5"]["0"]["mse_mean"] == pytest.approx(seed["predict zero"]["5"]["0"]["mse_mean"])
    assert merged["predict zero"]["5"]["0"]["seed_spread"] == 0.0  # the same test tasks for every seed
    report = (out / "report.md").read_text()
    assert "Trivial references on the same 5 test tasks" in report and "plumbing check" in report
    assert "Trivial references" in result.stdout and "plumbing check" in result.stdout


def test_every_progress_bar_is_tqdms():
    """One kind of bar: training, evaluation and MAML draw tqdm's (on stderr); none draws rich's."""
    for path in [*(ROOT / "reml_core").rglob("*.py"), *(ROOT / "plugins").rglob("*.py")]:
        text = path.read_text()
        assert "rich.progress" not in text and "progress_bar=True" not in text, path
    from reml_core import evaluation, training

    assert "tqdm" in __import__("inspect").getsource(training._progress_bar) and evaluation.tqdm.__module__.startswith(
        "tqdm"
    )
