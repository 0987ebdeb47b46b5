"""The conv layer pool: roles, building, write-back, persistence, diagnostics, limits and real learning."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from reml_core.env import check_pool_fits
from reml_core.interfaces import BuildContext, LayerPool, Role, TaskContext
from reml_core.specs import LayerPoolSpec
from reml_plugins.conv.pool import (
    ConvComposedNetwork,
    ConvLayerPool,
    ConvPoolConfig,
    build_conv_pool,
    max_pool_2x2,
    pooling_plan,
)

pytestmark = (
    pytest.mark.numerics
)  # compares floats exactly or to rounding: also run under other CPU dispatches (make test-dispatch)

DIGITS = (1, 8, 8)
OMNIGLOT = (1, 28, 28)


class FakeSampler:
    """Just what the pool reads from an image task family."""

    def __init__(self, input_shape=DIGITS, output_size=3) -> None:
        self.input_shape = input_shape
        self.output_size = output_size
        self.input_size = int(torch.tensor(input_shape).prod())


def make_pool(shape=DIGITS, ways=3, seed=0, **config) -> ConvLayerPool:
    settings = {"input_layers": 2, "hidden_layers": 5, "output_layers": 2, "channels": 8, **config}
    return build_conv_pool(ConvPoolConfig(**settings), TaskContext(seed=seed, task_sampler=FakeSampler(shape, ways)))


def indices_for(pool: ConvLayerPool, depth: int) -> list[int]:
    """Input 0, the first depth-2 hidden layers, the first head."""
    hidden = [pool.count(Role.INPUT) + i for i in range(depth - 2)]
    return [0, *hidden, pool.size - pool.count(Role.OUTPUT)]


@pytest.fixture
def pool() -> ConvLayerPool:
    return make_pool()


def test_roles_size_and_protocol(pool):
    assert pool.size == 9
    assert pool.roles == [Role.INPUT] * 2 + [Role.HIDDEN] * 5 + [Role.OUTPUT] * 2
    assert (
        pool.locate(0) == (Role.INPUT, 0) and pool.locate(4) == (Role.HIDDEN, 2) and pool.locate(8) == (Role.OUTPUT, 1)
    )
    with pytest.raises(IndexError):
        pool.locate(9)
    assert isinstance(pool, LayerPool)
    assert "conv" in pool.describe() and "\n" not in pool.describe()


def test_plugin_record_and_smoke_preset():
    import reml_plugins.conv as plugin

    (spec,) = list(plugin.reml_layer_pools())
    assert isinstance(spec, LayerPoolSpec) and spec.name == "conv"
    config = spec.config_model(**spec.presets["smoke"])
    smoke = spec.factory(config, TaskContext(seed=0, preset="smoke", task_sampler=FakeSampler()))
    assert smoke.size == 4 + 6 + 4 and smoke.config.channels == 16
    default = ConvPoolConfig()
    assert (default.input_layers, default.hidden_layers, default.output_layers, default.channels) == (8, 16, 8, 32)
    assert default.norm == "task" and default.min_spatial == 2


def test_refuses_a_sampler_without_an_image_shape():
    with pytest.raises(ValueError, match="input_shape"):
        build_conv_pool(ConvPoolConfig(), BuildContext(seed=0))

    class Flat:
        input_size, output_size = 1, 1

    with pytest.raises(ValueError, match="input_shape"):
        build_conv_pool(ConvPoolConfig(), TaskContext(seed=0, task_sampler=Flat()))
    with pytest.raises(ValueError, match="three positive sizes"):
        build_conv_pool(ConvPoolConfig(), TaskContext(seed=0, task_sampler=FakeSampler((8, 8), 3)))
    with pytest.raises(ValueError, match="output_size"):
        build_conv_pool(ConvPoolConfig(), TaskContext(seed=0, task_sampler=FakeSampler(DIGITS, 0)))


@pytest.mark.parametrize("shape", [DIGITS, OMNIGLOT], ids=["digits", "omniglot"])
@pytest.mark.parametrize("depth", [2, 3, 4, 5, 6])
def test_built_networks_give_logits_for_any_depth(shape, depth):
    pool = make_pool(shape, ways=5)
    network = pool.build(indices_for(pool, depth))
    fresh = pool.fresh_network(depth, torch.Generator().manual_seed(0))
    for n in (1, 7):
        x = torch.randn(n, *shape)
        for net in (network, fresh):
            logits = net(x)
            assert logits.shape == (n, 5) and torch.isfinite(logits).all()
    assert network(x.flatten(1)).shape == (7, 5)  # flat images are reshaped
    assert [p.shape for p in fresh.parameters()] == [p.shape for p in network.parameters()]


def _ties(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """ReLU'd activations rounded to a coarse grid: many windows hold equal maxima, zeros and positive ones."""
    generator = torch.Generator().manual_seed(seed)
    return torch.relu(torch.randn(shape, generator=generator)).round(decimals=1)


