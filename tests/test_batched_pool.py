"""Batched episode ends: stacked networks against the same networks run one after another.

The reference is the per-network path: each network built from the pool, fine-tuned, trained and
evaluated by the single-network functions of ``reml_core.inner_loop`` one after another, then
written back in order. The batched path stacks the networks (``DenseLayerPool.build_batch``).
What is promised, each at its own level (docs/reliability.md, "Determinism"):

- exact, on any CPU, by construction: which networks fault, every network's minibatch draws,
  the write-back's lerps and their order, and that a faulted network changes nothing;
- within float32 rounding (``ROUNDING``): the composed and the SGD-fine-tuned losses;
- within Adam's reach (``ADAM_REACH``): the Adam-trained losses and the pool. Batched products and
  single ones are different BLAS calls, and which kernel each gets (so in which order it sums) is
  the BLAS library's choice per CPU: on an Intel AVX-512 CPU MKL's single and batched products of
  the output layer round differently, on this AMD CPU they do not. Adam turns such a last-bit
  difference in a near-zero gradient into a whole step of the other sign, so no tolerance below
  Adam's reach holds for every network on every CPU; the typical network still agrees to
  rounding (``test_the_typical_network_agrees_to_rounding_after_adam``).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from reml_core.batched import EpisodeEnd, MeasureRequest, end_episodes, measure_networks
from reml_core.config import EnvConfig
from reml_core.env import network_order, slot_roles
from reml_core.inner_loop import batched_loss, value_and_grad_batch
from reml_core.interfaces import BatchedLayerPool, LayerPool, Role, Task, TaskContext
from reml_plugins.dense.pool import DenseLayerPool, DensePoolConfig
from reml_plugins.sine.sampler import SineConfig, SineTaskSampler

pytestmark = pytest.mark.numerics  # also run under other CPU dispatches (make test-dispatch)

ALL_LOSSES = frozenset({"composed", "finetuned", "trained"})
_ENV = EnvConfig()
UNIT_ROUNDOFF = 2.0**-24  # float32
WIDEST_SUM = 100  # terms in the longest sum of a step: the MSE over the 100 query (or training) points
WRITE_BACK_RATE = 0.3

# Without Adam the two paths differ only by how their sums round: each sum of n terms is within
# n * u of the exact one (relative; the standard bound gamma_n), and the fine-tuning's steps and
# the final evaluation add their errors. Relative to max(1, |loss|). Measured: at most 3.8e-6
# (absolute) on every emulated dispatch (docs/performance.md).
ROUNDING = (_ENV.finetune_steps + 1) * WIDEST_SUM * UNIT_ROUNDOFF  # 6.6e-5

# Adam moves a parameter by at most about lr per step (Kingma & Ba, section 2.1), so two runs whose
# gradients differ in the last bit can end at most 2 * lr * steps apart: a rounding difference in
# a near-zero gradient component flips the sign of a whole step, and it may do so in any step.
# That is the only bound that holds for every network on every CPU. The pool moves by the
# write-back rate times the trained parameters' difference; the trained loss is held to the same
# relative bound. Measured (docs/performance.md): batched against per-network at most 3.0e-4
# (loss, relative) and 6.1e-5 (pool), and 1-ulp noise on the reference's own pool at most 1.6e-2
# and 1.5e-2, over 480 networks per emulated dispatch.
ADAM_REACH = 2 * _ENV.inner_adam_lr * _ENV.inner_steps  # 0.3
POOL_REACH = WRITE_BACK_RATE * ADAM_REACH  # 0.09


def _mse(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return torch.mean((prediction - target) ** 2)


def _pool(seed: int = 0, **config) -> DenseLayerPool:
    # A small pool, so that the networks of a batch share layers and the write-back order matters.
    defaults = {"input_layers": 3, "hidden_layers": 6, "output_layers": 3, "width": 16}
    sampler = SineTaskSampler(SineConfig())
    return DenseLayerPool(DensePoolConfig(**{**defaults, **config}), TaskContext(seed=seed, task_sampler=sampler))


def _random_ends(pool: LayerPool, count: int, seed: int, depth: int = 5) -> list[EpisodeEnd]:
    """``count`` valid compositions on consecutive training tasks, with K 5 or 10 and their own minibatch seeds."""
    rng = np.random.default_rng(seed)
    tasks = SineTaskSampler(SineConfig()).train_stream(seed)
    ends = []
    for _ in range(count):
        chosen: list[int] = []
        for role in slot_roles(depth):
            options = [i for i, r in enumerate(pool.roles) if r == role and i not in chosen]
            chosen.append(int(rng.choice(options)))
        ends.append(
            EpisodeEnd(next(tasks), tuple(network_order(chosen)), int(rng.choice([5, 10])), int(rng.integers(2**62)))
        )
    return ends


def _end(pool, ends, *, batched, config=None, min_batch=2):
    config = config or EnvConfig()
    return end_episodes(
        pool,
        ends,
        loss_fn=_mse,
        config=config,
        required=ALL_LOSSES,
        write_back_rate=WRITE_BACK_RATE,
        batched=batched,
        min_batch=min_batch,
    )


def _max_pool_difference(a: LayerPool, b: LayerPool) -> float:
    return max(float((a.state_dict()[key] - value).abs().max()) for key, value in b.state_dict().items())


def _relative_difference(ours: float, theirs: float) -> float:
    return abs(ours - theirs) / max(1.0, abs(theirs))


def _assert_same_outcomes(batched, reference):
    """Faults and NaNs exactly; composed and fine-tuned losses within rounding; trained ones within Adam's reach."""
    assert len(batched) == len(reference)
    for ours, theirs in zip(batched, reference):
        assert ours.fault == theirs.fault
        assert set(ours.losses) == set(theirs.losses) == ALL_LOSSES
        for name, value in theirs.losses.items():
            if math.isnan(value):
                assert math.isnan(ours.losses[name]), name
            else:
                bound = ADAM_REACH if name == "trained" else ROUNDING
                assert _relative_difference(ours.losses[name], value) <= bound, (name, ours.losses[name], value)


