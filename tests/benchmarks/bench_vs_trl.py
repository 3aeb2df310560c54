"""TRL's GRPOTrainer and relay-rl, side by side in one run: same tiny model, data and knobs.

    python tests/benchmarks/bench_vs_trl.py [--steps 100] [--repeats 3]

Every side starts from the quickstart kit's warm start and trains on the a+b= task with G=8, 64 completions per
step, loss dapo, lr 3e-5, max_completion_length 5, temperature 1.0. Four runs, alternating, --repeats times:

    TRL          GRPOTrainer, one process, float32 (TRL's default; the quickstart's precision)
    TRL bf16     GRPOTrainer with bf16=True (float32 weights, bfloat16 autocast): relay-rl best's precision
    quickstart   relay-rl with the quickstart's learner: 2 DeepSpeed ZeRO-3 ranks, synchronous (max_staleness 0)
    best         relay-rl's best settings for a 2-core machine (deploy/overlays/cpu_fast.yaml): one ZeRO-0 rank in
                 bfloat16 with eager attention, generation beside training (max_staleness 1, the behaviour
                 anchor), 2 optimizer steps per generation batch

Prints, per configuration, the median samples/s (training loop only: set-up excluded on every side), its ratio to
TRL's float32 run and to TRL's bf16 run, the held-out greedy accuracy after the same steps, and relay-rl's time per
phase.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
for k, v in {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "RAY_AUTH_MODE": "disabled",
    "WANDB_DISABLED": "true",
    "TOKENIZERS_PARALLELISM": "false",
}.items():
    os.environ.setdefault(k, v)


def run_trl(kit_root: Path, steps: int, seed: int, bf16: bool = False) -> dict:
    import torch
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from relay_rl.cluster.kit.train_sft import greedy_accuracy

    tok = AutoTokenizer.from_pretrained(kit_root / "warm_start")
    model = AutoModelForCausalLM.from_pretrained(kit_root / "warm_start", dtype=torch.float32)
    train = load_dataset("json", data_files=str(kit_root / "train.jsonl"), split="train")
    test = [json.loads(line) for line in open(kit_root / "test.jsonl")]
    eos = tok.eos_token_id

    def arithmetic_exact(completion_ids, answer, **kwargs):  # the same verifier as relay-rl's built-in
        return [
            1.0 if list(ids) == tok(a, add_special_tokens=False)["input_ids"] + [eos] else 0.0
            for ids, a in zip(completion_ids, answer)
        ]

    class LoopTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            if state.global_step == 1:  # the first step is warm-up on both sides
                self.t0 = time.time()

        def on_train_end(self, args, state, control, **kw):
            self.t1 = time.time()

    timer = LoopTimer()
    with tempfile.TemporaryDirectory() as out:
        cfg = GRPOConfig(
            output_dir=out,
            use_cpu=True,
            bf16=bf16,
            per_device_train_batch_size=64,
            gradient_accumulation_steps=1,
            num_generations=8,
            max_completion_length=5,
            temperature=1.0,
            learning_rate=3e-5,
            lr_scheduler_type="constant",
            beta=0.0,
            loss_type="dapo",
            scale_rewards="group",
            max_steps=steps,
            logging_steps=10,
            save_strategy="no",
            report_to="none",
            seed=seed,
            gradient_checkpointing=False,
            dataloader_num_workers=0,
            disable_tqdm=True,
        )
        trainer = GRPOTrainer(
            model=model,
            reward_funcs=arithmetic_exact,
            args=cfg,
            train_dataset=train,
            processing_class=tok,
            callbacks=[timer],
        )
        trainer.train()
    loop_s = timer.t1 - timer.t0
    return {
        "samples_per_s": (steps - 1) * 64 / loop_s,
        "loop_s": loop_s,
        "eval_accuracy": greedy_accuracy(model, tok, test),
    }


BEST = [str(ROOT / "deploy/overlays/cpu_fast.yaml")]
"""relay-rl's best settings on 2 cores (measured against the alternatives in the README's performance section)."""


def run_relay(steps: int, seed: int, overrides: list[str], engine: str = "hf") -> dict:
    from relay_rl.cluster.config import load_config
    from relay_rl.cluster.runner import train

    cfg = load_config(
        ROOT / "deploy/recipes/quickstart.yaml",
        [
            f"train.max_steps={steps}",
            f"train.seed={seed}",
            f"train.eval_steps={steps}",
            f"rollout.engine={engine}",
            "train.learning_rate=3e-5",
            "train.lr_scheduler_type=constant",
            *overrides,
        ],
    )
    with tempfile.TemporaryDirectory() as out:
        res = train(cfg, output_dir=out, log=lambda m: None)
        rows = [json.loads(line) for line in open(Path(out) / "metrics.jsonl")]
    steps_rows = [r for r in rows if "loss" in r][1:]  # the first step is warm-up on both sides
    loop_s = sum(r["timing/step_s"] for r in steps_rows)
    return {
        "samples_per_s": len(steps_rows) * 64 / loop_s,
        "loop_s": loop_s,
        "eval_accuracy": res.get("eval/accuracy"),
        "generate_s": sum(r["timing/generate_s"] for r in steps_rows) / len(steps_rows),
        "train_s": sum(r["timing/train_s"] for r in steps_rows) / len(steps_rows),
        "sync_s": sum(r["timing/sync_s"] for r in steps_rows) / len(steps_rows),
        "step_s": loop_s / len(steps_rows),
    }


def main():
    import statistics

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--engine", default="hf")
    a = ap.parse_args()

    from relay_rl.cluster.config import KitConfig
    from relay_rl.cluster.kit.build import ensure_kit
    from relay_rl.cluster.runner import train

    kit_root = ensure_kit(KitConfig(), train)
    runs = {
        "TRL GRPOTrainer": lambda: run_trl(kit_root, a.steps, a.seed),
        "TRL bf16": lambda: run_trl(kit_root, a.steps, a.seed, bf16=True),
        "relay-rl quickstart": lambda: run_relay(a.steps, a.seed, [], a.engine),
        "relay-rl best": lambda: run_relay(a.steps, a.seed, BEST, a.engine),
    }
    results = {name: [] for name in runs}
    for _ in range(a.repeats):  # alternate, so that every side sees the same machine state
        for name, run in runs.items():
            results[name].append(run())
    import torch

    print(
        f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        + ("no GPU" if not torch.cuda.is_available() else f"GPU {torch.cuda.get_device_name()}")
        + f"; {a.steps} steps, medians of {a.repeats}"
    )
    trl = statistics.median(r["samples_per_s"] for r in results["TRL GRPOTrainer"])
    trl_bf16 = statistics.median(r["samples_per_s"] for r in results["TRL bf16"])
    print(f"{'':22}{'samples/s':>11}{'x TRL':>8}{'x TRL bf16':>12}{'held-out acc':>14}   relay-rl per step (s)")
    for name, rs in results.items():
        sps = statistics.median(r["samples_per_s"] for r in rs)
        acc = statistics.median(r["eval_accuracy"] for r in rs)
        phases = (
            ""
            if name.startswith("TRL")
            else "   "
            + ", ".join(
                f"{k} {statistics.median(r[k + '_s'] for r in rs):.3f}" for k in ("generate", "train", "sync", "step")
            )
        )
        print(f"{name:22}{sps:>11.1f}{sps / trl:>8.2f}{sps / trl_bf16:>12.2f}{acc:>14.3f}{phases}")
    print(json.dumps({"steps": a.steps, "repeats": a.repeats, "runs": results}))


if __name__ == "__main__":
    main()
