"""policy.features = 'point-set': a set network over the support points, trained with the policy."""

from __future__ import annotations

import json

import gymnasium as gym
import pytest
import torch
from helpers.runs import TINY, cli
from safetensors.torch import load_file

from reml_plugins.ppo.extractors import PointSetExtractor

POINTS, CHANNELS, REST = 10, 2, 40


def _extractor() -> PointSetExtractor:
    torch.manual_seed(0)
    size = POINTS * (CHANNELS + 1) + REST
    return PointSetExtractor(gym.spaces.Box(-10, 10, (size,)), offset=0, points=POINTS, channels=CHANNELS)


def _observations(shots: int, batch: int = 6) -> torch.Tensor:
    obs = torch.randn(batch, POINTS * (CHANNELS + 1) + REST)
    obs[:, 2 * POINTS : 3 * POINTS] = 0.0
    obs[:, 2 * POINTS : 2 * POINTS + shots] = 1.0
    obs[:, shots:POINTS] = 0.0  # padding, as the support-set encoder writes it
    obs[:, POINTS + shots : 2 * POINTS] = 0.0
    return obs


def _reorder(obs: torch.Tensor, order: list[int]) -> torch.Tensor:
    out = obs.clone()
    for channel in range(CHANNELS + 1):
        block = slice(channel * POINTS, (channel + 1) * POINTS)
        out[:, block] = obs[:, block][:, order]
    return out


def test_the_features_do_not_depend_on_the_order_of_the_points():
    extractor, obs = _extractor(), _observations(shots=7)
    order = [6, 2, 0, 5, 1, 4, 3, 7, 8, 9]
    assert torch.allclose(extractor(obs), extractor(_reorder(obs, order)), atol=1e-6)


def test_padding_is_ignored_and_the_rest_of_the_observation_passes_through():
    extractor, obs = _extractor(), _observations(shots=5)
    noisy = obs.clone()
    noisy[:, 5:POINTS] = torch.randn(obs.shape[0], POINTS - 5)  # garbage in masked-out slots
    assert torch.allclose(extractor(obs), extractor(noisy), atol=1e-6)
    features = extractor(obs)
    assert features.shape == (obs.shape[0], extractor.features_dim)
    assert torch.equal(features[:, -REST:], obs[:, -REST:])


def test_a_layout_that_does_not_fit_is_refused():
    with pytest.raises(ValueError, match="does not fit an observation"):
        PointSetExtractor(gym.spaces.Box(-1, 1, (20,)), offset=0, points=10, channels=2)


def test_an_encoder_without_a_point_set_is_a_config_error(tmp_path):
    out = tmp_path / "out"
    result = cli("reml-run", *TINY, "--encoder", "oracle", "--set", "policy.features=point-set", "--out", str(out))
    assert (
        result.returncode == 2
        and "policy: policy.features = 'point-set' needs a state encoder that declares a point set" in result.stderr
    )
    assert not out.exists()


@pytest.mark.parametrize("policy", ["ppo-mlp", "ppo-lstm"])
def test_training_with_the_set_network_runs_to_the_end(tmp_path, policy):
    out = tmp_path / "run"
    result = cli(
        "reml-run",
        *TINY,
        "--policy",
        policy,
        "--encoder",
        "support-set",
        "--set",
        "policy.features=point-set",
        "--out",
        str(out),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["policy"]["features"] == "point-set"
    weights = load_file(str(out / "checkpoints" / "final" / "policy.safetensors"))
    assert any(key.endswith("features_extractor.embed.0.weight") for key in weights), sorted(weights)[:10]
