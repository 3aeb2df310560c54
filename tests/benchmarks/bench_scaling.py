"""How step time, weight-sync time and the driver's memory grow with model size and batch size.

    python tests/benchmarks/bench_scaling.py [--sizes 1M 10M 50M] [--batches 64 256 1024] [--steps 3]

Each cell is a real quickstart run (2 DeepSpeed ZeRO-3 learner ranks, 1 rollout actor, the kit's task and
verifier, G = 8) on a Qwen3 of that size built from the kit's config with random weights (so its rewards are 0:
the learner still runs the whole forward and backward), ``--steps`` optimizer steps, the first excluded. Reports the
median step, generate, train and sync seconds, the bytes a sync moves, and how much the driver's resident memory
grew during the run (sampled every 50 ms; the driver holds ObjectRefs and statistics, never a batch or a weight).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
for k, v in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "RAY_AUTH_MODE": "disabled"}.items():
    os.environ.setdefault(k, v)

SIZES = {  # hidden, layers, intermediate: parameters with the kit's 14-token vocabulary
    "1M": (128, 4, 512),
    "10M": (384, 6, 1536),
    "50M": (576, 10, 2304),
}


def build(size: str, root: Path, kit_cfg) -> str:
    from relay_rl.cluster.kit.task import build_model, build_tokenizer

    hidden, layers, inter = SIZES[size]
    cfg = kit_cfg.model_copy(
        update={
            "hidden_size": hidden,
            "num_hidden_layers": layers,
            "intermediate_size": inter,
            "num_attention_heads": hidden // 32,
            "num_key_value_heads": hidden // 64,
        }
    )
    tok = build_tokenizer()
    model = build_model(cfg, tok)
    out = root / size
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return str(out), sum(p.numel() for p in model.parameters())


def cell(model: str, batch: int, steps: int) -> dict:
    from relay_rl.cluster.config import load_config
    from relay_rl.cluster.runner import train

    cfg = load_config(
        ROOT / "deploy/recipes/quickstart.yaml",
        [
            f"model.name_or_path={model}",
            f"algorithm.per_device_train_batch_size={batch // 2}",
            f"train.max_steps={steps}",
            "train.eval_steps=null",
            "train.max_idle_steps=0",
            "train.zero_variance_warning=1.0",
        ],
    )
    import psutil

    proc, peak, done = psutil.Process(), [0], threading.Event()
    start = proc.memory_info().rss

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    with tempfile.TemporaryDirectory() as out:
        train(cfg, output_dir=out, log=lambda m: None)
        rows = [json.loads(line) for line in open(Path(out) / "metrics.jsonl")]
    done.set()
    sampler.join()
    rows = [r for r in rows if "loss" in r][1:]
    med = lambda k: statistics.median(r[k] for r in rows)  # noqa: E731
    return {
        "step_s": med("timing/step_s"),
        "generate_s": med("timing/generate_s"),
        "train_s": med("timing/train_s"),
        "sync_s": med("timing/sync_s"),
        "sync_bytes": rows[-1].get("sync/bytes", 0),
        "driver_rss_growth_mib": (peak[0] - start) / 2**20,
        "driver_rss_mib": start / 2**20,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", nargs="*", default=list(SIZES), choices=list(SIZES))
    ap.add_argument("--batches", nargs="*", type=int, default=[64, 256, 1024])
    ap.add_argument("--steps", type=int, default=3)
    a = ap.parse_args()
    import ray

    from relay_rl.cluster.config import KitConfig
    from relay_rl.cluster.kit.build import ensure_kit
    from relay_rl.cluster.runner import train
    from relay_rl.process import default_env

    kit_cfg = KitConfig()
    ensure_kit(kit_cfg, train)
    ray.init(
        address="local",
        num_cpus=4,
        include_dashboard=False,
        runtime_env={"env_vars": {**default_env(), "HF_HUB_OFFLINE": "1"}},
    )
    results = []
    with tempfile.TemporaryDirectory() as d:
        for size in a.sizes:
            model, n = build(size, Path(d), kit_cfg)
            for batch in a.batches:
                r = {"size": size, "parameters": n, "batch": batch, **cell(model, batch, a.steps)}
                results.append(r)
                print(
                    f"{size:>4} ({n / 1e6:5.1f}M) batch {batch:>5}: step {r['step_s']:7.3f}s  generate "
                    f"{r['generate_s']:6.3f}s  train {r['train_s']:7.3f}s  sync {r['sync_s']:6.3f}s "
                    f"({r['sync_bytes'] / 2**20:6.1f} MiB)  driver RSS {r['driver_rss_mib']:5.0f} MiB, "
                    f"+{r['driver_rss_growth_mib']:4.0f} MiB during the run",
                    flush=True,
                )
    ray.shutdown()
    print(json.dumps(results))


if __name__ == "__main__":
    main()
