"""Reward-pool throughput (completions scored per second) with 1 and 2 reward replicas, against raw baselines.

    python tests/benchmarks/bench_reward.py [--parts rm code] [--rows 64] [--repeats 3] [--rollout-chunks 2]
                                            [--slow 0] [--out result.json]

One generation batch of ``--rows`` completions (``--rows / --group`` prompts of ``--group`` completions each) is
scored through relay-rl's reward pool: real ``reward_workers.actor.RewardWorker`` actors on a local Ray cluster,
made by the service's own ``cluster.pools.PoolMaker.actor("reward", i)`` from a run config (so with the reward
pool's default ``num_cpus``), and fed the way the service feeds them: ``Pipeline.launch`` cuts a generation batch
into one chunk per rollout replica (``items[w::R]`` over prompts, groups kept whole) and ``Pipeline._score`` sends
chunk i to reward replica ``i % replicas``, or, with more reward replicas than chunks, splits each chunk between
several (whole groups each). The chunks are put in the object store first (they come out of the
rollout actors there), then timed from dispatch until every scored chunk is back in the driver.

(a) ``reward_model``: a randomly initialised ``Qwen3ForSequenceClassification`` (num_labels=1, ``--vocab`` 32000,
    no hub) with a word-level tokenizer that covers its vocabulary; prompts of 16 words, completions of 64-128
    words (one token each). Baseline: the raw engine, the same model's tokenizer + forward in-process (no Ray) on
    the same texts in batches of ``--rm-batch-size``, with as many torch threads as a reward actor gets.
(b) ``code_tests``: the kit's code task rows (``cluster.kit_code.code_row``: ``def f(): return <completion>``, four
    asserts) for synthetic ``a+b=`` prompts, with a mix of completions per group (right, right as an expression,
    wrong with partial credit, not compiling); ``--slow N`` makes N completions per batch loop until the sandbox's
    CPU limit (off by default: each costs ``cpu_s`` seconds). Baselines: ``code_tests`` itself in-process (no Ray)
    with ``parallel=1`` (one sandbox at a time: serial) and with ``--parallel``; the ideal is the serial rate times
    the sandboxes running at once (``parallel`` per actor x replicas), and that ideal capped at the machine's cores.

Configurations timed, alternating within each repeat so machine noise hits all alike (medians reported):
baseline(s), 1 replica, 2 replicas, and 2 replicas with 1 rollout chunk (the pipeline with rollout.replicas=1: the
one chunk is split between the two reward replicas). ``--rollout-chunks`` (default 2) is the number of rollout
replicas the batch comes from in the other configurations.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
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
    "RAY_USAGE_STATS_ENABLED": "0",
    "TOKENIZERS_PARALLELISM": "false",
}.items():
    os.environ.setdefault(k, v)


# ---------------------------------------------------------------------------------------------------------------
# models, tokenizers, rows
# ---------------------------------------------------------------------------------------------------------------


def _word(i: int) -> str:
    """A distinct lowercase pseudo-word for every index (a, b, ..., z, aa, ab, ...)."""
    s = ""
    i += 1
    while i:
        i, r = divmod(i - 1, 26)
        s = chr(97 + r) + s
    return s


def word_tokenizer(vocab: int):
    """A word-level tokenizer of exactly ``vocab`` tokens: <pad>, <eos>, <unk>, then pseudo-words; one token per
    whitespace-separated word."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<pad>", "<eos>", "<unk>", *(_word(i) for i in range(vocab - 3))]
    tok = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tok.add_special_tokens(["<pad>", "<eos>", "<unk>"])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>", model_max_length=1024
    ), words[3:]


