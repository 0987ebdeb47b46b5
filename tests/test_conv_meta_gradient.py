"""The conv pool's batched path and its meta-gradient capability (``env.pool_update = "protocol"`` on images).

Tolerances. Row ``b`` of a stacked conv network is a grouped convolution, whose kernel may sum a
3x3xC window in another order than the single convolution does, so rows agree with the single
network within float32 rounding: logits of these networks are O(1) and a sum of at most 9*16
products carries a relative error of a few 1e-7, so 1e-5 relative plus 1e-6 absolute is a bound
with room (on this project's AMD CPU they are the same bits). The meta-gradient is compared with
an independent ``torch.func`` reference over a 3-step adaptation at the image protocol's rate
(0.4); its float32 sums run in different orders, so 1e-4 relative (plus 1e-6 absolute for
gradients near zero) as in tests/test_pool_update.py.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from reml_core.batched import EpisodeEnd, end_episodes
from reml_core.env import network_order, slot_roles
from reml_core.inner_loop import batched_loss, finetune_sgd, finetune_sgd_batch
from reml_core.interfaces import BatchedLayerPool, MetaGradientLayerPool, Role, TaskContext
from reml_core.pool_update import ProtocolPoolUpdate
from reml_core.settings import EnvConfig
from reml_plugins.conv.pool import BatchedConvNetwork, ConvLayerPool, ConvPoolConfig, pooling_plan
from reml_plugins.digits.sampler import DigitsConfig, DigitsTaskSampler

pytestmark = (
    pytest.mark.numerics
)  # compares floats to rounding: also run under other CPU dispatches (make test-dispatch)

ROW_RTOL, ROW_ATOL = 1e-5, 1e-6
RTOL, ATOL = 1e-4, 1e-6
LR = 0.4  # the image families' protocol (Finn et al.'s Omniglot alpha)


class FakeSampler:
    def __init__(self, input_shape=(1, 8, 8), output_size=3) -> None:
        self.input_shape = input_shape
        self.output_size = output_size
        self.input_size = int(np.prod(input_shape))


def _pool(seed: int = 0, shape=(1, 8, 8), ways: int = 3, **config) -> ConvLayerPool:
    settings = {"input_layers": 2, "hidden_layers": 3, "output_layers": 2, "channels": 4, **config}
    return ConvLayerPool(ConvPoolConfig(**settings), TaskContext(seed=seed, task_sampler=FakeSampler(shape, ways)))


def _sampler() -> DigitsTaskSampler:
    return DigitsTaskSampler(DigitsConfig(ways=3, support_shots=3, train_per_class=4, query_per_class=3))


def _compositions(pool: ConvLayerPool, count: int, seed: int, depth: int = 4) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        chosen: list[int] = []
        for role in slot_roles(depth):
            options = [i for i, r in enumerate(pool.roles) if r == role and i not in chosen]
            chosen.append(int(rng.choice(options)))
        out.append(network_order(chosen))
    return out


def _ends(pool: ConvLayerPool, count: int, seed: int, depth: int = 4) -> list[EpisodeEnd]:
    tasks = _sampler().train_stream(seed)
    rng = np.random.default_rng(seed + 1000)
    return [
        EpisodeEnd(next(tasks), tuple(indices), int(rng.choice([1, 3])), 0)
        for indices in _compositions(pool, count, seed, depth)
    ]


def _close(actual, expected, rtol=RTOL, atol=ATOL) -> None:
    for a, e in zip(actual, expected, strict=True):
        torch.testing.assert_close(a, e, rtol=rtol, atol=atol)


# -- the batched path ------------------------------------------------------------------------


def test_the_conv_pool_has_the_batched_and_meta_gradient_capabilities():
    pool = _pool()
    assert isinstance(pool, BatchedLayerPool) and isinstance(pool, MetaGradientLayerPool)
    assert [tuple(t.shape) for t in pool.parameters()] == [
        (2, 4, 1, 3, 3),
        (3, 4, 4, 3, 3),
        (2, 3, 4),
        (2, 4),
        (3, 4),
        (2, 3),
    ]
    assert all(a is b for a, b in zip(pool.parameters(), pool.parameters()))  # the same objects every call


@pytest.mark.parametrize("shape", [(1, 8, 8), (2, 28, 28)])
@pytest.mark.parametrize("norm", ["task", "none"])
@pytest.mark.parametrize("depth", [2, 3, 5])
def test_row_b_of_a_batched_network_equals_the_single_network(shape, norm, depth):
    pool = _pool(seed=depth, shape=shape, norm=norm)
    compositions = _compositions(pool, 5, seed=depth, depth=depth)
    compositions[3] = compositions[0]  # a repeated network
    batched = pool.build_batch(compositions)
    assert isinstance(batched, BatchedConvNetwork) and len(batched) == 5
    x = torch.rand(5, 7, *shape, generator=torch.Generator().manual_seed(1))
    out = batched(x)
    assert out.shape == (5, 7, 3)
    for row, indices in enumerate(compositions):
        single = pool.build(indices)
        torch.testing.assert_close(out[row], single(x[row]), rtol=ROW_RTOL, atol=ROW_ATOL)
        for stacked, own in zip(batched.parameters(), single.parameters()):
            assert torch.equal(stacked[row], own)  # a copy of the same layers, in build()'s parameter order
        copy = batched.network(row)
        assert torch.equal(copy(x[row]), single(x[row]))
    torch.testing.assert_close(batched(x.flatten(2)), out, rtol=0, atol=0)  # flat inputs are reshaped
    with pytest.raises(ValueError, match="stacked conv networks take images"):
        batched(x[:4])


def test_rows_do_not_mix():
    """A change to one network's input or weights changes its row only (no statistics across the batch)."""
    pool = _pool(seed=3)
    batched = pool.build_batch(_compositions(pool, 4, seed=3))
    x = torch.rand(4, 6, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    before = batched(x)
    x2 = x.clone()
    x2[2] = x2[2] * 5 + 1
    after = batched(x2)
    assert torch.equal(after[[0, 1, 3]], before[[0, 1, 3]]) and not torch.equal(after[2], before[2])
    params = [p.clone() for p in batched.parameters()]
    params[0][1] += 1.0
    moved = batched.with_parameters(params)(x)
    assert torch.equal(moved[[0, 2, 3]], before[[0, 2, 3]]) and not torch.equal(moved[1], before[1])


def test_value_and_grad_equals_autograd_on_each_single_network():
    pool = _pool(seed=4)
    compositions = _compositions(pool, 4, seed=4)
    batched = pool.build_batch(compositions)
    x = torch.rand(4, 6, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    y = torch.randint(0, 3, (4, 6), generator=torch.Generator().manual_seed(4))
    params = batched.parameters()
    losses, grads = batched.value_and_grad(params, x, y, batched_loss(F.cross_entropy))
    assert all(not p.requires_grad for p in params)  # the stacked tensors stay free of autograd history
    for row, indices in enumerate(compositions):
        single = pool.build(indices)
        loss = F.cross_entropy(single(x[row]), y[row])
        expected = torch.autograd.grad(loss, list(single.parameters()))
        torch.testing.assert_close(losses[row], loss.detach(), rtol=ROW_RTOL, atol=ROW_ATOL)
        _close([g[row] for g in grads], expected, rtol=ROW_RTOL, atol=ROW_ATOL)


def test_batched_sgd_fine_tuning_equals_the_single_networks():
    pool = _pool(seed=6)
    compositions = _compositions(pool, 3, seed=6)
    task = next(_sampler().train_stream(6))
    x, y = task.support(3)
    batched = pool.build_batch(compositions)
    ok = finetune_sgd_batch(
        batched, x.expand(3, *x.shape), y.expand(3, *y.shape), batched_loss(F.cross_entropy), steps=3, lr=LR
    )
    assert ok.all()
    for row, indices in enumerate(compositions):
        single = pool.build(indices)
        assert finetune_sgd(single, x, y, F.cross_entropy, steps=3, lr=LR)
        _close([p[row] for p in batched.parameters()], list(single.parameters()))


def test_write_back_batch_equals_sequential_write_backs_in_order():
    pools = [_pool(seed=7), _pool(seed=7)]
    compositions = _compositions(pools[0], 5, seed=7)
    compositions[4] = compositions[1]  # two networks write the same layers: the later one must come last
    batched = pools[0].build_batch(compositions)
    generator = torch.Generator().manual_seed(8)
    for p in batched.parameters():
        p.add_(torch.randn(p.shape, generator=generator))  # as if trained
    keep = [True, True, False, True, True]
    pools[0].write_back_batch(compositions, batched, 0.3, keep)
    for row, indices in enumerate(compositions):
        if keep[row]:
            pools[1].write_back(indices, batched.network(row), rate=0.3)
    for a, b in zip(pools[0].parameters(), pools[1].parameters()):
        assert torch.equal(a, b)
    untouched = _pool(seed=7)
    assert not torch.equal(pools[0].weights[Role.HIDDEN], untouched.weights[Role.HIDDEN])
    with pytest.raises(ValueError, match="one keep flag"):
        pools[0].write_back_batch(compositions, batched, 0.3, keep[:4])
    with pytest.raises(ValueError, match="one depth"):
        pools[0].build_batch([compositions[0], compositions[0][:3] + compositions[0][4:]])


def test_build_batch_is_a_differentiable_gather_while_the_pool_requires_gradients():
    pool = _pool(seed=9)
    compositions = _compositions(pool, 3, seed=9)
    compositions[2] = compositions[0]
    for tensor in pool.parameters():
        tensor.requires_grad_(True)
    try:
        batched = pool.build_batch(compositions)
        total = sum(p.sum() for p in batched.parameters())
        total.backward()
        head_weights = pool.weights[Role.OUTPUT]
        local = pool.locate(compositions[0][-1])[1]
        uses = sum(1 for c in compositions if pool.locate(c[-1])[1] == local)
        assert torch.equal(head_weights.grad[local], torch.full_like(head_weights.grad[local], float(uses)))
    finally:
        for tensor in pool.parameters():
            tensor.requires_grad_(False)
            tensor.grad = None


# -- the protocol update on the conv pool ---------------------------------------------------


def _reference_gradients(pool: ConvLayerPool, ends, *, lr: float, steps: list[int]):
    """The gradient of the mean meta-loss for every pool tensor, with torch.func transforms and plain conv ops."""
    roles = list(pool.weights)
    start = {f"w.{r.value}": pool.weights[r].clone() for r in roles} | {
        f"b.{r.value}": pool.biases[r].clone() for r in roles
    }
    norm = pool.config.norm == "task"

    def forward(flat, x):
        weights, biases = flat[0::2], flat[1::2]
        pools, _ = pooling_plan(pool.input_shape[1:], len(weights), pool.config.min_spatial)
        for i in range(len(weights) - 1):
            x = F.conv2d(x, weights[i], biases[i], padding=1)
            if norm:
                x = F.group_norm(x, 1, eps=1e-5)
            x = F.relu(x)
            if pools[i]:
                x = F.max_pool2d(x, 2)
        return F.linear(x.mean(dim=(2, 3)), weights[-1], biases[-1])

    def meta_loss(tensors):
        total = 0.0
        for end in ends:
            located = [pool.locate(i) for i in end.indices]
            flat = [t for r, k in located for t in (tensors[f"w.{r.value}"][k], tensors[f"b.{r.value}"][k])]
            x_s, y_s = end.task.support(end.shots)

            def support_loss(params):  # called within this iteration only
                return F.cross_entropy(forward(params, x_s), y_s)  # noqa: B023

            collected = []
            for step in range(1, max(steps) + 1):
                grads = torch.func.grad(support_loss)(flat)
                flat = [p - lr * g for p, g in zip(flat, grads)]
                if step in steps:
                    collected.append(F.cross_entropy(forward(flat, end.task.x_query), end.task.y_query))
            total = total + torch.stack(collected).mean()
        return total / len(ends)

    grads = torch.func.grad(meta_loss)(start)
    return [grads[f"w.{r.value}"] for r in roles] + [grads[f"b.{r.value}"] for r in roles]


def _config(**settings) -> EnvConfig:
    return EnvConfig(pool_update="protocol", finetune_steps=3, finetune_sgd_lr=LR, shots=[1, 3], **settings)


@pytest.mark.parametrize("batched", [True, False])
@pytest.mark.parametrize("steps", [[1], [1, 3]])
def test_the_conv_meta_gradient_equals_a_torch_func_reference(batched, steps):
    pool = _pool(seed=11)
    ends = _ends(pool, 5, seed=11)  # 5 networks over 2/3/2 layers, K of 1 and 3: shared layers, ragged supports
    assert len({end.shots for end in ends}) == 2
    update = ProtocolPoolUpdate(pool, _config(meta_steps=steps), F.cross_entropy)
    losses, gradients = update.gradients(ends, [True] * len(ends), batched=batched)
    assert all(math.isfinite(value) for value in losses)
    expected = _reference_gradients(pool, ends, lr=LR, steps=steps)
    _close(gradients, expected)
    assert any(bool(g.abs().sum() > 0) for g in gradients[:3])


def test_batched_conv_update_equals_one_network_at_a_time_after_several_updates():
    pools = [_pool(seed=12), _pool(seed=12)]
    updates = [ProtocolPoolUpdate(pool, _config(meta_steps=[1, 3]), F.cross_entropy) for pool in pools]
    for round_ in range(3):
        ends = _ends(pools[0], 6, seed=20 + round_)
        results = [
            update.apply(ends, [True] * len(ends), batched=batched) for update, batched in zip(updates, (True, False))
        ]
        _close([torch.tensor(results[0])], [torch.tensor(results[1])])
    _close(pools[0].parameters(), pools[1].parameters())
    assert not torch.equal(pools[0].weights[Role.HIDDEN], _pool(seed=12).weights[Role.HIDDEN])


def test_conv_episode_ends_batched_equal_per_network_under_both_rules():
    """The core's end of episodes on the conv pool: the stacked path measures what the per-network path measures."""
    config = EnvConfig(depth=4, inner_steps=3, inner_batch=12, finetune_steps=2, finetune_sgd_lr=LR, shots=[1, 3])
    for rule in ("thesis", "protocol"):
        pools = [_pool(seed=13), _pool(seed=13)]
        ends = _ends(pools[0], 5, seed=13)
        settings = config.model_copy(update={"pool_update": rule, "meta_steps": [1]})
        outcomes = []
        for pool, batched in zip(pools, (True, False)):
            update = ProtocolPoolUpdate(pool, settings, F.cross_entropy) if rule == "protocol" else None
            outcomes.append(
                end_episodes(
                    pool,
                    ends,
                    loss_fn=F.cross_entropy,
                    config=settings,
                    required=frozenset({"composed", "finetuned"}),
                    write_back_rate=0.5,
                    batched=batched,
                    pool_update=update,
                )
            )
        for a, b in zip(*outcomes):
            assert not a.fault and not b.fault and set(a.losses) == set(b.losses)
            for name in a.losses:
                assert math.isclose(a.losses[name], b.losses[name], rel_tol=RTOL, abs_tol=ATOL), (rule, name)
        # Adam (the thesis' inner training, the protocol's pool step) moves each number at most lr per step, so
        # rounding differences before it can grow to that much: 2 * lr * steps bounds the pools' difference.
        reach = 2 * 0.5 * 0.005 * 3 if rule == "thesis" else 2 * settings.pool_adam_lr
        for a, b in zip(pools[0].parameters(), pools[1].parameters()):
            assert float((a - b).abs().max()) <= reach
        assert not torch.equal(pools[0].weights[Role.INPUT], _pool(seed=13).weights[Role.INPUT])


@pytest.mark.slow
def test_a_tiny_digits_run_trains_the_conv_pool_by_the_protocol_update(tmp_path):
    """End to end: env.pool_update = "protocol" is accepted with the conv pool, steps it, and checkpoints its Adam
    state."""
    from reml_core.config import resolve_config
    from reml_core.pipeline import run_experiment
    from reml_core.registry import PluginRegistry

    registry = PluginRegistry.discover(disabled=())
    config = resolve_config(
        registry,
        {
            "plugin": "digits",
            "preset": "smoke",
            "env": {"pool_update": "protocol", "meta_steps": [1]},
            "pool": {"input_layers": 2, "hidden_layers": 3, "output_layers": 2, "channels": 4},
            "train": {
                "env_steps": 128,
                "checkpoint_every": 128,
                "validation_tasks": 2,
                "calibration_episodes": 4,
                "progress": False,
                "n_envs": 4,
            },  # 32 steps per env: several episodes end, each step of them one update of the pool
            "eval": {"test_tasks": 2, "steps": [0, 1], "curve_steps": 0},
            "policy": {"n_steps": 64, "batch_size": 32},
        },
        baselines=[],
    )
    results = run_experiment(config, tmp_path).to_json()
    assert results["config"]["env"]["pool_update"] == "protocol"
    for k in ("1", "5"):
        assert results["methods"]["reml"][k]["1"]["nan_tasks"] == 0
    states = list(tmp_path.rglob("pool_update.safetensors"))
    assert states, "the protocol update's optimiser state is checkpointed"
    from safetensors.torch import load_file

    assert int(load_file(str(tmp_path / "checkpoints" / "final" / "pool_update.safetensors"))["updates"]) > 0
