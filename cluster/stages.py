"""Running a staged run file (``stages:``, the DeepSeek-R1 pipeline; its models: ``cluster/config/stages.py``): each
stage a run of its own in ``<run>/<stage name>/``, from the previous stage's final weights; ``<run>/stages.json``
says which stages are done and what each reached; ``<run>/final`` is the last stage's final weights."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from relay_rl.errors import ConfigError

from . import checkpoint as checkpoints
from .config import StagedConfig, with_model
from .kit.build import ensure_kit
from .kit.paths import parts_for
from .preflight import preflight
from .runner import output_folder, train
from .runtime import ray_session

STAGES_FILE = "stages.json"


def train_stages(
    staged: StagedConfig, output_dir: str | None = None, log=None, overwrite: bool = False, resume: str | None = None
) -> dict:
    """Run the stages in order, each from the previous one's final weights. ``resume`` ("auto", or the run folder):
    stages marked done are skipped, the first unfinished one continues from its newest checkpoint (or starts over
    when it has none). Returns the last stage's final metrics with every stage's summary under ``stages``."""
    from tqdm import tqdm

    log = log or (lambda msg: tqdm.write(msg, file=sys.stderr))
    out = output_folder(staged, output_dir or (resume if resume not in (None, "auto") else None))
    state = _read_state(out)
    if resume and state is None:
        raise ConfigError(
            f"--resume: {out} holds no staged run ({STAGES_FILE} is missing): give the run folder with --output"
        )
    if not resume:
        if state is not None and not overwrite:
            raise ConfigError(
                f"output folder {out} already holds a staged run ({STAGES_FILE}): give another --output, "
                "add --overwrite to replace it, or --resume auto to continue it"
            )
        state = {"name": staged.name, "stages": {s.name: {"status": "pending"} for s in staged.stages}}
    runs = [s.cfg for s in staged.stages]
    if staged.kit is not None:
        ensure_kit(staged.kit, train, log=log, parts=parts_for(runs))
    for cfg in runs:  # every stage, before any actor: its data, rewards and the run's model
        preflight(cfg, kit_built=True)
    out.mkdir(parents=True, exist_ok=True)
    result, previous = {}, None
    with ray_session(runs[0].cluster, log):
        for i, stage in enumerate(staged.stages):
            folder, record = out / stage.name, state["stages"].setdefault(stage.name, {"status": "pending"})
            if record["status"] == "done" and (folder / "final").is_dir():
                log(f"[relay-rl] stage {i + 1}/{len(staged.stages)} {stage.name}: done, skipped")
                previous = folder / "final"
                continue
            cfg = stage.cfg if previous is None else with_model(stage.cfg, previous)
            again = "auto" if resume and checkpoints.checkpoints(folder) else None
            log(
                f"[relay-rl] stage {i + 1}/{len(staged.stages)} {stage.name} ({cfg.algorithm.name}) from "
                f"{cfg.model.name_or_path}" + (" (resuming its newest checkpoint)" if again else "")
            )
            record.update(status="running", algorithm=cfg.algorithm.name, output=str(folder))
            _write_state(out, state)
            t0 = time.time()
            result = train(cfg, output_dir=str(folder), log=log, overwrite=again is None, resume=again)
            record.update(
                status="done", steps=result.get("step"), wall_s=round(time.time() - t0, 1), **_accuracies(folder)
            )
            _write_state(out, state)
            previous = folder / "final"
        _link_final(out, previous)
    log(summary(state))
    return {**result, "output_dir": str(out), "stages": state["stages"]}


def _accuracies(folder: Path) -> dict:
    """The stage's held-out accuracy when it started and when it ended (from its metrics)."""
    evals = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in evals if "eval/accuracy" in r]
    return (
        {"eval_accuracy_start": evals[0]["eval/accuracy"], "eval_accuracy": evals[-1]["eval/accuracy"]} if evals else {}
    )


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
        acc = f"{r['eval_accuracy_start']:.3f} -> {r['eval_accuracy']:.3f}" if "eval_accuracy" in r else "-"
        rows.append(
            (
                name,
                r.get("algorithm", "-"),
                str(r.get("steps", "-")),
                acc,
                f"{r['wall_s']:.0f} s" if "wall_s" in r else r["status"],
            )
        )
    widths = [max(len(row[c]) for row in rows) for c in range(5)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows]
    return "relay-rl stages\n" + "\n".join(lines)
