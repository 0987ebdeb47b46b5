"""Results that are what they claim: an unfinished method is never loaded as trained, a benchmark
reports each seed's own budget, a resumed or loaded run is checked against the data it started on,
and the API works from any thread without writing on standard output."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import pytest

import reml_core
from reml_core import api
from reml_core.errors import CheckpointError, UserError
from reml_core.folders import release_all
from reml_core.jobs import finished
from reml_core.storage import MANIFEST, sha256

TINY = {
    "train.env_steps": 400,
    "train.checkpoint_every": 200,
    "train.validation_tasks": 3,
    "train.calibration_episodes": 5,
    "train.progress": False,
    "eval.test_tasks": 5,
    "eval.curve_steps": 3,
    "eval.curve_tasks": 2,
    "policy.n_steps": 256,
    "policy.batch_size": 128,
}


@pytest.fixture(autouse=True)
def _release():
    yield
    release_all()


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A finished tiny sine run (REML trained to its budget, with its final checkpoint)."""
    out = tmp_path_factory.mktemp("honest") / "run"
    reml_core.run(plugin="sine", preset="smoke", overrides=TINY, out=out, baselines=[])
    return out


def _no_final(run: Path) -> None:
    """What Ctrl-C or a killed benchmark leaves: step checkpoints, no final one."""
    shutil.rmtree(run / "checkpoints" / "final")


def _budget_raised(run: Path) -> None:
    """config.json asks for more than the final checkpoint holds."""
    config = json.loads((run / "config.json").read_text())
    config["train"]["env_steps"] = 20_000
    (run / "config.json").write_text(json.dumps(config))


def _continued_past_final(run: Path) -> None:
    """A finished run continued with a larger budget and stopped: a step checkpoint newer than final."""
    checkpoints = run / "checkpoints"
    newest = checkpoints / (checkpoints / "latest").read_text().strip()
    later = checkpoints / "step-000000900"
    shutil.copytree(newest, later)
    state = json.loads((later / "trainer.json").read_text())
    state["timesteps"] = 900
    (later / "trainer.json").write_text(json.dumps(state))
    manifest = json.loads((later / MANIFEST).read_text())
    manifest["name"] = later.name
    manifest["files"] = {name: sha256(later / name) for name in manifest["files"]}
    (later / MANIFEST).write_text(json.dumps(manifest))
    (checkpoints / "latest").write_text(later.name + "\n")
    _budget_raised(run)


