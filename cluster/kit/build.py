"""The quickstart kit, built locally with no hub: a character tokenizer, a tiny Qwen3 model, the ``a+b=`` task with
a held-out split, and a short SFT warm start (the R1 recipe's cold start) so that RL starts from a model that
sometimes succeeds. Built once per settings and reused (``~/.cache/relay-rl/kits/<hash>``).

Layout of a kit folder::

    tokenizer + base/      the untrained model (tokenizer saved with it)
    warm_start/            the SFT warm start (HF format), trained by a relay-rl SFT run (``algorithm.name: sft``)
                           whose run folder is kept as warm_start_run/ (metrics, curve)
    train.jsonl test.jsonl dev.jsonl   {"prompt": "12+34=", "answer": "46", "solution": "46"}
                           (variant r1: also "privileged_context": "46", "r1_completion": "<think>6</think>46")
    warm_start.jsonl       what the warm start trains on (variant r1: every train row, and again behind its hint)
    kit.json               what was built and the warm start's accuracies
    teacher/ teacher_pairs/ reward_model/   optional parts (``KIT_PARTS``), built only when asked for: strong SFT
                           teachers for distillation and a trained reward model (a sequence classifier), each an HF
                           folder with a part.json (accuracies, steps, settings)
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path

from relay_rl.cluster.config import KitConfig, validate_dict

from .parts import KIT_PARTS, PART_KEYS, KitPart
from .paths import kit_dir
from .task import HINT, build_model, build_tokenizer, make_task, read_splits, warm_start_rows
from .tool_task import TOOL, tool_accuracy

TOOL_COMPLETION = 24  # the tool task's completion budget: call, result and answer (about 20 tokens)


def ensure_kit(cfg: KitConfig, train, log=print, parts: tuple[str, ...] = ()) -> Path:
    """Build the kit unless a complete one with the same settings exists, then each part in ``parts`` that is
    missing. Returns the kit folder. ``train``: the run entry (``cluster.runner.train``) the warm start is trained
    with, handed in by the caller (a relay-rl SFT run; the kit sits below the controller)."""
    unknown = [p for p in parts if p not in KIT_PARTS]
    if unknown:
        raise ValueError(f"unknown kit part(s) {unknown}; valid parts: {sorted(KIT_PARTS)}")
    root = kit_dir(cfg)
    if not (root / "kit.json").is_file():
        _build_kit(cfg, root, log, train)
    for name in dict.fromkeys(parts):
        _ensure_part(cfg, root, name, log)
    return root


def _build_kit(cfg: KitConfig, root: Path, log, train) -> None:
    """Tokenizer, base model, task splits and warm start, built in a temp folder and renamed into place."""
    t0 = time.time()
    tmp = root.with_name(root.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tokenizer = build_tokenizer(cfg.variant)
    model = build_model(cfg, tokenizer)
    for d in ("base",):
        model.save_pretrained(tmp / d)
        tokenizer.save_pretrained(tmp / d)
    splits = make_task(cfg)
    splits["warm_start"] = warm_start_rows(cfg, splits["train"])
    for name, rows in splits.items():
        with open(tmp / f"{name}.jsonl", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    n_params = sum(p.numel() for p in model.parameters())
    log(
        f"[kit] tokenizer ({len(tokenizer)} tokens), Qwen3 model ({n_params:,} parameters), task "
        f"({len(splits['train'])} train / {len(splits['test'])} test pairs); warm start (relay-rl SFT) ..."
    )

    summary = sft_warm_start(cfg, tmp, log, train)
    summary.update(parameters=n_params, build_s=round(time.time() - t0, 1))
    (tmp / "kit.json").write_text(json.dumps(summary, indent=2))
    _move_into_place(tmp, root)
    log(
        f"[kit] ready in {time.time() - t0:.0f}s at {root}: warm start held-out greedy accuracy "
        f"{summary['test_accuracy']:.3f}"
        + (f" ({summary['test_accuracy_hinted']:.3f} with the hint)" if "test_accuracy_hinted" in summary else "")
        + f" (dev {summary['dev_accuracy']:.3f}, {summary['steps']} SFT steps)"
    )


def sft_warm_start(cfg: KitConfig, root: Path, log, train) -> dict:
    """The warm start as a relay-rl SFT run (the R1 recipe's cold start, stopped early on purpose): from ``base`` on
    warm_start.jsonl, evaluated every ``eval_every`` steps on the dev split (greedy, ``arithmetic_exact``), stopped at
    the first evaluation that reaches ``target_dev_accuracy`` (``train.target_eval_accuracy``): a fixed step count is
    fragile here (accuracy can jump 25 points between evaluations). One learner rank, ZeRO-0. Writes warm_start/
    (and its run folder warm_start_run/); returns the summary, held-out test accuracy included."""
    from .train_sft import greedy_accuracy

    w = cfg.warm_start
    tools = cfg.variant == "tools"
    run = {
        "name": "kit-warm-start",
        "model": {"name_or_path": str(root / "base")},
        "data": {
            "train": str(root / "warm_start.jsonl"),
            "eval": str(root / "dev.jsonl"),
            "completion_column": "completion" if tools else "answer",
        },
        # eval/accuracy on the dev split (the tool task's: its trajectories call the tool)
        "reward": {"reward_funcs": ["final_answer_exact" if tools else "arithmetic_exact"]},
        "algorithm": {"name": "sft", "per_device_train_batch_size": w.batch_size},
        "rollout": {"engine": "hf", "max_prompt_length": 16, "max_completion_length": 5}
        if not tools
        else {"engine": "hf", "max_prompt_length": 16, "max_completion_length": TOOL_COMPLETION, "tools": [TOOL]},
        "train": {
            "learning_rate": w.learning_rate,
            "lr_scheduler_type": "constant",
            "warmup_steps": w.warmup_steps,
            "adam_beta2": 0.98,
            "max_steps": w.max_steps,
            "eval_steps": w.eval_every,
            "target_eval_accuracy": w.target_dev_accuracy,
            "zero_stage": 0,
            "seed": cfg.seed,
        },
        "cluster": {
            "learner": {"replicas": 1, "num_cpus": 1},
            "rollout": {"replicas": 1, "num_cpus": 0.5},
            "reward": {"replicas": 1, "num_cpus": 0.25},
        },
    }
    t0 = time.time()
    result = train(validate_dict(run, source="the kit's warm start"), output_dir=str(root / "warm_start_run"), log=log)
    shutil.move(root / "warm_start_run" / "final", root / "warm_start")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tok = (
        AutoModelForCausalLM.from_pretrained(root / "warm_start"),
        AutoTokenizer.from_pretrained(root / "warm_start"),
    )
    test = read_splits(root)["test"]
    if tools:
        held_out = tool_accuracy(str(root / "warm_start"), test, TOOL_COMPLETION)
        return {
            "steps": result["step"],
            "dev_accuracy": result["eval/accuracy"],
            "test_accuracy": held_out["accuracy"],
            "test_correct_call_share": held_out["correct_call_share"],
            "sft_s": round(time.time() - t0, 1),
        }
    return {
        "steps": result["step"],
        "dev_accuracy": result["eval/accuracy"],
        "test_accuracy": greedy_accuracy(model, tok, test),
        "sft_s": round(time.time() - t0, 1),
        **(
            {"test_accuracy_hinted": greedy_accuracy(model, tok, [{**r, "prompt": HINT.format(**r)} for r in test])}
            if cfg.variant == "r1"
            else {}
        ),
    }


def _ensure_part(cfg: KitConfig, root: Path, name: str, log) -> Path:
    """Reuse ``<kit>/<name>`` if its part.json is complete and was built with today's settings, else (re)build it."""
    out, settings = root / name, KIT_PARTS[name]
    summary = _read_part(out)
    if summary is not None and summary["settings"] == asdict(settings):
        return out
    if out.exists():  # built with other settings, or not by us: replace it
        log(f"[kit] {name}: {out} is stale or incomplete; rebuilding")
        shutil.rmtree(out)
    tmp = root / f".{name}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    build_part(cfg, root, settings, tmp, log=log, name=name)
    _move_into_place(tmp, out)
    return out


def build_part(cfg: KitConfig, root: Path, settings: KitPart, out: Path, log=print, name: str = "teacher") -> dict:
    """Build one part from its settings into ``out`` (model, tokenizer, part.json); returns its summary."""
    return settings.build(cfg, root, out, log=log, name=name)


def _read_part(folder: Path) -> dict | None:
    try:
        summary = json.loads((folder / "part.json").read_text())
    except (OSError, ValueError):
        return None
    return summary if all(k in summary for k in PART_KEYS) else None


def _move_into_place(tmp: Path, dest: Path) -> None:
    """Rename a finished build into place; if another process finished first, keep theirs."""
    if dest.exists():
        shutil.rmtree(tmp, ignore_errors=True)
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        tmp.rename(dest)
    except OSError:  # lost a race between the check and the rename
        shutil.rmtree(tmp, ignore_errors=True)


def kit_summary(cfg: KitConfig) -> dict:
    return json.loads((kit_dir(cfg) / "kit.json").read_text())


def kit_part_summary(cfg: KitConfig, name: str) -> dict:
    """A built part's part.json: test/dev accuracy, SFT steps, parameters, build seconds, settings."""
    return json.loads((kit_dir(cfg) / name / "part.json").read_text())
