"""Multi-turn rollout throughput against single-turn generation, and the overlap of tool latency.

    python tests/benchmarks/bench_multiturn.py [--rows 64] [--repeats 5] [--engine hf|vllm] [--sleep-ms 50]

On the kit's tool task (``a*b=``, its warm start calling the ``multiply`` tool; built on first use), through
relay-rl's tool loop (``rollout_workers.agent.MultiTurn``, the rollout actor's code path, in-process):

(a) trajectories/s and sampled tokens/s of multi-turn rollouts (call, tool, answer) against single-turn generation of
    the same prompts on the same engine (one turn, no tools): the baseline is the raw engine's ``generate``.
(b) with a tool that sleeps ``--sleep-ms``, ``--rows`` trajectories in flight at once (one generation call: the calls
    of a turn run together) against the same trajectories one at a time: the overlap.

Sampling at temperature 1.0, seed fixed per repeat; medians over ``--repeats`` after one warm-up.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
for k, v in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "RAY_AUTH_MODE": "disabled"}.items():
    os.environ.setdefault(k, v)

SLEEPY = ROOT / "tests" / "benchmarks" / "_sleepy_tool.py"
L = 24


def kit_tools() -> Path:
    from relay_rl.cluster.config import KitConfig
    from relay_rl.cluster.kit.build import ensure_kit
    from relay_rl.cluster.runner import train

    return ensure_kit(KitConfig(variant="tools"), train)


def engine(kind: str, path: str):
    if kind == "vllm":
        from relay_rl.rollout_workers.vllm_engine import VLLMEngine

        return VLLMEngine(path, dtype="float32", max_model_len=64, enforce_eager=True, seed=0)
    from relay_rl.rollout_workers.hf_engine import HFEngine

    return HFEngine(path, dtype="float32")


def median_time(fn, repeats: int) -> float:
    fn(0)
    times = []
    for r in range(repeats):
        t0 = time.perf_counter()
        fn(r + 1)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--engine", choices=["hf", "vllm"], default="hf")
    ap.add_argument("--sleep-ms", type=float, default=50.0)
    args = ap.parse_args()

    from relay_rl.cluster.kit.task import read_splits
    from relay_rl.cluster.kit.tool_task import TOOL
    from relay_rl.rollout_workers.agent import MultiTurn
    from relay_rl.sampling import SamplingParams

    root = kit_tools()
    rows = read_splits(root)["test"][: args.rows]
    prompts = [r["prompt"] for r in rows]
    e = engine(args.engine, str(root / "warm_start"))
    tok = e.tokenizer
    SLEEPY.write_text(
        "import time\n\n\ndef multiply(a: int, b: int) -> str:\n"
        '    """Multiply, slowly.\n\n    Args:\n        a: The first factor.\n        b: The second factor.\n    """\n'
        f"    time.sleep({args.sleep_ms / 1000!r})\n    return str(a * b)\n"
    )
    sys.path.insert(0, str(SLEEPY.parent))
    fast = MultiTurn(tok, [TOOL], None, lambda: [], None, L, 30.0)
    slow = MultiTurn(tok, ["_sleepy_tool:multiply"], None, lambda: [], None, L, 30.0)
    prompt_ids = [fast.prompt_ids(p) for p in prompts]

    def params(seed):
        return SamplingParams(n=1, temperature=1.0, max_tokens=L, seed=seed)

    counts = {}

    def single(seed):
        outs = e.generate(prompt_ids, params(seed))
        counts["single_tokens"] = sum(len(c.token_ids) for per in outs for c in per)

    def multi(agent, key):
        def go(seed):
            outs = agent.run(e, rows, prompts, params(seed), worker=0)
            trajs = [t for per in outs for _, t in per]
            counts[key] = (sum(sum(t.tool_mask) for t in trajs), sum(t.tool_calls for t in trajs))

        return go

    def one_at_a_time(seed):
        for r, p in zip(rows, prompts):
            slow.run(e, [r], [p], params(seed), worker=0)

    t_single = median_time(single, args.repeats)
    t_multi = median_time(multi(fast, "multi"), args.repeats)
    t_flight = median_time(multi(slow, "slow"), args.repeats)
    t_serial = median_time(one_at_a_time, max(1, args.repeats // 2))
    n = len(rows)
    sampled, calls = counts["multi"]
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "engine": args.engine,
        "rows": n,
        "single_turn": {"completions_per_s": n / t_single, "sampled_tokens_per_s": counts["single_tokens"] / t_single},
        "multi_turn": {
            "trajectories_per_s": n / t_multi,
            "sampled_tokens_per_s": sampled / t_multi,
            "tool_calls": calls,
            "ratio_trajectories_to_single_completions": (n / t_multi) / (n / t_single),
            "ratio_tokens_per_s_to_single": (sampled / t_multi) / (counts["single_tokens"] / t_single),
        },
        f"tool_sleeping_{args.sleep_ms:g}ms": {
            "in_flight_trajectories_per_s": n / t_flight,
            "one_at_a_time_trajectories_per_s": n / t_serial,
            "overlap_speedup": t_serial / t_flight,
            "tool_calls": counts["slow"][1],
        },
    }
    SLEEPY.unlink(missing_ok=True)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
