"""Checks that span components are config errors, found before anything runs."""

from __future__ import annotations

import pytest

from reml_core.errors import ConfigError


def test_k_larger_than_the_support_points_a_task_holds(make_components):
    with pytest.raises(ConfigError) as raised:
        make_components(eval={"shots": [5, 20]})
    assert raised.value.problems == ["eval.shots: K = 20 is more than the 10 support points a 'sine' task holds"]
    make_components(eval={"shots": [5, 20]}, task={"support_points": 20})  # fine once tasks hold 20


def test_a_pool_too_small_for_the_depth(make_components):
    with pytest.raises(ConfigError) as raised:
        make_components(env={"depth": 6}, pool={"hidden_layers": 3})
    assert raised.value.problems == [
        "env.depth: a depth-6 network needs 4 distinct hidden layer(s) but the pool has 3 (pool 'dense': make it "
        "larger or the network shallower)"
    ]


def test_depth_below_two_is_refused(make_components):
    with pytest.raises(ConfigError) as raised:
        make_components(env={"depth": 1})
    assert raised.value.problems == ["env.depth: Input should be greater than or equal to 2 (got 1)"]
