"""The six extension points of REML, as pluggy hook specifications.

A plugin is a module (or object) with functions marked ``@hookimpl`` whose names match these
specs, declared in the entry-point group ``reml.plugins``::

    [project.entry-points."reml.plugins"]
    my-plugin = "my_package.reml_plugin"

Each hook returns an iterable of records (see :mod:`reml_core.specs`); a plugin implements only
the hooks it needs. Every docstring below is a complete plugin module that works as it stands.

A record's ``factory(config, context)`` gets the context of its stage (see
:class:`reml_core.interfaces.BuildContext`), whose fields are all set: task samplers a
``BuildContext``; state encoders, layer pools and rewards a ``TaskContext`` (also the task
sampler); baselines a ``BaselineContext`` (also the pool and the encoder); policy backends a
``PolicyContext`` (also the environment and the log folder). A factory that cannot build its
component with them raises :class:`reml_core.errors.ComponentBuildError`.

Any record may also declare hyperparameters the policy can choose per task, ``choices=(
HyperparameterChoice(name=..., values=(...), description=..., apply=fn),)`` (see
:class:`reml_core.specs.HyperparameterChoice`): a run offers them when its config names them,
``env.choose.NAME = [...]``, and ``apply(network, value)`` changes each built network in place.
"""

from __future__ import annotations

from collections.abc import Iterable

import pluggy

from reml_core.specs import (
    HOOKS,
    BaselineSpec,
    LayerPoolSpec,
    PolicySpec,
    RewardSpec,
    StateEncoderSpec,
    TaskSamplerSpec,
)

PROJECT_NAME = "reml"
ENTRY_POINT_GROUP = "reml.plugins"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def reml_task_samplers() -> Iterable[TaskSamplerSpec]:
    """Task families: seeded training streams and fixed held-out sets.

    The factory gets a :class:`reml_core.interfaces.BuildContext` (seed, preset, depth, device).
    Example (a family of straight lines y = a*x + b)::

        import torch
        from pydantic import BaseModel, ConfigDict, Field
        from reml_core import hookimpl
        from reml_core.interfaces import Task
        from reml_core.specs import Recommendation, TaskSamplerSpec


        class LineConfig(BaseModel):
            model_config = ConfigDict(extra="forbid")
            test_seed: int = 1234
            support_points: int = Field(10, gt=0)


        class LineSampler:
            descriptor_names, descriptor_low, descriptor_high = ("slope", "bias"), (-1.0, -1.0), (1.0, 1.0)
            input_size = output_size = 1
            train_points = 100

            def __init__(self, config):
                self.config, self.max_shots = config, config.support_points

            def _task(self, gen, task_id, split):
                a, b = (torch.rand(2, generator=gen) * 2 - 1).tolist()
                x = torch.rand(self.train_points + self.max_shots + 50, 1, generator=gen) * 10 - 5
                y = a * x + b
                n, k = self.train_points, self.max_shots
                return Task(task_id, split, (a, b), x[:n], y[:n], x[n:n + k], y[n:n + k], x[n + k:], y[n + k:])

            def train_stream(self, seed):
                gen, i = torch.Generator().manual_seed(seed), 0
                while True:
                    yield self._task(gen, f"train-{i}", "train")
                    i += 1

            def _held_out(self, split, offset, count):
                gen = torch.Generator().manual_seed(self.config.test_seed + offset)
                return [self._task(gen, f"{split}-{i}", split) for i in range(count)]

            def validation_tasks(self, count):
                return self._held_out("validation", 1, count)

            def test_tasks(self, count):
                return self._held_out("test", 2, count)

            def loss(self, prediction, target):
                return torch.mean((prediction - target) ** 2)


        @hookimpl
        def reml_task_samplers():
            yield TaskSamplerSpec(
                name="line",
                factory=lambda config, context: LineSampler(config),
                config_model=LineConfig,
                description="Straight lines y = a*x + b, a and b uniform in [-1, 1].",
                recommended=Recommendation(encoder="support-set", pool="dense", reward="neg-mse", policy="ppo-mlp"),
                # Optional: budgets of the experiment's own sections (env, train, eval; the keys
                # `reml-plugins --show core` lists) per preset, over the core's own budgets
                # (reml_core.config.CORE_PRESETS), which a family without presets gets as they are.
                experiment_presets={"default": {"train": {"env_steps": 50_000, "checkpoint_every": 10_000}}},
            )
    """


@hookspec
def reml_state_encoders() -> Iterable[StateEncoderSpec]:
    """State encoders: the task part of the observation, of a declared size.

    The factory gets a :class:`reml_core.interfaces.TaskContext`: ``context.task_sampler`` is the run's family.
    Example (the mean and spread of the support targets)::

        import numpy as np
        from pydantic import BaseModel, ConfigDict
        from reml_core import hookimpl
        from reml_core.specs import StateEncoderSpec


        class MomentsConfig(BaseModel):
            model_config = ConfigDict(extra="forbid")


        class MomentsEncoder:
            observation_size = 2
            privileged = False  # sees only the K support points

            def encode(self, task, shots):
                _, y = task.support(shots)
                return np.array([y.mean().item(), y.std().item()], dtype=np.float32)


        @hookimpl
        def reml_state_encoders():
            yield StateEncoderSpec(
                name="moments",
                factory=lambda config, context: MomentsEncoder(),
                config_model=MomentsConfig,
                description="Mean and standard deviation of the K support targets.",
            )
    """


