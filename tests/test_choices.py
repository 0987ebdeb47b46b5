"""Hyperparameter choices in the MDP (issue 23): config, action layout and masks, the observation, what
chosen values drive (reward, batched and per-network ends, the protocol update), REML's own adaptation,
and that without ``env.choose`` nothing changes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from reml_core.batched import EpisodeEnd, end_episodes
from reml_core.choices import ChoiceRecord, report_section, settings_for, summarise
from reml_core.config import parse_assignment, parse_config_text, resolve_config
from reml_core.env import network_order, slot_roles
from reml_core.errors import ConfigError
from reml_core.interfaces import AdaptsItsOwnWay, OwnAdaptation, TaskContext
from reml_core.methods import ChoosingReMLMethod, ReMLMethod
from reml_core.pool_update import ProtocolPoolUpdate
from reml_core.settings import EnvConfig
from reml_plugins.dense.pool import DenseLayerPool, DensePoolConfig
from reml_plugins.sine.sampler import SineConfig, SineTaskSampler

LR = [0.003, 0.01, 0.1]
STEPS = [1, 10]
ALL_LOSSES = frozenset({"composed", "finetuned", "trained"})
ROUNDING = 11 * 100 * 2.0**-24  # as tests/test_batched_pool.py: (steps + 1) sums of 100 float32 terms
ADAM_REACH = 2 * 0.01 * 30


def _mse(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return torch.mean((prediction - target) ** 2)


def _resolve(registry, **user):
    user.setdefault("plugin", "sine")
    user.setdefault("policy", "toy-policy")
    user.setdefault("preset", "smoke")
    return resolve_config(registry, user)


def _errors(registry, choose) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        _resolve(registry, env={"choose": choose})
    return str(caught.value).splitlines()


# -- config ----------------------------------------------------------------------------------------


def test_the_documented_set_syntax_and_a_toml_table_give_the_same_choices(sine_registry):
    flag = parse_assignment("env.choose.finetune_sgd_lr=[0.003,0.01,0.03,0.1]")
    assert flag == {"env": {"choose": {"finetune_sgd_lr": [0.003, 0.01, 0.03, 0.1]}}}
    assert _resolve(sine_registry, **flag).core.env.choose == {"finetune_sgd_lr": [0.003, 0.01, 0.03, 0.1]}
    toml = parse_config_text(
        "[env.choose]\nfinetune_sgd_lr = [0.003, 0.01, 0.03, 0.1]\nfinetune_steps = [1, 10]\n", "toml"
    )
    choose = _resolve(sine_registry, **toml).core.env.choose
    assert choose == {"finetune_sgd_lr": [0.003, 0.01, 0.03, 0.1], "finetune_steps": [1, 10]}
    assert all(isinstance(steps, int) for steps in choose["finetune_steps"])
    # a renamed setting's former name is accepted here too
    assert _resolve(sine_registry, env={"choose": {"finetune_lr": [0.1]}}).core.env.choose == {"finetune_sgd_lr": [0.1]}


@pytest.mark.parametrize(
    ("choose", "expected"),
    [
        ({"finetune_sgd_lr": []}, "env.choose.finetune_sgd_lr: the list of candidate values is empty"),
        (
            {"finetune_sgd_lr": [0.01, 0]},
            "env.choose.finetune_sgd_lr: 0 is not a valid finetune_sgd_lr: Input should be greater than 0",
        ),
        ({"finetune_steps": [1, -1]}, "env.choose.finetune_steps: -1 is not a valid finetune_steps"),
        ({"finetune_steps": [1.5]}, "env.choose.finetune_steps: 1.5 is not a valid finetune_steps"),
        ({"inner_steps": [10**10]}, "env.choose.inner_steps: 10000000000 is not a valid inner_steps"),
        ({"inner_adam_lr": ["fast"]}, "env.choose.inner_adam_lr: 'fast' is not a number"),
        ({"finetune_sgd_lr": 0.1}, "env.choose.finetune_sgd_lr: expected a list of candidate values"),
        ({"finetune_sgd_lr": [0.1, 0.1]}, "env.choose.finetune_sgd_lr: candidate values must be distinct"),
        ({"stop": [0, 1]}, "env.choose.stop: a stop choice (ending the network before env.depth) is not implemented"),
        ({"finetune_lr": [0.1], "finetune_sgd_lr": [0.2]}, "given twice"),
    ],
    ids=[
        "empty",
        "lr-zero",
        "steps-negative",
        "steps-fraction",
        "steps-too-many",
        "not-a-number",
        "scalar",
        "duplicate",
        "stop",
        "two-names",
    ],
)
def test_a_bad_choice_is_one_clear_config_error_naming_the_key(sine_registry, choose, expected):
    lines = _errors(sine_registry, choose)
    assert len(lines) == 1 and lines[0].startswith("env.choose: ") and expected in lines[0], lines


def test_an_unknown_name_is_refused_when_the_run_is_built_listing_what_can_be_chosen(make_components):
    components = make_components(env={"choose": {"dropout": [0.1, 0.2]}})
    with pytest.raises(ConfigError) as caught:
        components.make_env()
    assert str(caught.value) == (
        "env.choose.dropout: no such hyperparameter to choose; choosable in this run: "
        "finetune_sgd_lr, finetune_steps, inner_adam_lr, inner_steps, activation"  # the last, the dense pool's
    )


def test_the_cli_refuses_an_unknown_choice_in_one_line_before_writing_anything(tmp_path):
    from helpers.runs import TINY, cli

    out = tmp_path / "run"
    result = cli("reml-run", *TINY, "--out", str(out), "--set", "env.choose.dropout=[0.1]")
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .endswith(
            "env.choose.dropout: no such hyperparameter to choose; choosable in "
            "this run: finetune_sgd_lr, finetune_steps, inner_adam_lr, inner_steps, activation"
        )
    )
    assert "Traceback" not in result.stderr and not (out / "results.json").exists()


# -- the MDP -----------------------------------------------------------------------------------------


def _choosing_env(make_components, mode="train", **env):
    env = {"depth": 4, "choose": {"finetune_sgd_lr": LR, "finetune_steps": STEPS}, **env}
    return make_components(env=env).make_env(mode=mode)


def _layer_actions(env, rng):
    for _ in range(env.depth):
        yield int(rng.choice(np.flatnonzero(env.action_masks())))


def test_without_choose_the_spaces_episode_and_ends_are_as_before(make_components):
    env = make_components(env={"depth": 4}).make_env()
    size = env.encoder.observation_size + 4 + env.pool.size + 4 + 4
    assert env.observation_space.shape == (size,) and env.action_space.n == env.pool.size
    assert env.choice_steps == [] and env.episode_steps == 4 and EnvConfig().choose == {}
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    for action in _layer_actions(env, rng):
        assert env.action_masks().shape == (env.pool.size,)
        end = env.episode_end() if len(env._chosen) == env.depth else None
        _, _, terminated, _, info = env.step(action)
    assert terminated and "choices" not in info and end is None


def test_choice_steps_follow_the_layer_slots_with_their_own_action_indices_and_masks(make_components):
    env = _choosing_env(make_components)
    pool = env.pool.size
    assert env.action_space.n == pool + len(LR) + len(STEPS)
    base = env.encoder.observation_size + 4 + pool + 4 + 4
    assert env.observation_space.shape == (base + 3 * 2,)
    kind = env.encoder.observation_size + 4 + pool + 4  # the step-kind one-hot: 4 slots, then 2 choices
    observation, _ = env.reset(seed=1)
    rng = np.random.default_rng(1)
    for slot, action in enumerate(_layer_actions(env, rng)):
        mask = env.action_masks()
        assert not mask[pool:].any() and mask[:pool].any()
        assert observation[kind + slot] == 1.0 and observation[kind : kind + 6].sum() == 1.0
        observation, reward, terminated, _, info = env.step(action)
        assert info["valid"] and not terminated and reward == 0.0
    # the first choice: finetune_sgd_lr, options pool..pool+2
    mask = env.action_masks()
    assert np.flatnonzero(mask).tolist() == [pool, pool + 1, pool + 2]
    assert observation[kind + 4] == 1.0 and observation[kind : kind + 6].sum() == 1.0
    assert info["loss"] is not None  # the complete network was measured before the choices
    # a layer index, or the other choice's option, is invalid here: penalised, nothing changes
    for wrong in (0, pool + 3):
        observation, reward, terminated, _, info = env.step(wrong)
        assert not info["valid"] and reward == env.reward_function.invalid_action_penalty and not terminated
    observation, _, terminated, _, info = env.step(pool + 2)  # lr 0.1
    assert info["valid"] and not terminated
    values = kind + 6
    assert observation[values : values + 4].tolist() == [1.0, 1.0, 0.0, 0.0]  # 2 / (3 - 1), chosen; not yet
    assert np.flatnonzero(env.action_masks()).tolist() == [pool + 3, pool + 4]
    assert not env.is_valid(pool + 2) and not env.is_valid(pool)
    observation, reward, terminated, _, info = env.step(pool + 3)  # 1 step
    assert terminated and info["choices"] == {"finetune_sgd_lr": 0.1, "finetune_steps": 1}
    assert observation[values : values + 4].tolist() == [1.0, 1.0, 0.0, 1.0]
    assert math.isfinite(reward) and set(info["losses"]) >= {"finetuned"}


def test_the_chosen_values_drive_the_episodes_reward(make_components):
    # calibrate mode: no write-back, so the same network can be ended again under fixed settings
    env = _choosing_env(make_components, mode="calibrate")
    env.reset(seed=2)
    for action in _layer_actions(env, np.random.default_rng(2)):
        env.step(action)
    for action in (env.pool.size + 0, env.pool.size + 4):
        _, _, terminated, _, info = env.step(action)
    assert terminated and info["choices"] == {"finetune_sgd_lr": 0.003, "finetune_steps": 10}
    end = env.episode_end()
    assert end.choices == (("finetune_sgd_lr", 0.003), ("finetune_steps", 10))
    fixed = env.config.model_copy(update={"finetune_sgd_lr": 0.003, "finetune_steps": 10, "choose": {}})
    plain = EpisodeEnd(end.task, end.indices, end.shots, end.minibatch_seed)
    kwargs = dict(
        loss_fn=env.task_sampler.loss,
        required=env.reward_function.required_losses | {"finetuned"},
        write_back_rate=None,
    )
    (expected,) = end_episodes(env.pool, [plain], config=fixed, **kwargs)
    (chosen,) = end_episodes(env.pool, [end], config=env.config, **kwargs)
    (default,) = end_episodes(env.pool, [plain], config=env.config, **kwargs)
    assert chosen.losses == expected.losses
    assert chosen.losses["finetuned"] != default.losses["finetuned"]  # the chosen rate, not the fixed one


def test_settings_for_sets_only_built_in_values_and_the_protocol_steps():
    config = EnvConfig(meta_steps=[1, 10])
    chosen = settings_for(config, (("finetune_steps", 3), ("inner_adam_lr", 0.02), ("activation", "relu")))
    assert (chosen.finetune_steps, chosen.inner_adam_lr, chosen.meta_steps) == (3, 0.02, [3])
    assert settings_for(config, ()) is config


# -- batched and per-network ends ----------------------------------------------------------------------


def _pool(width=16) -> DenseLayerPool:
    sampler = SineTaskSampler(SineConfig())
    config = DensePoolConfig(input_layers=3, hidden_layers=6, output_layers=3, width=width)
    return DenseLayerPool(config, TaskContext(seed=0, task_sampler=sampler))


def _ends(pool, count, seed, choose):
    rng = np.random.default_rng(seed)
    tasks = SineTaskSampler(SineConfig()).train_stream(seed)
    ends = []
    for _ in range(count):
        chosen: list[int] = []
        for role in slot_roles(5):
            chosen.append(int(rng.choice([i for i, r in enumerate(pool.roles) if r == role and i not in chosen])))
        values = tuple((name, values[int(rng.integers(len(values)))]) for name, values in choose.items())
        ends.append(
            EpisodeEnd(
                next(tasks), tuple(network_order(chosen)), int(rng.choice([5, 10])), int(rng.integers(2**62)), values
            )
        )
    return ends


CHOOSE = {
    "finetune_sgd_lr": [0.003, 0.03, 0.1],
    "finetune_steps": [1, 5],
    "inner_adam_lr": [0.002, 0.01],
    "inner_steps": [5, 30],
}


@pytest.mark.parametrize("seed", [0, 1])
def test_batched_ends_with_chosen_values_equal_the_per_network_path(seed):
    reference_pool, batched_pool = _pool(), _pool()
    ends = _ends(reference_pool, 24, seed, CHOOSE)
    assert len({end.choices for end in ends}) > 4
    kwargs = dict(loss_fn=_mse, config=EnvConfig(), required=ALL_LOSSES, write_back_rate=0.3)
    reference = end_episodes(reference_pool, ends, batched=False, **kwargs)
    batched = end_episodes(batched_pool, ends, batched=True, min_batch=1, **kwargs)
    for ours, theirs in zip(batched, reference):
        assert ours.fault == theirs.fault
        for name, value in theirs.losses.items():
            bound = ADAM_REACH if name == "trained" else ROUNDING
            assert abs(ours.losses[name] - value) <= bound * max(1.0, abs(value)), (name, ours.losses[name], value)
    state = batched_pool.state_dict()
    assert (
        max(float((state[key] - value).abs().max()) for key, value in reference_pool.state_dict().items())
        <= 0.3 * ADAM_REACH
    )


def test_an_end_with_chosen_values_is_the_end_under_those_fixed_settings():
    pool_a, pool_b = _pool(), _pool()
    (end,) = _ends(pool_a, 1, 5, CHOOSE)
    values = dict(end.choices)
    fixed = EnvConfig(**values)
    plain = EpisodeEnd(end.task, end.indices, end.shots, end.minibatch_seed)
    kwargs = dict(loss_fn=_mse, required=ALL_LOSSES, write_back_rate=0.3, batched=False)
    (chosen,) = end_episodes(pool_a, [end], config=EnvConfig(), **kwargs)
    (expected,) = end_episodes(pool_b, [plain], config=fixed, **kwargs)
    assert chosen.losses == expected.losses
    assert all(torch.equal(value, pool_b.state_dict()[key]) for key, value in pool_a.state_dict().items())


def test_the_protocol_update_adapts_at_each_networks_chosen_rate_and_steps_in_both_paths():
    pool = _pool()
    choose = {"finetune_sgd_lr": [0.003, 0.1], "finetune_steps": [1, 3]}
    ends = _ends(pool, 8, 3, choose)
    update = ProtocolPoolUpdate(pool, EnvConfig(pool_update="protocol", meta_steps=[1, 10]), _mse)
    keep = [True] * len(ends)
    batched_losses, batched_grads = update.gradients(ends, keep, batched=True)
    single_losses, single_grads = update.gradients(ends, keep, batched=False)
    np.testing.assert_allclose(batched_losses, single_losses, rtol=1e-4, atol=1e-6)
    for ours, theirs in zip(batched_grads, single_grads):
        torch.testing.assert_close(ours, theirs, rtol=1e-3, atol=1e-5)
    # each end's meta-loss is the one under its values as fixed settings
    for end, loss in zip(ends, single_losses):
        values = dict(end.choices)
        fixed = ProtocolPoolUpdate(
            pool,
            EnvConfig(
                pool_update="protocol", finetune_sgd_lr=values["finetune_sgd_lr"], meta_steps=[values["finetune_steps"]]
            ),
            _mse,
        )
        plain = EpisodeEnd(end.task, end.indices, end.shots, end.minibatch_seed)
        (expected,), _ = fixed.gradients([plain], [True], batched=False)
        assert loss == pytest.approx(expected, rel=1e-6)


def test_a_pool_that_does_not_follow_the_choices_is_trained_at_the_fixed_rate_and_steps():
    pool = _pool()
    ends = _ends(pool, 6, 3, {"finetune_sgd_lr": [0.003, 0.1], "finetune_steps": [1, 3]})
    plain = [EpisodeEnd(end.task, end.indices, end.shots, end.minibatch_seed) for end in ends]
    config = EnvConfig(pool_update="protocol", meta_steps=[1, 10], pool_follows_choices=False)
    keep = [True] * len(ends)
    chosen_losses, chosen_grads = ProtocolPoolUpdate(pool, config, _mse).gradients(ends, keep, batched=False)
    fixed_losses, fixed_grads = ProtocolPoolUpdate(pool, config, _mse).gradients(plain, keep, batched=False)
    assert chosen_losses == fixed_losses
    for ours, theirs in zip(chosen_grads, fixed_grads):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    following = ProtocolPoolUpdate(pool, config.model_copy(update={"pool_follows_choices": True}), _mse)
    assert following.gradients(ends, keep, batched=False)[0] != fixed_losses


# -- REML as a method ------------------------------------------------------------------------------------


class LastValid:
    """A deterministic policy: the last valid action at every step."""

    def act(self, observation, state, episode_start, action_mask):
        return int(np.flatnonzero(action_mask)[-1]), state


def test_reml_hands_out_the_chosen_rate_and_steps_with_the_same_composition(make_components):
    components = make_components(env={"depth": 4, "choose": {"finetune_sgd_lr": LR, "finetune_steps": STEPS}})
    env = components.make_env(mode="evaluate")
    method = ReMLMethod(LastValid(), env)
    assert isinstance(method, ChoosingReMLMethod) and isinstance(method, AdaptsItsOwnWay)
    task = components.task_sampler.test_tasks(1)[0]
    network, adaptation = method.adapted_network_for(task, 5)
    assert adaptation == OwnAdaptation(lr=0.1, steps=10)
    fixed = method.network_for(task, 5)
    for ours, theirs in zip(network.parameters(), fixed.parameters()):
        assert torch.equal(ours, theirs)
    summary = method.choices_summary(components.task_sampler.descriptor_names)
    assert summary["tasks"] == [
        {
            "task_id": task.task_id,
            "shots": 5,
            "descriptor": list(task.descriptor),
            "values": {"finetune_sgd_lr": 0.1, "finetune_steps": 10},
        }
    ]
    entry = summary["summary"]["5"]["finetune_sgd_lr"]["0.1"]
    assert entry["count"] == 1 and entry["mean_descriptor"]["amplitude"] == pytest.approx(task.descriptor[0])


def test_reml_without_adaptation_choices_does_not_adapt_its_own_way(make_components):
    plain = ReMLMethod(LastValid(), make_components(env={"depth": 4}).make_env(mode="evaluate"))
    inner = ReMLMethod(
        LastValid(), make_components(env={"depth": 4, "choose": {"inner_steps": [5, 30]}}).make_env(mode="evaluate")
    )
    for method in (plain, inner):
        assert type(method) is ReMLMethod and not isinstance(method, AdaptsItsOwnWay)
    assert plain.choices_summary() is None


def test_the_summary_and_the_report_section_say_which_values_went_to_which_tasks():
    records = [
        ChoiceRecord(f"t{i}", 5, (float(i), 0.0), {"finetune_sgd_lr": lr}) for i, lr in enumerate([0.01, 0.1, 0.1])
    ]
    summary = summarise(records, ("amplitude", "phase"))
    assert summary["summary"]["5"]["finetune_sgd_lr"]["0.1"] == {
        "value": 0.1,
        "count": 2,
        "mean_descriptor": {"amplitude": 1.5, "phase": 0.0},
    }
    lines = report_section(summary)
    assert lines[0] == "## Hyperparameters the policy chose"
    assert "  - 0.1: 2 of 3 tasks (67%); mean amplitude 1.5, phase 0" in lines
    assert report_section(None) == [] and report_section({}) == []


# -- a whole run ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_run_that_chooses_its_rate_resumes_with_its_choices_and_refuses_other_ones(tmp_path):
    import json
    import shutil

    from helpers.runs import TINY, cli

    out = tmp_path / "run"
    result = cli("reml-run", *TINY, "--out", str(out), "--set", "env.choose.finetune_sgd_lr=[0.003,0.01,0.03,0.1]")
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    tasks = results["choices"]["reml"]["tasks"]
    assert len(tasks) == 5 * 2 and all(record["values"]["finetune_sgd_lr"] in LR + [0.03] for record in tasks)
    assert "## Hyperparameters the policy chose" in (out / "report.md").read_text()

    other = tmp_path / "other"
    shutil.copytree(out, other)
    config = json.loads((other / "config.json").read_text())
    config["env"]["choose"] = {"finetune_sgd_lr": [0.01, 0.1]}
    (other / "config.json").write_text(json.dumps(config))
    refused = cli("reml-run", "--resume", str(other))
    assert refused.returncode == 2 and "env.choose" in refused.stderr, refused.stderr[-2000:]

    config = json.loads((out / "config.json").read_text())
    config["train"]["env_steps"] = 800
    (out / "config.json").write_text(json.dumps(config))
    resumed = cli("reml-run", "--resume", str(out))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["training"]["env_steps"] >= 800 and results["training"]["resumes"] == 1
    assert len(results["choices"]["reml"]["tasks"]) == 10


def test_a_benchmarks_seeds_are_merged_into_one_summary_of_what_was_chosen():
    from reml_core.choices import merge

    first = summarise([ChoiceRecord("a", 5, (1.0, 0.0), {"finetune_sgd_lr": 0.01})], ["amplitude", "phase"])
    second = summarise(
        [
            ChoiceRecord("a", 5, (1.0, 0.0), {"finetune_sgd_lr": 0.03}),
            ChoiceRecord("b", 5, (3.0, 1.0), {"finetune_sgd_lr": 0.03}),
        ],
        ["amplitude", "phase"],
    )
    merged = merge([first, second])
    by_value = merged["summary"]["5"]["finetune_sgd_lr"]
    assert by_value["0.01"]["count"] == 1 and by_value["0.03"]["count"] == 2
    assert by_value["0.03"]["mean_descriptor"] == {"amplitude": 2.0, "phase": 0.5}
    assert len(merged["tasks"]) == 3


@pytest.mark.slow
def test_a_benchmark_records_and_reports_what_reml_chose_per_seed_and_over_seeds(tmp_path):
    import json

    from helpers.runs import TINY, cli

    out = tmp_path / "bench"
    result = cli(
        "reml-bench",
        *TINY,
        "--seeds",
        "2",
        "--methods",
        "reml",
        "--out",
        str(out),
        "--set",
        "env.choose.finetune_sgd_lr=[0.01,0.03]",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for seed_file in sorted(out.glob("seed-*/results.json")):
        seed = json.loads(seed_file.read_text())
        assert len(seed["choices"]["reml"]["tasks"]) == 5 * 2  # 5 test tasks at each K
    merged = json.loads((out / "results.json").read_text())["choices"]["reml"]
    assert len(merged["tasks"]) == 2 * 5 * 2
    assert sum(entry["count"] for entry in merged["summary"]["5"]["finetune_sgd_lr"].values()) == 10
    report = (out / "report.md").read_text()
    assert "## Hyperparameters the policy chose: REML (support-set)\n" in report
    assert "(chosen rate)" in report


def test_the_dense_pool_offers_its_activation_and_reml_hands_out_the_chosen_one(make_components):
    # The built-in dense pool's structural choice (env.choose.activation), declared on its record.
    components = make_components(env={"depth": 4, "choose": {"activation": ["relu", "tanh"]}})
    env = components.make_env(mode="evaluate")
    assert [step.name for step in env.choice_steps] == ["activation"]
    method = ReMLMethod(LastValid(), env)  # the last valid option: tanh
    assert type(method) is ReMLMethod  # a structural choice is not an adaptation of its own
    task = components.task_sampler.test_tasks(1)[0]
    network = method.network_for(task, 5)
    assert network.activation == "tanh"
    x = torch.linspace(-5, 5, 7).unsqueeze(1)
    relu = env.build_network(method.indices_for(task, 5), {"activation": "relu"})
    assert relu.activation == "relu" and not torch.allclose(network(x), relu(x))
    summary = method.choices_summary(components.task_sampler.descriptor_names)
    assert summary["tasks"][0]["values"] == {"activation": "tanh"}


def test_the_dense_pool_refuses_an_activation_it_does_not_have(make_components):
    components = make_components(env={"depth": 4, "choose": {"activation": ["relu", "gelu"]}})
    with pytest.raises(ConfigError, match=r"env.choose.activation: 'gelu' is not one of its values \['relu', 'tanh'\]"):
        components.make_env()
