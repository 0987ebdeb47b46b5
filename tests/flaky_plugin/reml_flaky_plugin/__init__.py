"""A baseline that behaves like ``scratch`` unless told to fail, for the tests of failing benchmark jobs.

``REML_TEST_FLAKY_SEED=N`` makes its meta-training for seed N fail: ``REML_TEST_FLAKY_MODE=raise``
(the default) raises, ``die`` ends the process at once (as a worker killed by the OS would).
"""

from __future__ import annotations

import hashlib
import os

import torch
from pydantic import BaseModel, ConfigDict

from reml_core import hookimpl
from reml_core.specs import BaselineSpec


class FlakyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FlakyBaseline:
    def __init__(self, config, context):
        if context.pool is None:
            raise ValueError("the flaky baseline needs the run's layer pool")
        self.pool, self.depth, self.seed = context.pool, context.depth, context.seed

    def meta_train(self, tasks, progress=True):
        if os.environ.get("REML_TEST_FLAKY_SEED") == str(self.seed):
            if os.environ.get("REML_TEST_FLAKY_MODE", "raise") == "die":
                os._exit(3)
            raise RuntimeError(f"flaky failed on purpose for seed {self.seed}")
        return {}

    def network_for(self, task, shots):
        digest = hashlib.sha256(f"{self.seed}/{task.task_id}".encode()).digest()
        return self.pool.fresh_network(self.depth, torch.Generator().manual_seed(int.from_bytes(digest[:4], "little")))

    def save(self, directory):
        (directory / "flaky.txt").write_text("nothing to save\n")

    def load(self, directory):
        pass


@hookimpl
def reml_baselines():
    yield BaselineSpec(
        name="flaky",
        factory=FlakyBaseline,
        config_model=FlakyConfig,
        description="test only: scratch that fails for REML_TEST_FLAKY_SEED",
        compare_in=(),
    )
