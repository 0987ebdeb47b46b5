"""The protocol-aligned pool update (``env.pool_update = "protocol"``, ``reml_core.pool_update``).

Its gradient is checked against an independent reference written with ``torch.func`` transforms
(``grad`` of a function that itself takes ``grad`` for the SGD adaptation), on a small pool whose
networks share layers. Tolerances: both compute the same float32 sums in different orders; over
a 10-step adaptation of 1-16-16-1 networks the relative difference stays around 1e-6, so 1e-4
relative (plus 1e-6 absolute for gradients that are nearly zero) is a bound with room, not a guess
at the bits.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from reml_core.batched import EpisodeEnd, end_episodes
from reml_core.env import network_order, slot_roles
from reml_core.interfaces import MetaGradientLayerPool, Role, TaskContext
from reml_core.pool_update import ProtocolPoolUpdate, make_pool_update
from reml_core.settings import EnvConfig
from reml_plugins.dense.pool import DenseLayerPool, DensePoolConfig
from reml_plugins.sine.sampler import SineConfig, SineTaskSampler

RTOL, ATOL = 1e-4, 1e-6


def _mse(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return torch.mean((prediction - target) ** 2)


def _pool(seed: int = 0) -> DenseLayerPool:
    config = DensePoolConfig(input_layers=2, hidden_layers=3, output_layers=2, width=16)
    return DenseLayerPool(config, TaskContext(seed=seed, task_sampler=SineTaskSampler(SineConfig())))


def _ends(pool: DenseLayerPool, count: int, seed: int, depth: int = 4) -> list[EpisodeEnd]:
    rng = np.random.default_rng(seed)
    tasks = SineTaskSampler(SineConfig()).train_stream(seed)
    ends = []
    for _ in range(count):
        chosen: list[int] = []
        for role in slot_roles(depth):
            options = [i for i, r in enumerate(pool.roles) if r == role and i not in chosen]
            chosen.append(int(rng.choice(options)))
        ends.append(EpisodeEnd(next(tasks), tuple(network_order(chosen)), int(rng.choice([5, 10])), 0))
    return ends


def _config(**settings) -> EnvConfig:
    return EnvConfig(pool_update="protocol", finetune_steps=10, **settings)


def _reference_gradients(pool: DenseLayerPool, ends, *, lr: float, steps: list[int], second_order: bool = True):
    """The gradient of the mean meta-loss for every pool tensor, with torch.func transforms only."""
    roles = list(pool.weights)
    start = {f"w.{r.value}": pool.weights[r].clone() for r in roles} | {
        f"b.{r.value}": pool.biases[r].clone() for r in roles
    }

    def forward(layers, x):
        for i, (w, b) in enumerate(layers):
            x = F.linear(x, w, b)
            if i < len(layers) - 1:
                x = F.relu(x)
        return x

    def meta_loss(tensors):
        total = 0.0
        for end in ends:
            located = [pool.locate(i) for i in end.indices]
            layers = [(tensors[f"w.{r.value}"][k], tensors[f"b.{r.value}"][k]) for r, k in located]
            x_s, y_s = end.task.support(end.shots)

            def support_loss(flat):  # called within this iteration only
                return _mse(forward(list(zip(flat[0::2], flat[1::2])), x_s), y_s)  # noqa: B023

            flat = [t for pair in layers for t in pair]
            collected = []
            for step in range(1, max(steps) + 1):
                grads = torch.func.grad(support_loss)(flat)
                if not second_order:
                    grads = [g.detach() for g in grads]
                flat = [p - lr * g for p, g in zip(flat, grads)]
                if step in steps:
                    collected.append(
                        _mse(forward(list(zip(flat[0::2], flat[1::2])), end.task.x_query), end.task.y_query)
                    )
            total = total + torch.stack(collected).mean()
        return total / len(ends)

    grads = torch.func.grad(meta_loss)(start)
    return [grads[f"w.{r.value}"] for r in roles] + [grads[f"b.{r.value}"] for r in roles]


def _close(actual, expected) -> None:
    for a, e in zip(actual, expected, strict=True):
        torch.testing.assert_close(a, e, rtol=RTOL, atol=ATOL)


def test_the_dense_pool_has_the_capability():
    assert isinstance(_pool(), MetaGradientLayerPool)


@pytest.mark.parametrize("batched", [True, False])
@pytest.mark.parametrize("steps", [[1], [1, 10]])
def test_the_gradient_equals_a_torch_func_reference(batched, steps):
    pool = _pool()
    ends = _ends(pool, 6, seed=1)  # 6 networks over 2/3/2 layers: most layers are shared
    update = ProtocolPoolUpdate(pool, _config(meta_steps=steps), _mse)
    losses, gradients = update.gradients(ends, [True] * len(ends), batched=batched)
    assert all(math.isfinite(value) for value in losses)
    _close(gradients, _reference_gradients(pool, ends, lr=0.01, steps=steps))


def test_first_order_drops_the_second_order_terms_and_differs():
    pool = _pool()
    ends = _ends(pool, 4, seed=2)
    first = ProtocolPoolUpdate(pool, _config(meta_steps=[10], meta_order="first"), _mse).gradients(ends, [True] * 4)[1]
    second = ProtocolPoolUpdate(pool, _config(meta_steps=[10]), _mse).gradients(ends, [True] * 4)[1]
    _close(first, _reference_gradients(pool, ends, lr=0.01, steps=[10], second_order=False))
    assert any(not torch.allclose(a, b, rtol=1e-3, atol=1e-5) for a, b in zip(first, second))


def test_networks_sharing_a_layer_add_their_gradients():
    pool = _pool()
    ends = _ends(pool, 2, seed=3)
    ends[1] = EpisodeEnd(ends[1].task, ends[0].indices, ends[1].shots, 0)  # the same layers, another task
    update = ProtocolPoolUpdate(pool, _config(meta_steps=[1]), _mse)
    _, both = update.gradients(ends, [True, True])
    _, alone0 = update.gradients(ends[:1], [True])
    _, alone1 = update.gradients(ends[1:], [True])
    _close(both, [(a + b) / 2 for a, b in zip(alone0, alone1)])  # the mean over the two networks
    used = {pool.locate(i) for i in ends[0].indices}
    for position, role in enumerate(pool.weights):
        for local in range(pool.weights[role].shape[0]):
            touched = bool(both[position][local].abs().sum() > 0)
            assert touched == ((role, local) in used), (role, local)


def test_batched_equals_one_network_at_a_time_after_several_updates():
    pools = [_pool(), _pool()]
    updates = [ProtocolPoolUpdate(pool, _config(meta_steps=[1, 10]), _mse) for pool in pools]
    for round_ in range(3):
        ends = _ends(pools[0], 8, seed=10 + round_)
        for update, batched in zip(updates, (True, False)):
            update.apply(ends, [True] * len(ends), batched=batched)
    _close(pools[0].parameters(), pools[1].parameters())
    assert not torch.equal(pools[0].weights[Role.HIDDEN], _pool().weights[Role.HIDDEN])


def test_pool_batch_takes_one_adam_step_per_batch_in_order_on_the_pool_the_last_one_left():
    pools = [_pool(), _pool(), _pool()]
    ends = _ends(pools[0], 7, seed=40)
    keep = [True, False, True, True, True, True, True]  # the second end faulted: batches are of kept ends
    batched = ProtocolPoolUpdate(pools[0], _config(meta_steps=[1], pool_batch=3), _mse)
    losses = batched.apply(ends, keep)
    assert batched.updates == 2 and math.isnan(losses[1]) and sum(math.isfinite(v) for v in losses) == 6
    # the same as applying the kept ends 3 at a time by hand, one Adam step each
    by_hand = ProtocolPoolUpdate(pools[1], _config(meta_steps=[1]), _mse)
    kept = [end for end, flag in zip(ends, keep) if flag]
    by_hand.apply(kept[:3], [True] * 3)
    by_hand.apply(kept[3:], [True] * 3)
    _close(pools[0].parameters(), pools[1].parameters())
    # and not the same as one step on all six (the default, 0)
    whole = ProtocolPoolUpdate(pools[2], _config(meta_steps=[1]), _mse)
    whole.apply(ends, keep)
    assert whole.updates == 1
    assert not torch.allclose(pools[0].weights[Role.HIDDEN], pools[2].weights[Role.HIDDEN])
    assert "one step per 3 networks" in batched.describe()


def test_checkpoint_and_resume_continue_exactly():
    pool = _pool()
    update = ProtocolPoolUpdate(pool, _config(meta_steps=[1]), _mse)
    for round_ in range(2):
        update.apply(_ends(pool, 4, seed=20 + round_), [True] * 4)
    resumed_pool = _pool()
    resumed_pool.load_state_dict(pool.state_dict())
    resumed = ProtocolPoolUpdate(resumed_pool, _config(meta_steps=[1]), _mse)
    resumed.load_state_dict({key: value.clone() for key, value in update.state_dict().items()})
    assert resumed.updates == update.updates == 2
    ends = _ends(pool, 4, seed=30)
    before_last = pool.state_dict()
    update.apply(ends, [True] * 4)
    resumed.apply(ends, [True] * 4)
    for a, b in zip(pool.parameters(), resumed_pool.parameters()):
        assert torch.equal(a, b)
    # Without the optimiser's state the same step moves the pool elsewhere: the state is what makes it exact.
    forgetful_pool = _pool()
    forgetful_pool.load_state_dict(before_last)
    ProtocolPoolUpdate(forgetful_pool, _config(meta_steps=[1]), _mse).apply(ends, [True] * 4)
    assert not torch.equal(forgetful_pool.weights[Role.HIDDEN], pool.weights[Role.HIDDEN])


def test_a_network_that_diverges_contributes_nothing_and_only_it():
    pool = _pool()
    ends = _ends(pool, 3, seed=4)
    huge = EpisodeEnd(
        type(ends[1].task)(**{**ends[1].task.__dict__, "y_support": ends[1].task.y_support * 1e30}),
        ends[1].indices,
        ends[1].shots,
        0,
    )
    update = ProtocolPoolUpdate(pool, _config(meta_steps=[10]), _mse)
    losses, gradients = update.gradients([ends[0], huge, ends[2]], [True] * 3)
    assert math.isnan(losses[1]) and math.isfinite(losses[0]) and math.isfinite(losses[2])
    _, expected = update.gradients([ends[0], ends[2]], [True, True])
    _close(gradients, expected)
    assert all(torch.isfinite(g).all() for g in gradients)


def test_episode_ends_under_the_protocol_rule_skip_the_adam_training_and_step_the_pool():
    pool = _pool()
    before = [p.clone() for p in pool.parameters()]
    config = _config(meta_steps=[1])
    update = make_pool_update(pool, config, _mse)
    assert update is not None
    ends = _ends(pool, 5, seed=5)
    outcomes = end_episodes(
        pool,
        ends,
        loss_fn=_mse,
        config=config,
        required=frozenset({"finetuned"}),
        write_back_rate=0.1,
        pool_update=update,
    )
    assert all(set(outcome.losses) == {"finetuned"} for outcome in outcomes)
    assert update.updates == 1
    assert any(not torch.equal(a, b) for a, b in zip(before, pool.parameters()))
    # Evaluation (no write-back rate) leaves the pool alone even with an update object.
    now = [p.clone() for p in pool.parameters()]
    end_episodes(
        pool,
        ends,
        loss_fn=_mse,
        config=config,
        required=frozenset({"finetuned"}),
        write_back_rate=None,
        pool_update=update,
    )
    assert all(torch.equal(a, b) for a, b in zip(now, pool.parameters()))
    assert make_pool_update(pool, EnvConfig(), _mse) is None