@pytest.mark.parametrize("shape", [(7, 48, 8, 8), (5, 32, 4, 4), (3, 16, 7, 7), (2, 8, 28, 28), (4, 6, 5, 9)])
def test_the_pool_s_max_pool_is_max_pool2d_bit_for_bit(shape):
    """Values, which of equal maxima gets the gradient, and the gradient's gradient (the protocol
    update's second order) are F.max_pool2d's; without autograd too."""
    x = _ties(shape, seed=sum(shape))
    weight = torch.randn(shape[1], 1, 3, 3, generator=torch.Generator().manual_seed(1))
    results = []
    for pool in (max_pool_2x2, lambda h: F.max_pool2d(h, 2)):
        w = weight.clone().requires_grad_(True)
        pooled = pool(torch.relu(F.conv2d(x, w, padding=1, groups=shape[1]) + x))
        (grad,) = torch.autograd.grad(pooled.square().sum(), w, create_graph=True)
        (second,) = torch.autograd.grad(grad.square().sum(), w)
        with torch.no_grad():
            plain = pool(x)
        results.append((pooled.detach(), grad.detach(), second, plain))
    for ours, theirs in zip(*results):
        assert torch.equal(ours, theirs)
    # the input has windows of equal maxima, zero and positive, and each window's gradient went to one of them
    maxima = results[0][3]
    window_max = maxima.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    cropped = x[:, :, : window_max.shape[2], : window_max.shape[3]]
    ties = (cropped == window_max).float().unflatten(3, (-1, 2)).unflatten(2, (-1, 2)).sum((3, 5))
    assert (ties[maxima == 0] > 1).any() and (ties[maxima > 0] > 1).any()
    # inside torch.func's transforms (MAML's torch-func backend) it is F.max_pool2d too
    stacked = torch.stack([x, x.flip(0)])
    assert torch.equal(torch.func.vmap(max_pool_2x2)(stacked), torch.func.vmap(lambda h: F.max_pool2d(h, 2))(stacked))
    leaf = x.clone().requires_grad_(True)
    max_pool_2x2(leaf).backward(torch.ones(maxima.shape))
    assert torch.equal(leaf.grad.sum(), torch.tensor(float(maxima.numel()))) and set(leaf.grad.unique().tolist()) == {
        0.0,
        1.0,
    }


def test_pooling_rule_depends_on_the_slot_only():
    assert pooling_plan((8, 8), 6, 2) == ([True, True, False, False, False], [(4, 4), (2, 2), (2, 2), (2, 2), (2, 2)])
    assert pooling_plan((28, 28), 5, 2)[1] == [(14, 14), (7, 7), (3, 3), (3, 3)]
    assert pooling_plan((28, 28), 5, 1)[1] == [(14, 14), (7, 7), (3, 3), (1, 1)]
    assert pooling_plan((3, 3), 3, 2)[0] == [False, False]  # never below min_spatial, even at the input
    pool = make_pool(OMNIGLOT)
    assert [pool.output_spatial(h) for h in range(5)] == [(14, 14), (7, 7), (3, 3), (3, 3), (3, 3)]
    # A hidden layer pools or not by where it sits: the same layer in slot 1 and slot 3.
    h = pool.count(Role.INPUT)
    assert pool.build([0, h, h + 1, h + 2, pool.size - 1]).pools == (True, True, True, False)
    assert pool.build([0, h + 1, h + 2, h, pool.size - 1]).pools == (True, True, True, False)
    with pytest.raises(ValueError, match="at least 2 layers"):
        pool.fresh_network(1, torch.Generator())


