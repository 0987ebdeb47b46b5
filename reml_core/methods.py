"""REML as a method the evaluator can use: a deterministic policy rollout that builds a network per task."""

from __future__ import annotations

from torch import nn

from reml_core.env import CompositionEnv
from reml_core.interfaces import LayerPool, PolicyBackend, Task


class ReMLMethod:
    """Builds a task's network by rolling the policy out over the pool, deterministically.

    The rollout runs in an ``evaluate``-mode environment (no training, no write-back): the pool
    being evaluated is never changed, and the network handed out is a copy of its layers. The
    LSTM state, if any, is carried from step to step and reset at the start of each rollout.
    """

    def __init__(self, policy: PolicyBackend, env: CompositionEnv) -> None:
        if env.mode != "evaluate":
            raise ValueError("REML rollouts need an evaluate-mode environment")
        self.policy = policy
        self.env = env
        self.pool: LayerPool = env.pool

    def indices_for(self, task: Task, shots: int) -> list[int]:
        """The pool indices (network order) the policy chooses for ``task`` given its K support points."""
        observation, _ = self.env.reset(options={"task": task, "shots": shots})
        state, start = None, True
        for _ in range(self.env.depth):
            action, state = self.policy.act(observation, state, start, self.env.action_masks())
            start = False
            observation, _, terminated, truncated, info = self.env.step(action)
            if terminated:
                return list(info["indices"])
            if truncated or not info["valid"]:
                break
        raise RuntimeError(f"the masked rollout for task {task.task_id} did not finish a network")

    def network_for(self, task: Task, shots: int) -> nn.Module:
        return self.pool.build(self.indices_for(task, shots))
