"""``train.workers``: worker processes of one machine (or Ray actors), the pool shared with them.

A vector env of at least 2 x :data:`reml_core.shards.MIN_SHARD` envs gives each process a shard of
its envs to step whole (:mod:`reml_core.shards`: observations, measurements and episode ends); the
processes, the pool in shared memory, the recording pool and the merge in env order are this
module's. A smaller vector env splits only each step's episode ends, as follows.

On a vector step where several episodes finish, :func:`reml_core.batched.end_episodes` trains and
measures their networks (stacked by shape) and then updates the pool in env-index order. With
``train.workers`` = W > 1 the step's ends are cut into W consecutive shares of about equal size
(:func:`chunks`); the process that owns the pool and the policy ends share 0 itself while W - 1
forked worker processes end the others, each through ``end_episodes`` on a recording pool
(:class:`RecordingPool`) that builds from the real pool and records the write-backs instead of
applying them. The owner then replays every share's write-backs in share order, which is env-index
order (the same lerps, in the same order, as one process makes), or, under the protocol rule, takes
the update over all the step's ends with its gradients computed per share
(:meth:`EpisodeWorkers.protocol_gradients`) and merged in share order. So:

- the pool reaches the workers without a copy per step: its tensors are moved into shared memory
  (``Tensor.share_memory_()``) once, before the workers are forked, and every later in-place update
  of the pool (write-back, the protocol update's Adam step) is what the workers read next (a pool
  whose tensors were replaced, e.g. by loading a checkpoint, gets its workers forked anew);
- only the finished episodes (:class:`~reml_core.batched.EpisodeEnd` objects, whole, with their
  tasks and any fields they carry) travel to a worker, and their outcomes, trained networks or
  gradients travel back, pickled (tensors as NumPy arrays) through pipes with 1 MiB buffers;
- the results are a function of (seed, n_envs, workers); what ``workers`` changes is how a step's
  networks are cut into stacks (a group of 15 becomes stacks of 8 and 7), which leaves the thesis
  rule's numbers bit for bit where a stacked product rounds as a single one (this project's AMD
  CPU; the fine-tuned loss's padded SGD to a share's own largest K: within rounding) and, under the
  protocol rule, the order in which the networks' gradients are summed (rounding, which Adam's
  sign steps can amplify): docs/performance.md.

The workers start lazily, on the first vector step that ends at least 2 x :data:`MIN_SHARE` episodes,
so a run too small to profit never forks. A worker ignores Ctrl-C (its parent stops it after
checkpointing), dies with its parent (Linux's parent-death signal) and exits when its pipe closes;
a worker that dies (killed, out of memory) ends the run with :class:`WorkerLost`, one line naming it.
"""

from __future__ import annotations

import ctypes
import io
import math
import os
import pickle
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from multiprocessing import connection, get_context
from typing import Any

import torch

from reml_core.distributed import ray_session
from reml_core.errors import UserError
from reml_core.interfaces import BatchedLayerPool
from reml_core.interrupts import raise_if_interrupted
from reml_core.memory import keep_freed_memory
from reml_core.settings import can_fork

#: Episode ends per share at least: a step is split only when each share gets this many (and the
#: workers start at the first such step, 2 x MIN_SHARE ends).
MIN_SHARE = 8


class WorkerLost(UserError):
    """A worker process of ``train.workers`` died (killed, out of memory); the run stops with the last checkpoint
    intact.

    One line on stderr as every UserError, but exit status 1: the run failed, the command was not misused."""

    exit_code = 1


def chunks(count: int, shares: int) -> list[range]:
    """Positions ``0..count-1`` cut into at most ``shares`` consecutive ranges of about equal length
    (share s starts at ``round(s * count / shares)``; empty ones dropped): a pure function of its
    arguments, so how a step's episodes are split depends only on (seed, n_envs, workers)."""
    bounds = [round(s * count / shares) for s in range(shares + 1)]
    return [range(bounds[s], bounds[s + 1]) for s in range(shares) if bounds[s + 1] > bounds[s]]


class RecordingPool:
    """The pool as a share's ``end_episodes`` sees it: it builds from the real pool and records its
    write-backs (with their trained networks) instead of applying them, for the owner to replay in
    env order. Everything else, capabilities included, is the real pool's."""

    def __init__(self, pool: Any) -> None:
        self._pool = pool
        self.writes: list[tuple[Any, ...]] = []

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._pool, name)
        if name == "write_back_batch":

            def record(indices: Any, network: Any, rate: float, keep: Any) -> None:
                self.writes.append(("batch", [list(chosen) for chosen in indices], network, rate, list(keep)))

            return record
        return value

    def write_back(self, indices: Sequence[int], network: Any, rate: float = 1.0) -> None:
        self.writes.append(("one", list(indices), network, rate))


