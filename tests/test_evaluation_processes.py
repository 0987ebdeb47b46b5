"""The few-shot evaluation (and validation) fine-tunes its networks in train.workers processes.

What is tested: with several processes every table and curve is the one process's, bit for bit, for
REML (side by side, best of several rollouts) and for baselines that hand out networks one by one
(MAML, training from scratch), at the protocol's rate and at a method's own; the methods' state is
the one process's afterwards (the policy's statistics, the global RNG); a forked process that dies or
raises is one error naming it, with no process left behind; a platform that cannot fork measures in
one process.
"""

from __future__ import annotations

import os
import signal

import pytest
import torch

from reml_core import evaluation as evaluation_module
from reml_core import workers
from reml_core.config import resolve_config
from reml_core.evaluation import FewShotEvaluator
from reml_core.experiment import build_components
from reml_core.methods import ReMLMethod
from reml_core.pipeline import build_baselines
from reml_core.workers import WorkerLost, fork_map


def _children() -> set[int]:
    """This process's live children (zombies, reaped by no one yet, are not processes left running)."""
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == os.getpid() and fields[0] != "Z":
                found.add(int(entry))
    return found


def _setup(registry, tmp_path):
    config = resolve_config(
        registry,
        {"plugin": "sine", "preset": "smoke", "seed": 3, "eval": {"reml_rollouts": 3, "curve_steps": 5}},
        baselines=["maml", "scratch", "meta-sgd"],
    )
    components = build_components(config)
    context = components.context.with_env(components.make_env(), log_dir=tmp_path / "logs")
    backend = config.policy.spec.factory(config.policy.config, context)
    reml = ReMLMethod.for_run(backend, components.make_env(mode="evaluate"), config)
    tasks = components.task_sampler.test_tasks(23)
    return config, components, backend, reml, tasks


def _evaluator(components, tasks):
    return FewShotEvaluator(
        tasks, components.task_sampler.loss, shots=[5, 10], steps=[0, 1, 10], lr=0.01, curve_steps=5, curve_tasks=9
    )


def _cells(table):
    return {
        k: {s: (c.mse_mean, c.mse_ci95, c.nan_tasks, c.tasks, c.metrics) for s, c in row.items()}
        for k, row in table.items()
    }


def test_every_number_is_the_one_process_s_for_reml_and_baselines(installed_registry, tmp_path, monkeypatch):
    monkeypatch.setattr(evaluation_module, "CHOOSE_CHUNK", 8)  # several chunks of the 23 tasks
    monkeypatch.setattr(evaluation_module, "PENDING_ELEMENTS", 20_000)  # and several forks per evaluation
    forks = []
    monkeypatch.setattr(workers, "fork_map", lambda f, parts, **k: forks.append(len(parts)) or fork_map(f, parts, **k))
    config, components, backend, reml, tasks = _setup(installed_registry, tmp_path)
    baselines = build_baselines(components, ["maml", "scratch"])
    for baseline in baselines.values():
        baseline.meta_train(components.task_sampler.train_stream(config.seed), progress=False)
    methods = {"reml": reml, **baselines}
    results = {}
    for processes in (1, 2, 3):
        torch.manual_seed(11)  # scratch draws its initialisations from the global generator
        evaluator = _evaluator(components, tasks)
        before = backend.decision_counts()
        tables = {}
        for name, method in methods.items():
            many = method.networks_for if name == "reml" else None
            forkable = method if name == "reml" else None  # REML's chunks are chosen in the processes too
            table = evaluator.few_shot(method.network_for, name, many=many, processes=processes, forkable=forkable)
            tables[name] = _cells(table)
            tables[name + "-curve"] = evaluator.curve(method.network_for, name, processes=processes)
        tables["rng"] = torch.rand(3).tolist()  # the global generator where one process leaves it
        after = backend.decision_counts()  # the policy's decisions, counted in whichever process made them
        tables["policy"] = {key: after[key] - before[key] for key in after}
        results[processes] = tables
    assert results[2] == results[1] and results[3] == results[1]
    assert forks.count(2) > 8 and forks.count(3) > 8  # each method and curve fine-tuned in forked processes
    assert len(results[1]["reml"][5][10]) == 5 and results[1]["reml"][5][10][3] == 23
    assert results[1]["policy"]["decisions"] > 2 * 23 * 5  # every task's rollouts, at both K


