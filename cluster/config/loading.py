"""Loading a run file: YAML + overlays + ``key.path=value`` overrides -> ``RunConfig`` (or, for a file with
``stages:``, a ``StagedConfig``), with errors that name the file, the field, its line and what is allowed."""

from __future__ import annotations

import os
from pathlib import Path

import yaml
from pydantic import ValidationError

from relay_rl.errors import ConfigError

from .messages import format_errors
from .run import RunConfig
from .stages import StagedConfig, validate_stages
from .yaml_io import apply_override, merge, read_yaml, resolve_paths


def load_config(path: str | os.PathLike, overrides: list[str] = ()) -> RunConfig | StagedConfig:
    """The run file, then each override in order: ``key.path=value``, or an overlay file (``*.yaml`` merged into the
    run file section by section, e.g. ``deploy/overlays/kit.yaml`` to try a paper recipe on the quickstart kit).

    Relative paths resolve from the folder of the file that names them (the run file's, an overlay's; the current
    directory for command-line overrides); ``~`` and ``$VARS`` are expanded."""
    path = Path(os.path.expandvars(os.path.expanduser(str(path))))
    raw, lines = read_yaml(path)
    resolve_paths(raw, path.parent)
    for item in overrides:
        if "=" not in item and item.endswith((".yaml", ".yml")):
            layer_path = Path(os.path.expandvars(os.path.expanduser(item)))
            layer, layer_lines = read_yaml(layer_path, what="overlay file")
            resolve_paths(layer, layer_path.parent)
            merge(raw, layer)
            lines.update(layer_lines)
        else:
            apply_override(raw, item, path)
    raw.setdefault("run_dir", str(path.parent.resolve()))
    if "stages" in raw:  # several families in sequence (cluster/config/stages.py)
        return validate_stages(raw, source=str(path), lines=lines, overrides=overrides)
    return validate_dict(raw, source=str(path), lines=lines, overrides=overrides)


def validate_dict(raw: dict, source: str = "<dict>", lines: dict | None = None, overrides=()) -> RunConfig:
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(format_errors(e, source, lines or {}, overrides)) from None


def dump_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