def test_build_checks_the_roles_of_its_slots(pool):
    with pytest.raises(ValueError, match="slot 0 .* needs a input layer"):
        pool.build([2, 3, 7])
    with pytest.raises(ValueError, match="slot 2 .* needs a output layer"):
        pool.build([0, 2, 3])
    with pytest.raises(ValueError, match="input layer and a head"):
        pool.build([0])


def test_built_networks_are_copies(pool):
    indices = [1, 3, 5, 8]
    original = pool.state_dict()
    network = pool.build(indices)
    optimizer = torch.optim.Adam(network.parameters(), lr=0.1)
    x, y = torch.randn(6, *DIGITS), torch.tensor([0, 1, 2, 0, 1, 2])
    for _ in range(3):
        optimizer.zero_grad()
        F.cross_entropy(network(x), y).backward()
        optimizer.step()
    assert not torch.equal(network.weights[0].detach(), original["input.weight"][1])
    assert all(torch.equal(original[k], v) for k, v in pool.state_dict().items())


def test_write_back_rate_one_replaces_and_half_blends(pool):
    indices = [1, 3, 5, 8]  # input 1, hidden 1 and 3, head 1
    original = pool.state_dict()
    network = pool.build(indices)
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.add_(torch.randn_like(parameter))
    trained = {name: p.detach().clone() for name, p in network.named_parameters()}
    pool.write_back(indices, network, rate=0.5)
    state = pool.state_dict()
    for slot, (key, local) in enumerate([("input", 1), ("hidden", 1), ("hidden", 3), ("output", 1)]):
        for kind in ("weight", "bias"):
            before, after = (
                original[f"{key}.{kind}"][local],
                trained[f"{'biases' if kind == 'bias' else 'weights'}.{slot}"],
            )
            assert torch.equal(state[f"{key}.{kind}"][local], torch.lerp(before, after, 0.5))
            torch.testing.assert_close(state[f"{key}.{kind}"][local], before + 0.5 * (after - before))
    untouched = [
        ("input.weight", 0),
        ("hidden.weight", 0),
        ("hidden.weight", 2),
        ("hidden.bias", 4),
        ("output.weight", 0),
    ]
    assert all(torch.equal(state[key][i], original[key][i]) for key, i in untouched)
    pool.write_back(indices, network, rate=1.0)
    state = pool.state_dict()
    assert torch.equal(state["input.weight"][1], trained["weights.0"])
    assert torch.equal(state["hidden.weight"][3], trained["weights.2"])
    assert torch.equal(state["output.bias"][1], trained["biases.3"])
    with pytest.raises(TypeError):
        pool.write_back(indices, pool.build([0, 2, 8]))


def test_write_back_of_a_repeated_layer_lets_the_later_slot_win(pool):
    indices = [0, 2, 2, 7]
    network = pool.build(indices)
    with torch.no_grad():
        network.weights[1].fill_(1.0)
        network.weights[2].fill_(2.0)
    pool.write_back(indices, network, rate=1.0)
    assert torch.equal(pool.weights[Role.HIDDEN][0], torch.full_like(pool.weights[Role.HIDDEN][0], 2.0))


def test_same_seed_same_pool_and_fresh_networks_follow_their_generator(pool):
    twin = make_pool(seed=0)
    other = make_pool(seed=1)
    assert all(torch.equal(a, b) for a, b in zip(pool.state_dict().values(), twin.state_dict().values()))
    assert not torch.equal(pool.state_dict()["hidden.weight"], other.state_dict()["hidden.weight"])
    before = pool.state_dict()
    a = pool.fresh_network(4, torch.Generator().manual_seed(5))
    b = other.fresh_network(4, torch.Generator().manual_seed(5))  # another pool, same generator: same network
    c = pool.fresh_network(4, torch.Generator().manual_seed(6))
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not torch.equal(a.weights[1], c.weights[1])
    assert all(torch.equal(before[k], v) for k, v in pool.state_dict().items())  # the pool is not touched
    assert all(float(bias.detach().abs().sum()) == 0 for bias in a.biases)  # zero biases
    bound = (6.0 / (8 * 9)) ** 0.5  # Kaiming-uniform of a hidden conv (fan_in = C * 3 * 3)
    largest = float(a.weights[1].detach().abs().max())
    assert 0.8 * bound < largest <= bound


