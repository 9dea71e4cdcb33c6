"""Hash models: a timm backbone + a hash head, and the on-disk model artifact."""

from hashkd.models import backbones  # noqa: F401  (registers the vitc_* timm models)
from hashkd.models.artifact import ArtifactError, load_artifact, save_artifact
from hashkd.models.complexity import artifact_cost, count_flops, count_parameters, model_cost
from hashkd.models.hash_model import HashModel, ModelConfig, build_model, sign_ste

__all__ = [
    "ArtifactError",
    "HashModel",
    "ModelConfig",
    "artifact_cost",
    "build_model",
    "count_flops",
    "count_parameters",
    "load_artifact",
    "model_cost",
    "save_artifact",
    "sign_ste",
]
