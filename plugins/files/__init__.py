"""The ``files`` plugin: your own tasks without writing a plugin.

- ``--plugin files --set task.root=DIR``: regression, one task per CSV or NPZ file (input and output
  columns named in the config, any number of each; files of any length), split into meta-training,
  validation and test tasks by subfolders or by a seeded split of the files
  (:mod:`reml_plugins.files.sampler`);
- ``--plugin image-folder --set task.root=DIR``: N-way K-shot classification from a folder of
  images with one subfolder per class (:mod:`reml_plugins.files.images`), on the conv pool;
- ``support-points``: a fair encoder for regression families of any input and output width
  (:mod:`reml_plugins.files.encoder`).

From Python, tasks held in memory (arrays or torch Datasets): :func:`save_tasks` writes them as
such a folder and returns the ``task`` settings for :func:`reml_core.run` (a run on them can then be
resumed and loaded like any other); :meth:`FileTaskSampler.from_arrays` and
:meth:`FileTaskSampler.from_dataset` build the sampler itself.
"""

from __future__ import annotations

from reml_core import hookimpl
from reml_core.specs import Recommendation, StateEncoderSpec, TaskSamplerSpec
from reml_plugins.files.encoder import SupportPointsConfig, build_support_points
from reml_plugins.files.sampler import FilesConfig, FileTaskSampler, read_or_refuse, save_tasks

__all__ = ["FilesConfig", "FileTaskSampler", "save_tasks"]


@hookimpl
def reml_task_samplers():
    yield TaskSamplerSpec(
        name="files",
        factory=lambda config, context: read_or_refuse(config),
        config_model=FilesConfig,
        description=(
            "Your own regression tasks: one per CSV or NPZ file in task.root (columns named by task.inputs and "
            "task.outputs)."
        ),
        recommended=Recommendation(encoder="support-points", pool="dense", reward="neg-mse", policy="ppo-mlp"),
    )
    from reml_plugins.files.images import IMAGE_FOLDER_SPEC  # noqa: PLC0415 - lazy: import cycle: reml_plugins.files.images imports this module

    yield IMAGE_FOLDER_SPEC


@hookimpl
def reml_state_encoders():
    yield StateEncoderSpec(
        name="support-points",
        factory=build_support_points,
        config_model=SupportPointsConfig,
        description=(
            "Only the K support points of a regression task with any number of inputs and targets, scaled per column "
            "by "
            "the family's meta-training scales, sorted and padded with a mask; no privileged information."
        ),
    )
