"""What seeded task families share: independent random streams per split, and the held-out sets.

A family that draws its tasks one at a time from a numpy generator (``_task(rng, task_id, split)``)
subclasses :class:`SeededSplits` and gets ``train_stream``, ``validation_tasks`` and ``test_tasks``:
the training stream from the run's seed, the validation and test sets from ``config.test_seed``
alone (never the run seed), each split from its own stream (``spawn_key``), so no held-out task
ever comes out of the training stream and a held-out set is the same whatever the run.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from reml_core.interfaces import Task

#: The streams every family has; a family may add its own (``sine``'s ``train-batches``, the image families' ``split``).
SPLIT_KEYS: Mapping[str, int] = {"train": 0, "validation": 1, "test": 2}


def split_generator(entropy: int, key: int) -> np.random.Generator:
    """The numpy generator of one stream: seed ``entropy``, stream ``key`` (independent of every other key)."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(entropy, spawn_key=(key,))))


class SeededSplits:
    """Training stream and held-out sets of a family that draws tasks with :meth:`_task` (see the module)."""

    config: Any  #: with ``test_seed``, the seed of the held-out sets
    stream_keys: Mapping[str, int] = SPLIT_KEYS

    def _stream(self, entropy: int, name: str) -> np.random.Generator:
        return split_generator(entropy, self.stream_keys[name])

    def _task(self, rng: np.random.Generator, task_id: str, split: str) -> Task:
        raise NotImplementedError

    def train_stream(self, seed: int) -> Iterator[Task]:
        rng = self._stream(seed, "train")
        index = 0
        while True:
            yield self._task(rng, f"train-s{seed}-{index}", "train")
            index += 1

    def _held_out(self, split: str, count: int) -> list[Task]:
        rng = self._stream(self.config.test_seed, split)
        return [self._task(rng, f"{split}-{index}", split) for index in range(count)]

    def validation_tasks(self, count: int) -> list[Task]:
        return self._held_out("validation", count)

    def test_tasks(self, count: int) -> list[Task]:
        return self._held_out("test", count)
