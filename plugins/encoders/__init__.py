"""The ``encoders`` plugin: state encoders that work for any task family that offers what they read.

``oracle`` reads a task's descriptor (privileged, as in the thesis); ``support-set`` reads only the
K support points of a family with 1-D inputs and targets; ``prototypes`` reads only the K-shot
support images of a classification family (each class's mean image, pooled to a small grid).
They live apart from any family so that disabling or replacing a family leaves them available to every other.
"""

from __future__ import annotations

from reml_core import hookimpl
from reml_core.specs import StateEncoderSpec
from reml_plugins.encoders.generic import OracleConfig, SupportSetConfig, build_oracle, build_support_set
from reml_plugins.encoders.prototypes import PrototypesConfig, build_prototypes


@hookimpl
def reml_state_encoders():
    yield StateEncoderSpec(
        name="oracle",
        factory=build_oracle,
        config_model=OracleConfig,
        description=(
            "The task's true descriptor (e.g. a sinusoid's amplitude and phase), as in the thesis; privileged "
            "information."
        ),
    )
    yield StateEncoderSpec(
        name=("support-set"),
        factory=build_support_set,
        config_model=SupportSetConfig,
        description=(
            "Only the K support points (1-D x and y), sorted, scaled by the family's ranges and padded with a mask; no "
            "privileged information."
        ),
    )
    yield StateEncoderSpec(
        name="prototypes",
        factory=build_prototypes,
        config_model=PrototypesConfig,
        description=(
            "Only the K-shot support images of a classification task: each class's mean image pooled to a small grid, "
            "then K; not privileged."
        ),
    )
