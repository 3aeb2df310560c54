"""Rollout throughput and weight-sync cost, each against its raw baseline, side by side in one run.

    python tests/benchmarks/bench_rollout_sync.py [--engine vllm|hf] [--sync-mb 400] [--repeats 5]

(a) Rollout: the same prompts and sampling settings through relay-rl's rollout actor (a Ray call that tokenizes,
    generates, and returns a ``Batch`` with behaviour log-probs and version tags) against the raw engine call
    (``vllm.LLM.generate`` in-process; or transformers ``generate`` for ``--engine hf``). Tokens/s and overhead.
(b) Weight sync: one sync of a model of about ``--sync-mb`` MiB from a DeepSpeed ZeRO-3 learner rank to a rollout
    actor running the same engine (gather, object store, in-place load) against a raw ``ray.put`` in one actor (of
    bytes it already holds) + ``ray.get`` in another, of the same number of bytes. The two alternate, ``--repeats``
    times each; medians, bests and their ratios, for each transport (``--transports``: object_store, collective and
    ipc, the last with learner and rollout colocated: a handle to the rank's memory, CUDA IPC on a GPU).
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
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    "VLLM_CPU_OMP_THREADS_BIND": "nobind",
    "VLLM_CPU_KVCACHE_SPACE": "2",
    "TOKENIZERS_PARALLELISM": "false",
}.items():
    os.environ.setdefault(k, v)


def random_model(out: Path, hidden: int, layers: int, inter: int, max_pos: int = 128) -> str:
    """The kit's tokenizer with a randomly initialised Qwen3 of the given size (random weights rarely emit EOS, so
    completions run to max_tokens: a steady generation workload)."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from relay_rl.cluster.kit.task import build_tokenizer

    tok = build_tokenizer()
    cfg = Qwen3Config(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=max(1, hidden // 64),
        num_key_value_heads=max(1, hidden // 128),
        head_dim=64,
        max_position_embeddings=max_pos,
        tie_word_embeddings=True,
        pad_token_id=0,
        eos_token_id=1,
    )
    torch.manual_seed(0)
    Qwen3ForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


def engine_opts(engine: str, gpu: bool) -> dict:
    """The engine's options; with ``--gpu`` the raw engine and the actor's share the one GPU."""
    if engine != "vllm":
        return {"device": "cuda"} if gpu else {}
    return {"max_model_len": 128, "enforce_eager": True, **({"gpu_memory_utilization": 0.35} if gpu else {})}


def bench_rollout(
    engine: str, model: str, repeats: int, n_prompts: int, n: int, max_tokens: int, gpu: bool = False
) -> dict:
    import ray

    from relay_rl.rollout_workers.actor import RolloutWorker, make_engine
    from relay_rl.sampling import SamplingParams

    records = [{"prompt": f"{10 + i % 90}+{10 + (i * 7) % 90}="} for i in range(n_prompts)]
    params = SamplingParams(n=n, temperature=1.0, max_tokens=max_tokens, seed=0)
    opts = engine_opts(engine, gpu)

    raw = make_engine(engine, model, "float32", dict(opts))
    ids = [raw.tokenizer(r["prompt"], add_special_tokens=False)["input_ids"] for r in records]
    tokens = sum(len(c.token_ids) for comps in raw.generate(ids, params) for c in comps)
    raw_call = lambda: raw.generate(ids, params)  # noqa: E731
    if engine == "vllm":  # the bare vLLM call
        from vllm import SamplingParams as VSP
        from vllm.inputs import TokensPrompt

        vsp = VSP(n=n, temperature=1.0, max_tokens=max_tokens, seed=0, logprobs=0)
        prompts = [TokensPrompt(prompt_token_ids=p) for p in ids]
        raw_call = lambda: raw.llm.generate(prompts, vsp, use_tqdm=False)  # noqa: E731

    # the actor gets the driver's core count, so both sides run the same number of threads
    actor = (
        ray.remote(RolloutWorker)
        .options(num_cpus=os.cpu_count(), num_gpus=0.5 if gpu else 0)
        .remote(model, engine, "float32", dict(opts))
    )
    ray.get(actor.ping.remote())
    service_call = lambda: ray.get(actor.generate.remote(records, params))  # noqa: E731
    raw_call(), service_call()  # warm-up
    raw_times, service_times = [], []
    for _ in range(repeats):  # alternate, so that both see the same machine state
        for call, times in ((raw_call, raw_times), (service_call, service_times)):
            t = time.perf_counter()
            call()
            times.append(time.perf_counter() - t)
    raw_s, service_s = statistics.median(raw_times), statistics.median(service_times)
    ray.kill(actor)
    raw = None  # the engine goes (the lambdas above held it)
    return {
        "engine": engine,
        "completions": n_prompts * n,
        "tokens": tokens,
        "raw_s": raw_s,
        "service_s": service_s,
        "raw_tokens_per_s": tokens / raw_s,
        "service_tokens_per_s": tokens / service_s,
        "overhead": service_s / raw_s - 1,
    }


def bench_sync(
    model: str, repeats: int, transport: str, engine: str, bucket_mb: float = 256, gpu: bool = False
) -> dict:
    import numpy as np
    import ray

    from relay_rl.cluster.config import resolve_schedule, validate_dict
    from relay_rl.cluster.pipeline import Pipeline
    from relay_rl.cluster.pools import create_pools, shutdown_pools
    from tests.conftest import quickstart_dict

    rollout = {"weight_transport": transport, "weight_sync_bucket_mb": bucket_mb, "engine": engine}
    if engine == "vllm":
        rollout["vllm"] = engine_opts(engine, gpu)
    share = {"num_gpus": 0.5} if gpu else {}  # learner and rollout on the one GPU
    raw = quickstart_dict(
        rollout=rollout,
        cluster={
            "colocate": transport == "ipc",  # ipc: rank and replica share a bundle
            "learner": {"replicas": 1, "num_cpus": 1, **share},
            "rollout": {"replicas": 1, "num_cpus": 1, **share},
        },
    )
    raw.pop("kit")
    raw["model"] = {"name_or_path": model}
    raw["data"] = {"train": str(ROOT / "tests/benchmarks/_prompts.jsonl")}
    Path(raw["data"]["train"]).write_text('{"prompt": "1+1="}\n')
    cfg = validate_dict(raw)
    pools = create_pools(cfg, f"bench-sync-{transport}", model, log=lambda m: None)

    @ray.remote(num_cpus=0)
    class Putter:  # holds its bytes already, as the learner holds its weights
        def __init__(self, n):
            self.data = np.ones(n, dtype=np.uint8)

        def put(self):
            return [ray.put(self.data)]

    @ray.remote(num_cpus=0)
    class Getter:
        def get(self, refs):
            return int(ray.get(refs[0]).nbytes)

    try:
        pipe = Pipeline(cfg, resolve_schedule(cfg), pools, None)
        version = [0]

        def sync():
            version[0] += 1
            pipe.weights.sync(version[0])
            return pipe.weights.finish()

        nbytes = sync()["sync/bytes"]  # warm-up
        putter, getter = Putter.remote(nbytes), Getter.remote()
        ray.get(getter.get.remote(ray.get(putter.put.remote())))
        # alternate the two so that both see the same machine state (2 shared cores are noisy)
        sync_times, raw_times, parts = [], [], []
        for _ in range(repeats):
            t = time.perf_counter()
            parts.append(sync())
            sync_times.append(time.perf_counter() - t)
            t = time.perf_counter()
            ray.get(getter.get.remote(ray.get(putter.put.remote())))
            raw_times.append(time.perf_counter() - t)
        sync_s, raw_s = statistics.median(sync_times), statistics.median(raw_times)
        load_s = statistics.median(p["sync/load_s"] for p in parts)
    finally:
        shutdown_pools(pools)
        Path(raw["data"]["train"]).unlink(missing_ok=True)
    reload_s = engine_reload_s(model, engine, repeats, gpu) if transport == "object_store" else None
    return {
        "engine": engine,
        "transport": transport,
        "bytes": nbytes,
        "sync_s": sync_s,
        "load_s": load_s,
        "engine_reload_s": reload_s,
        "raw_put_get_s": raw_s,
        "ratio": sync_s / raw_s,
        "best_ratio": min(sync_times) / min(raw_times),
        "sync_times": sync_times,
        "raw_times": raw_times,
        "sync_GBps": nbytes / sync_s / 1e9,
        "raw_GBps": nbytes / raw_s / 1e9,
    }


def engine_reload_s(model: str, engine: str, repeats: int, gpu: bool = False) -> float:
    """The engine's own load of the same weights, in-process, from tensors already in memory (for vLLM its
    ``reload_weights``), on one thread as the rollout actor (num_cpus 1): the floor of any sync into it. Median of
    ``repeats``."""
    import torch
    from transformers import AutoModelForCausalLM

    threads = torch.get_num_threads()
    torch.set_num_threads(1)

    from relay_rl.rollout_workers.actor import make_engine

    opts = engine_opts(engine, gpu)
    eng = make_engine(engine, model, "float32", opts)
    state = {k: v.detach().clone() for k, v in AutoModelForCausalLM.from_pretrained(model).named_parameters()}
    times = []
    for _ in range(repeats + 1):
        t = time.perf_counter()
        eng.load_weights(iter(state.items()))
        times.append(time.perf_counter() - t)
    del eng
    torch.set_num_threads(threads)
    return statistics.median(times[1:])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engine", default="vllm", choices=["vllm", "hf"])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--prompts", type=int, default=128)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--sync-mb", type=int, default=400, help="model size for the sync benchmark (fp32 MiB)")
    ap.add_argument("--skip", nargs="*", default=[], choices=["rollout", "sync"])
    ap.add_argument(
        "--bucket-mb", type=float, default=256, help="rollout.weight_sync_bucket_mb of the sync (its default)"
    )
    ap.add_argument("--transports", nargs="*", default=["object_store", "collective"])
    ap.add_argument("--gpu", action="store_true", help="engines, learner and rollout actor on the GPU (half each)")
    a = ap.parse_args()
    import ray
    import torch

    ray.init(address="local", num_cpus=4, include_dashboard=False, runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1"}})
    results = {}
    with tempfile.TemporaryDirectory() as d:
        if "rollout" not in a.skip:
            gen_model = random_model(Path(d) / "gen", hidden=256, layers=4, inter=1024)
            results["rollout"] = r = bench_rollout(a.engine, gen_model, a.repeats, a.prompts, a.n, a.max_tokens, a.gpu)
        if "sync" not in a.skip:
            layers = max(1, round(a.sync_mb * 2**20 / 4 / (4 * 1024 * 1024 + 3 * 1024 * 2816)))
            sync_model = random_model(Path(d) / "sync", hidden=1024, layers=layers, inter=2816)
            results["sync"] = [bench_sync(sync_model, a.repeats, t, a.engine, a.bucket_mb, a.gpu) for t in a.transports]
    dev = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU only, {os.cpu_count()} cores"
    print(f"\nmachine: {platform.machine()}, {dev}")
    if "rollout" in results:
        r = results["rollout"]
        print(
            f"(a) rollout, {r['engine']}: {r['completions']} completions, {r['tokens']} tokens | raw "
            f"{r['raw_tokens_per_s']:.0f} tok/s | relay-rl rollout actor {r['service_tokens_per_s']:.0f} tok/s | "
            f"overhead {100 * r['overhead']:+.1f}%"
        )
    for s in results.get("sync", []):
        print(
            f"(b) weight sync into {s['engine']}, {s['transport']}, buckets of {a.bucket_mb:g} MiB: "
            f"{s['bytes'] / 2**20:.0f} MiB in "
            f"{s['sync_s']:.3f}s "
            f"({s['sync_GBps']:.2f} GB/s) | raw ray.put+ray.get {s['raw_put_get_s']:.3f}s ({s['raw_GBps']:.2f} GB/s) | "
            f"ratio {s['ratio']:.2f}x of medians, {s['best_ratio']:.2f}x of bests "
            f"(engine load, the publishing overlapped: {s['load_s']:.3f}s"
            + (f"; the engine's own load in-process: {s['engine_reload_s']:.3f}s" if s["engine_reload_s"] else "")
            + ")"
        )
    print(json.dumps(results))
    ray.shutdown()


if __name__ == "__main__":
    main()
