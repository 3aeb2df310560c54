"""Checkpoints that a run continues from exactly.

``checkpoint-<step>/`` is an HF-format model (what transformers and vLLM load) plus ``relay/``, everything else a
run needs to go on as if it had not stopped:

    relay/deepspeed/     DeepSpeed's checkpoint of every learner rank: weights, optimizer partitions, LR scheduler
                         (a resume on another number of ranks adds its universal form, state_universal/)
    relay/rank<i>.pt     each rank's policy version, admitted micro-batches not yet consumed, objective state, RNG
    relay/reference/     the reference pool's weights, when they move (``sync_ref_model``)
    relay/driver.json    the controller: step, versions, the prompt sampler's position, the ledger, in-flight
                         generation batches (their prompts), failure and health counters, the last evaluation, and
                         the run file the checkpoint belongs to
    relay/metrics.jsonl  the metrics up to this step
    relay/complete       written last

A checkpoint is written into ``checkpoint-<step>.tmp/`` and renamed into place once complete, so a crash while
saving never leaves a checkpoint that looks complete; ``train.save_total_limit`` keeps the newest ones.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from relay_rl.errors import ConfigError

from .config import RunConfig, resolve_schedule

MARK = Path("relay") / "complete"


def checkpoints(out: Path) -> list[Path]:
    """The complete checkpoints of a run folder, oldest first."""
    found = [p for p in out.glob("checkpoint-*") if re.fullmatch(r"checkpoint-\d+", p.name) and (p / MARK).is_file()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def find(resume: str, out: Path) -> Path:
    """``--resume auto``: the newest complete checkpoint in ``out``; ``--resume DIR``: that checkpoint."""
    if resume == "auto":
        found = checkpoints(out) if out.is_dir() else []
        if not found:
            raise ConfigError(
                f"--resume auto: {out} holds no complete checkpoint (they are written every "
                "train.save_steps steps): start the run without --resume, or give --resume DIR"
            )
        return found[-1]
    path = Path(os.path.expandvars(os.path.expanduser(resume))).resolve()
    if path.is_dir() and not (path / MARK).is_file() and checkpoints(path):
        return checkpoints(path)[-1]  # a run folder: its newest checkpoint
    if not (path / MARK).is_file():
        what = (
            "does not exist"
            if not path.exists()
            else (
                "is incomplete (a save that did not finish)"
                if path.name.endswith(".tmp") or (path / "relay").is_dir()
                else "is not a relay-rl checkpoint"
            )
        )
        raise ConfigError(f"--resume {resume}: {path} {what}: give a checkpoint-<step> folder, a run folder, or auto")
    return path


# the settings a checkpoint's state depends on: a run file that changes them cannot continue from it
_SHAPE = ("G", "B", "P", "GA", "S", "mu")


def check_compatible(cfg: RunConfig, ckpt: Path) -> dict:
    """The checkpoint's driver state, after checking that ``cfg`` can continue it (same model, method, batch shape,
    ZeRO stage, data; another number of learner ranks with the same rows per micro-step)."""
    state = json.loads((ckpt / "relay" / "driver.json").read_text())
    saved = RunConfig.model_validate(state["config"])
    now, then = resolve_schedule(cfg), resolve_schedule(saved)
    problems = []
    if then.P != now.P:  # another number of ranks: DeepSpeed's universal checkpoint, the same rows per micro-step
        rows = then.B * then.P
        if now.B * now.P != rows:
            fix = (
                f"set algorithm.per_device_train_batch_size to {rows // now.P}"
                if rows % now.P == 0
                else f"use a number of learner ranks that divides {rows}"
            )
            problems.append(
                f"cluster.learner.replicas is {now.P}, the checkpoint has {then.P} ranks: a resume on another number "
                f"of ranks keeps the rows of each micro-step (per_device_train_batch_size x ranks = {then.B} x "
                f"{then.P} = {rows}), so the steps train on the same data: {fix}"
            )
        if saved.train.zero_stage == 0:
            problems.append(
                f"cluster.learner.replicas is {now.P}, the checkpoint has {then.P} ranks: moving a checkpoint to "
                "another number of ranks goes through DeepSpeed's universal checkpoint, which needs ZeRO "
                "(train.zero_stage >= 1); resume on the checkpoint's number of ranks"
            )
    problems += [
        f"the batch shape differs: {k} = {getattr(now, k)} now, {getattr(then, k)} in the checkpoint"
        for k in _SHAPE
        if k not in ("P", "B") and getattr(now, k) != getattr(then, k)
    ]
    if then.P == now.P and then.B != now.B:
        problems.append(f"the batch shape differs: B = {now.B} now, {then.B} in the checkpoint")
    for label, a, b in (
        ("model.name_or_path", cfg.model.name_or_path, saved.model.name_or_path),
        ("algorithm.name", cfg.algorithm.name, saved.algorithm.name),
        ("train.zero_stage", cfg.train.zero_stage, saved.train.zero_stage),
        ("data.train", cfg.data.train, saved.data.train),
        ("model.dtype", cfg.model.dtype, saved.model.dtype),
    ):
        if a != b:
            problems.append(f"{label} is {a!r}, the checkpoint's run had {b!r}")
    if state["step"] >= cfg.train.max_steps:
        problems.append(
            f"the checkpoint is at step {state['step']} and train.max_steps is {cfg.train.max_steps}: "
            "nothing is left to train (raise train.max_steps to go on)"
        )
    if problems:
        raise ConfigError(
            f"--resume {ckpt}: this run file cannot continue that checkpoint:\n  " + "\n  ".join(problems)
        )
    return state


def saved_ranks(relay: Path) -> int:
    """How many ranks wrote a checkpoint's rank state (``relay/`` or ``relay/critic/``)."""
    return len(list(relay.glob("rank*.pt")))


def saved_metrics(ckpt: Path) -> list[dict]:
    path = ckpt / "relay" / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def begin(out: Path, step: int) -> Path:
    tmp = out / f"checkpoint-{step}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    (tmp / "relay").mkdir(parents=True)
    return tmp


def commit(tmp: Path, driver_state: dict, metrics: list[dict]) -> Path:
    """Write the driver's part, mark it complete, and move it into place."""
    relay = tmp / "relay"
    (relay / "driver.json").write_text(json.dumps(driver_state, indent=1))
    (relay / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in metrics))
    (tmp / MARK).write_text("ok\n")
    final = tmp.with_name(tmp.name[: -len(".tmp")])
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


def rotate(out: Path, keep: int | None) -> list[Path]:
    """Delete the oldest complete checkpoints beyond ``keep``, and leftovers of saves that did not finish."""
    for tmp in out.glob("checkpoint-*.tmp"):
        shutil.rmtree(tmp, ignore_errors=True)
    found = checkpoints(out)
    gone = found[:-keep] if keep else []
    for p in gone:
        shutil.rmtree(p, ignore_errors=True)
    return gone