def test_the_dense_pool_declares_the_capability_and_a_plain_pool_does_not():
    assert isinstance(_pool(), BatchedLayerPool)
    assert not isinstance(_PlainPool(_pool()), BatchedLayerPool)
    assert isinstance(_PlainPool(_pool()), LayerPool)


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_a_stacked_network_computes_each_row_as_the_single_network_does(activation):
    pool = _pool(activation=activation)
    ends = _random_ends(pool, 6, seed=1)
    indices = [list(end.indices) for end in ends]
    stacked = pool.build_batch(indices)
    x = torch.stack([end.task.x_train for end in ends])
    y = torch.stack([end.task.y_train for end in ends])
    params = list(stacked.parameters())
    losses, grads = value_and_grad_batch(stacked, params, x, y, batched_loss(_mse))
    prediction = stacked(x)
    for row, chosen in enumerate(indices):
        single = pool.build(chosen)
        torch.testing.assert_close(prediction[row], single(x[row]), rtol=1e-5, atol=1e-6)
        single_params = list(single.parameters())
        loss, single_grads = single.value_and_grad(single_params, x[row], y[row], _mse)
        reference = torch.autograd.grad(_mse(single(x[row]), y[row]), single_params)  # autograd as the referee
        assert losses[row].item() == pytest.approx(loss.item(), rel=1e-5)
        for ours, hand, auto in zip(grads, single_grads, reference):
            torch.testing.assert_close(ours[row], hand, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(ours[row], auto, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("width", [16, 40])
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("count", [1, 3, 16])
def test_batched_ends_equal_running_the_networks_one_after_another(count, seed, width):
    # Several seeds and sizes; width 40 is the thesis' scale, width 16 also takes the per-network
    # products for small matrices.
    reference_pool, batched_pool = _pool(width=width), _pool(width=width)
    ends = _random_ends(reference_pool, count, seed=100 * count + seed)
    reference = _end(reference_pool, ends, batched=False)
    batched = _end(batched_pool, ends, batched=True, min_batch=1)  # min_batch=1: even a lone network is stacked
    _assert_same_outcomes(batched, reference)
    assert not any(outcome.fault for outcome in reference)
    assert _max_pool_difference(batched_pool, reference_pool) <= POOL_REACH
    assert _max_pool_difference(batched_pool, _pool(width=width)) > 1e-3  # and the write-back did move the pool


def test_the_typical_network_agrees_to_rounding_after_adam():
    """Adam's amplification is the exception: over 64 thesis-scale networks the median trained loss
    agrees within ROUNDING and at most one in sixteen networks is further apart (measured: at most
    1 in 480 on any emulated dispatch, 5 in 480 under 1-ulp noise on the whole pool)."""
    differences = []
    for seed in range(4):
        reference_pool, batched_pool = _pool(width=40), _pool(width=40)
        ends = _random_ends(reference_pool, 16, seed=500 + seed)
        reference = _end(reference_pool, ends, batched=False)
        batched = _end(batched_pool, ends, batched=True)
        _assert_same_outcomes(batched, reference)
        differences += [
            _relative_difference(ours.losses["trained"], theirs.losses["trained"])
            for ours, theirs in zip(batched, reference)
        ]
    assert float(np.median(differences)) <= ROUNDING
    assert sum(difference > ROUNDING for difference in differences) <= len(differences) // 16, sorted(differences)[-5:]


def _record_draws(monkeypatch) -> dict[int, list[list[int]]]:
    """Every minibatch drawn with a generator, by the generator's seed (each episode's minibatch seed)."""
    draws: dict[int, list[list[int]]] = {}
    randperm = torch.randperm

    def recording(n, *args, generator=None, **kwargs):
        result = randperm(n, *args, generator=generator, **kwargs)
        if generator is not None:
            draws.setdefault(generator.initial_seed(), []).append(result.tolist())
        return result

    monkeypatch.setattr(torch, "randperm", recording)
    return draws


def test_batched_ends_draw_the_same_minibatches(monkeypatch):
    config = EnvConfig(inner_batch=25)  # each step draws 25 of the 100 points with the episode's own generator
    reference_pool, batched_pool = _pool(), _pool()
    ends = _random_ends(reference_pool, 5, seed=7)
    draws = _record_draws(monkeypatch)
    reference = _end(reference_pool, ends, batched=False, config=config)
    reference_draws = {seed: list(drawn) for seed, drawn in draws.items()}
    draws.clear()
    batched = _end(batched_pool, ends, batched=True, config=config)
    # Exact on any CPU: integers from each episode's own generator, one permutation per Adam step.
    assert sorted(reference_draws) == sorted(end.minibatch_seed for end in ends)
    assert all(len(drawn) == config.inner_steps for drawn in reference_draws.values())
    assert draws == reference_draws
    _assert_same_outcomes(batched, reference)
    assert _max_pool_difference(batched_pool, reference_pool) <= POOL_REACH


def test_a_network_that_faults_is_left_out_of_the_write_back_and_only_that_one():
    reference_pool, batched_pool, others_pool = _pool(), _pool(), _pool()
    ends = _random_ends(reference_pool, 16, seed=5)
    poisoned = 6
    task = ends[poisoned].task
    nan_targets = task.y_train.clone()
    nan_targets[3] = math.nan
    bad_task = Task(
        task.task_id,
        task.split,
        task.descriptor,
        task.x_train,
        nan_targets,
        task.x_support,
        task.y_support,
        task.x_query,
        task.y_query,
    )
    ends[poisoned] = EpisodeEnd(bad_task, ends[poisoned].indices, ends[poisoned].shots, ends[poisoned].minibatch_seed)

    reference = _end(reference_pool, ends, batched=False)
    batched = _end(batched_pool, ends, batched=True)
    _assert_same_outcomes(batched, reference)
    assert [outcome.fault for outcome in batched] == [index == poisoned for index in range(16)]
    assert math.isnan(batched[poisoned].losses["trained"]) and math.isfinite(batched[poisoned].losses["finetuned"])
    assert all(torch.isfinite(value).all() for value in batched_pool.state_dict().values())
    assert _max_pool_difference(batched_pool, reference_pool) <= POOL_REACH
    # The pool is exactly what the 15 healthy networks alone write back, bit for bit (the same
    # single-network computations, in the same order): the faulted one changed nothing.
    others = _end(others_pool, [end for index, end in enumerate(ends) if index != poisoned], batched=False)
    assert _max_pool_difference(reference_pool, others_pool) == 0.0
    assert [o.losses for o in others] == [o.losses for index, o in enumerate(reference) if index != poisoned]


def test_write_back_order_matters_and_is_kept_when_networks_share_a_layer():
    pool, reversed_pool, reference_pool = _pool(), _pool(), _pool()
    ends = _random_ends(pool, 8, seed=3)
    assert len({end.indices[0] for end in ends}) < len(ends)  # three input layers for eight networks: shared
    indices = [list(end.indices) for end in ends]
    stacked = pool.build_batch(indices)
    with torch.no_grad():
        for parameter in stacked.parameters():
            parameter.add_(torch.randn_like(parameter))
    pool.write_back_batch(indices, stacked, 0.5, [True] * len(ends))
    for row, chosen in enumerate(indices):
        reference_pool.write_back(chosen, stacked.network(row), rate=0.5)
    assert _max_pool_difference(pool, reference_pool) == 0.0  # the same lerps in the same order: bit for bit
    reversed_pool.write_back_batch(indices[::-1], pool_rows_reversed(stacked), 0.5, [True] * len(ends))
    assert _max_pool_difference(reversed_pool, pool) > 1e-3


def pool_rows_reversed(stacked):
    from reml_plugins.dense.pool import BatchedComposedNetwork

    return BatchedComposedNetwork(
        [w.flip(0) for w in stacked.weights], [b.flip(0) for b in stacked.biases], stacked.activation
    )


def test_batched_measurements_match_single_ones():
    pool = _pool()
    ends = _random_ends(pool, 7, seed=2)
    requests = [MeasureRequest(end.indices[:-2] + end.indices[-1:], *end.task.support(end.shots)) for end in ends]
    batched = measure_networks(pool, requests, _mse)
    single = measure_networks(pool, requests, _mse, batched=False)
    assert len({len(request.x) for request in requests}) == 2  # K 5 and K 10: two stacked groups
    for (loss, scale), (reference_loss, reference_scale) in zip(batched, single):
        assert loss == pytest.approx(reference_loss, rel=ROUNDING) and scale == pytest.approx(
            reference_scale, rel=ROUNDING
        )


class _PlainPool:
    """A third party's pool: only the LayerPool protocol, no batching capability (wraps the dense pool)."""

    def __init__(self, inner: DenseLayerPool) -> None:
        self._inner = inner
        self.size, self.roles = inner.size, inner.roles
        self.built = 0

    def build(self, indices):
        self.built += 1
        return self._inner.build(indices)

    def fresh_network(self, depth, generator):
        return self._inner.fresh_network(depth, generator)

    def write_back(self, indices, network, rate=1.0):
        self._inner.write_back(indices, network, rate)

    def state_dict(self):
        return self._inner.state_dict()

    def load_state_dict(self, state):
        self._inner.load_state_dict(state)

    def diagnostics(self, probe):
        return self._inner.diagnostics(probe)


def test_a_pool_without_the_capability_takes_the_per_network_path_with_the_same_results():
    plain, batched_pool = _PlainPool(_pool()), _pool()
    ends = _random_ends(batched_pool, 6, seed=4)
    _assert_same_outcomes(_end(plain, ends, batched=True), _end(batched_pool, ends, batched=True))
    assert plain.built == 12  # a network to train and one to fine-tune, per episode
    assert _max_pool_difference(plain, batched_pool) <= POOL_REACH


def test_a_batch_needs_one_role_per_slot():
    pool = _pool()
    with pytest.raises(ValueError, match="one role per slot"):
        pool.build_batch([[0, 3, 4, 10], [3, 0, 4, 10]])
    with pytest.raises(ValueError, match="one depth"):
        pool.build_batch([[0, 3, 10], [0, 3, 4, 10]])
    assert pool.roles[0] == Role.INPUT


def test_large_groups_are_stacked_in_chunks_in_order():
    reference_pool, chunked_pool = _pool(), _pool()
    ends = _random_ends(reference_pool, 11, seed=9)
    reference = _end(reference_pool, ends, batched=False)
    chunked = end_episodes(
        chunked_pool,
        ends,
        loss_fn=_mse,
        config=EnvConfig(),
        required=ALL_LOSSES,
        write_back_rate=WRITE_BACK_RATE,
        max_batch=4,
    )
    _assert_same_outcomes(chunked, reference)
    assert _max_pool_difference(chunked_pool, reference_pool) <= POOL_REACH


class _PlainPoolPlugin:
    """A third party's plugin shipping the plain pool above."""

    @staticmethod
    def reml_layer_pools():
        from reml_core.specs import LayerPoolSpec

        yield LayerPoolSpec(
            name="plain-dense",
            factory=lambda config, context: _PlainPool(DenseLayerPool(config, context)),
            config_model=DensePoolConfig,
            description="The dense pool without the batching capability.",
        )


def test_a_vector_env_meta_trains_to_the_end_on_a_pool_without_the_capability(installed_registry, tmp_path):
    from reml_core import hookimpl
    from reml_core.config import resolve_config
    from reml_core.experiment import build_components
    from reml_core.training import MetaTrainer
    from reml_core.vec_env import CompositionVecEnv

    plugin = _PlainPoolPlugin()
    plugin.reml_layer_pools = hookimpl(_PlainPoolPlugin.reml_layer_pools)
    installed_registry.register(plugin, name="plain-pool", distribution="plain-pool-dist")
    config = resolve_config(
        installed_registry,
        {
            "plugin": "sine",
            "preset": "smoke",
            "pool": "plain-dense",
            "policy": "ppo-mlp-masked",
            "train": {"n_envs": 4, "env_steps": 512, "checkpoint_every": 256, "validation_tasks": 3, "progress": False},
        },
    )
    components = build_components(config)
    pool = components.pool
    assert isinstance(pool, _PlainPool) and not isinstance(pool, BatchedLayerPool)
    before = {key: value.clone() for key, value in pool.state_dict().items()}
    trainer = MetaTrainer(config, components, tmp_path)
    assert isinstance(trainer.env, CompositionVecEnv) and trainer.env.num_envs == 4
    trainer.calibrate()
    trainer.train()
    assert trainer.policy.num_timesteps >= 512
    assert [record["timesteps"] for record in trainer.state.history][-1] >= 512
    assert len(trainer.state.episodes) == 4 and min(trainer.state.episodes) >= 512 // 4 // 5
    assert pool.built >= 2 * sum(trainer.state.episodes) - 8  # every finished episode built its networks one by one
    assert max(float((pool.state_dict()[key] - value).abs().max()) for key, value in before.items()) > 1e-4


def test_batched_ends_fine_tune_on_k_of_each_class_when_tasks_have_ways():
    # A classification task's K-shot set is K points of each class (ways * K points): the stacked
    # fine-tuning pads to the longest such set and scores each row on its own, as one network would.
    import dataclasses

    reference_pool, batched_pool = _pool(), _pool()
    ends = [
        dataclasses.replace(end, task=dataclasses.replace(end.task, ways=2), shots=shots)
        for end, shots in zip(_random_ends(reference_pool, 6, seed=11), [1, 2, 5, 5, 2, 3])
    ]
    assert [len(end.task.support(end.shots)[0]) for end in ends] == [2, 4, 10, 10, 4, 6]
    reference = _end(reference_pool, ends, batched=False)
    batched = _end(batched_pool, ends, batched=True, min_batch=1)
    _assert_same_outcomes(batched, reference)
    assert _max_pool_difference(batched_pool, reference_pool) <= POOL_REACH
