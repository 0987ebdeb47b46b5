"""A permutation-invariant features extractor for observations that carry a set of support points.

A state encoder may declare that part of its output is a padded set of points
(:class:`reml_core.interfaces.PointSetLayout`). :class:`PointSetExtractor` embeds every point with a
small shared network, pools the embeddings over the points the mask marks (mean and max), and passes
the result on with the rest of the observation untouched. It is trained with the policy, end to end,
so the policy learns which summary of the K points predicts a good composition (DeepSets, Zaheer et
al. 2017). With no layout it is not used: the policy sees the observation flat, as before.
"""

from __future__ import annotations

import gymnasium as gym
import torch
from torch import nn

from reml_core.compat import import_gym_quietly
from reml_core.interfaces import PointSetLayout

import_gym_quietly()

from stable_baselines3.common.torch_layers import BaseFeaturesExtractor  # noqa: E402


class PointSetExtractor(BaseFeaturesExtractor):
    """DeepSets over the declared point set, concatenated with the rest of the observation."""

    def __init__(
        self,
        observation_space: gym.spaces.Box,
        *,
        offset: int,
        points: int,
        channels: int,
        hidden: int = 64,
        embedding: int = 32,
    ) -> None:
        size = int(observation_space.shape[0])
        block = points * (channels + 1)
        if offset < 0 or offset + block > size:
            raise ValueError(
                f"a point set of {points} points x {channels} channels at offset {offset} does not fit an observation "
                f"of {size}"
            )
        super().__init__(observation_space, features_dim=2 * embedding + size - block)
        self.offset, self.points, self.channels = offset, points, channels
        self.embed = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(), nn.Linear(hidden, embedding), nn.ReLU())

    def forward(self, observations: torch.Tensor) -> torch.Tensor:
        start, end = self.offset, self.offset + self.points * (self.channels + 1)
        block = observations[:, start:end].reshape(-1, self.channels + 1, self.points).transpose(1, 2)  # [B, M, C+1]
        values, mask = block[..., : self.channels], block[..., self.channels :]
        embedded = self.embed(values) * mask
        count = mask.sum(dim=1).clamp_min(1.0)
        mean = embedded.sum(dim=1) / count
        largest = (embedded - (1.0 - mask) * 1e4).max(dim=1).values.clamp_min(0.0)  # embeddings are >= 0 (ReLU)
        return torch.cat([mean, largest, observations[:, :start], observations[:, end:]], dim=1)


def point_set_kwargs(layout: PointSetLayout, hidden: int, embedding: int) -> dict[str, object]:
    """``policy_kwargs`` entries that put a :class:`PointSetExtractor` in front of the policy and value networks."""
    return {
        "features_extractor_class": PointSetExtractor,
        "features_extractor_kwargs": {
            "offset": layout.offset,
            "points": layout.points,
            "channels": layout.channels,
            "hidden": hidden,
            "embedding": embedding,
        },
    }
