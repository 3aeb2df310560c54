"""Step time of the quickstart with max_staleness k = 0, 1, 2, side by side in one run.

    python tests/benchmarks/bench_staleness.py [--steps 100] [--ks 0 1 2]

For each k: median step time, median generation and training time (as measured inside the rollout and learner
actors, in the same run), and the overlap ratio step_time / max(generate_time, train_time): 1.0 means generation
hides completely behind training (or the reverse); with k = 0 it is about (generate + train + sync) / max(...).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
for k, v in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "RAY_AUTH_MODE": "disabled"}.items():
    os.environ.setdefault(k, v)


MODES = {  # how a lagged batch is anchored (docs/staleness.md#anchors)
    "behaviour": ["algorithm.old_logprob_source=behaviour", "algorithm.vllm_importance_sampling_correction=false"],
    "recompute": ["algorithm.old_logprob_source=recompute", "algorithm.vllm_importance_sampling_correction=true"],
}


def run(k: int, mode: str, steps: int, extra: list[str]) -> dict:
    from relay_rl.cluster.config import load_config
    from relay_rl.cluster.runner import train

    cfg = load_config(
        ROOT / "deploy/recipes/quickstart.yaml",
        [
            f"train.max_steps={steps}",
            "train.eval_steps=null",
            f"algorithm.max_staleness={k}",
            *(MODES[mode] if k else []),
            *extra,
        ],
    )
    with tempfile.TemporaryDirectory() as out:
        train(cfg, output_dir=out)
        rows = [json.loads(line) for line in open(Path(out) / "metrics.jsonl") if '"loss"' in line][5:]  # warm-up
    med = lambda key: statistics.median(r[key] for r in rows)  # noqa: E731
    step, gen, learn = med("timing/step_s"), med("timing/generate_s"), med("timing/train_s")
    return {
        "k": k,
        "anchor": mode if k else "shortcut",
        "step_s": step,
        "generate_s": gen,
        "train_s": learn,
        "sync_s": med("timing/sync_s"),
        "overlap_ratio": step / max(gen, learn),
        "staleness_max": max(r["staleness/max"] for r in rows),
        "samples_per_s": 64 / step,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--ks", type=int, nargs="*", default=[0, 1, 2])
    ap.add_argument(
        "--modes",
        nargs="*",
        default=["behaviour", "recompute"],
        choices=list(MODES),
        help="anchors to measure for k >= 1: the engine's behaviour log-probs (no learner pass), or log-probs "
        "recomputed at admission with the rollout importance correction",
    )
    ap.add_argument("overrides", nargs="*", help="extra key.path=value overrides for every run")
    a = ap.parse_args()
    results = [run(k, mode, a.steps, a.overrides) for k in a.ks for mode in (a.modes if k else ["behaviour"])]
    print(
        f"\nmachine: {platform.machine()}, {os.cpu_count()} CPUs; quickstart, {a.steps} steps each "
        f"(medians after 5 warm-up steps)"
    )
    print(
        f"{'k':>3}{'anchor':>11}{'step s':>10}{'generate s':>12}{'train s':>10}{'sync s':>9}{'overlap':>9}"
        f"{'samples/s':>11}{'stale max':>11}"
    )
    for r in results:
        print(
            f"{r['k']:>3}{r['anchor']:>11}{r['step_s']:>10.3f}{r['generate_s']:>12.3f}{r['train_s']:>10.3f}{r['sync_s']:>9.3f}"
            f"{r['overlap_ratio']:>9.2f}{r['samples_per_s']:>11.1f}{r['staleness_max']:>11.0f}"
        )
    print(json.dumps(results))


if __name__ == "__main__":
    main()
