"""DAPO with and without dynamic sampling: held-out accuracy against optimizer steps and against wall seconds.

    python tests/benchmarks/bench_dynamic_sampling.py [--tasks kit hard] [--steps 200] [--eval-steps 25]
                                                      [--seeds 0 1] [--out bench_dynamic_sampling]

Each run is ``deploy/recipes/dapo.yaml`` through ``deploy/overlays/kit.yaml`` (``hard``: and
``deploy/overlays/kit_hard.yaml``, most groups start all wrong) with ``algorithm.filter_groups.enable`` true or
false, everything else equal (2 DeepSpeed ZeRO-3 learner ranks, G = 8, 256 completions per generation batch, 4
optimizer steps each). Wall seconds are the sum of the steps' own times (evaluations excluded). Writes
``results.json``, a markdown table (``results.md``) and ``accuracy.png`` (accuracy against steps and seconds) to
``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
for k, v in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "RAY_AUTH_MODE": "disabled"}.items():
    os.environ.setdefault(k, v)

OVERLAYS = {"kit": ["kit.yaml"], "hard": ["kit.yaml", "kit_hard.yaml"]}


def one_run(task: str, dynamic: bool, steps: int, eval_steps: int, seed: int) -> dict:
    from relay_rl.cluster.config import load_config
    from relay_rl.cluster.runner import train

    cfg = load_config(
        ROOT / "deploy/recipes/dapo.yaml",
        [
            *(str(ROOT / "deploy/overlays" / o) for o in OVERLAYS[task]),
            f"algorithm.filter_groups.enable={str(dynamic).lower()}",
            f"train.max_steps={steps}",
            f"train.eval_steps={eval_steps}",
            "train.save_steps=null",
            f"train.seed={seed}",
            "train.max_idle_steps=0",
        ],
    )
    with tempfile.TemporaryDirectory() as out:
        train(cfg, output_dir=out, log=lambda m: None)
        rows = [json.loads(line) for line in open(Path(out) / "metrics.jsonl")]
    wall, seconds = 0.0, {0: 0.0}
    for r in rows:
        if "loss" in r:
            wall += r["timing/step_s"]
            seconds[r["step"]] = wall
    steps_ = [r for r in rows if "loss" in r]
    admitted = [r for r in steps_ if "dynamic_sampling/rounds" in r]
    return {
        "task": task,
        "dynamic_sampling": dynamic,
        "seed": seed,
        "curve": [(r["step"], round(seconds[r["step"]], 1), r["eval/accuracy"]) for r in rows if "eval/accuracy" in r],
        "frac_reward_zero_std_first": steps_[0].get("frac_reward_zero_std"),
        "rounds_mean": sum(r["dynamic_sampling/rounds"] for r in admitted) / len(admitted) if admitted else 1.0,
        "kept_group_ratio_first": admitted[0]["dynamic_sampling/kept_group_ratio"] if admitted else None,
        "generated_samples": steps_[-1]["pipeline/generated_samples"],
        "wall_s": round(wall, 1),
    }


def table(results: list[dict]) -> str:
    lines = [
        "| task | dynamic sampling | seed | held-out accuracy (step: accuracy @ wall seconds) | wall s | generated "
        "samples | rounds per batch |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        curve = ", ".join(f"{s}: {a:.3f} @ {w:.0f}" for s, w, a in r["curve"])
        lines.append(
            f"| {r['task']} | {'on' if r['dynamic_sampling'] else 'off'} | {r['seed']} | {curve} | "
            f"{r['wall_s']:.0f} | {r['generated_samples']} | {r['rounds_mean']:.2f} |"
        )
    return "\n".join(lines)


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for r in results:
        label = f"{r['task']}, dynamic sampling {'on' if r['dynamic_sampling'] else 'off'}, seed {r['seed']}"
        style = "-" if r["dynamic_sampling"] else "--"
        axes[0].plot([s for s, _, _ in r["curve"]], [a for _, _, a in r["curve"]], style, marker="o", label=label)
        axes[1].plot([w for _, w, _ in r["curve"]], [a for _, _, a in r["curve"]], style, marker="o", label=label)
    axes[0].set_xlabel("optimizer step")
    axes[1].set_xlabel("wall seconds (steps only)")
    for ax in axes:
        ax.set_ylabel("held-out accuracy")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7)
    fig.suptitle("DAPO on the kit: dynamic sampling on / off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", nargs="+", default=["kit", "hard"], choices=sorted(OVERLAYS))
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--eval-steps", type=int, default=25)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--out", default="bench_dynamic_sampling")
    args = p.parse_args()
    import ray

    from relay_rl.cluster.runtime import init_ray

    init_ray(None, "bench", print)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for task in args.tasks:
        for seed in args.seeds:
            for dynamic in (False, True):  # side by side, the same seed
                results.append(one_run(task, dynamic, args.steps, args.eval_steps, seed))
                print(table(results[-1:]).splitlines()[-1], flush=True)
    ray.shutdown()
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "results.md").write_text(table(results) + "\n")
    plot(results, out / "accuracy.png")
    print(table(results))
    print(f"written: {out}/results.json, results.md, accuracy.png")


if __name__ == "__main__":
    main()
