"""On-policy distillation against GRPO, same student, same data, same machine, side by side.

    python tests/benchmarks/bench_distill_vs_grpo.py [--steps 200] [--eval-every 25] [--seconds 60]

Both start from the kit's weak warm start (held-out greedy accuracy ~0.5-0.6) with the same pools (1 rollout actor,
1 DeepSpeed ZeRO-3 learner rank), batch (64 completions per step) and learning rate; GRPO learns from the kit's
binary verifier (the quickstart's settings: 8 prompts x 8 completions, a group per prompt for its baseline),
on-policy distillation from ``kit:teacher`` (>= 0.95 held-out) by the per-token reverse KL, each method in its own
setting: one completion per prompt (64 prompts; ``--distill-generations``), as TRL's trainer samples. Reported:
held-out greedy accuracy at every evaluation against optimizer steps and against
training seconds (the sum of step times, evaluations excluded), and the accuracy each reaches within ``--seconds``.
The seed's claim (Thinking Machines' blog): on-policy distillation is more compute-efficient than RL.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
for k, v in {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "RAY_AUTH_MODE": "disabled",
    "TOKENIZERS_PARALLELISM": "false",
}.items():
    os.environ.setdefault(k, v)

COMMON = [
    "cluster.learner.replicas=1",
    "cluster.learner.num_cpus=1",
    "algorithm.per_device_train_batch_size=64",
    "algorithm.generation_batch_size=64",
    "train.lr_scheduler_type=constant",
    "train.warmup_steps=0",
    "train.save_steps=null",
]


def run(recipe: str, extra: list[str], steps: int, eval_every: int, lr: float) -> list[tuple[int, float, float]]:
    """[(step, training seconds so far, held-out accuracy)] at every evaluation."""
    from relay_rl.cluster.config import load_config
    from relay_rl.cluster.runner import train

    overlay = [] if recipe == "quickstart" else [str(ROOT / "deploy/overlays/kit.yaml")]
    cfg = load_config(
        ROOT / f"deploy/recipes/{recipe}.yaml",
        [
            *overlay,
            *COMMON,
            f"train.max_steps={steps}",
            f"train.eval_steps={eval_every}",
            f"train.learning_rate={lr}",
            *extra,
        ],
    )
    with tempfile.TemporaryDirectory() as out:
        train(cfg, output_dir=out)
        rows = [json.loads(line) for line in open(Path(out) / "metrics.jsonl")]
    elapsed, curve = {0: 0.0}, []
    for r in rows:
        if "loss" in r:
            elapsed[r["step"]] = elapsed[r["step"] - 1] + r["timing/step_s"]
        if "eval/accuracy" in r:
            curve.append((r["step"], round(elapsed[r["step"]], 2), r["eval/accuracy"]))
    return curve


def within(curve, seconds: float) -> float:
    return max(acc for _, s, acc in curve if s <= seconds)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--eval-every", type=int, default=25)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--lr", type=float, default=5e-5, help="the quickstart's GRPO learning rate, for both")
    ap.add_argument("--distill-lr", type=float, default=None, help="default: --lr")
    ap.add_argument("--distill-generations", type=int, default=1, help="completions per prompt for distillation")
    a = ap.parse_args()
    from relay_rl.cluster.config import KitConfig
    from relay_rl.cluster.kit.build import ensure_kit
    from relay_rl.cluster.runner import train

    ensure_kit(KitConfig(), train, parts=("teacher",))
    curves = {
        "GRPO (kit verifier)": run("quickstart", [], a.steps, a.eval_every, a.lr),
        "on-policy distillation (kit:teacher)": run(
            "on_policy_distillation",
            [f"algorithm.num_generations={a.distill_generations}"],
            a.steps,
            a.eval_every,
            a.distill_lr or a.lr,
        ),
    }
    print(
        f"\nmachine: {platform.machine()}, {os.cpu_count()} CPUs; {a.steps} steps of 64 completions; "
        f"lr {a.lr} (distillation {a.distill_lr or a.lr})"
    )
    for name, curve in curves.items():
        print(f"{name}: " + "  ".join(f"step {s} ({t:.0f}s) {acc:.3f}" for s, t, acc in curve))
        print(f"    best held-out accuracy within {a.seconds:.0f} training seconds: {within(curve, a.seconds):.3f}")
    print(json.dumps({"steps": a.steps, "seconds": a.seconds, "curves": curves}))


if __name__ == "__main__":
    main()