def ascii_tokenizer():
    """One token per printable ASCII character (the kit's character tokenizer covers only digits, ``+`` and ``=``:
    enough for the kit's code task, not for the ``--slow`` programs)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = ["<pad>", "<eos>", *(chr(c) for c in range(32, 127))]
    tok = Tokenizer(models.WordLevel(vocab={t: i for i, t in enumerate(vocab)}, unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(["<pad>", "<eos>"])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", padding_side="left")


def random_reward_model(out: Path, vocab: int, hidden: int, layers: int) -> tuple[str, list[str]]:
    import torch
    from transformers import Qwen3Config, Qwen3ForSequenceClassification

    tok, words = word_tokenizer(vocab)
    cfg = Qwen3Config(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=max(1, hidden // 64),
        num_key_value_heads=max(1, hidden // 128),
        head_dim=64,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        num_labels=1,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
    )
    torch.manual_seed(0)
    Qwen3ForSequenceClassification(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return str(out), words


def rm_records(n_prompts: int, group: int, words: list[str], seed: int = 0):
    """(records, completions per record): 16-word prompts, completions of 64-128 words."""
    rng = random.Random(seed)
    records = [{"prompt": " ".join(rng.choices(words, k=16))} for _ in range(n_prompts)]
    comps = [[" " + " ".join(rng.choices(words, k=rng.randint(64, 128))) for _ in range(group)] for _ in records]
    return records, comps


def code_records(n_prompts: int, group: int, slow: int, seed: int = 0):
    """Kit code-task rows for synthetic a+b= prompts, and ``group`` distinct completions per row: a mix of right,
    right-as-an-expression, wrong (partial credit) and non-compiling programs; ``slow`` of them in the whole batch
    loop until the CPU limit kills them."""
    from relay_rl.cluster.kit.code_task import code_row

    rng = random.Random(seed)
    records, comps = [], []
    for _ in range(n_prompts):
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        t = a + b
        records.append(code_row({"prompt": f"{a}+{b}=", "answer": str(t), "solution": str(t)}))
        kinds = [f"{t}", f"{a}+{b}", f"{t + 1}", f"{t}=", f"{b}+{a}", f"{t * 10}", f"{t - 1}+1", f"{a}{b}"]
        comps.append([kinds[j % len(kinds)] + ("" if j < len(kinds) else f"+0*{j}") for j in range(group)])
    flat = [(i, j) for i in range(n_prompts) for j in range(group)]
    for i, j in rng.sample(flat, min(slow, len(flat))):
        comps[i][j] = f"next(x for x in iter(int, 1) if x) + {j}"  # never ends: killed at cpu_s
    return records, comps


def make_batch(records: list[dict], comps: list[list[str]], tokenizer, group_ids: list[int]):
    """A rollout ``Batch`` as ``RolloutWorker._batch`` builds it: prompts left-padded, completions right-padded and
    ended by EOS, the dataset's other columns repeated per completion."""
    import torch

    from relay_rl.batch import Batch

    rows = [(i, c) for i, cs in enumerate(comps) for c in cs]
    p_tok = [tokenizer(r["prompt"], add_special_tokens=False)["input_ids"] for r in records]
    c_tok = [tokenizer(c, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for _, c in rows]
    N, tp, tc = len(rows), max(map(len, p_tok)), max(map(len, c_tok))
    pad = tokenizer.pad_token_id
    p_ids, p_mask = torch.full((N, tp), pad, dtype=torch.long), torch.zeros((N, tp), dtype=torch.long)
    c_ids, c_mask = torch.full((N, tc), pad, dtype=torch.long), torch.zeros((N, tc))
    for r, (i, _) in enumerate(rows):
        p, c = p_tok[i], c_tok[r]
        p_ids[r, tp - len(p) :], p_mask[r, tp - len(p) :] = torch.tensor(p), 1
        c_ids[r, : len(c)], c_mask[r, : len(c)] = torch.tensor(c), 1.0
    other = [k for k in records[0] if k != "prompt"]
    return Batch(
        prompt_ids=p_ids,
        prompt_mask=p_mask,
        completion_ids=c_ids,
        completion_mask=c_mask,
        behaviour_logprobs=torch.zeros((N, tc)),
        policy_version=torch.zeros(N, dtype=torch.long),
        mixed_version=torch.zeros(N, dtype=torch.bool),
        group_id=torch.tensor([group_ids[i] for i, _ in rows]),
        truncated=torch.zeros(N, dtype=torch.bool),
        prompts=[records[i]["prompt"] for i, _ in rows],
        completions=[c for _, c in rows],
        columns={k: [records[i][k] for i, _ in rows] for k in other},
        info={"worker": 0},
    )


def rollout_chunks(records, comps, tokenizer, R: int) -> list:
    """The generation batch as the R rollout replicas return it: mirrors ``cluster.pipeline.Pipeline.launch``
    (``chunk = items[w_index::len(workers)]``: prompts interleaved, each prompt's group whole)."""
    out = []
    for w in range(R):
        idx = list(range(len(records)))[w::R]
        if idx:
            out.append(make_batch([records[i] for i in idx], [comps[i] for i in idx], tokenizer, idx))
    return out


# ---------------------------------------------------------------------------------------------------------------
# the service side: reward actors and the pipeline's dispatch
# ---------------------------------------------------------------------------------------------------------------


def service_config(reward_funcs: list, model_path: str, data_file: str, replicas: int, num_cpus: float | None):
    """A run config (the quickstart recipe without its kit) whose reward section is ``reward_funcs``."""
    import yaml

    from relay_rl.cluster.config import validate_dict

    raw = yaml.safe_load((ROOT / "deploy/recipes/quickstart.yaml").read_text())
    raw.pop("kit", None)
    raw["model"] = {"name_or_path": model_path}
    raw["data"] = {"train": data_file}
    raw["reward"] = {"reward_funcs": reward_funcs}
    reward = {"replicas": replicas} if num_cpus is None else {"replicas": replicas, "num_cpus": num_cpus}
    raw["cluster"] = {**raw.get("cluster", {}), "reward": reward}
    return validate_dict(raw)


class Service:
    """``replicas`` reward actors, started as ``cluster.pools.create_pools`` starts them, and a ``Pipeline`` whose
    ``_score`` (the service's dispatch) is called on pre-put chunks."""

    def __init__(
        self, run_name: str, reward_funcs: list, model_path: str, data_file: str, replicas: int, num_cpus: float | None
    ):
        import ray

        from relay_rl.cluster.config import resolve_schedule
        from relay_rl.cluster.pipeline import Pipeline
        from relay_rl.cluster.pools import PoolMaker, Pools

        self.cfg = service_config(reward_funcs, model_path, data_file, replicas, num_cpus)
        make = PoolMaker(self.cfg, run_name, model_path, None, model_path)
        t0 = time.perf_counter()
        self.actors = [make.actor("reward", i) for i in range(replicas)]
        ray.get([a.ping.remote() for a in self.actors])
        self.start_s = time.perf_counter() - t0
        self.sched = resolve_schedule(self.cfg)
        self.pipes = {
            n: Pipeline(self.cfg, self.sched, Pools(rollout=[], reward=self.actors[:n], learner=[]), None)
            for n in range(1, replicas + 1)
        }
        self.step = 0

    def score(self, refs: list, replicas: int) -> tuple[float, list]:
        """Seconds from dispatch until every scored chunk is back; the scored chunks."""
        import ray

        self.step += 1
        pipe = self.pipes[replicas]
        t0 = time.perf_counter()
        out = ray.get(pipe._score(refs, self.step))
        return time.perf_counter() - t0, out

    def shutdown(self):
        import ray

        for a in self.actors:
            ray.kill(a, no_restart=True)


def _check(scored: list, name: str) -> dict:
    """Every chunk scored without errors; the scores' summary."""
    import torch

    errors = {k: v for b in scored for k, v in b.info.get("reward_errors", {}).items()}
    if errors:
        raise RuntimeError(f"{name}: reward errors {errors}")
    r = torch.cat([b.rewards[:, 0] for b in scored])
    return {
        "rows": int(r.numel()),
        "nan": int(r.isnan().sum()),
        "mean": float(r.nanmean()),
        "workers": sorted({b.info["reward_worker"] for b in scored}),
    }


def _busy_s(scored: list) -> float:
    """Seconds the busiest reward replica spent inside ``RewardWorker.score`` (its chunks run one after another)."""
    per_worker: dict = {}
    for b in scored:
        per_worker[b.info["reward_worker"]] = per_worker.get(b.info["reward_worker"], 0.0) + b.info["reward_s"]
    return max(per_worker.values())


def run_configs(service: Service, chunks: list, whole, baselines: dict, warm: dict, repeats: int, rows: int) -> dict:
    """Time each baseline and service configuration ``repeats`` times, alternating; completions/s of the medians.
    ``chunks``: the batch from ``--rollout-chunks`` rollout replicas; ``whole``: the same batch from one;
    ``warm``: a small call per baseline (first-call costs: imports, probes)."""
    import ray

    t0 = time.perf_counter()
    small = ray.put(whole.select(range(min(8, len(whole)))))
    for actor in service.actors:  # warm-up: every actor loads / probes what it needs once (a model, the sandbox)
        _check([ray.get(actor.score.remote(small))], "warm-up")
    for fn in warm.values():
        fn()
    warm_s = time.perf_counter() - t0

    def put(c):  # (ref, groups in it): what ``Pipeline._score`` takes
        return ray.put(c), len(set(c.group_id.tolist()))

    refs = [put(c) for c in chunks]
    configs = {"1 replica": (1, refs), "2 replicas": (2, refs), "2 replicas, 1 rollout chunk": (2, [put(whole)])}
    times: dict[str, list] = {k: [] for k in [*baselines, *configs]}
    busy: dict[str, list] = {k: [] for k in configs}
    checks = {}
    t0 = time.perf_counter()
    for _ in range(repeats):
        for name, fn in baselines.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
        for name, (n, rs) in configs.items():
            dt, scored = service.score(rs, n)
            times[name].append(dt)
            busy[name].append(_busy_s(scored))
            checks[name] = _check(scored, name)
    out = {}
    for name, ts in times.items():
        med = statistics.median(ts)
        out[name] = {"s": round(med, 4), "completions_per_s": round(rows / med, 1), "times": [round(t, 4) for t in ts]}
        if name in busy:
            out[name]["busiest_replica_in_actor_s"] = round(statistics.median(busy[name]), 4)
            out[name].update(checks[name])
    base, one = out[next(iter(baselines))]["completions_per_s"], out["1 replica"]["completions_per_s"]
    for r in out.values():
        r["ratio_to_baseline"] = round(r["completions_per_s"] / base, 3)
        if "workers" in r:
            r["ratio_to_1_replica"] = round(r["completions_per_s"] / one, 3)
    return out, {"warm_up_s": round(warm_s, 1), "timed_s": round(time.perf_counter() - t0, 1)}


# ---------------------------------------------------------------------------------------------------------------
# (a) reward model, (b) code execution
# ---------------------------------------------------------------------------------------------------------------


def bench_rm(a, tmp: Path, data_file: str, threads: int) -> dict:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from relay_rl.reward_workers.reward_model import texts_for_reward_model

    t0 = time.perf_counter()
    path, words = random_reward_model(tmp / "rm", a.vocab, a.hidden, a.layers)
    n_prompts = a.rows // a.group
    records, comps = rm_records(n_prompts, a.group, words)
    tok = AutoTokenizer.from_pretrained(path)
    chunks = rollout_chunks(records, comps, tok, a.rollout_chunks)
    whole = rollout_chunks(records, comps, tok, 1)[0]
    funcs = [{"name": "reward_model", "kwargs": {"model": path, "batch_size": a.rm_batch_size}}]
    service = Service("bench-reward-rm", funcs, path, data_file, 2, a.num_cpus)

    # the raw engine: the same texts (in the service's row order), tokenizer + forward, same batch size and threads
    texts = texts_for_reward_model(
        tok, [p for c in chunks for p in c.prompts], [x for c in chunks for x in c.completions]
    )
    model = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32).eval()
    n_tokens = sum(len(ids) for ids in tok(texts)["input_ids"])
    setup_s = time.perf_counter() - t0 - service.start_s

    def raw():
        torch.set_num_threads(threads)
        with torch.no_grad():
            for i in range(0, len(texts), a.rm_batch_size):
                enc = tok(
                    texts[i : i + a.rm_batch_size], return_tensors="pt", padding=True, truncation=True, max_length=1024
                )
                model(**enc).logits[:, 0].tolist()

    def raw_small():
        torch.set_num_threads(threads)
        with torch.no_grad():
            model(**tok(texts[: a.rm_batch_size], return_tensors="pt", padding=True))

    try:
        res, phases = run_configs(
            service, chunks, whole, {"raw forward": raw}, {"raw forward": raw_small}, a.repeats, a.rows
        )
    finally:
        service.shutdown()
    n_params = sum(p.numel() for p in model.parameters())
    return {
        "model": {
            "vocab": a.vocab,
            "hidden": a.hidden,
            "layers": a.layers,
            "parameters": n_params,
            "batch_size": a.rm_batch_size,
            "tokens_per_row": round(n_tokens / len(texts), 1),
        },
        "setup_s": round(setup_s, 1),
        "actor_start_s": round(service.start_s, 1),
        **phases,
        "configs": res,
        "baseline": "raw forward",
    }


