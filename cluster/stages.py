"""Stages: several method families in sequence from one run file (DESIGN.md §8; the DeepSeek-R1 pipeline).

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
import json
import os
import re
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Optional

import yaml
from pydantic import ValidationError

from .config import ConfigError, RunConfig
from .loading import _format_errors, _merge, apply_override

STAGE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
STAGES_FILE = "stages.json"


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
        raise ConfigError(f"{where}: stages: a list of stages, each a mapping with a name and the sections it sets "
                          "(algorithm, data, train, ...)")
    base = {k: v for k, v in raw.items() if k != "stages"}
    if "algorithm" in base:
        raise ConfigError(f"{lines.get(('algorithm',), source)}: algorithm: a staged run file sets algorithm: in each "
                          "stage (the families' knobs differ); move it into the stages (an overlay: a stages: list "
                          "whose items name the stage they change)")
    model = (base.get("model") or {}).get("name_or_path")
    names = []
    for i, st in enumerate(stages):
        at = lines.get(("stages", i), where)
        name = st.get("name")
        if not isinstance(name, str) or not STAGE_NAME.match(name):
            raise ConfigError(f"{at}: stages[{i}].name: each stage needs a name of letters, digits, '_', '-', '.' (it "
                              f"names the stage's folder and its overrides), got {name!r}")
        if name in names:
            raise ConfigError(f"{at}: stages[{i}].name: {name!r} is used twice; stage names must differ")
        names.append(name)
        for key in ("kit", "stages", "output_dir", "run_dir"):
            if key in st:
                raise ConfigError(f"{lines.get(('stages', i, key), at)}: stages.{name}.{key}: set once, at the top "
                                  "of the run file, for all stages")
        own_model = (st.get("model") or {}).get("name_or_path") if isinstance(st.get("model"), dict) else None
        if own_model is not None and own_model != model:
            raise ConfigError(f"{lines.get(('stages', i, 'model', 'name_or_path'), at)}: "
                              f"stages.{name}.model.name_or_path: {own_model!r} differs from the run's model "
                              f"({model!r}). A stage starts from the previous stage's final weights, so the model "
                              "and its tokenizer are set once, at the top (model.name_or_path): remove it from the "
                              "stage")
    everywhere = [o for o in overrides if "=" in o and not o.split("=", 1)[0].strip().startswith("stages.")]
    out = []
    for i, (name, st) in enumerate(zip(names, stages)):
        merged = copy.deepcopy(base)
        _merge(merged, copy.deepcopy({k: v for k, v in st.items() if k != "name"}))
        merged["name"] = f"{base.get('name', 'run')}-{name}"
        for o in everywhere:  # the command line's last word, in every stage
            apply_override(merged, o, source)
        try:
            out.append(Stage(name, RunConfig.model_validate(merged)))
        except ValidationError as e:
            raise ConfigError(_format_errors(e, source, lines, overrides, stage=(i, name, st))) from None
    return StagedConfig(name=base.get("name", "run"), output_dir=base.get("output_dir"), stages=out)


def with_model(cfg: RunConfig, path) -> RunConfig:
    """``cfg`` starting from the weights at ``path`` (the previous stage's final checkpoint)."""
    return cfg.model_copy(update={"model": cfg.model.model_copy(update={"name_or_path": str(path)})})


def dump(staged: StagedConfig) -> str:
    return yaml.safe_dump({"name": staged.name, "stages": [{"name": s.name, **s.cfg.model_dump(mode="json")}
                                                           for s in staged.stages]}, sort_keys=False)


# ----------------------------------------------------------------------------------------------------------------
# running
# ----------------------------------------------------------------------------------------------------------------
def train_stages(staged: StagedConfig, output_dir: str | None = None, log=None, overwrite: bool = False,
                 resume: str | None = None) -> dict:
    """Run the stages in order, each from the previous one's final weights. ``resume`` ("auto", or the run folder):
    stages marked done are skipped, the first unfinished one continues from its newest checkpoint (or starts over
    when it has none). Returns the last stage's final metrics with every stage's summary under ``stages``."""
    import ray
    from tqdm import tqdm

    from . import checkpoint as checkpoints
    from .controller import _env_address, train
    from .kit import ensure_kit, kit_parts_needed, reward_kit_paths
    from .preflight import preflight
    from .runtime import init_ray

    log = log or (lambda msg: tqdm.write(msg, file=sys.stderr))
    chosen = output_dir or staged.output_dir or (resume if resume not in (None, "auto") else None) \
        or f"runs/{staged.name}-{datetime.now():%Y%m%d-%H%M%S}"
    out = Path(os.path.expandvars(os.path.expanduser(chosen))).resolve()
    state = _read_state(out)
    if resume and state is None:
        raise ConfigError(f"--resume: {out} holds no staged run ({STAGES_FILE} is missing): give the run folder "
                          "with --output")
    if not resume:
        if state is not None and not overwrite:
            raise ConfigError(f"output folder {out} already holds a staged run ({STAGES_FILE}): give another --output, "
                              "add --overwrite to replace it, or --resume auto to continue it")
        state = {"name": staged.name, "stages": {s.name: {"status": "pending"} for s in staged.stages}}
    first = staged.stages[0].cfg
    if staged.kit is not None:
        parts = [p for s in staged.stages for p in kit_parts_needed(
            s.cfg.model.name_or_path, s.cfg.teacher.name_or_path if s.cfg.teacher and s.cfg.needs.teacher_model
            else None, *reward_kit_paths(s.cfg.reward))]
        ensure_kit(staged.kit, log=log, parts=tuple(dict.fromkeys(parts)))
    for s in staged.stages:  # every stage, before any actor: its data, rewards and the run's model
        preflight(s.cfg, kit_built=True)
    out.mkdir(parents=True, exist_ok=True)
    started_ray = not ray.is_initialized() and not (first.cluster.address or _env_address())
    init_ray(first.cluster.address, first.cluster.namespace, log)
    result, previous = {}, None
    try:
        for i, stage in enumerate(staged.stages):
            folder, record = out / stage.name, state["stages"].setdefault(stage.name, {"status": "pending"})
            if record["status"] == "done" and (folder / "final").is_dir():
                log(f"[relay-rl] stage {i + 1}/{len(staged.stages)} {stage.name}: done, skipped")
                previous = folder / "final"
                continue
            cfg = stage.cfg if previous is None else with_model(stage.cfg, previous)
            again = "auto" if resume and checkpoints.checkpoints(folder) else None
            log(f"[relay-rl] stage {i + 1}/{len(staged.stages)} {stage.name} ({cfg.algorithm.name}) from "
                f"{cfg.model.name_or_path}" + (" (resuming its newest checkpoint)" if again else ""))
            record.update(status="running", algorithm=cfg.algorithm.name, output=str(folder))
            _write_state(out, state)
            t0 = time.time()
            result = train(cfg, output_dir=str(folder), log=log, overwrite=again is None, resume=again)
            record.update(status="done", steps=result.get("step"), wall_s=round(time.time() - t0, 1),
                          **_accuracies(folder))
            _write_state(out, state)
            previous = folder / "final"
        _link_final(out, previous)
    finally:
        if started_ray:
            ray.shutdown()
    log(summary(state))
    return {**result, "output_dir": str(out), "stages": state["stages"]}


def _accuracies(folder: Path) -> dict:
    """The stage's held-out accuracy when it started and when it ended (from its metrics)."""
    evals = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in evals if "eval/accuracy" in r]
    return {"eval_accuracy_start": evals[0]["eval/accuracy"], "eval_accuracy": evals[-1]["eval/accuracy"]} \
        if evals else {}