class RecordingUpdate:
    """The protocol update as a share's ``end_episodes`` sees it: it records which ends to keep; the
    owner then takes the real update over all of the step's ends at once (exactly one process's step)."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[bool], dict[str, Any]]] = []

    def apply(self, ends: Sequence[Any], keep: Sequence[bool], **options: Any) -> list[float]:
        self.calls.append((list(keep), options))
        return []


def replay(pool: Any, writes: Sequence[tuple[Any, ...]]) -> None:
    """Apply recorded write-backs to the real pool, in their order."""
    for write in writes:
        if write[0] == "one":
            _, indices, network, rate = write
            pool.write_back(indices, network, rate=rate)
        else:
            _, indices, network, rate, keep = write
            pool.write_back_batch(indices, network, rate, keep)


#: The requests on a shard of the vector env's envs (reml_core.shards) rather than on episode ends.
SHARD_REQUESTS = ("step", "reset", "masks", "state")


def work(
    pool: Any,
    kind: str,
    ends: Sequence[Any],
    options: dict[str, Any],
    *,
    loss_fn: Any,
    config: Any,
    pool_update: Any,
    envs: Sequence[Any] = (),
    serve: Callable[..., Any] | None = None,
) -> Any:
    """A worker's (or the owner's) share of a step: ``end`` (:func:`end_share`), ``grad`` (the protocol
    update's :meth:`~reml_core.pool_update.ProtocolPoolUpdate.gradients` over the share's ends, all kept),
    ``losses`` (:func:`~reml_core.batched.stacked_support_losses` of each group of the share's candidate
    networks: their index lists and stacked points), or a request on the vector env's ``envs`` that this
    process owns (``step``, ``reset``, ``masks``, ``state``: ``serve``, the vector env's
    :func:`reml_core.shards.shard_work`)."""
    if kind in SHARD_REQUESTS:
        if serve is None:
            raise ValueError(f"a {kind!r} request to workers that hold no envs")
        end = {"loss_fn": loss_fn, "config": config, "pool_update": pool_update}
        return serve(kind, envs, ends, options, pool=pool, end=end)
    if kind == "grad":
        return type(pool_update).gradients(pool_update, ends, [True] * len(ends), **options)
    if kind == "losses":  # here ``ends`` are groups of stacked candidate networks (EpisodeWorkers.support_losses)
        from reml_core.batched import stacked_support_losses  # noqa: PLC0415 - lazy, as end_share's import

        return [stacked_support_losses(pool, i, x, y, loss_fn, **options) if len(i) else [] for i, x, y in ends]
    return end_share(pool, ends, options, loss_fn=loss_fn, config=config)


def end_share(pool: Any, ends: Sequence[Any], options: dict[str, Any], *, loss_fn: Any, config: Any) -> tuple[Any, ...]:
    """One share of a step's episode ends: :func:`reml_core.batched.end_episodes` on a recording pool
    (and recording protocol update), so the share's outcomes, write-backs and update call come back
    and the pool is left as it was."""
    from reml_core.batched import end_episodes  # noqa: PLC0415 - lazy: start-up time: reml_core.batched imports numpy

    options = dict(options)
    recorder = RecordingPool(pool)
    update = RecordingUpdate() if options.pop("protocol") else None
    outcomes = end_episodes(recorder, ends, loss_fn=loss_fn, config=config, pool_update=update, **options)
    return outcomes, recorder.writes, (update.calls if update is not None else [])


def shared_tensors(pool: Any) -> list[torch.Tensor]:
    """Every tensor the pool holds directly, in dicts, lists or tuples of its attributes, or as
    ``parameters()`` (what ``build`` and ``build_batch`` read)."""
    found: list[torch.Tensor] = []

    def add(value: Any) -> None:
        if isinstance(value, torch.Tensor):
            found.append(value)
        elif isinstance(value, dict):
            for item in value.values():
                add(item)
        elif isinstance(value, (list, tuple)):
            for item in value:
                add(item)
        elif isinstance(value, torch.nn.Module):
            found.extend(value.parameters())
            found.extend(value.buffers())

    for value in vars(pool).values():
        add(value)
    seen: set[int] = set()
    unique = []
    for tensor in found:
        if id(tensor) not in seen:
            seen.add(id(tensor))
            unique.append(tensor)
    return unique


def _tensor(array: Any, requires_grad: bool, parameter: bool) -> torch.Tensor:
    tensor = torch.from_numpy(array)
    if parameter:
        return torch.nn.Parameter(tensor, requires_grad=requires_grad)
    return tensor.requires_grad_(requires_grad) if requires_grad else tensor


class _Pickler(pickle.Pickler):
    """Pickles CPU tensors as NumPy arrays (their own elements only, out of band of torch's storage
    pickling, which writes a view's whole storage through torch.save and costs far more per tensor)."""

    def reducer_override(self, obj: Any) -> Any:
        kind = type(obj)
        if (
            (kind is torch.Tensor or kind is torch.nn.Parameter)
            and obj.device.type == "cpu"
            and obj.layout == torch.strided
            and obj.dtype in _NUMPY_DTYPES
            and not obj.is_neg()
            and not obj.is_conj()
        ):
            return _tensor, (obj.detach().numpy(), obj.requires_grad, kind is torch.nn.Parameter)
        return NotImplemented


_NUMPY_DTYPES = {
    torch.float32,
    torch.float64,
    torch.float16,
    torch.int64,
    torch.int32,
    torch.int16,
    torch.int8,
    torch.uint8,
    torch.bool,
}


def dumps(value: Any) -> bytes:
    """``value`` pickled for a worker's pipe (see :class:`_Pickler`)."""
    buffer = io.BytesIO()
    _Pickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(value)
    return buffer.getvalue()


#: Bytes a worker's pipes buffer (Linux's F_SETPIPE_SZ; the unprivileged maximum by default): a step's
#: ends and a share's trained networks fit, so neither side waits for the other to read.
PIPE_BYTES = 1 << 20


class _Channel:
    """Two one-way pipes with large buffers, as one two-way connection (``connection.wait`` accepts it)."""

    def __init__(self, reader: Any, writer: Any) -> None:
        self.reader, self.writer = reader, writer
        for end in (reader, writer):
            try:
                import fcntl  # noqa: PLC0415 - lazy: Unix only (F_SETPIPE_SZ), inside the try that tolerates its absence

                fcntl.fcntl(end.fileno(), 1031, PIPE_BYTES)  # F_SETPIPE_SZ
            except (ImportError, OSError):
                pass

    def send_bytes(self, data: bytes) -> None:
        self.writer.send_bytes(data)

    def recv_bytes(self) -> bytes:
        return self.reader.recv_bytes()

    def poll(self) -> bool:
        return self.reader.poll()

    def fileno(self) -> int:
        return self.reader.fileno()

    def close(self) -> None:
        for end in (self.reader, self.writer):
            try:
                end.close()
            except OSError:
                pass


def _channels(context: Any) -> tuple[_Channel, _Channel]:
    """The owner's and the worker's ends of a new worker's connection."""
    to_worker_r, to_worker_w = context.Pipe(duplex=False)
    to_owner_r, to_owner_w = context.Pipe(duplex=False)
    return _Channel(to_owner_r, to_worker_w), _Channel(to_worker_r, to_owner_w)


def die_with_parent() -> None:
    """Linux: SIGKILL this process when the parent (the thread that forked it) ends, however it ends."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def how_it_ended(process: Any) -> str:
    """How a worker process (``multiprocessing.Process``) ended, for the one line that names it."""
    code = process.exitcode
    if code is not None and code < 0:
        try:
            how = f"killed by {signal.Signals(-code).name}"
        except ValueError:
            how = f"killed by signal {-code}"
        return how + (" (out of memory?)" if code == -signal.SIGKILL else "")
    if code is not None:
        return f"exited with status {code}"
    return "stopped answering"


def stop_processes(processes: Sequence[Any]) -> None:
    """After their pipes were closed: give the processes 2 s to exit, then SIGKILL what is left (not SIGTERM first:
    REML's workers ignore it, :func:`become_worker`)."""
    deadline = time.monotonic() + 2.0
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
    for process in processes:
        if process.is_alive():
            process.kill()
            process.join(1.0)


def become_worker(parent: int) -> None:
    """What a forked worker does first: leave Ctrl-C and SIGTERM to its parent, die with it, compute on one thread.

    Both signals may reach the whole process group (a terminal's Ctrl-C; the SIGTERM of a scheduler or a service
    manager, which signal every process of a job): the parent then checkpoints and stops its workers itself (their
    pipes close; :func:`stop_processes` ends any that lingers with SIGKILL). A worker that died of the signal
    first would instead end the run as a lost worker, without the checkpoint."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    die_with_parent()
    if os.getppid() != parent:  # the parent ended before the death signal was set
        os._exit(0)
    torch.set_num_threads(1)


def error_reply(error: BaseException) -> tuple[str, str]:
    """A worker's reply for an exception its work raised: the parent raises it, named, in one line."""
    return ("error", f"{type(error).__name__}: {' '.join(str(error).split())[:500]}")


def _serve(conn: Any, parent: int, pool: Any, work: Callable[..., Any], inherited: Sequence[Any]) -> None:
    """A worker's loop: read a share, compute it, send the result; end when the pipe closes."""
    for other in inherited:  # the owner's ends of the pipes, copied by fork: closed, so the owner's close reaches us
        other.close()
    become_worker(parent)
    while True:
        try:
            message = conn.recv_bytes()
        except (EOFError, OSError):
            break
        request = pickle.loads(message)
        if request is None:
            break
        try:
            reply: Any = ("ok", work(pool, *request))
        except Exception as error:  # the parent raises it, named; the worker stays usable
            reply = error_reply(error)
        try:
            conn.send_bytes(dumps(reply))
        except (BrokenPipeError, OSError):
            break
    os._exit(0)


def _fork_child(conn: Any, parent: int, function: Callable[[Any], Any], part: Any, inherited: Sequence[Any]) -> None:
    """A :func:`fork_map` process: ``function(part)``, its result (or the exception it raised) sent back, then exit."""
    for other in inherited:  # the parent's ends of the other processes' pipes, copied by fork
        other.close()
    become_worker(parent)
    reply: Any
    try:
        reply = ("ok", function(part))
    except Exception as error:
        try:
            pickle.dumps(error)
            reply = ("raise", error)
        except Exception:
            reply = error_reply(error)
    try:
        conn.send_bytes(dumps(reply))
    except Exception:  # the parent stopped listening (it failed or was interrupted): nothing to report to
        pass
    os._exit(0)  # never run the finalizers of what was inherited (the parent's workers, files, Ray)


def fork_ready() -> bool:
    """Whether this process may fork helpers for :func:`fork_map`: the platform forks, and this is not a daemonic
    process (which multiprocessing forbids to have children), a Ray worker (whose threads a fork would copy) or a
    process that has used CUDA (which a forked process cannot use again)."""
    import multiprocessing  # noqa: PLC0415 - lazy: only asked where a fork is considered

    ray = sys.modules.get("ray")
    in_ray = ray is not None and getattr(ray, "is_initialized", lambda: False)()
    return (
        can_fork() and not multiprocessing.current_process().daemon and not in_ray and not torch.cuda.is_initialized()
    )


def fork_map(function: Callable[[Any], Any], parts: Sequence[Any], *, what: str) -> list[Any]:
    """``[function(part) for part in parts]``, part 0 in this process and each other part in a process forked for it
    (which sees everything ``function`` reads as it is at the fork; its result travels back pickled); results in
    ``parts``' order, so a pure ``function`` gives exactly the one-process list. One process where
    :func:`fork_ready` says no. A forked process that dies (killed, out of memory) raises :class:`WorkerLost`
    naming ``what``; an exception it raised is raised here; a failure or Ctrl-C here kills the forked ones."""
    if len(parts) < 2 or not fork_ready():
        return [function(part) for part in parts]
    context = get_context("fork")
    children: list[tuple[Any, Any]] = []
    try:
        for part in parts[1:]:
            reader, writer = context.Pipe(duplex=False)
            inherited = [reader, *(mine for _, mine in children)]
            process = context.Process(
                target=_fork_child,
                args=(writer, os.getpid(), function, part, inherited),
                name=f"reml-{what}",
                daemon=True,
            )
            process.start()
            writer.close()
            children.append((process, reader))
        raise_if_interrupted()  # a signal that fired in a fork hook (Python swallows it there): stop now, not later
        results = [function(parts[0])]
        for index, (process, reader) in enumerate(children, start=1):
            results.append(_forked_result(process, reader, f"{what} process {index} of {len(parts) - 1}"))
        return results
    finally:
        for process, reader in children:
            reader.close()
            if process.is_alive():
                process.join(0.5)
            if process.is_alive():
                process.kill()
                process.join(1.0)


def await_reply(conn: Any, process: Any) -> tuple[str, Any] | None:
    """A worker process's pickled ``(status, value)`` reply on ``conn``, waiting for it; None when the process
    ended (or closed its end) without one."""
    while True:
        ready = connection.wait([conn, process.sentinel])
        if conn in ready:
            try:
                reply: tuple[str, Any] = pickle.loads(conn.recv_bytes())
            except (EOFError, OSError):
                return None
            return reply
        if process.sentinel in ready and not conn.poll():
            return None


def _forked_result(process: Any, reader: Any, name: str) -> Any:
    """The reply of a :func:`fork_map` process, waiting for it (or its end)."""
    reply = await_reply(reader, process)
    if reply is None:
        process.join(1.0)
        raise WorkerLost(f"{name} (pid {process.pid}) {how_it_ended(process)}")
    status, value = reply
    if status == "raise":
        raise value
    if status == "error":
        raise RuntimeError(f"{name}: {value}")
    return value


class EpisodeWorkers:
    """W - 1 worker processes (started lazily) and the calling process, splitting episode ends.

    ``work(pool, *request)`` runs a share: in a worker on the pool's shared tensors, in the
    calling process on the pool itself; its result must pickle.
    """

    def __init__(self, pool: Any, count: int, work: Callable[..., Any]) -> None:
        self.pool = pool
        self.count = count
        self.work = work  # for end_episodes: functools.partial(end_share, loss_fn=..., config=...)
        self._processes: list[Any] = []
        self._connections: list[Any] = []
        self._storages: list[int] = []

    @property
    def started(self) -> bool:
        return bool(self._processes)

    @property
    def pids(self) -> list[int]:
        return [process.pid for process in self._processes]

    # -- life cycle --------------------------------------------------------------------------

    def _fingerprint(self) -> list[int]:
        return [tensor.untyped_storage().data_ptr() for tensor in shared_tensors(self.pool)]

    def start(self) -> None:
        """Move the pool into shared memory and fork the workers."""
        if self.started or self.count < 2:
            return
        tensors = shared_tensors(self.pool)
        if not tensors or any(tensor.device.type != "cpu" for tensor in tensors):
            self.count = 1  # nothing to share (or a GPU pool): every share stays in this process
            return
        for tensor in tensors:
            tensor.share_memory_()
        self._storages = self._fingerprint()
        context = get_context("fork")
        for index in range(1, self.count):
            mine, theirs = _channels(context)
            process = context.Process(
                target=_serve,
                args=(theirs, os.getpid(), self.pool, self.work, [*self._connections, mine]),
                name=f"reml-worker-{index}",
                daemon=True,
            )
            process.start()
            theirs.close()
            self._processes.append(process)
            self._connections.append(mine)

    def close(self) -> None:
        """Stop every worker (idempotent): close its pipe, then SIGTERM, then SIGKILL what is left."""
        processes, self._processes = self._processes, []
        connections, self._connections = self._connections, []
        for conn in connections:
            try:
                conn.send_bytes(dumps(None))
            except OSError:
                pass
            try:
                conn.close()
            except OSError:
                pass
        stop_processes(processes)

    def __del__(self) -> None:  # a vector env dropped without close(): its workers go with it
        try:
            self.close()
        except Exception:
            pass

    # -- work --------------------------------------------------------------------------------

    def pool_replaced(self) -> bool:
        """Whether the pool's tensors were replaced since the workers were forked (a checkpoint loaded into new
        tensors): they then read stale ones."""
        return self.started and self._fingerprint() != self._storages

    def run(self, shares: Sequence[tuple[Any, ...]], *, check_pool: bool = True) -> list[Any]:
        """``work(pool, *share)`` for each share, share 0 here and share s in worker s; results in share order.
        Workers whose pool was replaced are forked anew first, unless ``check_pool`` is False (a request that
        reads no pool tensor)."""
        if len(shares) > 1:
            self.start()
            if check_pool and self.pool_replaced():
                # the pool's tensors were replaced (a checkpoint loaded, maintenance re-drawn): fork anew from them
                self.close()
                self.start()
        if not self.started or len(shares) == 1:
            return [self.work(self.pool, *share) for share in shares]
        if len(shares) > self.count:
            raise ValueError(f"{len(shares)} shares for {self.count} workers")
        try:
            for index, share in enumerate(shares[1:], start=1):
                self._send(index, self._connections[index - 1], share)
            results = [self.work(self.pool, *shares[0])]
            for index in range(1, len(shares)):
                results.append(self._receive(index))
        except BaseException:  # a failure, or a second Ctrl-C: replies may be pending, so start afresh next time
            self.close()
            raise
        return results

    def end_episodes(
        self, pool: Any, ends: Sequence[Any], *, write_back_rate: float | None, pool_update: Any = None, **options: Any
    ) -> list[Any]:
        """:func:`reml_core.batched.end_episodes`, the ends split across the workers (same arguments).

        Each share is ended on a recording pool; the owner (this process) then replays the
        write-backs in share order, which is env-index order, or takes the protocol update over all
        the step's ends at once. One share (too few ends, one worker) is the unsplit call itself.
        """
        from reml_core.batched import end_episodes  # noqa: PLC0415 - lazy: start-up time: reml_core.batched imports numpy

        loss_fn, config = options.pop("loss_fn"), options.pop("config")
        shares = chunks(len(ends), split_count(len(ends), self.count))
        mine = getattr(self.work, "keywords", {})
        if (
            len(shares) < 2
            or pool is not self.pool
            or mine.get("loss_fn") != loss_fn
            or mine.get("config") is not config
            or (pool_update is not None and pool_update is not mine.get("pool_update"))
            or not _pickles(options.get("appliers"))
        ):
            return end_episodes(
                pool,
                ends,
                loss_fn=loss_fn,
                config=config,
                write_back_rate=write_back_rate,
                pool_update=pool_update,
                **options,
            )
        protocol = pool_update is not None and write_back_rate is not None
        common = {**options, "write_back_rate": write_back_rate, "protocol": protocol}
        results = self.run([("end", tuple(ends[i] for i in share), common) for share in shares])
        outcomes: list[Any] = []
        writes: list[Any] = []
        keep: list[bool] = []
        update_options: dict[str, Any] = {}
        for share_outcomes, share_writes, calls in results:
            outcomes.extend(share_outcomes)
            writes.extend(share_writes)
            for flags, given in calls:
                keep.extend(flags)
                update_options = given
        if protocol and pool_update is not None:
            # the update's gradients split across the workers too (see protocol_gradients); its Adam step is taken here
            pool_update.gradients = partial(self.protocol_gradients, pool_update)
            try:
                pool_update.apply(list(ends), keep, **update_options)
            finally:
                del pool_update.gradients
        else:
            replay(pool, writes)
        return outcomes

    def support_losses(
        self, pool: Any, requests: Sequence[Any], loss_fn: Any, *, batched: bool = True, **options: Any
    ) -> list[float]:
        """:func:`reml_core.batched.support_losses` (same arguments) with the networks cut into one share per worker
        (at least :data:`MIN_SHARE` x 16 networks each): each group of stackable networks is stacked here and its
        rows cut into consecutive shares, which travel as index lists and stacked points (not as request objects),
        and the losses come back in order. Each share is stacked on its own, so a loss can differ from the unsplit
        call's by rounding."""
        from reml_core.batched import stacked_requests, support_losses  # noqa: PLC0415 - lazy: start-up time

        count = split_count(len(requests) // 16, self.count)
        mine = getattr(self.work, "keywords", {})
        if (
            count < 2
            or not batched
            or not isinstance(pool, BatchedLayerPool)
            or pool is not self.pool
            or mine.get("loss_fn") != loss_fn
        ):
            return support_losses(pool, requests, loss_fn, batched=batched, **options)
        groups = stacked_requests(requests)
        shares = []
        for share in range(count):
            parts = []
            for _, indices, x, y in groups:
                rows = slice(round(share * len(indices) / count), round((share + 1) * len(indices) / count))
                parts.append((indices[rows], x[rows], y[rows]))
            shares.append(("losses", tuple(parts), options))
        results = self.run(shares)
        losses = [math.inf] * len(requests)
        for number, (positions, *_) in enumerate(groups):
            values = [value for share in results for value in share[number]]
            for i, value in zip(positions, values):
                losses[i] = value
        return losses

    def protocol_gradients(
        self, update: Any, ends: Sequence[Any], keep: Sequence[bool], **options: Any
    ) -> tuple[list[float], Any]:
        """:meth:`ProtocolPoolUpdate.gradients <reml_core.pool_update.ProtocolPoolUpdate.gradients>` with the kept
        ends cut into one consecutive share per worker: each share's mean gradient comes back and they are
        merged here, in share order, weighted by the networks each share counted (so the merge sums the
        same contributions in another order than one process does: rounding-level differences)."""
        chosen = [i for i, flag in enumerate(keep) if flag]
        shares = chunks(len(chosen), split_count(len(chosen), self.count))
        if len(shares) < 2 or not _pickles(options):
            return type(update).gradients(update, ends, keep, **options)
        requests = [("grad", tuple(ends[chosen[j]] for j in share), options) for share in shares]
        results = self.run(requests)
        losses = [math.nan] * len(ends)
        counts = []
        for share, (share_losses, _) in zip(shares, results):
            counts.append(sum(math.isfinite(value) for value in share_losses))
            for j, value in zip(share, share_losses):
                losses[chosen[j]] = value
        return losses, merge_gradients(counts, [gradients for _, gradients in results])

    def _describe(self, index: int) -> str:
        process = self._processes[index - 1]
        return f"training worker {index} of {self.count} (pid {process.pid}) {how_it_ended(process)}"

    def _lost(self, index: int) -> WorkerLost:
        process = self._processes[index - 1]
        process.join(1.0)
        error = WorkerLost(self._describe(index))
        self.close()
        return error

    def _send(self, index: int, conn: Any, share: tuple[Any, ...]) -> None:
        try:
            conn.send_bytes(dumps(share))
        except (BrokenPipeError, ConnectionResetError, OSError):
            raise self._lost(index) from None

    def _receive(self, index: int) -> Any:
        reply = await_reply(self._connections[index - 1], self._processes[index - 1])
        if reply is None:
            raise self._lost(index)
        status, value = reply
        if status == "error":
            raise RuntimeError(f"training worker {index}: {value}")
        return value


def merge_gradients(
    counts: Sequence[int], gradients: Sequence[Sequence[torch.Tensor] | None]
) -> list[torch.Tensor] | None:
    """The mean gradient over all shares from each share's mean and the count of networks it averages,
    summed in share order (None when no network counted)."""
    total = sum(counts)
    if not total:
        return None
    merged: list[torch.Tensor] | None = None
    for count, parts in zip(counts, gradients):
        if parts is None or not count:
            continue
        weight = count / total
        if merged is None:
            merged = [gradient.mul(weight) for gradient in parts]
        else:
            for into, gradient in zip(merged, parts):
                into.add_(gradient, alpha=weight)
    return merged


def _pickles(value: Any) -> bool:
    if not value:
        return True
    try:
        pickle.dumps(value)
    except Exception:
        return False
    return True


def split_count(total: int, count: int) -> int:
    """How many shares ``total`` ended episodes are cut into with ``count`` workers (1: no split): at
    least :data:`MIN_SHARE` ends per share, since a smaller stack pays the fixed cost of a stacked
    step for too few networks, and sending it costs more than it saves (docs/performance.md)."""
    if count < 2:
        return 1
    return max(1, min(count, total // MIN_SHARE))


def make_workers(envs: Sequence[Any], count: int, serve: Callable[..., Any] | None = None) -> EpisodeWorkers:
    """The workers of a vector env of ``envs`` (their pool, loss and settings are the first one's); ``serve``
    answers the requests on a shard of the envs (:data:`SHARD_REQUESTS`; the vector env's
    :func:`reml_core.shards.shard_work`). Forked workers inherit every env, Ray actors rebuild theirs."""
    if not _RAY and count > 1 and not can_fork():
        raise UserError(
            f"train.workers = {count}: this platform ({sys.platform}) cannot fork processes, and the workers are "
            "forked from the run's process (they inherit its envs and its pool in shared memory); "
            "set train.workers = 1, or run with --executor ray, whose actors need no fork"
        )
    env = envs[0]
    share = partial(
        work,
        loss_fn=env.task_sampler.loss,
        config=env.config,
        pool_update=env.pool_update,
        envs=envs,
        serve=serve,
    )
    if _RAY:
        return RayEpisodeWorkers(env.pool, count, share, _RAY["ray"], _RAY["config"], _RAY["build"])
    return EpisodeWorkers(env.pool, count, share)


# -- the same workers as Ray actors (reml-run --executor ray) -------------------------------------

#: Set by :func:`ray_workers` for the length of a run: Ray, and the run's config the actors rebuild from.
_RAY: dict[str, Any] = {}


@contextmanager
def ray_workers(config: Any, address: str | None = None, *, build: Callable[[Any], Any]) -> Iterator[None]:
    """For the length of the block, a run's ``train.workers`` are Ray actors (on a local instance, or the
    cluster at ``address``) instead of forked processes; ``config`` is the run's RunConfig, and ``build``
    what each actor rebuilds the run's components with from it (:func:`reml_core.experiment.build_components`,
    passed in: the experiment builds the vector env, which makes these workers)."""
    with ray_session("--executor ray", address=address) as ray:
        _RAY.update(ray=ray, config=config.to_dict(), disabled=getattr(config, "disabled", None), build=build)
        try:
            yield
        finally:
            _RAY.clear()


class _RayWorker:
    """A Ray actor holding its own copy of the run's components; each share arrives with the pool's state."""

    def __init__(
        self, config: dict[str, Any], build: Callable[[Any], Any], serve: Callable[..., Any] | None = None
    ) -> None:
        from reml_core.config import resolve_config  # noqa: PLC0415 - lazy: start-up time: reml_core.config imports numpy
        from reml_core.registry import PluginRegistry  # noqa: PLC0415 - lazy: start-up time: reml_core.registry imports pluggy

        keep_freed_memory()  # a Ray actor is not forked from the run's process: it sets its own heap
        torch.set_num_threads(1)
        resolved = resolve_config(PluginRegistry.discover(), config)
        self.components = build(resolved)
        self.pool = self.components.pool
        self.envs: list[Any] = []
        self.work = partial(
            work,
            loss_fn=self.components.task_sampler.loss,
            config=resolved.core.env,
            pool_update=self.components.pool_update,
            envs=self.envs,
            serve=serve,
        )

    def adopt(self, start: int, states: bytes) -> None:
        """Take over the vector env's envs ``start``, ``start + 1``, ... (their :meth:`shard_state`): a shard of them
        is this actor's to step from now on (:mod:`reml_core.shards`)."""
        taken = pickle.loads(states)
        self.envs[:] = [None] * (start + len(taken))
        for index, state in enumerate(taken, start=start):
            env = self.components.make_env(mode="train", seed=state["_seed"])  # its own task stream's seed
            env.load_shard_state(state)
            self.envs[index] = env

    def run(self, state: dict[str, torch.Tensor], share: bytes) -> bytes:
        try:
            self.pool.load_state_dict(state)
            reply: Any = ("ok", self.work(self.pool, *pickle.loads(share)))
        except Exception as error:
            reply = error_reply(error)
        return dumps(reply)


class RayEpisodeWorkers(EpisodeWorkers):
    """:class:`EpisodeWorkers` whose W - 1 workers are Ray actors (one CPU each), possibly on other machines.

    Nothing is shared in memory there: the pool's state goes to Ray's object store once per split
    step, or per step when the actors step shards of the envs (``ray.put``; actors on one node read
    the same copy) and each actor loads it before its share. An actor rebuilds the run's components
    from its config and, the first time it steps a shard, that shard's envs from the state they
    have in this process (:meth:`~reml_core.env.CompositionEnv.shard_state`). The split, the merge
    and the numbers are the forked workers' exactly.
    """

    def __init__(
        self,
        pool: Any,
        count: int,
        work: Callable[..., Any],
        ray: Any,
        config: dict[str, Any],
        build: Callable[[Any], Any],
    ) -> None:
        super().__init__(pool, count, work)
        self.ray = ray
        self.config = config
        self.build = build
        self._actors: list[Any] = []
        self._adopted: set[int] = set()  # the actors that hold their shard's envs

    @property
    def started(self) -> bool:
        return bool(self._actors)

    @property
    def pids(self) -> list[int]:
        return []

    def start(self) -> None:
        if self._actors or self.count < 2:
            return
        actor = self.ray.remote(num_cpus=1, max_restarts=0, max_task_retries=0)(_RayWorker)
        serve = getattr(self.work, "keywords", {}).get("serve")
        self._actors = [actor.remote(self.config, self.build, serve) for _ in range(self.count - 1)]

    def pool_replaced(self) -> bool:
        return False  # the pool's state travels with every request

    def close(self) -> None:
        self._adopted = set()
        actors, self._actors = self._actors, []
        for actor in actors:
            try:
                self.ray.kill(actor)
            except Exception:
                pass

    def run(self, shares: Sequence[tuple[Any, ...]], *, check_pool: bool = True) -> list[Any]:
        if len(shares) > 1:
            self.start()
        if not self._actors or len(shares) == 1:
            return [self.work(self.pool, *share) for share in shares]
        for index, (actor, share) in enumerate(zip(self._actors, shares[1:]), start=1):
            if share[0] in SHARD_REQUESTS and index not in self._adopted:  # its envs, as this process has them now
                start, stop = share[1][:2]
                envs = self.work.keywords["envs"][start:stop]  # type: ignore[attr-defined]
                self.ray.get(actor.adopt.remote(start, dumps([env.shard_state() for env in envs])))
                self._adopted.add(index)
        state = self.ray.put({key: value.contiguous() for key, value in self.pool.state_dict().items()})
        refs = [actor.run.remote(state, dumps(share)) for actor, share in zip(self._actors, shares[1:])]
        try:
            results = [self.work(self.pool, *shares[0])]
            for index, ref in enumerate(refs, start=1):
                try:
                    status, value = pickle.loads(self.ray.get(ref))
                except self.ray.exceptions.RayActorError as error:
                    reason = " ".join(str(error).split())[:200]
                    raise WorkerLost(f"training worker {index} of {self.count} (a Ray actor) died: {reason}") from None
                if status == "error":
                    raise RuntimeError(f"training worker {index}: {value}")
                results.append(value)
        except BaseException:
            self.close()
            raise
        return results