def bench_code(a, tmp: Path, data_file: str) -> dict:
    from relay_rl.reward_workers.registry import resolve

    t0 = time.perf_counter()
    tok_dir = tmp / "char_tokenizer"  # the policy's tokenizer (the reward actor loads it; code_tests does not use it)
    tok = ascii_tokenizer()
    tok.save_pretrained(tok_dir)
    records, comps = code_records(a.rows // a.group, a.group, a.slow)
    chunks = rollout_chunks(records, comps, tok, a.rollout_chunks)
    kwargs = {"template_column": "template", "mode": "fraction", "parallel": a.parallel, "cpu_s": a.cpu_s}
    service = Service(
        "bench-reward-code", [{"name": "code_tests", "kwargs": kwargs}], str(tok_dir), data_file, 2, a.num_cpus
    )

    # in-process code_tests (the built-in, no Ray): serial (parallel=1) and with the actor's parallelism
    whole = rollout_chunks(records, comps, tok, 1)[0]
    fn_kwargs = {**whole.columns, "prompts": whole.prompts, "completions": whole.completions}
    _, serial_fn = resolve({"name": "code_tests", "kwargs": {**kwargs, "parallel": 1}}, tok)
    _, parallel_fn = resolve({"name": "code_tests", "kwargs": kwargs}, tok)
    programs = len(
        {
            (t.replace("{code}", c), tuple(ts))
            for c, t, ts in zip(whole.completions, whole.columns["template"], whole.columns["tests"])
        }
    )
    baselines = {
        "serial sandbox (in-process)": lambda: serial_fn(**fn_kwargs),
        f"{a.parallel} sandboxes (in-process)": lambda: parallel_fn(**fn_kwargs),
    }
    first = {k: v[:1] for k, v in fn_kwargs.items()}
    warm = {"serial": lambda: serial_fn(**first), "parallel": lambda: parallel_fn(**first)}
    setup_s = time.perf_counter() - t0 - service.start_s
    try:
        res, phases = run_configs(service, chunks, whole, baselines, warm, a.repeats, a.rows)
    finally:
        service.shutdown()
    serial = res["serial sandbox (in-process)"]["completions_per_s"]
    cores = os.cpu_count() or 1
    ideal = {
        f"{n} replica{'s' * (n > 1)}": {
            "sandboxes": n * a.parallel,
            "completions_per_s": round(serial * n * a.parallel, 1),
            "cpu_capped_completions_per_s": round(serial * min(n * a.parallel, cores), 1),
        }
        for n in (1, 2)
    }
    scores = serial_fn(**fn_kwargs)
    return {
        "parallel": a.parallel,
        "cpu_s": a.cpu_s,
        "slow_per_batch": a.slow,
        "distinct_programs": programs,
        "pass_all": sum(s == 1.0 for s in scores),
        "pass_none": sum(s == 0.0 for s in scores),
        "setup_s": round(setup_s, 1),
        "actor_start_s": round(service.start_s, 1),
        **phases,
        "configs": res,
        "ideal": ideal,
        "baseline": "serial sandbox (in-process)",
    }


# ---------------------------------------------------------------------------------------------------------------


def table(title: str, part: dict) -> list[str]:
    """Completions/s of each configuration, its median seconds, the busiest replica's seconds inside the actor, and
    its ratios to the baseline and to 1 replica."""
    res, base = part["configs"], part["configs"][part["baseline"]]["completions_per_s"]
    one = res["1 replica"]["completions_per_s"]
    lines = [
        title,
        f"  {'configuration':<34}{'compl/s':>9}{'median s':>10}{'busy s':>8}{'x base':>8}"
        f"{'x 1 repl':>9}  replicas used",
    ]
    for name, r in res.items():
        service = "busiest_replica_in_actor_s" in r
        busy = f"{r['busiest_replica_in_actor_s']:>8.3f}" if service else " " * 8
        tail = f"{r['completions_per_s'] / one:>9.2f}  {r['workers']}" if service else ""
        lines.append(
            f"  {name:<34}{r['completions_per_s']:>9.1f}{r['s']:>10.3f}{busy}"
            f"{r['completions_per_s'] / base:>8.2f}{tail}"
        )
    for name, r in part.get("ideal", {}).items():
        lines.append(
            f"  {'ideal, ' + name + ' (' + str(r['sandboxes']) + ' sandboxes)':<34}"
            f"{r['completions_per_s']:>9.1f}{'':>18}{r['completions_per_s'] / base:>8.2f}"
            f"   (capped at {os.cpu_count()} cores: {r['cpu_capped_completions_per_s']:.1f}/s)"
        )
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", nargs="+", default=["rm", "code"], choices=["rm", "code"])
    ap.add_argument("--rows", type=int, default=64, help="completions per generation batch")
    ap.add_argument("--group", type=int, default=8, help="completions per prompt (G)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--rollout-chunks",
        type=int,
        default=2,
        help="rollout replicas the batch comes from (chunks the pipeline sends to the reward pool)",
    )
    ap.add_argument(
        "--num-cpus",
        type=float,
        default=None,
        help="num_cpus per reward actor (default: the reward pool's default, cluster.reward.num_cpus)",
    )
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--rm-batch-size", type=int, default=16, help="reward_model's batch_size kwarg")
    ap.add_argument("--parallel", type=int, default=4, help="code_tests' parallel kwarg (sandboxes per actor)")
    ap.add_argument("--cpu-s", type=int, default=2, help="code_tests' cpu_s kwarg")
    ap.add_argument("--slow", type=int, default=0, help="completions per batch that loop until the CPU limit")
    ap.add_argument("--out", default=None, help="write the JSON result here (default: print only)")
    a = ap.parse_args()
    if a.rows % a.group:
        ap.error("--rows must be a multiple of --group")

    import ray
    import torch

    from relay_rl.cluster.config import ClusterSpec
    from relay_rl.process import configure_worker, default_env

    configure_worker()
    num_cpus = a.num_cpus if a.num_cpus is not None else ClusterSpec().reward.num_cpus
    threads = max(1, int(num_cpus))  # what Ray sets OMP_NUM_THREADS (torch's threads) to in an actor of num_cpus
    load0 = os.getloadavg()
    t_start = time.perf_counter()
    ray.init(
        address="local",
        num_cpus=os.cpu_count(),
        include_dashboard=False,
        namespace="relay-rl-bench",
        runtime_env={"env_vars": {**default_env(), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}},
    )
    report = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, "
        + (torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "ray": ray.__version__,
        "rows": a.rows,
        "group": a.group,
        "repeats": a.repeats,
        "rollout_chunks": a.rollout_chunks,
        "reward_num_cpus": num_cpus,
        "torch_threads_per_actor": threads,
        "load_avg_before": load0,
    }
    lines = []
    try:
        with tempfile.TemporaryDirectory(prefix="relay-bench-reward-") as d:
            tmp = Path(d)
            data_file = str(tmp / "prompts.jsonl")
            Path(data_file).write_text('{"prompt": "1+1="}\n')
            if "rm" in a.parts:
                report["reward_model"] = rm = bench_rm(a, tmp, data_file, threads)
                m = rm["model"]
                lines += table(
                    f"(a) reward_model: {a.rows} completions, ~{m['tokens_per_row']:.0f} tokens each, "
                    f"Qwen3 classifier {m['parameters'] / 1e6:.1f}M params (vocab {m['vocab']}, hidden "
                    f"{m['hidden']}, {m['layers']} layers), batch {m['batch_size']}, {threads} torch "
                    f"thread(s) per actor and baseline",
                    rm,
                )
            if "code" in a.parts:
                report["code_tests"] = code = bench_code(a, tmp, data_file)
                lines += table(
                    f"(b) code_tests: {a.rows} completions ({code['distinct_programs']} distinct "
                    f"programs; {code['pass_all']} pass all, {code['pass_none']} pass none; {a.slow} "
                    f"slow), parallel={a.parallel} sandboxes per actor",
                    code,
                )
    finally:
        ray.shutdown()
    report["load_avg_after"] = os.getloadavg()
    report["total_s"] = round(time.perf_counter() - t_start, 1)
    print(
        f"\nmachine: {report['machine']}; load average before {load0[0]:.2f}, after "
        f"{report['load_avg_after'][0]:.2f}; {a.rollout_chunks} rollout chunks; reward actors num_cpus={num_cpus}; "
        f"medians of {a.repeats}; total {report['total_s']:.0f}s"
    )
    print("\n".join(lines))
    for key in ("reward_model", "code_tests"):
        if key in report:
            r = report[key]
            print(
                f"{key} phases: setup {r['setup_s']}s, actors up {r['actor_start_s']}s, warm-up {r['warm_up_s']}s, "
                f"timed {r['timed_s']}s"
            )
    print(json.dumps(report))
    if a.out:
        Path(a.out).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
