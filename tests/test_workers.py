"""train.workers: episode ends split across forked worker processes (reml_core.workers).

What is tested: the split is a pure function of (ends, workers); the thesis rule's pool is the
one-process pool (bit for bit on this machine, within rounding anywhere: only the stacking of a
step's networks changes), the protocol rule's within rounding of it, and either repeats exactly for
the same workers; the workers start only when a step ends several episodes and stop with the
vector env; a worker that dies ends reml-run with one line naming it, exit 1, no process left,
and --resume finishes the run; Ctrl-C and SIGTERM leave no worker behind.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from reml_core.settings import resolve_workers
from reml_core.shards import MIN_SHARD
from reml_core.workers import MIN_SHARE, chunks, split_count

BIN = Path(sys.executable).parent


def test_the_split_is_consecutive_and_balanced():
    assert chunks(15, 2) == [range(0, 8), range(8, 15)]
    assert chunks(128, 4) == [range(0, 32), range(32, 64), range(64, 96), range(96, 128)]
    assert chunks(1, 3) == [range(0, 1)]
    assert split_count(2 * MIN_SHARE - 1, 4) == 1 and split_count(2 * MIN_SHARE, 4) == 2 and split_count(1000, 8) == 8
    assert split_count(100, 1) == 1


def test_the_default_is_the_cpus_capped_by_n_envs():
    cpus = len(os.sched_getaffinity(0))
    assert resolve_workers(None, 128) == min(cpus, 8)
    assert resolve_workers(None, 1) == 1
    assert resolve_workers(4, 2) == 2 and resolve_workers(3, 128) == 3


@pytest.fixture
def no_fork(monkeypatch):
    """A platform whose processes cannot fork (Windows: multiprocessing offers only 'spawn')."""
    import multiprocessing

    monkeypatch.setattr(multiprocessing, "get_all_start_methods", lambda: ["spawn"])


def test_where_processes_cannot_fork_the_default_is_one_process(no_fork, sine_registry):
    from reml_core.config import resolve_config
    from reml_core.settings import overlaps_update

    assert resolve_workers(None, 128) == 1
    config = resolve_config(sine_registry, {"plugin": "sine", "preset": "smoke"})
    assert config.core.train.workers == 1 and config.to_dict()["train"]["workers"] == 1
    assert not overlaps_update(2, True)  # the learner is forked too: each update is waited for
    assert resolve_workers(3, 128) == 3  # an explicit count is kept, and refused when the envs are built (below)


def test_workers_asked_for_where_processes_cannot_fork_are_one_clear_error_before_any_training(
    no_fork, tmp_path, capsys
):
    from reml_core.cli.run import main

    out = tmp_path / "run"
    argv = ["--plugin", "sine", "--preset", "smoke", "--baselines", "none", "--out", str(out)]
    assert main([*argv, "--set", "train.workers=2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train.workers = 2" in err[0] and "cannot fork" in err[0], err
    assert "set train.workers = 1" in err[0] and "--executor ray" in err[0]
    assert not (out / "checkpoints").exists() or not any((out / "checkpoints").iterdir())


def test_the_resolved_count_is_recorded_so_a_resume_elsewhere_repeats_the_split(tmp_path, sine_registry):
    # Results depend on (seed, n_envs, workers): a run records the count it used, not "the machine's
    # CPUs", so --resume or --from on a machine with other CPUs repeats the same split.
    import json

    from reml_core.config import load_resolved, resolve_config

    config = resolve_config(sine_registry, {"plugin": "sine", "preset": "smoke"})
    assert config.core.train.workers == resolve_workers(None, config.core.train.n_envs)
    assert config.to_dict()["train"]["workers"] == config.core.train.workers
    chosen = resolve_config(sine_registry, {"plugin": "sine", "preset": "smoke", "train": {"workers": 1}})
    assert chosen.core.train.workers == 1

    recorded = config.to_dict()
    del recorded["train"]["workers"]  # a config.json written before train.workers existed: made in one process
    (tmp_path / "config.json").write_text(json.dumps(recorded))
    assert load_resolved(tmp_path / "config.json", sine_registry).core.train.workers == 1
    assert config.core.train.split == "envs"
    del recorded["train"]["split"]  # written before train.split existed: its workers shared the finished networks
    (tmp_path / "config.json").write_text(json.dumps(recorded))
    assert load_resolved(tmp_path / "config.json", sine_registry).core.train.split == "ends"


def _vector_run(pool_update: str, workers: int, steps: int = 12, n_envs: int = 48, *, ray: bool = False):
    """Rewards of ``steps`` vector steps with mostly valid random actions, the pool after them, and
    whether the workers had started."""
    from reml_core.config import resolve_config
    from reml_core.experiment import build_components
    from reml_core.registry import PluginRegistry

    config = resolve_config(
        PluginRegistry.discover(),
        {
            "plugin": "sine",
            "preset": "smoke",
            # "protocol-batch": the protocol rule with one pool step per 12 networks (each batch split across workers)
            "env": {"pool_update": "protocol", "pool_batch": 12}
            if pool_update == "protocol-batch"
            else {"pool_update": pool_update},
            "train": {"progress": False},
        },
    )
    torch.manual_seed(0)
    components = build_components(config)
    if ray:
        from reml_core.workers import ray_workers

        with ray_workers(config, build=build_components):
            env = components.make_vec_env(n_envs, workers=workers)
            return (*_steps(env, steps, ray=True), components.pool)
    env = components.make_vec_env(n_envs, workers=workers)
    rewards, started, pids = _steps(env, steps)
    for pid in pids:  # close() reaped them
        assert not Path(f"/proc/{pid}").exists()
    state = {key: value.clone() for key, value in components.pool.state_dict().items()}
    return rewards, state, started


def _steps(env, steps: int, ray: bool = False):
    rng = np.random.default_rng(0)
    env.seed(0)
    env.reset()
    rewards = []
    try:
        for _ in range(steps):
            masks = env.env_method("action_masks")
            actions = [rng.choice(np.flatnonzero(mask)) if rng.random() < 0.9 else 0 for mask in masks]
            _, reward, _, _ = env.step(np.array(actions))
            rewards.append(reward.copy())
        started = env.workers is not None and env.workers.started
        pids = env.workers.pids if env.workers is not None else []
        if ray:
            from reml_core.workers import RayEpisodeWorkers

            assert isinstance(env.workers, RayEpisodeWorkers)
    finally:
        env.close()
    return np.array(rewards), started, pids


@pytest.mark.parametrize("pool_update", ["thesis", "protocol", "protocol-batch"])
def test_two_workers_repeat_exactly_and_agree_with_one_within_rounding(pool_update):
    one, pool_one, started_one = _vector_run(pool_update, 1)
    two, pool_two, started_two = _vector_run(pool_update, 2)
    again, pool_again, _ = _vector_run(pool_update, 2)
    assert not started_one and started_two
    assert np.array_equal(two, again) and all(torch.equal(pool_two[k], pool_again[k]) for k in pool_two)
    if pool_update == "thesis":
        # the write-backs are replayed in env order: only the stacks' rounding can differ (none on this CPU)
        assert np.allclose(one, two, rtol=1e-5, atol=1e-6)
        assert max(float((pool_one[k] - pool_two[k]).abs().max()) for k in pool_one) < 1e-4
    else:
        # gradients summed per share, then merged: another summation order, amplified by Adam's sign steps
        assert max(float((pool_one[k] - pool_two[k]).abs().max()) for k in pool_one) < 0.05


def test_workers_start_only_when_a_step_ends_several_episodes():
    # fewer than 2 x MIN_SHARD envs: no shards; only the episode ends are split, none before the 5th step (depth 5)
    _, _, started = _vector_run("thesis", 2, steps=4, n_envs=2 * MIN_SHARD - 1)
    assert not started


def _vector_env(pool_update: str, n_envs: int, workers: int, split: str = "envs"):
    from reml_core.config import resolve_config
    from reml_core.experiment import build_components
    from reml_core.registry import PluginRegistry

    config = resolve_config(
        PluginRegistry.discover(),
        {
            "plugin": "sine",
            "preset": "smoke",
            "env": {"pool_update": pool_update},
            "train": {"progress": False, "split": split},
        },
    )
    torch.manual_seed(0)
    components = build_components(config)
    return components.make_vec_env(n_envs, workers=workers), components.pool


def _random_steps(env, rng, steps: int) -> list[tuple[np.ndarray, ...]]:
    seen = []
    for _ in range(steps):
        masks = env.env_method("action_masks")
        actions = [rng.choice(np.flatnonzero(mask)) if rng.random() < 0.9 else 0 for mask in masks]
        observations, rewards, dones, _ = env.step(np.array(actions))
        seen.append((observations.copy(), rewards.copy(), dones.copy(), np.stack(masks)))
    return seen


def test_each_process_steps_a_shard_of_the_envs_from_the_first_step():
    env, _ = _vector_env("thesis", 48, 2)
    try:
        assert env.shards == [range(0, 24), range(24, 48)]
        env.seed(0)
        env.reset()
        _random_steps(env, np.random.default_rng(0), 1)
        assert env.workers.started  # no episode has ended yet: the whole step is what is split
    finally:
        env.close()
    small, _ = _vector_env("thesis", 2 * MIN_SHARD - 1, 2)
    assert small.shards is None  # too few envs for two shards of MIN_SHARD: episode ends are split instead
    small.close()
    ends, _ = _vector_env("thesis", 48, 2, split="ends")
    assert ends.shards is None and ends.workers is not None  # train.split = "ends": the finished networks only
    ends.close()


@pytest.mark.parametrize("pool_update", ["thesis", "protocol"])
def test_workers_stopped_midway_hand_their_envs_back_exactly(pool_update):
    """Stopping the workers (end of learn, a validation) brings the shards' envs back: stepping on, with workers
    forked anew from them, gives every number an uninterrupted run gives, and the envs' own masks, episode counts
    and task streams are the shards' (what a checkpoint records and a reset continues)."""
    straight, straight_pool = _vector_env(pool_update, 32, 2)
    paused, paused_pool = _vector_env(pool_update, 32, 2)
    try:
        for env in (straight, paused):
            env.seed(3)
            env.reset()
        first = _random_steps(straight, np.random.default_rng(1), 14)
        rng = np.random.default_rng(1)
        second = _random_steps(paused, rng, 7)
        episodes, masks = paused.episodes, np.stack(paused.env_method("action_masks"))  # as the shards sent them
        paused.stop_workers()
        assert not paused.workers.started and paused.episodes == episodes
        assert np.array_equal(np.stack([env.action_masks() for env in paused.envs]), masks)
        second += _random_steps(paused, rng, 7)
        for a, b in zip(first, second):
            assert all(np.array_equal(x, y) for x, y in zip(a, b))
        assert straight.episodes == paused.episodes
        assert all(torch.equal(straight_pool.state_dict()[k], v) for k, v in paused_pool.state_dict().items())
        # a reset reaches the shards, and a reset with a seed restarts every env's stream as one process does
        for env in (straight, paused):
            env.seed(5)
        again = straight.reset()
        paused.stop_workers()
        assert np.array_equal(again, paused.reset())
    finally:
        straight.close()
        paused.close()


