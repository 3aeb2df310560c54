"""Stages: several method families in sequence from one run file (docs/methods/sft.md; the DeepSeek-R1 pipeline).

    name: r1_pipeline
    model: {name_or_path: ...}       # the model (and its tokenizer), once: the first stage starts from it
    data: ...                        # sections every stage starts from (data, rollout, reward, train, cluster, ...;
                                     # not algorithm: each stage names its own family and knobs)
    stages:
      - name: cold_start             # a stage: run-file sections merged over those, section by section
        algorithm: {name: sft}
        data: {completion_column: r1_completion}
      - name: reasoning_rl
        algorithm: {name: grpo, beta: 0.001}

Stage i starts from stage i-1's final weights. Each stage is a run of its own in ``<run>/<stage name>/`` (config,
metrics, reward curve, checkpoints, final/), resumable on its own; ``<run>/stages.json`` says which stages are done
and what each reached; ``<run>/final`` is the last stage's final weights. Every stage is validated and pre-flight
checked before any actor starts. ``key.path=value`` on the command line applies to every stage,
``stages.<name>.key.path=value`` to one; an overlay's ``stages:`` merges into the stages of the same name.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from typing import Optional

import yaml
from pydantic import ValidationError

from relay_rl.errors import ConfigError

from .messages import format_errors
from .run import RunConfig
from .yaml_io import apply_override, merge

STAGE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


@dataclass
class Stage:
    name: str
    cfg: RunConfig  # complete; its model is the run's first model until the previous stage has finished


@dataclass
class StagedConfig:
    name: str
    output_dir: Optional[str]
    stages: list[Stage]

    @property
    def kit(self):
        return self.stages[0].cfg.kit


def validate_stages(raw: dict, source: str = "<dict>", lines: dict | None = None, overrides=()) -> StagedConfig:
    """The run file's stages, each merged over the top-level sections and validated as a run file; ConfigErrors name
    the stage, the field and its line."""
    lines = lines or {}
    stages = raw.get("stages")
    where = lines.get(("stages",), source)
    if not isinstance(stages, list) or not stages or not all(isinstance(s, dict) for s in stages):
        raise ConfigError(
            f"{where}: stages: a list of stages, each a mapping with a name and the sections it sets "
            "(algorithm, data, train, ...)"
        )
    base = {k: v for k, v in raw.items() if k != "stages"}
    if "algorithm" in base:
        raise ConfigError(
            f"{lines.get(('algorithm',), source)}: algorithm: a staged run file sets algorithm: in each "
            "stage (the families' knobs differ); move it into the stages (an overlay: a stages: list "
            "whose items name the stage they change)"
        )
    model = (base.get("model") or {}).get("name_or_path")
    names = []
    for i, st in enumerate(stages):
        at = lines.get(("stages", i), where)
        name = st.get("name")
        if not isinstance(name, str) or not STAGE_NAME.match(name):
            raise ConfigError(
                f"{at}: stages[{i}].name: each stage needs a name of letters, digits, '_', '-', '.' (it "
                f"names the stage's folder and its overrides), got {name!r}"
            )
        if name in names:
            raise ConfigError(f"{at}: stages[{i}].name: {name!r} is used twice; stage names must differ")
        names.append(name)
        for key in ("kit", "stages", "output_dir", "run_dir"):
            if key in st:
                raise ConfigError(
                    f"{lines.get(('stages', i, key), at)}: stages.{name}.{key}: set once, at the top "
                    "of the run file, for all stages"
                )
        own_model = (st.get("model") or {}).get("name_or_path") if isinstance(st.get("model"), dict) else None
        if own_model is not None and own_model != model:
            raise ConfigError(
                f"{lines.get(('stages', i, 'model', 'name_or_path'), at)}: "
                f"stages.{name}.model.name_or_path: {own_model!r} differs from the run's model "
                f"({model!r}). A stage starts from the previous stage's final weights, so the model "
                "and its tokenizer are set once, at the top (model.name_or_path): remove it from the "
                "stage"
            )
    everywhere = [o for o in overrides if "=" in o and not o.split("=", 1)[0].strip().startswith("stages.")]
    out = []
    for i, (name, st) in enumerate(zip(names, stages)):
        merged = copy.deepcopy(base)
        merge(merged, copy.deepcopy({k: v for k, v in st.items() if k != "name"}))
        merged["name"] = f"{base.get('name', 'run')}-{name}"
        for o in everywhere:  # the command line's last word, in every stage
            apply_override(merged, o, source)
        try:
            out.append(Stage(name, RunConfig.model_validate(merged)))
        except ValidationError as e:
            raise ConfigError(format_errors(e, source, lines, overrides, stage=(i, name, st))) from None
    return StagedConfig(name=base.get("name", "run"), output_dir=base.get("output_dir"), stages=out)


def with_model(cfg: RunConfig, path) -> RunConfig:
    """``cfg`` starting from the weights at ``path`` (the previous stage's final checkpoint)."""
    return cfg.model_copy(update={"model": cfg.model.model_copy(update={"name_or_path": str(path)})})


def dump(staged: StagedConfig) -> str:
    return yaml.safe_dump(
        {"name": staged.name, "stages": [{"name": s.name, **s.cfg.model_dump(mode="json")} for s in staged.stages]},
        sort_keys=False,
    )