UNFINISHED = {
    "no-final-checkpoint": (_no_final, "no final checkpoint"),
    "budget-not-reached": (_budget_raised, "final checkpoint holds 512 of the 20000 env steps"),
    "continued-past-final": (
        _continued_past_final,
        "continued past its final checkpoint (512 env steps) and stopped at 900 of 20000",
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["run", "bench"])
@pytest.mark.parametrize("damage", list(UNFINISHED))
def test_from_refuses_an_unfinished_reml_however_it_was_left(finished_run, tmp_path, damage, layout):
    change, expected = UNFINISHED[damage]
    if layout == "run":
        source = Path(shutil.copytree(finished_run, tmp_path / "source"))
        run = source
        hint = f"reml-run --resume {source}"
    else:
        source = tmp_path / "bench"
        run = Path(shutil.copytree(finished_run, source / "seed-0" / "reml-support-set"))
        (source / "bench-plan.json").write_text("{}")
        hint = f"reml-bench --resume {source}"
    assert finished(run, "reml")
    change(run)
    assert not finished(run, "reml")  # --resume of a benchmark continues it instead of loading it
    out = tmp_path / "out"
    with pytest.raises(CheckpointError, match="holds an unfinished REML run") as caught:
        api.prepare_bench({"plugin": "sine", "preset": "smoke"}, methods=["reml"], from_dir=source, out=out)
    assert expected in str(caught.value) and hint in str(caught.value)
    assert not out.exists()


@pytest.mark.slow
def test_from_refuses_a_baseline_whose_training_never_finished(finished_run, tmp_path):
    source = tmp_path / "bench"
    shutil.copytree(finished_run, source / "seed-0" / "reml-support-set")
    (source / "seed-0" / "maml").mkdir()
    (source / "seed-0" / "maml" / "job.log").write_text("meta-training maml (seed 0)\n")  # killed while training
    assert not finished(source / "seed-0" / "maml", "maml")
    with pytest.raises(UserError, match=r"maml for seed 0 in .*/seed-0/maml is unfinished \(no bench.json"):
        api.prepare_bench(
            {"plugin": "sine", "preset": "smoke"}, methods=["reml", "maml"], from_dir=source, out=tmp_path / "out"
        )
    assert not (tmp_path / "out").exists()


def test_a_benchmark_reports_each_seed_s_own_budget():
    from reml_core.bench import seed_budgets

    assert seed_budgets({0: "512 env steps of ppo-mlp", 1: "512 env steps of ppo-mlp"}) == "512 env steps of ppo-mlp"
    assert (
        seed_budgets({0: "20480 env steps of ppo-mlp", 1: "640 env steps of ppo-mlp"})
        == "seed 0: 20480 env steps of ppo-mlp; seed 1: 640 env steps of ppo-mlp"
    )


# -- the data a run started on ---------------------------------------------------------------------


def test_the_image_families_fingerprint_their_data(tmp_path):
    from test_omniglot import make_omniglot

    from reml_core.interfaces import FingerprintsData
    from reml_plugins.digits.sampler import DigitsConfig, DigitsTaskSampler
    from reml_plugins.omniglot.sampler import OmniglotConfig, OmniglotTaskSampler

    digits = DigitsTaskSampler(DigitsConfig())
    assert (
        isinstance(digits, FingerprintsData)
        and digits.data_fingerprint() == DigitsTaskSampler(DigitsConfig()).data_fingerprint()
    )
    assert digits.data_fingerprint()["images"].startswith("1797 scikit-learn digits, sha256 ")
    root = make_omniglot(tmp_path / "omniglot", layout={"images_background": {"A": 5}}, drawings=16)
    first = OmniglotTaskSampler(OmniglotConfig(root=str(root), ways=2)).data_fingerprint()
    assert first["characters"].startswith("5 character folders") and first["drawings"].startswith("80 PNG files")
    shutil.copytree(root / "images_background" / "A" / "character01", root / "images_background" / "A" / "character06")
    second = OmniglotTaskSampler(OmniglotConfig(root=str(root), ways=2)).data_fingerprint()
    assert second["characters"] != first["characters"] and second["drawings"] != first["drawings"]


@pytest.mark.slow
def test_a_resumed_or_loaded_image_run_whose_data_changed_is_refused(tmp_path):
    from test_omniglot import make_omniglot

    root = make_omniglot(tmp_path / "omniglot")
    out = tmp_path / "run"
    reml_core.run(
        plugin="omniglot",
        preset="smoke",
        task={"root": str(root), "image_size": 14},
        baselines=[],
        out=out,
        overrides={
            "train.env_steps": 64,
            "train.checkpoint_every": 64,
            "train.validation_tasks": 2,
            "train.calibration_episodes": 2,
            "train.progress": False,
            "eval.test_tasks": 2,
            "eval.steps": [0, 2],
            "eval.curve_steps": 2,
            "eval.curve_tasks": 1,
            "policy.n_steps": 32,
            "policy.batch_size": 32,
        },
    )
    record = json.loads((out / "data.json").read_text())
    assert record["task"] == "omniglot" and set(record["fingerprint"]) == {"characters", "drawings"}
    api.prepare_run(resume=out)  # the same data: accepted
    release_all()

    # one drawing changed: the class split is the same, but not the images
    drawing = next((root / "images_evaluation").rglob("*.png"))
    drawing.write_bytes(drawing.read_bytes() + b"\0")
    with pytest.raises(
        UserError, match=r"the data of task 'omniglot' changed since the run started \(drawings: "
    ) as caught:
        api.prepare_run(resume=out)
    assert "characters" not in str(caught.value)
    release_all()

    # a character added: another class split, which could put test classes into training
    shutil.copytree(
        root / "images_evaluation" / "Gamma" / "character01", root / "images_evaluation" / "Gamma" / "character09"
    )
    with pytest.raises(
        UserError,
        match=rf"--resume {out}: the data of task 'omniglot' changed .*characters: 12 character folders, "
        r"sha256 \w+ when it started, 13 character folders, sha256 \w+ now",
    ):
        api.prepare_run(resume=out)
    release_all()
    # --from loads it for evaluation
    with pytest.raises(UserError, match=rf"REML in {out}: the data of task 'omniglot' changed"):
        api.prepare_bench(
            {"plugin": "omniglot", "preset": "smoke", "task": {"root": str(root), "image_size": 14}},
            methods=["reml"],
            from_dir=out,
            out=tmp_path / "bench",
        )
    assert not (tmp_path / "bench").exists()


# -- any thread, nothing on stdout ---------------------------------------------------------------------


@pytest.mark.slow
def test_the_api_runs_from_a_worker_thread_and_writes_nothing_on_stdout(tmp_path, capfd):
    outcome: dict = {}

    def work():
        try:  # train.progress left on (the default): the bar, when drawn, goes to stderr
            outcome["results"] = reml_core.run(
                plugin="sine",
                preset="smoke",
                baselines=[],
                out=tmp_path / "run",
                overrides={key: value for key, value in TINY.items() if key != "train.progress"},
            )
        except BaseException as error:  # noqa: BLE001  (reported below)
            outcome["error"] = error

    worker = threading.Thread(target=work)
    worker.start()
    worker.join(timeout=300)
    assert not worker.is_alive()
    assert "error" not in outcome, outcome.get("error")
    assert outcome["results"].cell("reml", 5, 10).mean is not None
    assert capfd.readouterr().out == ""
