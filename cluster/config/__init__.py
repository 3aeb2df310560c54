"""The run file: its models (``run``, ``sections``, ``cluster_spec``, ``stages``) and its loading (YAML, overlays,
overrides, errors with file and line). Import from here: ``from relay_rl.cluster.config import RunConfig,
load_config``."""
from .cluster_spec import ClusterSpec, CriticPoolSpec, LearnerPoolSpec, PoolSpec  # noqa: F401
from .loading import dump_config, load_config, validate_dict  # noqa: F401
from .run import FAMILY_NAMES, AlgorithmConfig, RunConfig, Schedule, resolve_schedule  # noqa: F401
from .sections import (DataConfig, KitConfig, ModelConfig, RewardConfig, RewardFuncSpec, RolloutConfig,  # noqa: F401
                       TeacherModelConfig, TrainConfig, VLLMConfig, WarmStartConfig)
from .stages import Stage, StagedConfig, dump, with_model  # noqa: F401
from .yaml_io import apply_override  # noqa: F401