@hookspec
def reml_layer_pools() -> Iterable[LayerPoolSpec]:
    """Layer-pool kinds: global pools of layers with roles, shared across tasks.

    A pool implements :class:`reml_core.interfaces.LayerPool`; its factory gets a
    :class:`reml_core.interfaces.TaskContext` (``context.task_sampler`` gives the input and output
    sizes, ``context.device`` where the layers live). Example (a pool of dense layers
    without biases, built on the dense pool that ships with REML)::

        from pydantic import ConfigDict
        from reml_core import hookimpl
        from reml_core.specs import LayerPoolSpec
        from reml_plugins.dense.pool import DenseLayerPool, DensePoolConfig


        class NoBiasConfig(DensePoolConfig):
            model_config = ConfigDict(extra="forbid")


        class NoBiasPool(DenseLayerPool):
            def __init__(self, config, context):
                super().__init__(config, context)
                for bias in self.biases.values():
                    bias.zero_()


        @hookimpl
        def reml_layer_pools():
            yield LayerPoolSpec(
                name="dense-nobias",
                factory=NoBiasPool,
                config_model=NoBiasConfig,
                description="Dense layers whose biases start at zero.",
            )
    """


@hookspec
def reml_rewards() -> Iterable[RewardSpec]:
    """Reward functions: from the losses of a finished network to a reward.

    The factory gets a :class:`reml_core.interfaces.TaskContext`: ``context.task_sampler`` is the run's family.
    Example (reward the log of the trained network's loss)::

        import math
        from pydantic import BaseModel, ConfigDict
        from reml_core import hookimpl
        from reml_core.specs import RewardSpec


        class LogLossConfig(BaseModel):
            model_config = ConfigDict(extra="forbid")
            invalid_action_penalty: float = -1.0


        class LogLossReward:
            required_losses = frozenset({"trained"})
            needs_calibration = False
            worst_reward = -20.0

            def __init__(self, config):
                self.invalid_action_penalty = config.invalid_action_penalty

            def __call__(self, losses, task):
                return max(-math.log(losses["trained"] + 1e-8), self.worst_reward)

            def calibrate(self, samples):
                pass

            def state_dict(self):
                return {}

            def load_state_dict(self, state):
                pass


        @hookimpl
        def reml_rewards():
            yield RewardSpec(
                name="neg-log-mse",
                factory=lambda config, context: LogLossReward(config),
                config_model=LogLossConfig,
                description="Minus the log of the MSE after inner training.",
            )
    """


@hookspec
def reml_policies() -> Iterable[PolicySpec]:
    """Policy backends: RL learners that act on the composition environment.

    A backend implements :class:`reml_core.interfaces.PolicyBackend`; its factory gets a
    :class:`reml_core.interfaces.PolicyContext`: ``context.env`` is the environment it learns on
    and ``context.log_dir`` the folder for its training log (None: write none). Example (a policy that
    picks uniformly among the valid actions and learns nothing, a useful sanity baseline)::

        import numpy as np
        from pydantic import BaseModel, ConfigDict
        from reml_core import hookimpl
        from reml_core.specs import PolicySpec


        class RandomConfig(BaseModel):
            model_config = ConfigDict(extra="forbid")


        class RandomPolicy:
            recurrent = False

            def __init__(self, context):
                self.env, self.rng, self.num_timesteps = context.env, np.random.default_rng(context.seed), 0

            def learn(self, total_timesteps, callback=None, progress_bar=False):
                for _ in range(total_timesteps):
                    self.num_timesteps += 1
                    if callback is not None and not callback(self.num_timesteps):
                        break

            def record(self, metrics, step):
                pass

            def act(self, observation, state, episode_start, action_mask):
                valid = np.flatnonzero(action_mask) if action_mask is not None else np.arange(self.env.action_space.n)
                return int(self.rng.choice(valid)), state

            def save(self, directory):
                (directory / "random-policy.txt").write_text(str(self.num_timesteps))

            def load(self, directory, *, trust_pickle=False):
                self.num_timesteps = int((directory / "random-policy.txt").read_text())


        @hookimpl
        def reml_policies():
            yield PolicySpec(
                name="random",
                factory=lambda config, context: RandomPolicy(context),
                config_model=RandomConfig,
                description="Uniform over valid actions; learns nothing.",
            )
    """


@hookspec
def reml_baselines() -> Iterable[BaselineSpec]:
    """Baselines: methods REML is compared with on the same held-out tasks.

    A baseline implements :class:`reml_core.interfaces.Baseline`: it meta-trains on the task
    stream, then hands the evaluator a starting network per task, which the evaluator fine-tunes
    exactly as it fine-tunes every other method. Its factory gets a
    :class:`reml_core.interfaces.BaselineContext`: ``context.pool`` is the run's layer pool
    (``pool.fresh_network(context.depth, generator)`` is a network of REML's architecture). Example (the all-zero
    network: a floor)::

        import torch
        from pydantic import BaseModel, ConfigDict
        from reml_core import hookimpl
        from reml_core.specs import BaselineSpec


        class ZeroConfig(BaseModel):
            model_config = ConfigDict(extra="forbid")


        class ZeroBaseline:
            def __init__(self, context):
                self.pool = context.pool

            def meta_train(self, tasks, progress=True):
                return {}

            def network_for(self, task, shots):
                network = self.pool.fresh_network(5, torch.Generator().manual_seed(0))
                for parameter in network.parameters():
                    parameter.data.zero_()
                return network

            def save(self, directory):
                pass

            def load(self, directory):
                pass


        @hookimpl
        def reml_baselines():
            yield BaselineSpec(
                name="zero",
                factory=lambda config, context: ZeroBaseline(context),
                config_model=ZeroConfig,
                description="A network whose parameters are all zero.",
            )
    """


#: The hook of each kind of component (declared once, on the record types in reml_core.specs).
HOOKS_BY_KIND: dict[str, str] = dict(HOOKS)