def test_state_round_trip_and_rejects_damaged_state(pool):
    other = make_pool(seed=9)
    state = pool.state_dict()
    assert all(t.is_contiguous() and t.dtype == torch.float32 for t in state.values())
    assert set(state) == {"input.weight", "input.bias", "hidden.weight", "hidden.bias", "output.weight", "output.bias"}
    other.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(pool.state_dict().values(), other.state_dict().values()))
    damaged = pool.state_dict()
    damaged["hidden.weight"] = damaged["hidden.weight"][:, :4]
    with pytest.raises(ValueError, match=r"'hidden.weight' has shape \(5, 4, 8, 3, 3\), expected \(5, 8, 8, 3, 3\)"):
        other.load_state_dict(damaged)
    wider = make_pool(channels=16)
    with pytest.raises(ValueError, match="'input.weight' has shape"):
        wider.load_state_dict(pool.state_dict())
    poisoned = pool.state_dict()
    poisoned["output.bias"][0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        other.load_state_dict(poisoned)
    with pytest.raises(ValueError, match="keys"):
        other.load_state_dict({"input.weight": state["input.weight"]})


def test_state_dict_saves_with_safetensors(pool, tmp_path):
    safetensors = pytest.importorskip("safetensors.torch")
    safetensors.save_file(pool.state_dict(), tmp_path / "pool.safetensors")
    other = make_pool(seed=3)
    other.load_state_dict(safetensors.load_file(tmp_path / "pool.safetensors"))
    assert all(torch.equal(a, b) for a, b in zip(pool.state_dict().values(), other.state_dict().values()))


@pytest.mark.parametrize("norm", ["none", "task"])
def test_diagnostics_keys_ranges_and_dead_layers(norm):
    pool = make_pool(norm=norm, input_layers=4)
    probe = torch.rand(20, *DIGITS)
    stats = pool.diagnostics(probe)
    assert set(stats) == {
        "dead_input_units",
        "dead_hidden_units",
        "weight_norm_input",
        "weight_norm_hidden",
        "weight_norm_output",
    }
    assert all(isinstance(v, float) for v in stats.values())
    assert 0 <= stats["dead_input_units"] <= 1 and 0 <= stats["dead_hidden_units"] <= 1
    assert all(stats[f"weight_norm_{role}"] > 0 for role in ("input", "hidden", "output"))
    healthy = stats["dead_input_units"]
    with torch.no_grad():
        if norm == "none":  # a layer with very negative biases is fully dead
            pool.biases[Role.INPUT][0].fill_(-1e3)
            pool.biases[Role.HIDDEN][0].fill_(-1e3)
            dead_input, dead_hidden = 1 / 4, 1 / 5
        else:  # the norm removes a shared shift, so kill one channel below all the others
            pool.biases[Role.INPUT][:, 0] = -1e3
            pool.biases[Role.HIDDEN][0, 0] = -1e3
            dead_input, dead_hidden = 1 / 8, 1 / 40
    stats = pool.diagnostics(probe)
    assert stats["dead_input_units"] >= dead_input and stats["dead_input_units"] >= healthy
    assert stats["dead_hidden_units"] >= dead_hidden
    # flat probes work too
    assert pool.diagnostics(probe.flatten(1)) == stats


def test_config_limits_refuse_absurd_sizes():
    for bad in (
        {"channels": 0},
        {"channels": 10**6},
        {"hidden_layers": 10**6},
        {"input_layers": 0},
        {"min_spatial": 0},
        {"norm": "batch"},
        {"widht": 3},
    ):
        with pytest.raises(ValidationError):
            ConvPoolConfig(**bad)
    with pytest.raises(ValidationError, match="parameters"):
        ConvPoolConfig(hidden_layers=1000, channels=1024)
    with pytest.raises(ValueError, match="parameters"):  # too big only once the real channels and classes are known
        build_conv_pool(
            ConvPoolConfig(output_layers=1000, channels=1024, hidden_layers=1, input_layers=1),
            TaskContext(seed=0, task_sampler=FakeSampler(DIGITS, 10_000)),
        )


def test_check_pool_fits(pool):
    assert check_pool_fits(pool, 2) is None
    assert check_pool_fits(pool, 7) is None  # five hidden layers
    problem = check_pool_fits(pool, 8)
    assert problem is not None and "6 distinct hidden layer(s) but the pool has 5" in problem


def test_adam_with_cross_entropy_learns_a_tiny_three_way_problem():
    torch.manual_seed(0)
    pool = make_pool(seed=2)
    prototypes = torch.randn(3, *DIGITS)
    y = torch.arange(3).repeat(10)
    x = prototypes[y] + 0.3 * torch.randn(len(y), *DIGITS)
    network = pool.build(indices_for(pool, 4))
    assert isinstance(network, ConvComposedNetwork)
    optimizer = torch.optim.Adam(network.parameters(), lr=0.01)
    first = F.cross_entropy(network(x), y).item()
    for _ in range(30):
        optimizer.zero_grad()
        loss = F.cross_entropy(network(x), y)
        loss.backward()
        optimizer.step()
    final = F.cross_entropy(network(x), y).item()
    assert final < 0.5 * first
    assert (network(x).argmax(1) == y).float().mean() > 0.9


def test_core_inner_loop_trains_it_with_integer_targets():
    from reml_core.inner_loop import evaluate_loss, finetune_sgd, train_adam

    pool = make_pool(seed=4)
    x, y = torch.randn(12, *DIGITS), torch.arange(3).repeat(4)
    network = pool.build(indices_for(pool, 3))
    before = evaluate_loss(network, x, y, F.cross_entropy)
    assert train_adam(
        network, x, y, F.cross_entropy, steps=10, lr=0.01, batch_size=6, generator=torch.Generator().manual_seed(0)
    )
    assert finetune_sgd(network, x[:3], y[:3], F.cross_entropy, steps=2, lr=0.01)
    assert evaluate_loss(network, x, y, F.cross_entropy) < before
    pool.write_back(indices_for(pool, 3), network, rate=0.1)
    assert all(torch.isfinite(t).all() for t in pool.state_dict().values())


def test_plugin_registers(empty_registry):
    import reml_plugins.conv as plugin

    empty_registry.register(plugin, name="conv")
    assert empty_registry.names("layer_pool") == ["conv"]
    assert empty_registry.get("layer_pool", "conv").name == "conv"


@pytest.mark.parametrize("batched", [True, False])
def test_core_episode_end_trains_measures_and_writes_back_a_classifier(batched):
    """The core's stacked and per-network paths on a 3-way 2-shot image task (tests/test_conv_meta_gradient.py
    compares the two)."""
    from reml_core.batched import EpisodeEnd, MeasureRequest, end_episodes, measure_networks
    from reml_core.config import EnvConfig
    from reml_core.interfaces import BatchedLayerPool, Task

    pool = make_pool(seed=5)
    assert isinstance(pool, BatchedLayerPool)
    labels = torch.arange(3).repeat(4)
    task = Task(
        "t0",
        "train",
        (0.0,),
        torch.randn(12, *DIGITS),
        labels,
        torch.randn(12, *DIGITS),
        labels,
        torch.randn(6, *DIGITS),
        torch.arange(3).repeat(2),
        ways=3,
    )
    indices = tuple(indices_for(pool, 4))
    x, y = task.support(2)
    ((loss, scale),) = measure_networks(pool, [MeasureRequest(indices, x, y)], F.cross_entropy)
    assert loss > 0 and scale > 0
    before = pool.state_dict()
    config = EnvConfig(depth=4, inner_steps=3, inner_batch=6, finetune_steps=2, shots=[2])
    ends = [EpisodeEnd(task, indices, 2, 11), EpisodeEnd(task, indices, 2, 12)]
    outcomes = end_episodes(
        pool,
        ends,
        loss_fn=F.cross_entropy,
        config=config,
        required=frozenset({"composed", "finetuned", "trained"}),
        write_back_rate=0.5,
        batched=batched,
    )
    assert all(not o.fault and set(o.losses) == {"composed", "finetuned", "trained"} for o in outcomes)
    after = pool.state_dict()
    assert not torch.equal(after["input.weight"][0], before["input.weight"][0])
    assert torch.equal(after["input.weight"][1], before["input.weight"][1])
