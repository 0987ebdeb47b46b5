"""``train.overlap_update``: PPO's update in a second process, beside the next rollout.

stable-baselines3's PPO alternates: collect a rollout, then update the policy on it (``n_epochs``
passes of minibatches), during which the environment waits, and the update waits for the next
rollout. With the overlap, the update on rollout t runs in a forked *learner* process while the
run's process collects rollout t + 1 with the policy it has, the one before that update:

    rollout 0 (policy 0) | rollout 1 (policy 0)   | rollout 2 (policy 1)   | ...
                         | update 0 -> policy 1   | update 1 -> policy 2   | ...

so each rollout acts with the policy one update behind, as in asynchronous actor-learner methods
(IMPALA, APPO). The learner's update on such a rollout is PPO's, decoupled (:func:`decouple`): the
clipped ratio is taken against the policy the update starts from, and each sample's advantage is
weighted by how much more likely its action is under that policy than under the one that
collected it (truncated at 1). The order of everything is fixed, whatever the scheduling:
the learner is forked at the first update, receives rollout t, and its result is loaded before
rollout t + 1 is handed over, so the same (seed, n_envs, workers) give the same numbers.

After each update the learner sends back the policy's weights, its optimizer's state, the update
count and what the update logged, so the run's process is exactly the learner's state once a
result is in. :meth:`OverlappedUpdate.settle` waits for the update in flight and loads it: before
the policy is saved, evaluated or validated, and at the end of ``learn``; a checkpoint therefore
holds the policy after every update submitted so far, and ``--resume`` starts from it (the learner
is forked anew). A learner that dies (killed, out of memory) ends the run with
:class:`~reml_core.workers.WorkerLost`, one line naming it, as a dead episode worker does.
"""

from __future__ import annotations

import os
import pickle
from multiprocessing import get_context
from typing import Any

import numpy as np
import torch

from reml_core.workers import WorkerLost, await_reply, become_worker, error_reply, how_it_ended, stop_processes


def buffer_state(buffer: Any) -> dict[str, Any]:
    """A rollout buffer's data (every array, and where it stands): what the learner's buffer takes over."""
    state: dict[str, Any] = {key: value for key, value in vars(buffer).items() if isinstance(value, np.ndarray)}
    state.update(full=buffer.full, pos=buffer.pos, generator_ready=buffer.generator_ready)
    return state


#: Importance weights of the decoupled update are truncated here (V-trace's rho-bar; Espeholt et al. 2018).
WEIGHT_CAP = 1.0


@torch.no_grad()
def decouple(model: Any) -> float:
    """Make PPO's update on a rollout collected by an older policy start from the current one.

    PPO's ratio pi_new / pi_old is clipped to [1 - eps, 1 + eps]. On data collected one update
    ago, the ratio of the policy the update starts from is already away from 1 on many samples,
    so they start clipped and the update learns less from them (measured: a default run learned
    markedly slower). The decoupled objective (Hilton et al., "Batch size-invariance for policy
    optimization", 2021) separates the two roles of the old policy: the ratio is taken against
    the *proximal* policy (the learner's current one), and the advantages are weighted by the
    importance weight proximal / behaviour (truncated at :data:`WEIGHT_CAP`), which keeps the
    estimate honest to the policy that collected the data. In the buffer: ``log_probs`` become the
    proximal policy's and ``advantages`` are multiplied by the weights. Returns the mean weight.
    """
    buffer = model.rollout_buffer
    policy = model.policy
    count = buffer.buffer_size * buffer.n_envs
    observations = torch.as_tensor(buffer.observations.reshape(count, *buffer.obs_shape))
    actions = torch.as_tensor(buffer.actions.reshape(count, -1)).long().flatten()
    policy.set_training_mode(False)
    if hasattr(buffer, "hidden_states_pi"):  # an LSTM: each step from the state it was collected in, one step each

        def states(name: str) -> torch.Tensor:
            array = torch.as_tensor(getattr(buffer, name))  # (steps, layers, envs, hidden)
            return array.permute(1, 0, 2, 3).reshape(array.shape[1], count, array.shape[3])

        starts = torch.as_tensor(buffer.episode_starts.reshape(count))
        distribution, _ = policy.get_distribution(
            observations, (states("hidden_states_pi"), states("cell_states_pi")), starts
        )
        log_prob = distribution.log_prob(actions)
    elif hasattr(buffer, "action_masks"):
        masks = torch.as_tensor(buffer.action_masks.reshape(count, -1))
        _, log_prob, _ = policy.evaluate_actions(observations, actions, action_masks=masks)
    else:
        _, log_prob, _ = policy.evaluate_actions(observations, actions)
    behaviour = torch.as_tensor(buffer.log_probs.reshape(count))
    weight = torch.exp(log_prob - behaviour).clamp(max=WEIGHT_CAP)
    buffer.advantages = (buffer.advantages.reshape(count) * weight.numpy()).reshape(buffer.advantages.shape)
    buffer.log_probs = log_prob.numpy().astype(buffer.log_probs.dtype).reshape(buffer.log_probs.shape)
    return float(weight.mean())