def _read_state(out: Path) -> dict | None:
    try:
        return json.loads((out / STAGES_FILE).read_text())
    except (OSError, ValueError):
        return None


def _write_state(out: Path, state: dict) -> None:
    tmp = out / f".{STAGES_FILE}.tmp"
    tmp.write_text(json.dumps(state, indent=1))
    os.replace(tmp, out / STAGES_FILE)


def _link_final(out: Path, final: Path | None) -> None:
    """``<run>/final``: the last stage's final weights (a relative link, so the run folder can move)."""
    link = out / "final"
    if final is None:
        return
    if link.is_symlink():
        link.unlink()
    link.symlink_to(os.path.relpath(final, out), target_is_directory=True)


def summary(state: dict) -> str:
    rows = [("stage", "algorithm", "steps", "eval accuracy", "wall")]
    for name, r in state["stages"].items():
        acc = (f"{r['eval_accuracy_start']:.3f} -> {r['eval_accuracy']:.3f}" if "eval_accuracy" in r else "-")
        rows.append((name, r.get("algorithm", "-"), str(r.get("steps", "-")), acc,
                     f"{r['wall_s']:.0f} s" if "wall_s" in r else r["status"]))
    widths = [max(len(row[c]) for row in rows) for c in range(5)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows]
    return "relay-rl stages\n" + "\n".join(lines)
