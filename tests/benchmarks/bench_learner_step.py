"""The learner's DeepSpeed step and its weight gather, in-process, without Ray: what ZeRO-3 costs on gloo.

    python tests/benchmarks/bench_learner_step.py [--steps 30]

(a) One optimizer step (forward, backward, AdamW) of the quickstart kit's model on 64 sequences of 13 tokens, split
    over the ranks, one thread each: 2 ranks under ZeRO-3 with DeepSpeed's default persistence threshold (small
    parameters re-gathered one collective each after every step), under ZeRO-3 as relay-rl configures it on gloo
    (threshold 0), under ZeRO-2 and ZeRO-0, and 1 rank under ZeRO-0: in float32, and in bfloat16 (DeepSpeed's bf16
    mode: float32 master weights) with transformers' default attention (sdpa) and with eager attention, as
    deploy/overlays/cpu_fast.yaml runs it; and, as the raw baseline, the same step in plain PyTorch in one process
    (no DeepSpeed: ``torch.optim.AdamW`` on the model's own parameters). Median of the steps after the first 3.
(b) A full gather of every weight on 2 ZeRO-3 ranks: DeepSpeed's ``GatheredParameters`` against relay-rl's
    ``gather_partitions``, for the kit's model and for 48 layers of 1,024 x 1,024 (200 MiB). Median of 5.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DS_ACCELERATOR", "cpu")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _init(rank: int, world: int, port: int):
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank)
    )
    import torch

    torch.set_num_threads(1)
    import deepspeed

    deepspeed.init_distributed("gloo")
    return deepspeed, torch


def _engine(deepspeed, model, micro_batch: int, zero: dict, bf16: bool = False):
    cfg = {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": 1.0,
        "zero_optimization": zero,
        "steps_per_print": 10**9,
        "bf16": {"enabled": bf16},
        "optimizer": {"type": "AdamW", "params": {"lr": 1e-5, "torch_adam": True}},
    }
    engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=cfg)
    return engine


def step_rank(
    rank: int, world: int, port: int, model_path: str, zero: dict, dtype: str, attn: str | None, steps: int, out: str
) -> None:
    deepspeed, torch = _init(rank, world, port)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=getattr(torch, dtype), attn_implementation=attn)
    engine = _engine(deepspeed, model, 64 // world, zero, bf16=dtype == "bfloat16")
    ids = torch.randint(0, 14, (64 // world, 13), generator=torch.Generator().manual_seed(rank))
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        logits = engine(input_ids=ids).logits
        logp = torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
        engine.backward(-logp[:, -5:].mean())
        engine.step()
        times.append(time.perf_counter() - t)
    if rank == 0:
        Path(out).write_text(json.dumps(statistics.median(times[3:])))
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
    os._exit(0)  # skip interpreter teardown, which a thread left by DeepSpeed or gloo can abort


def plain_rank(
    rank: int, world: int, port: int, model_path: str, dtype: str, attn: str | None, steps: int, out: str
) -> None:
    """The raw baseline of (a): the same step in plain PyTorch in one process (``torch.optim.AdamW`` on the model's
    own parameters: in bfloat16 no float32 master copy), with no DeepSpeed and no process group."""
    import torch

    torch.set_num_threads(1)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=getattr(torch, dtype), attn_implementation=attn)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    ids = torch.randint(0, 14, (64, 13), generator=torch.Generator().manual_seed(rank))
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        logits = model(input_ids=ids).logits
        logp = torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
        (-logp[:, -5:].mean()).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        times.append(time.perf_counter() - t)
    Path(out).write_text(json.dumps(statistics.median(times[3:])))


def gather_rank(rank: int, world: int, port: int, model_path: str, layers: int, out: str) -> None:
    deepspeed, torch = _init(rank, world, port)
    from relay_rl.learner.gather import gather_partitions

    if model_path:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    else:
        model = torch.nn.Sequential(*[torch.nn.Linear(1024, 1024) for _ in range(layers)])
    engine = _engine(deepspeed, model, 1, {"stage": 3, "stage3_param_persistence_threshold": 0})
    ps = list(engine.module.parameters())

    def deepspeed_gather():
        with deepspeed.zero.GatheredParameters(ps):
            return [p.detach().view(-1)[0].item() for p in ps]

    def ours():
        return [t.view(-1)[0].item() for t in gather_partitions(ps)]

    result = {}
    for name, gather in [("GatheredParameters", deepspeed_gather), ("gather_partitions", ours)] * 2:
        times = []
        for _ in range(5):
            torch.distributed.barrier()
            t = time.perf_counter()
            gather()
            times.append(time.perf_counter() - t)
        result[name] = statistics.median(times)  # the second round of each: warm
    if rank == 0:
        Path(out).write_text(json.dumps(result))
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
    os._exit(0)  # skip interpreter teardown, which a thread left by DeepSpeed or gloo can abort


def spawn(fn, world: int, *args) -> object:
    import tempfile

    import torch.multiprocessing as mp

    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        mp.spawn(fn, args=(world, _port(), *args, f.name), nprocs=world, join=True)
        return json.loads(Path(f.name).read_text())


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=30)
    a = ap.parse_args()
    from relay_rl.cluster.config import KitConfig
    from relay_rl.cluster.kit.build import ensure_kit
    from relay_rl.cluster.runner import train

    model = str(ensure_kit(KitConfig(), train) / "warm_start")

    fp32 = ("float32", None)
    steps = [
        ("2 ranks, ZeRO-3, DeepSpeed's default persistence threshold", 2, {"stage": 3}, fp32),
        (
            "2 ranks, ZeRO-3, threshold 0 (relay-rl on gloo)",
            2,
            {"stage": 3, "stage3_param_persistence_threshold": 0},
            fp32,
        ),
        ("2 ranks, ZeRO-2", 2, {"stage": 2}, fp32),
        ("2 ranks, ZeRO-0", 2, {"stage": 0}, fp32),
        ("1 rank, ZeRO-0", 1, {"stage": 0}, fp32),
        ("1 rank, ZeRO-0, bfloat16, sdpa attention", 1, {"stage": 0}, ("bfloat16", "sdpa")),
        ("1 rank, ZeRO-0, bfloat16, eager attention (cpu_fast.yaml)", 1, {"stage": 0}, ("bfloat16", "eager")),
    ]
    print(f"(a) one optimizer step of the kit's model, 64 x 13 tokens, one thread per rank ({os.cpu_count()} cores)")
    for name, world, zero, (dtype, attn) in steps:
        ms = 1000 * spawn(step_rank, world, model, zero, dtype, attn, a.steps)
        print(f"    {name:60} {ms:6.1f} ms")
    for name, (dtype, attn) in [
        ("baseline: plain PyTorch, 1 process, float32", fp32),
        ("baseline: plain PyTorch, 1 process, bfloat16, eager", ("bfloat16", "eager")),
    ]:
        ms = 1000 * spawn(plain_rank, 1, model, dtype, attn, a.steps)
        print(f"    {name:60} {ms:6.1f} ms")
    print("(b) a full gather on 2 ZeRO-3 ranks (median of 5)")
    for name, path, layers in [
        ("the kit's model (1M parameters, 46 tensors)", model, 0),
        ("48 x Linear(1024, 1024) (50M parameters, 200 MiB)", "", 48),
    ]:
        r = spawn(gather_rank, 2, path, layers)
        print(
            f"    {name:52} GatheredParameters {1000 * r['GatheredParameters']:7.1f} ms | "
            f"gather_partitions {1000 * r['gather_partitions']:7.1f} ms"
        )


if __name__ == "__main__":
    main()
