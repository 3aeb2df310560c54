"""The run file: its models (``run``, ``sections``, ``cluster_spec``, ``stages``) and its loading (YAML, overlays,
overrides, errors with file and line). Import from here: ``from relay_rl.cluster.config import RunConfig,
load_config``."""

from .cluster_spec import ClusterSpec, CriticPoolSpec, LearnerPoolSpec, PoolSpec
from .loading import dump_config, load_config, validate_dict
from .run import FAMILY_NAMES, AlgorithmConfig, RunConfig, Schedule, resolve_schedule
from .sections import (
    DataConfig,
    KitConfig,
    ModelConfig,
    RewardConfig,
    RewardFuncSpec,
    RolloutConfig,
    TeacherModelConfig,
    TrainConfig,
    VLLMConfig,
    WarmStartConfig,
)
from .stages import Stage, StagedConfig, dump, with_model
from .yaml_io import apply_override

__all__ = [
    "FAMILY_NAMES",
    "AlgorithmConfig",
    "ClusterSpec",
    "CriticPoolSpec",
    "DataConfig",
    "KitConfig",
    "LearnerPoolSpec",
    "ModelConfig",
    "PoolSpec",
    "RewardConfig",
    "RewardFuncSpec",
    "RolloutConfig",
    "RunConfig",
    "Schedule",
    "Stage",
    "StagedConfig",
    "TeacherModelConfig",
    "TrainConfig",
    "VLLMConfig",
    "WarmStartConfig",
    "apply_override",
    "dump",
    "dump_config",
    "load_config",
    "resolve_schedule",
    "validate_dict",
    "with_model",
]