def test_a_reset_after_sharded_steps_continues_each_envs_task_stream():
    sharded, _ = _vector_env("thesis", 32, 2)
    alone, _ = _vector_env("thesis", 32, 1)
    try:
        for env in (sharded, alone):
            env.seed(7)
            env.reset()
            _random_steps(env, np.random.default_rng(2), 9)
        assert sharded.workers.started
        # no seed: every env draws its next task from where its stream stands (in its shard's process)
        assert np.allclose(sharded.reset(), alone.reset(), atol=1e-6)
        assert sharded.episodes == alone.episodes
    finally:
        sharded.close()
        alone.close()


@pytest.mark.slow
def test_ray_actors_give_the_forked_workers_numbers():
    """reml-run --executor ray: the same split and merge, the shares on Ray actors (a local instance here)."""
    forked, pool_forked, _ = _vector_run("protocol", 2)
    rewards, started, _, pool = _vector_run("protocol", 2, ray=True)
    assert started
    assert np.array_equal(forked, rewards)
    state = pool.state_dict()
    assert all(torch.equal(pool_forked[key], state[key]) for key in state)


@pytest.mark.slow
def test_reml_run_with_the_ray_executor_trains_its_shards_on_actors(tmp_path):
    """The command line's --executor ray hands the actors what they rebuild the run's components with."""
    out = tmp_path / "run"
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "reml-run"),
            *["--plugin", "sine", "--preset", "smoke", "--executor", "ray", "--out", str(out)],
            *["--set", "train.n_envs=32", "--set", "train.workers=2", "--set", "train.overlap_update=false"],
            *["--set", "train.progress=false"],
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "the envs stepped in 2 processes, a shard each" in result.stderr
    assert json.loads((out / "results.json").read_text())["methods"]["reml"]