def _learn(model: Any, update: Any, state: dict[str, Any], progress: float, lagged: bool) -> dict[str, Any]:
    """The learner's side of one update: take the rollout, run PPO's update, return the new state."""
    for key, value in state.items():
        setattr(model.rollout_buffer, key, value)
    model._current_progress_remaining = progress
    weight = decouple(model) if lagged else None
    logger = model.logger
    logger.name_to_value.clear()
    logger.name_to_count.clear()
    logger.name_to_excluded.clear()
    update(model)
    records = [(key, value, logger.name_to_excluded.get(key)) for key, value in logger.name_to_value.items()]
    if weight is not None:
        records.append(("train/importance_weight", weight, None))
    logger.name_to_value.clear()
    logger.name_to_count.clear()
    logger.name_to_excluded.clear()
    return {
        "weights": {key: value.detach().clone() for key, value in model.policy.state_dict().items()},
        "optimizer": model.policy.optimizer.state_dict(),
        "n_updates": int(getattr(model, "_n_updates", 0)),
        "records": records,
    }


def _serve(conn: Any, parent: int, model: Any, update: Any) -> None:
    """The learner's loop: an update per rollout received, until the pipe closes."""
    become_worker(parent)
    while True:
        try:
            request = pickle.loads(conn.recv_bytes())
        except (EOFError, OSError):
            break
        if request is None:
            break
        try:
            reply: Any = ("ok", _learn(model, update, *request))
        except Exception as error:  # the parent raises it, named
            reply = error_reply(error)
        try:
            conn.send_bytes(pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL))
        except (BrokenPipeError, OSError):
            break
    os._exit(0)  # never run the finalizers of what was inherited (the vector env's workers are the parent's)


class OverlappedUpdate:
    """The learner process of one stable-baselines3 on-policy model (see the module's docstring).

    ``update(model)`` is the algorithm's own update (``PPO.train``); :meth:`submit` replaces the
    model's ``train`` so that its ``learn`` loop runs unchanged.
    """

    def __init__(self, model: Any, update: Any) -> None:
        self.model = model
        self.update = update
        self._process: Any = None
        self._conn: Any = None
        self.pending = False
        self._updated = False  # an update was loaded since the last rollout was handed over

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def _start(self) -> None:
        context = get_context("fork")
        mine, theirs = context.Pipe(duplex=True)
        process = context.Process(
            target=_serve, args=(theirs, os.getpid(), self.model, self.update), name="reml-learner", daemon=True
        )
        process.start()
        theirs.close()
        self._process, self._conn = process, mine

    def submit(self) -> None:
        """In place of the model's update: load the update in flight, then hand the new rollout to the learner."""
        self.settle()
        if self._process is None:
            self._start()
        # a rollout collected (wholly or in part) before the policy's last update is corrected for it
        request = (
            buffer_state(self.model.rollout_buffer),
            float(self.model._current_progress_remaining),
            self._updated,
        )
        self._updated = False
        try:
            self._conn.send_bytes(pickle.dumps(request, protocol=pickle.HIGHEST_PROTOCOL))
        except (BrokenPipeError, ConnectionResetError, OSError):
            raise self._lost() from None
        self.pending = True

    def settle(self) -> None:
        """Wait for the update in flight, if any, and load its result into the model."""
        if not self.pending:
            return
        self.pending = False
        result = self._receive()
        policy = self.model.policy
        policy.load_state_dict(result["weights"])
        policy.optimizer.load_state_dict(result["optimizer"])
        self.model._n_updates = result["n_updates"]
        self._updated = True
        for key, value, exclude in result["records"]:
            self.model.logger.record(key, value, exclude=exclude)

    def _receive(self) -> dict[str, Any]:
        reply = await_reply(self._conn, self._process)
        if reply is None:
            raise self._lost()
        status, value = reply
        if status == "error":
            self.close()
            raise RuntimeError(f"the policy's update process: {value}")
        result: dict[str, Any] = value
        return result

    def _lost(self) -> WorkerLost:
        process = self._process
        process.join(1.0)
        how = how_it_ended(process)
        self.close()
        return WorkerLost(f"the policy's update process (pid {process.pid}, train.overlap_update) {how}")

    def close(self) -> None:
        """Stop the learner (idempotent); an update in flight is dropped."""
        process, conn = self._process, self._conn
        self._process, self._conn, self.pending = None, None, False
        if process is None:
            return
        try:
            conn.send_bytes(pickle.dumps(None))
        except OSError:
            pass
        conn.close()
        stop_processes([process])

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass
