"""Teacher scoring throughput and bytes per step, against a raw transformers forward of the same teacher.

    python tests/benchmarks/bench_teacher.py [--vocab 32000] [--rows 64] [--completion 64] [--repeats 5]

A randomly initialised Qwen3 teacher with a realistic vocabulary (no hub) scores one generation batch of ``--rows``
sequences (prompt 16 + completion ``--completion`` tokens) through relay-rl's teacher actor (a Ray call: the batch in,
log-softmax at the loss temperature, top-k / full / sampled-token extraction, the batch back through the object
store) for each output kind: top-k with k = 1, 20, 100, the full vocabulary, and sampled-token log-probs. The
baseline is the forward alone, in-process, with no Ray and no extraction (``model(input_ids).logits``). Reported:
completion tokens/s, the ratio to the baseline, and the bytes the teacher sends per generation batch.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
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
    "TOKENIZERS_PARALLELISM": "false",
}.items():
    os.environ.setdefault(k, v)


def random_teacher(out: Path, vocab: int, hidden: int, layers: int) -> str:
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    cfg = Qwen3Config(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=hidden // 64,
        num_key_value_heads=max(1, hidden // 128),
        head_dim=64,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        pad_token_id=0,
        eos_token_id=1,
    )
    torch.manual_seed(0)
    Qwen3ForCausalLM(cfg).save_pretrained(out)
    return str(out)


def make_batch(rows: int, prompt: int, completion: int, vocab: int):
    import torch

    from relay_rl.batch import Batch

    g = torch.Generator().manual_seed(0)
    return Batch(
        prompt_ids=torch.randint(2, vocab, (rows, prompt), generator=g),
        prompt_mask=torch.ones(rows, prompt, dtype=torch.long),
        completion_ids=torch.randint(2, vocab, (rows, completion), generator=g),
        completion_mask=torch.ones(rows, completion),
        behaviour_logprobs=torch.zeros(rows, completion),
        policy_version=torch.zeros(rows, dtype=torch.long),
        group_id=torch.arange(rows),
        truncated=torch.zeros(rows, dtype=torch.bool),
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--completion", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()

    import ray
    import torch
    from transformers import AutoModelForCausalLM

    from relay_rl.learner.logprobs import sequence_inputs
    from relay_rl.process import configure_worker, default_env
    from relay_rl.teacher_workers.actor import TeacherWorker

    tmp = Path(tempfile.mkdtemp(prefix="relay-bench-teacher-"))
    path = random_teacher(tmp / "teacher", args.vocab, args.hidden, args.layers)
    batch = make_batch(args.rows, 16, args.completion, args.vocab)
    tokens = args.rows * args.completion

    ray.init(address="local", num_cpus=2, include_dashboard=False, runtime_env={"env_vars": default_env()})
    actor = ray.remote(TeacherWorker).options(num_cpus=1).remote(path, pool="teacher")
    ray.get(actor.ping.remote())
    configure_worker()
    torch.set_num_threads(1)  # the actor has num_cpus=1, so Ray gives it one intra-op thread: the same here
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    ids, attn, pos = sequence_inputs(batch.prompt_ids, batch.prompt_mask, batch.completion_ids, batch.completion_mask)

    chunk = max(1, 2**26 // (args.completion * args.vocab))  # TeacherWorker's default max_chunk_elements

    def raw() -> float:
        t0 = time.perf_counter()
        with torch.no_grad():  # chunked like the actor, so both hold the same logits at a time
            for i in range(0, args.rows, chunk):
                model(
                    input_ids=ids[i : i + chunk],
                    attention_mask=attn[i : i + chunk],
                    position_ids=pos[i : i + chunk],
                    logits_to_keep=args.completion + 1,
                    use_cache=False,
                )
        return time.perf_counter() - t0

    kinds = [("sampled", 0), ("topk", 1), ("topk", 20), ("topk", 100), ("full", 0)]
    results = {"raw": []}
    nbytes = {}
    ref = ray.put(batch)
    for _ in range(args.repeats):  # alternate baseline and each kind, so machine noise hits all alike
        results["raw"].append(raw())
        for kind, k in kinds:
            t0 = time.perf_counter()
            out = ray.get(actor.score.remote(ref, {"output": kind, "top_k": k, "temperature": 1.0}))
            results.setdefault(f"{kind}-{k}", []).append(time.perf_counter() - t0)
            nbytes[f"{kind}-{k}"] = out.info["teacher_bytes/teacher"]
    base = statistics.median(results["raw"])
    report = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "vocab": args.vocab,
        "rows": args.rows,
        "completion": args.completion,
        "raw_forward_tokens_per_s": round(tokens / base, 1),
        "kinds": {},
    }
    print(f"raw forward: {tokens / base:,.0f} completion tokens/s (median of {args.repeats})")
    for name, ts in results.items():
        if name == "raw":
            continue
        med = statistics.median(ts)
        report["kinds"][name] = {
            "tokens_per_s": round(tokens / med, 1),
            "ratio_to_raw": round(med / base, 2),
            "bytes_per_batch": nbytes[name],
            "bytes_per_token": nbytes[name] / tokens,
        }
        print(
            f"{name:>10}: {tokens / med:>10,.0f} tokens/s  {med / base:5.2f}x the raw forward's time  "
            f"{nbytes[name] / 2**20:8.2f} MiB per batch ({nbytes[name] / tokens:,.0f} B/token)"
        )
    print(json.dumps(report))
    ray.shutdown()


if __name__ == "__main__":
    main()