# -- faults and signals: a real reml-run with two workers ----------------------------------------

RUN = [
    "--plugin",
    "sine",
    "--preset",
    "smoke",
    "--set",
    # long enough that a signal sent once the first checkpoint exists lands while the workers are still in use,
    # even on a fast machine (3 000 steps took about 2 s after that checkpoint, and one CI run's kill came too late)
    "train.env_steps=30000",
    "--set",
    "train.checkpoint_every=512",
    "--set",
    "train.n_envs=128",
    "--set",
    "policy.n_steps=256",
    "--set",
    "train.progress=false",
    "--set",
    "train.workers=2",
]


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                found.append(int(entry.name))
    return found


#: The two kinds of worker a run with train.workers = 2 forks: one that shares the episode ends (with
#: train.overlap_update off), or the one that runs the policy's update beside the next rollout (the default).
KINDS = {
    "episode-ends": (["--set", "train.overlap_update=false"], "training worker 1 of 2 (pid {pid}) killed by SIGKILL"),
    "update": ([], "the policy's update process (pid {pid}, train.overlap_update) killed by SIGKILL"),
}


def _start_and_wait_for_worker(out: Path, *extra: str) -> tuple[subprocess.Popen[str], int]:
    """A run with two workers, once it has a checkpoint and its worker is running."""
    process = subprocess.Popen(
        [str(BIN / "reml-run"), *RUN, *extra, "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"run ended early: {process.stderr.read()[-2000:]}")
        pointer = out / "checkpoints" / "latest"
        workers = _children(process.pid)
        if pointer.exists() and workers:
            return process, workers[0]
        time.sleep(0.05)
    process.kill()
    raise AssertionError("no checkpoint and worker in time")


def _gone(pids: list[int], timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(Path(f"/proc/{pid}").exists() and _state(pid) != "Z" for pid in pids):
            return True
        time.sleep(0.05)
    return False


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_a_killed_worker_ends_the_run_in_one_line_and_resume_finishes_it(tmp_path, kind):
    extra, message = KINDS[kind]
    out = tmp_path / "run"
    process, worker = _start_and_wait_for_worker(out, *extra)
    os.kill(worker, signal.SIGKILL)
    _, stderr = process.communicate(timeout=120)
    lines = [line for line in stderr.strip().splitlines() if line.startswith("reml-run: error")]
    assert process.returncode == 1, stderr[-2000:]
    assert len(lines) == 1 and message.format(pid=worker) in lines[0], stderr[-2000:]
    assert f"reml-run --resume {out}" in lines[0] and "Traceback" not in stderr
    assert _gone([worker]) and not _children(process.pid)
    resumed = subprocess.run([str(BIN / "reml-run"), "--resume", str(out)], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert (out / "results.json").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_ctrl_c_and_sigterm_stop_every_worker(tmp_path, signum, code, kind):
    out = tmp_path / "run"
    process, worker = _start_and_wait_for_worker(out, *KINDS[kind][0])
    workers = _children(process.pid)
    # A terminal's Ctrl-C reaches the whole process group, and so does the SIGTERM of a scheduler or service manager
    # (Slurm's scancel, systemd's stop): the workers, sent theirs first here, ignore it and the run checkpoints and
    # stops as when only it was signalled.
    for pid in [*workers, process.pid]:
        os.kill(pid, signum)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == code, stderr[-2000:]
    assert "Traceback" not in stderr
    assert _gone(workers), [(pid, _state(pid)) for pid in workers]
