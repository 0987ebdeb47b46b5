"""Classification in the protocol: K-shot means K of each class, accuracy is reported beside the
loss for every method (mean and 95% CI over tasks, spread over seeds), and the digits family runs
end to end on the conv pool with no change to the core."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from reml_core.evaluation import FewShotEvaluator
from reml_core.interfaces import Task
from reml_core.reports import few_shot_tables
from reml_core.results import cell_to_json, table_from_json

BIN = Path(sys.executable).parent
TINY = [
    "--plugin",
    "digits",
    "--preset",
    "smoke",
    "--set",
    "train.env_steps=256",
    "--set",
    "train.checkpoint_every=128",
    "--set",
    "train.n_envs=8",
    "--set",
    "policy.n_steps=128",
    "--set",
    "train.validation_tasks=3",
    "--set",
    "eval.test_tasks=6",
    "--set",
    "eval.curve_steps=3",
    "--set",
    "eval.curve_tasks=2",
    "--set",
    "train.progress=false",
]


def _task(ways: int, labels_query: list[int]) -> Task:
    x = torch.arange(len(labels_query), dtype=torch.float32).reshape(-1, 1)
    y = torch.tensor(labels_query)
    support = torch.arange(ways * 2)
    return Task("t", "test", (), x, y, support.float().reshape(-1, 1), support % ways, x, y, ways=ways)


class _Fixed(nn.Module):
    """Predicts class 0 for every input (logits favour column 0), whatever it is trained on."""

    def __init__(self, ways: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.tensor([5.0] + [0.0] * (ways - 1)))

    def forward(self, x):
        return self.bias.expand(len(x), -1)


def _accuracy(prediction, target):
    return {"accuracy": float((prediction.argmax(dim=1) == target).float().mean())}


def test_the_k_shot_set_of_a_task_with_ways_is_k_of_each_class():
    task = _task(3, [0, 1, 2])
    x, y = task.support(2)
    assert len(x) == 6 and torch.bincount(y).tolist() == [2, 2, 2]
    with pytest.raises(ValueError, match="3-shot support requested"):
        task.support(3)


def test_the_evaluator_reports_each_metric_with_mean_and_ci_beside_the_loss():
    tasks = [_task(2, [0, 0, 0, 1]), _task(2, [0, 1, 1, 1])]  # a class-0 predictor is right on 3/4, then 1/4
    evaluator = FewShotEvaluator(tasks, nn.functional.cross_entropy, shots=[1], steps=[0], lr=0.0, metrics_fn=_accuracy)
    cell = evaluator.few_shot(lambda task, shots: _Fixed(2))[1][0]
    mean, ci = cell.metrics["accuracy"]
    assert mean == pytest.approx(0.5) and ci == pytest.approx(1.96 * torch.tensor([0.75, 0.25]).std().item() / 2**0.5)
    data = cell_to_json(cell)
    assert data["accuracy_mean"] == pytest.approx(0.5) and data["mse_mean"] > 0
    without = FewShotEvaluator(tasks, nn.functional.cross_entropy, shots=[1], steps=[0], lr=0.0)
    assert without.few_shot(lambda task, shots: _Fixed(2))[1][0].metrics == {}


def test_accuracy_tables_bold_the_highest_and_loss_tables_the_lowest():
    methods = {
        "a": {
            "1": {"0": {"mse_mean": 1.0, "mse_ci95": 0.1, "nan_tasks": 0, "accuracy_mean": 0.9, "accuracy_ci95": 0.01}}
        },
        "b": {
            "1": {"0": {"mse_mean": 0.5, "mse_ci95": 0.1, "nan_tasks": 0, "accuracy_mean": 0.4, "accuracy_ci95": 0.01}}
        },
    }
    text = few_shot_tables({name: table_from_json(table) for name, table in methods.items()}, "cross-entropy")
    loss, accuracy = text.split("(query accuracy")
    assert "query cross-entropy" in loss and "**0.500 ± 0.100**" in loss and "**1.000" not in loss
    assert "**0.900 ± 0.010**" in accuracy and "**0.400" not in accuracy


def test_digits_bench_reports_accuracy_for_every_method_over_seeds(tmp_path):
    out = tmp_path / "bench"
    result = subprocess.run(
        [
            str(BIN / "reml-bench"),
            *TINY,
            "--seeds",
            "2",  # the family's baselines: maml, scratch, reference
            "--set",
            "baselines.maml.iterations=5",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert set(results["methods"]) == {"reml", "maml", "scratch", "reference"}
    assert results["loss_name"] == "cross-entropy" and results["schema"] == "reml.results/2"
    for table in results["methods"].values():
        assert set(table) == {"1", "5"}
        for row in table.values():
            for cell in row.values():
                assert 0.0 <= cell["accuracy_mean"] <= 1.0 and cell["accuracy_ci95"] is not None
                assert cell["accuracy_seed_spread"] is not None and cell["seed_spread"] is not None
    report = (out / "report.md").read_text()
    assert "query accuracy" in report and "query cross-entropy" in report and "sine" not in report
    # MAML meta-learned the architecture REML composes from the conv pool, and saved it.
    assert (out / "seed-0" / "maml" / "maml.safetensors").is_file()


def test_digits_recommends_its_own_baselines(tmp_path):
    from reml_core.config import default_baselines
    from reml_core.registry import PluginRegistry

    registry = PluginRegistry.discover(disabled=())
    assert default_baselines(registry, "digits", "bench") == ["maml", "scratch", "reference"]
    assert default_baselines(registry, "digits", "run") == ["scratch", "reference"]


@pytest.mark.parametrize("preset", ["smoke", "default", "full"])
def test_image_families_share_episode_ends_between_their_processes(installed_registry, preset):
    """A conv episode end is nearly all of a step, so both of two workers train networks (none waits beside
    PPO's update, the sine default); a user's own setting still wins. (Omniglot has the same presets.)"""
    family = "digits"
    from reml_core.config import resolve_config
    from reml_core.settings import episode_processes

    train = resolve_config(installed_registry, {"plugin": family, "preset": preset}).core.train
    assert train.overlap_update is False and episode_processes(2, train.overlap_update) == 2
    # the finished networks in equal shares, not shards of the envs whose finished networks differ in number
    assert train.split == "ends"
    mine = {"plugin": family, "preset": preset, "train": {"overlap_update": True, "split": "envs"}}
    assert resolve_config(installed_registry, mine).core.train.overlap_update is True
    assert resolve_config(installed_registry, mine).core.train.split == "envs"
