"""pool.revive_dead_units: dead ReLU units are lifted back to life at checkpoints, and nothing else moves."""

from __future__ import annotations

import json

import pytest
import torch
from helpers.runs import TINY, cli

from reml_core.interfaces import MaintainedLayerPool, Role, TaskContext
from reml_plugins.dense.pool import DenseLayerPool, DensePoolConfig
from reml_plugins.sine.sampler import SineConfig, SineTaskSampler

PROBE = torch.linspace(-5, 5, 100).unsqueeze(1)


def _pool(**options) -> DenseLayerPool:
    pool = DenseLayerPool(
        DensePoolConfig(input_layers=3, hidden_layers=4, output_layers=2, width=8, **options),
        TaskContext(seed=0, task_sampler=SineTaskSampler(SineConfig())),
    )
    pool.biases[Role.INPUT][1, 2] = -100.0  # input unit 2 of input layer 1: never positive over [-5, 5]
    pool.biases[Role.HIDDEN][3, 5] = -1000.0  # hidden unit 5 of hidden layer 3: dead for every representation
    return pool


def test_dead_units_are_revived_just_enough_and_live_ones_are_untouched():
    pool = _pool(revive_dead_units=True, revival_margin=0.25)
    assert isinstance(pool, MaintainedLayerPool)
    before = pool.state_dict()
    measured = pool.diagnostics(PROBE)
    assert measured["dead_input_units"] >= 1 / 24 and measured["dead_hidden_units"] >= 1 / 32
    dead_inputs = ((PROBE @ pool.weights[Role.INPUT].transpose(1, 2)) + pool.biases[Role.INPUT][:, None, :]).amax(
        dim=1
    ) <= 0
    report = pool.maintain(PROBE)
    assert report["revived_input_units"] == pytest.approx(measured["dead_input_units"])
    health = pool.diagnostics(PROBE)
    assert health["dead_input_units"] == 0 and health["dead_hidden_units"] == 0
    after = pool.state_dict()
    for key in before:
        if key.endswith("weight"):
            assert torch.equal(before[key], after[key]), key  # only biases move
    assert torch.equal(after["input.bias"] != before["input.bias"], dead_inputs)  # exactly the dead ones moved
    best = (PROBE @ pool.weights[Role.INPUT][1, 2].unsqueeze(1)).squeeze(1) + pool.biases[Role.INPUT][1, 2]
    assert best.max().item() == pytest.approx(0.25, abs=1e-5)
    assert pool.maintain(PROBE) == {"revived_input_units": 0.0, "revived_hidden_units": 0.0}  # nothing left to do


def test_revival_can_be_switched_off():
    pool = _pool(revive_dead_units=False)
    before = pool.state_dict()
    assert pool.maintain(PROBE) == {}
    assert all(torch.equal(value, pool.state_dict()[key]) for key, value in before.items())


def test_a_run_with_revival_logs_it_at_every_checkpoint(tmp_path):
    out = tmp_path / "run"
    result = cli("reml-run", *TINY, "--set", "pool.revive_dead_units=true", "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    history = json.loads((out / "results.json").read_text())["training"]["history"]
    assert history and all("pool/revived_hidden_units" in record for record in history)
