"""The object-store pipeline: prompts -> rollout -> reward (-> teacher pools) -> assembly -> learner shards.

A generation batch is launched as a chain of ObjectRefs; the driver never holds its tensors. Assembly (a Ray task)
runs the family's ``assemble`` on the whole generation batch (advantages, targets, row order), cuts it into P rank
shards of S slices, and returns the shards plus a small dict of statistics, which is all the driver reads. Weights
reach the rollout pool through ``RolloutSync`` (``pipe.weights``); shards reach the ranks through
``cluster.admission``. The pipeline is also the ``Driver`` a family's driver-side hooks see.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field

import ray
import torch

from relay_rl.batch import Batch
from relay_rl.learner.advantages import total_reward
from relay_rl.learner.methods import DATASET, POLICY, TEACHER, family
from relay_rl.sampling import SamplingParams

from . import dynamic_sampling
from .config import RunConfig, Schedule
from .dynamic_sampling import select_groups
from .pools import Pools
from .rollout_sync import RolloutSync

log = logging.getLogger("relay_rl")

TABLE_ROWS = 64  # rows of the completions table (``train.log_completions``) per generation batch


@ray.remote(num_cpus=0)
def assemble(
    scored: list,
    alg,
    P: int,
    reward_weights: list | None,
    seed: int,
    gen_id: int,
    epoch: int = 0,
    groups: list[int] | None = None,
    table_rows: int = 0,
):
    """Whole generation batch -> (P shards..., stats): the family's assemble step (advantages, targets, row order),
    then P consecutive rank shards of S slices each. ``epoch``: the pass over the prompts it was drawn in (a
    per-epoch schedule's index: online DPO's beta). ``groups``: dynamic sampling's choice, the groups the batch holds
    (``scored`` then holds every round); the statistics describe everything sampled. ``table_rows``: that many
    sampled rows of the assembled batch as text (``train.log_completions``), in ``stats["completions_table"]``."""
    parts = ray.get(scored)
    batch = Batch.concat(parts)
    has_rewards = batch.rewards is not None
    if not has_rewards:  # no reward section: a constant reward of 1.0 (advantages 0)
        batch, reward_weights = batch.replace(rewards=torch.ones(len(batch), 1)), None
    weights = reward_weights or [1.0] * batch.rewards.shape[1]
    # the lengths, rewards and timings of the generation batch (``rows``: every sample, for the ledger) before the
    # family turns it into training rows
    stats = generation_stats(
        batch,
        total_reward(batch.rewards, weights),
        [p.info for p in parts],
        scored=has_rewards,
        part_sizes=[len(p) for p in parts],
    )
    if groups is not None:
        batch = select_groups(batch, groups)
    batch, family_stats = family(alg).assemble(batch, alg, weights, seed)
    batch = batch.replace(info={**batch.info, "gen_id": gen_id, "epoch": epoch})
    if table_rows:
        family_stats["completions_table"] = completions_table(
            batch, parts[0].info.get("reward_names", []) if has_rewards else [], table_rows, seed
        )
    return (*batch.split(P), {**stats, **family_stats})


@ray.remote(num_cpus=0)
def reduce_scored(reduce, records: list, parts: list, *args):
    """``reduce(records, batch, *args)`` of scored parts joined into one batch, beside the data (``Driver``)."""
    return reduce(records, Batch.concat(ray.get(parts)), *args)


@ray.remote(num_cpus=0)
def join(parts: list) -> Batch:
    """Several sources' rows of the same prompts as one batch (XPO's policy and reference samples), so that a pair is
    scored in one reward call (a pairwise judge compares its two completions)."""
    batches = ray.get(parts)
    infos = [b.info for b in batches]
    work: dict = {}
    for b in batches:
        key = f"rollout/{b.info.get('worker')}"
        work[key] = work.get(key, 0) + len(b)
    return Batch.concat(batches).replace(
        info={
            **infos[0],
            "generate_s": max(i.get("generate_s", 0.0) for i in infos),
            "work_rows": work,
            "prompts_truncated": sum(i.get("prompts_truncated", 0) for i in infos),
        }
    )


def completions_table(batch: Batch, reward_names: list[str], n: int, seed: int) -> list[dict]:
    """``n`` rows of ``batch`` (seeded choice, in batch order) as text and numbers: prompt, completion, each reward
    function's score (None where it gave none), the advantage (a token-level one: its mean over the completion) and
    the policy version that sampled the row. The driver adds the step and the staleness."""
    pick = sorted(torch.randperm(len(batch), generator=torch.Generator().manual_seed(seed))[:n].tolist())
    adv = batch.advantages
    if adv is not None and adv.dim() == 2:
        adv = (adv * batch.loss_mask).sum(-1) / batch.loss_mask.sum(-1).clamp(min=1)
    rows = []
    for i in pick:
        prompt = batch.prompts[i] if i < len(batch.prompts) else ""
        if isinstance(prompt, list):
            prompt = "\n".join(f"{m.get('role')}: {m.get('content')}" for m in prompt)
        row = {"prompt": str(prompt), "completion": batch.completions[i] if i < len(batch.completions) else ""}
        for k, name in enumerate(reward_names):
            score = float(batch.rewards[i, k])
            row[name] = None if score != score else score
        row["advantage"] = None if adv is None else float(adv[i])
        row["policy_version"] = int(batch.policy_version[i])
        rows.append(row)
    return rows


def trajectory_stats(batch: Batch, infos: list[dict]) -> dict:
    """Multi-turn rollouts: turns and tool calls per trajectory, failures, latency, malformed turns, overflows (TRL's
    ``tools/call_frequency`` and ``tools/failure_frequency`` among them)."""
    t = batch.trajectories
    n, calls = len(t), sum(x["tool_calls"] for x in t)
    failures = sum(x["tool_failures"] for x in t)
    ok = [x["tool_calls"] > 0 and not x["tool_failures"] and not x["malformed"] for x in t]
    return {
        "tools/trajectories": float(n),
        "tools/turns_mean": sum(x["turns"] for x in t) / n,
        "tools/call_frequency": calls / n,
        "tools/failure_frequency": failures / max(calls, 1),
        "tools/failures": float(failures),
        "tools/success_share": sum(ok) / n,  # trajectories whose every call ran and no turn was malformed
        "tools/latency_s": sum(x["tool_s"] for x in t) / max(calls, 1),
        "tools/environment_reset_s": max(x.get("reset_s", 0.0) for x in t),  # the environment pool's resets
        "tools/malformed_turns": float(sum(x["malformed"] for x in t)),
        "tools/overflow": float(sum(x["overflow"] for x in t)),
        "tools/non_string_results": float(sum(x["non_string_results"] for x in t)),
        "tools/tool_tokens": float((batch.completion_mask * (1 - batch.tool_mask)).sum()),
        "tools/trajectories_redone": float(sum(i.get("trajectories_redone", 0) for i in infos)),
    }


def generation_stats(
    batch: Batch, r: torch.Tensor, infos: list[dict], scored: bool = True, part_sizes: list[int] | None = None
) -> dict:
    lengths = batch.loss_mask.sum(-1)  # the policy's tokens (multi-turn: without the tool messages')
    ended = lengths[~batch.truncated]  # completions that ended (EOS or a stop string) within the budget
    stats = {
        "completions/mean_length": float(lengths.mean()),
        "completions/min_length": float(lengths.min()),
        "completions/max_length": float(lengths.max()),
        "completions/mean_terminated_length": float(ended.mean()) if len(ended) else 0.0,
        "completions/min_terminated_length": float(ended.min()) if len(ended) else 0.0,
        "completions/max_terminated_length": float(ended.max()) if len(ended) else 0.0,
        "completions/clipped_ratio": float(batch.truncated.float().mean()),
        "completions/mixed_version_ratio": float(batch.mixed_version.float().mean())
        if batch.mixed_version is not None
        else 0.0,
        "completions/tokens": float(lengths.sum()),
        "prompts/tokens": float(batch.prompt_mask.sum()),
        "timing/generate_s": max(i.get("generate_s", 0.0) for i in infos),
        "timing/reward_s": max(i.get("reward_s", 0.0) for i in infos),
        "behaviour_version": int(batch.policy_version.min()),  # the weights that sampled the batch (oldest)
        "behaviour_version_max": int(batch.policy_version.max()),
        "rows": len(batch),
        "prompts/truncated": float(sum(i.get("prompts_truncated", 0) for i in infos)),
    }
    if batch.trajectories:
        stats.update(trajectory_stats(batch, infos))
    for key in {k for i in infos for k in i if k.startswith(("teacher_s/", "teacher_bytes/"))}:
        values = [i.get(key, 0) for i in infos]  # chunks are scored in parallel: seconds max, bytes add up
        stats[key.replace("teacher_s/", "timing/teacher_s/").replace("teacher_bytes/", "teacher/bytes/")] = (
            max(values) if key.startswith("teacher_s/") else sum(values)
        )
    stats["work"] = {}  # rows per replica: "rollout/0", "reward/1", ... (the ledger sums them)
    for info, part_rows in zip(infos, part_sizes or [0] * len(infos)):
        joined = info.get("work_rows")  # a joined batch (or a reward replica's part of it): its share per source
        total = sum(joined.values()) if joined else 0
        rows = {
            **(
                {k: round(n * part_rows / total) for k, n in joined.items()}
                if joined
                else {f"rollout/{info.get('worker')}": part_rows}
            ),
            f"reward/{info.get('reward_worker')}": part_rows,
        }
        for key, n in rows.items():
            if not key.endswith("/None"):
                stats["work"][key] = stats["work"].get(key, 0) + n
    if not scored:
        return {**stats, "reward_errors": {}, "reward_stuck": []}
    ok = ~torch.isnan(r)
    stats.update(
        {
            "reward": float(r[ok].mean()) if ok.any() else float("nan"),
            "reward_std": float(r[ok].std()) if ok.sum() > 1 else 0.0,
            "reward/unscorable": float((~ok).float().mean()),
        }
    )
    for k, name in enumerate(infos[0].get("reward_names", [])):
        col = batch.rewards[:, k]
        ok = ~torch.isnan(col)
        stats[f"rewards/{name}/mean"] = float(col[ok].mean()) if ok.any() else float("nan")
        stats[f"rewards/{name}/std"] = float(col[ok].std()) if ok.sum() > 1 else 0.0
    errors, stuck = {}, []
    for info in infos:
        errors.update(info.get("reward_errors", {}))
        if info.get("reward_stuck"):
            stuck.append(info.get("reward_worker"))
        for k, v in info.get("reward_metrics", {}).items():
            stats[f"rewards/{k}"] = v
    stats["reward_errors"] = errors
    stats["reward_stuck"] = stuck
    return stats


@dataclass
class Generation:
    """A launched generation batch: what the driver keeps (refs and metadata)."""

    gen_id: int
    records: list  # the prompts (dataset rows)
    version: int  # v_b: weights version it was sampled with
    shards: list = field(default_factory=list)  # P ObjectRefs
    stats_ref: object = None
    source_stats: dict = field(default_factory=dict)  # micro-batches per completion source (GKD's mixing)
    stats: dict | None = None
    attempts: int = 1
    rounds: list = field(default_factory=list)  # dynamic sampling: each round's scored refs
    verdicts: list = field(default_factory=list)  # ... and its (group id, varied, rows) ref, then its value
    filtered_rows: int = 0  # rows sampled but left out by dynamic sampling
    once: dict = field(default_factory=dict)  # (kind, value, count) statistics for the step that admits it


class PromptSampler:
    """Endless, seeded, epoch-wise shuffled stream of dataset rows."""

    def __init__(self, dataset, shuffle: bool, seed: int):
        self.ds, self.shuffle, self.seed = dataset, shuffle, seed
        self.epoch, self.order, self.pos = 0, [], 0

    def state(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos}

    def restore(self, state: dict) -> None:
        """The order of the epoch in progress is rebuilt from its seed."""
        self.epoch, self.pos = state["epoch"], state["pos"]
        if self.epoch:
            g = torch.Generator().manual_seed(self.seed + self.epoch - 1)
            self.order = (
                torch.randperm(len(self.ds), generator=g).tolist() if self.shuffle else list(range(len(self.ds)))
            )

    def take(self, n: int) -> list[dict]:
        out = []
        while len(out) < n:
            if self.pos >= len(self.order):
                g = torch.Generator().manual_seed(self.seed + self.epoch)
                self.order = (
                    torch.randperm(len(self.ds), generator=g).tolist() if self.shuffle else list(range(len(self.ds)))
                )
                self.epoch, self.pos = self.epoch + 1, 0
            k = min(n - len(out), len(self.order) - self.pos)
            out += self.ds.select(self.order[self.pos : self.pos + k]).to_list()
            self.pos += k
        return out


class Pipeline:
    def __init__(self, cfg: RunConfig, sched: Schedule, pools: Pools, train_data):
        self.cfg, self.sched, self.pools = cfg, sched, pools
        self.family = family(cfg.algorithm)
        self.sampler = PromptSampler(train_data, cfg.data.shuffle_dataset, cfg.train.seed)
        self.weights = RolloutSync(cfg, pools)
        self.redone = 0  # generation batches redone after a rollout, reward or teacher actor died
        r = cfg.rollout
        self.sampling = dict(
            temperature=r.temperature,
            top_p=r.top_p,
            top_k=r.top_k,
            min_p=r.min_p,
            repetition_penalty=r.repetition_penalty,
            max_tokens=r.max_completion_length,
            stop=tuple(r.stop) if r.stop else None,
        )

    def use_data(self, dataset) -> None:
        """Train on ``dataset`` instead of ``data.train`` (made at run time: rejection sampling's kept set)."""
        self.sampler = PromptSampler(dataset, self.cfg.data.shuffle_dataset, self.cfg.train.seed)

    # -- the Driver a family's hooks see (learner.methods.base.Driver) -----------------------------------------
    @property
    def train_data(self):
        return self.sampler.ds

    def sync_teacher(self, pool: str, alpha: float) -> None:
        self.weights.sync_teacher(pool, alpha)

    def sample_and_reduce(self, records: list[dict], n: int, seed: int, reduce, *args):
        parts = self.sample(records, self.training_sampling(n, seed), step=0)
        return ray.get(reduce_scored.remote(reduce, records, parts, *args))

    # -- generation ---------------------------------------------------------------------------------------------
    def launch(self, gen_id: int, records: list | None = None) -> Generation:
        """Start sampling, scoring and assembly of generation batch ``gen_id``; returns at once. With dynamic
        sampling only its first round starts here; ``fill`` runs the rest."""
        s = self.sched
        self.weights.wake()
        records = records if records is not None else self.sampler.take(s.prompts_per_generation)
        gen = Generation(gen_id=gen_id, records=records, version=self.weights.version)
        scored, gen.source_stats = self._sample(gen_id, records)
        if self.family.group_filter(self.cfg) is None:
            self._assemble(gen, scored)
        else:
            self._add_round(gen, scored)
        return gen

    def _sample(self, gen_id: int, records: list, round_: int = 0) -> tuple[list, dict]:
        """Sample and score ``records`` (dynamic sampling's round ``round_``): the scored refs, and the share of each
        completion source. Each micro-batch's completions come from one source (the family's ``sources``): the
        policy's rollout pool, the frozen rollout pool, or the dataset's completions (tokenised by a rollout actor);
        or each group's rows from several sources (the family's ``group_sources``: XPO's policy and reference
        samples of one prompt)."""
        s, a, fam = self.sched, self.cfg.algorithm, self.family
        seed = (self.cfg.rollout.seed or self.cfg.train.seed) * 1_000_003 + gen_id + (round_ << 32)
        offset = gen_id * len(records) + round_ * dynamic_sampling.ROUND_GROUP_OFFSET
        items = [(record, offset + i) for i, record in enumerate(records)]
        split = fam.group_sources(a)
        by_source: dict[str, list] = {src: items for src in dict.fromkeys(split)}
        n_of = {src: split.count(src) for src in by_source}  # completions per prompt from each source
        source_stats = {}
        if not split:
            plan = fam.sources(a, s.generation_batch_size // s.B, seed)  # one source per micro-batch
            for i, item in enumerate(items):  # prompt i's G rows start at row i*G: micro-batch (i*G) // B
                by_source.setdefault(plan[i * s.G // s.B], []).append(item)
            n_of = {src: s.G for src in by_source}
            if fam.mixes_sources:  # the fraction of each source
                source_stats = {f"source/{src}": plan.count(src) / len(plan) for src in (POLICY, DATASET, TEACHER)}
        chunks = []  # (rollout ref, number of groups in it)
        for src, items in by_source.items():
            params = self.training_sampling(n_of[src], seed)
            workers = self.pools.frozen_rollout if src == TEACHER else self.pools.rollout
            for w_index, worker in enumerate(workers):
                chunk = items[w_index :: len(workers)]  # interleaved split keeps groups whole
                if not chunk:
                    continue
                recs, gids = [r for r, _ in chunk], [g for _, g in chunk]
                if src == DATASET:
                    ref = worker.from_dataset.remote(
                        recs,
                        self.cfg.data.completion_column,
                        self.cfg.rollout.max_completion_length,
                        group_ids=gids,
                        n=n_of[src],
                    )
                else:
                    ref = worker.generate.remote(
                        recs,
                        _seeded(params, w_index + (1000 if src == TEACHER else 0)),
                        group_ids=gids,
                        generation_prompts=fam.generation_prompts(self.cfg, recs) if src == POLICY else None,
                    )
                chunks.append((ref, len(chunk)))
        if split:  # each group's rows from several pools: joined, so that the reward pool sees whole groups
            chunks = [(join.remote([ref for ref, _ in chunks]), len(items))]
        # a batch of dataset completions only (SFT) is not scored: the rewards serve evaluation there
        return self._score(chunks, gen_id, rewards=self.cfg.needs.rewards or set(by_source) != {DATASET}), source_stats

    def _assemble(self, gen: Generation, scored: list, groups: list[int] | None = None) -> None:
        s = self.sched
        out = assemble.options(num_returns=s.P + 1).remote(
            scored,
            self.cfg.algorithm,
            s.P,
            self.cfg.reward.reward_weights if self.cfg.reward else None,
            self.cfg.train.seed + gen.gen_id,
            gen.gen_id,
            max(0, self.sampler.epoch - 1),
            groups,
            TABLE_ROWS if self.cfg.train.log_completions else 0,
        )
        gen.shards, gen.stats_ref = list(out[:-1]), out[-1]

    # -- dynamic sampling (cluster/dynamic_sampling.py) ---------------------------------------------------------
    def _add_round(self, gen: Generation, scored: list) -> None:
        weights = self.cfg.reward.reward_weights or [1.0] * len(self.cfg.reward.reward_funcs)
        _, column = self.family.group_filter(self.cfg)
        gen.rounds.append(scored)
        gen.verdicts.append(dynamic_sampling.verdicts.remote(scored, weights, column))

    def advance(self, gens) -> None:
        """Dynamic sampling: the next round of every batch in flight whose last round's verdicts are in (the
        controller calls it between steps, so rounds overlap training)."""
        for gen in gens:
            self.fill(gen, block=False)

    def fill(self, gen: Generation, block: bool = True) -> None:
        """Dynamic sampling: read the rounds' verdicts as they come, sample another round while too few groups vary,
        then assemble the batch from the varied groups. ``block`` False: only what is ready now (the controller
        calls it between steps, so rounds overlap training). A no-op without dynamic sampling or once assembled."""
        fg, column = self.family.group_filter(self.cfg) or (None, None)
        need = self.sched.prompts_per_generation
        while fg is not None and gen.stats_ref is None:
            last = gen.verdicts[-1]
            if isinstance(last, ray.ObjectRef):
                if not block and not ray.wait([last], timeout=0)[0]:
                    return
                try:
                    gen.verdicts[-1] = ray.get(last)
                except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError):
                    if block:
                        raise  # ``wait`` restarts the actor and redoes the batch
                    return
            if dynamic_sampling.enough(gen.verdicts, need, fg.max_num_gen_batches):
                choice = dynamic_sampling.choose_groups(gen.verdicts, need, fg.when_exhausted)
                self._assemble(gen, [ref for r in gen.rounds for ref in r], choice.groups)
                gen.filtered_rows = choice.stats["dynamic_sampling/dropped_samples"]
                gen.once = {k: ("mean" if k.endswith("_ratio") else "sum", v, 1.0) for k, v in choice.stats.items()}
                return
            self.weights.wake()
            size = dynamic_sampling.next_round_size(gen.verdicts, need, full=need)
            scored, _ = self._sample(gen.gen_id, self.sampler.take(size), round_=len(gen.rounds))
            self._add_round(gen, scored)

    def _score(self, chunks: list, step: int, teachers: bool = True, rewards: bool = True) -> list:
        """Reward scores (when the run has rewards), then every teacher pool the family needs, chained as refs; one
        ref per scored part. ``chunks``: (rollout ref, groups in it). The reward pool scales apart from the rollout
        pool: with more reward replicas than chunks, a chunk is split between several replicas (whole groups, in
        order: ``RewardWorker.score``'s ``part``), each scoring its part; with fewer, chunk i goes to replica i mod W.
        Teacher pools take the parts round-robin."""
        W, n = len(self.pools.reward) if rewards else 0, len(chunks)
        parts = []
        for i, (ref, groups) in enumerate(chunks):
            if not W:
                parts.append(ref)
                continue
            replicas = list(range(i, W, n))[:groups] if W > n else [i % W]
            parts += [
                self.pools.reward[r].score.remote(ref, {"global_step": step}, part=(j, len(replicas)))
                for j, r in enumerate(replicas)
            ]
        for spec in self.cfg.needs.teachers if teachers else ():
            pool = self.pools.teachers[spec.pool]
            parts = [pool[k % len(pool)].score.remote(ref, asdict(spec)) for k, ref in enumerate(parts)]
        return parts

    def wait(self, gen: Generation, max_attempts: int = 3) -> Generation:
        """Block until the generation's statistics are in; redo it if a rollout or reward actor crashed."""
        while True:
            try:
                self.fill(gen)
                gen.stats = {**ray.get(gen.stats_ref), **gen.source_stats}
                return gen
            except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as e:
                if gen.attempts >= max_attempts:
                    raise
                log.warning(
                    "generation %d lost a worker (%s); restarting it and redoing the batch",
                    gen.gen_id,
                    type(e).__name__,
                )
                self.weights.heal()
                self.redone += 1
                redo = self.launch(gen.gen_id, gen.records)
                redo.attempts = gen.attempts + 1
                gen = redo

    def restart_reward_worker(self, index: int) -> None:
        """A reward function hung: kill the scorer (Ray restarts it) so the stuck thread goes with it."""
        ray.kill(self.pools.reward[index], no_restart=False)

    def sample(self, records: list[dict], params: SamplingParams, step: int = 0) -> list:
        """``params.n`` completions of each record, spread over the rollout replicas and scored by the reward pool
        (no teacher): one ref per scored part; the rows of record i have group id i (evaluation, rejection
        sampling)."""
        R = len(self.pools.rollout)
        chunks = [
            (w.generate.remote(records[i::R], params, group_ids=list(range(i, len(records), R))), len(records[i::R]))
            for i, w in enumerate(self.pools.rollout)
            if records[i::R]
        ]
        return self._score(chunks, step, teachers=False)

    def training_sampling(self, n: int, seed: int) -> SamplingParams:
        """The training rollout's sampling knobs, ``n`` completions per prompt."""
        return SamplingParams(n=n, seed=seed, **self.sampling)

    # -- evaluation ---------------------------------------------------------------------------------------------
    def evaluate(self, eval_data, step: int) -> dict:
        r = self.cfg.rollout
        self.weights.wake()
        greedy = r.eval_temperature == 0
        n = r.num_generations_eval or (1 if greedy else self.sched.G)
        params = SamplingParams(
            n=n,
            temperature=r.eval_temperature,
            top_p=r.top_p,
            top_k=r.top_k,
            min_p=r.min_p,
            repetition_penalty=r.repetition_penalty,
            max_tokens=r.max_completion_length,
            stop=tuple(r.stop) if r.stop else None,
            seed=self.cfg.train.seed,
        )
        scored = ray.get(self.sample(eval_data.to_list(), params, step))  # small: scored, not trained on
        lengths = torch.cat([b.loss_mask.sum(-1) for b in scored])
        tools = {}
        if scored[0].trajectories:  # multi-turn: how the held-out trajectories used their tools
            joined = Batch.concat(scored)
            tools = {f"eval/{k}": v for k, v in trajectory_stats(joined, [b.info for b in scored]).items()}
        if not self.pools.reward:  # nothing to score with: lengths only
            return {"eval/mean_length": float(lengths.mean()), "eval/samples": int(lengths.numel())}
        R_all = torch.cat([b.rewards for b in scored])
        w = torch.tensor(self.cfg.reward.reward_weights or [1.0] * R_all.shape[1])
        total = torch.nansum(R_all * w, dim=1)
        names = scored[0].info["reward_names"]
        per_func = {f"eval/rewards/{n}/mean": float(torch.nanmean(R_all[:, k].double())) for k, n in enumerate(names)}
        return {
            "eval/accuracy": float((total >= self.cfg.rollout.eval_success_threshold).double().mean()),
            "eval/reward": float(total.double().mean()),
            **per_func,
            "eval/mean_length": float(lengths.mean()),
            "eval/samples": int(R_all.shape[0]),
            **tools,
        }


def _seeded(params: SamplingParams, worker: int) -> SamplingParams:
    from dataclasses import replace

    return replace(params, seed=None if params.seed is None else params.seed * 31 + worker)