def test_an_own_rate_evaluation_is_the_one_process_s(installed_registry, tmp_path, monkeypatch):
    monkeypatch.setattr(evaluation_module, "CHOOSE_CHUNK", 8)
    _, components, _, _, tasks = _setup(installed_registry, tmp_path)
    (meta_sgd,) = build_baselines(components, ["meta-sgd"]).values()
    meta_sgd.meta_train(components.task_sampler.train_stream(3), progress=False)
    evaluator = _evaluator(components, tasks)
    one = evaluator.few_shot(meta_sgd.adapted_network_for, "own", own=True)
    two = evaluator.few_shot(meta_sgd.adapted_network_for, "own", own=True, processes=2)
    assert _cells(one) == _cells(two)


def test_a_forked_process_that_dies_or_raises_is_one_error_naming_it_and_none_is_left():
    def die(positions):
        if positions.start:
            os.kill(os.getpid(), signal.SIGKILL)
        return list(positions)

    with pytest.raises(
        WorkerLost, match=r"^evaluation process 1 of 1 \(pid \d+\) killed by SIGKILL \(out of memory\?\)$"
    ):
        fork_map(die, [range(0, 2), range(2, 4)], what="evaluation")

    def fail(positions):
        if positions.start:
            raise ValueError(f"task {positions.start} has no support points")
        return list(positions)

    with pytest.raises(ValueError, match="task 2 has no support points"):
        fork_map(fail, [range(0, 2), range(2, 4)], what="evaluation")
    assert fork_map(lambda r: list(r), [range(0, 2), range(2, 5), range(5, 6)], what="evaluation") == [
        [0, 1],
        [2, 3, 4],
        [5],
    ]
    assert not _children()


def test_where_processes_cannot_fork_the_evaluation_runs_in_this_one(monkeypatch):
    import multiprocessing

    assert fork_map(lambda r: os.getpid(), [range(1), range(1)], what="evaluation")[1] != os.getpid()
    with monkeypatch.context() as patch:  # Windows
        patch.setattr(multiprocessing, "get_all_start_methods", lambda: ["spawn"])
        assert fork_map(lambda r: os.getpid(), [range(1), range(1)], what="evaluation") == [os.getpid()] * 2
    with monkeypatch.context() as patch:  # a process that has used CUDA: a forked one could not use it again
        patch.setattr(torch.cuda, "is_initialized", lambda: True)
        assert fork_map(lambda r: os.getpid(), [range(1), range(1)], what="evaluation") == [os.getpid()] * 2


def test_a_run_validating_beside_the_policy_s_update_gives_the_one_process_numbers(tmp_path, monkeypatch):
    # train.workers = 2 with the update beside the next rollout: a validation starts while an update is in flight;
    # the processes it forks must not wait for that update too (they would read the learner's reply from its pipe)
    import json

    from reml_core import api, pipeline, training

    settings = {
        "train.env_steps": 2048,
        "train.checkpoint_every": 512,
        "train.workers": 2,
        "policy.n_steps": 2,
        "train.progress": False,
        "eval.test_tasks": 40,
    }
    runs = {}
    for processes in (2, 1):
        monkeypatch.setattr(training, "evaluation_processes", lambda config, p=processes: p)
        monkeypatch.setattr(pipeline, "evaluation_processes", lambda config, p=processes: p)
        out = tmp_path / f"evaluated-in-{processes}"
        api.run({"plugin": "sine", "preset": "smoke", "seed": 5}, out=out, baselines=[], overrides=settings)
        data = json.loads((out / "results.json").read_text())
        runs[processes] = (data["training"]["history"], data["methods"], data["training"]["policy_stats"])
    assert len(runs[2][0]) == 4 and all("validation/score" in record for record in runs[2][0])
    assert runs[2] == runs[1]
