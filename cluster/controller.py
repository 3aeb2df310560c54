"""The controller loop. One optimizer step reads like the algorithm:

    1. rollout    sample every generation batch the staleness bound allows at the current policy version
    2. admit      give the learner the generation batches this step needs (scored, advantages, one shard per rank)
    3. learn      GA micro-batches on every rank, one optimizer step: the policy version goes up by one
    4. record     metrics, evaluation, checkpoints

Weights reach the rollout pool lazily: right before a generation (or an evaluation) that needs them.
"""
from __future__ import annotations

import json
import math
import sys
import time
from collections import deque
from datetime import datetime
from pathlib import Path

import ray
from tqdm import tqdm

from learner import methods

from .config import ConfigError, RunConfig, Schedule, dump_config, resolve_schedule
from .kit import ensure_kit, kit_parts_needed, kit_summary, reward_kit_paths
from .metrics import MetricsLog, plot_reward_curve, reduce_stats, summary_table
from .pipeline import Pipeline
from .control import RunControl, write_run_file
from .pools import Pools, create_pools, get_all, resize, shutdown_pools
from . import checkpoint as checkpoints
from .errors import STOP_REQUESTED, Interrupted, RunError
from .health import Health
from .preflight import preflight
from .runtime import init_ray


def output_folder(cfg: RunConfig, output_dir: str | None = None) -> Path:
    """The run folder: ``--output``, else ``output_dir`` of the run file, else runs/<name>-<timestamp>."""
    import os
    chosen = output_dir or cfg.output_dir or f"runs/{cfg.name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    return Path(os.path.expandvars(os.path.expanduser(chosen))).resolve()


RUN_FILES = ("config.yaml", "metrics.jsonl", "pipeline.json", "reward_curve.png", "error.log",
             "rejection_sampling.jsonl")


def prepare_output(out: Path, overwrite: bool = False) -> None:
    """A run never writes into another run's folder: refuse one that holds a run that trained (metrics, checkpoints),
    unless ``overwrite`` (then that run's files go; other files stay). Nothing is written here."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output folder {out} is a file: give a folder (--output)")
    if not out.is_dir():
        return
    trained = [p.name for p in (out / "metrics.jsonl", out / "final", *sorted(out.glob("checkpoint-*"))) if p.exists()]
    if trained and not overwrite:
        raise ConfigError(f"output folder {out} already holds a run ({', '.join(trained[:4])}): give another "
                          "--output, or add --overwrite to replace that run")


def clear_run_files(out: Path) -> None:
    import shutil
    for p in [*(out / f for f in RUN_FILES), out / "final", *out.glob("checkpoint-*")]:
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


def train(cfg: RunConfig, output_dir: str | None = None, log=None, overwrite: bool = False,
          resume: str | None = None) -> dict:
    """Run ``cfg`` end to end; returns the final metrics. Starts a local Ray cluster unless one is given.
    ``resume``: a checkpoint folder, a run folder or "auto" (the newest checkpoint of the output folder) to continue
    from. Ctrl-C (or SIGTERM) stops the pools and raises ``Interrupted`` naming the step; what was written is kept."""
    log = log or (lambda msg: tqdm.write(msg, file=sys.stderr))
    out, ckpt, state = output_folder(cfg, output_dir), None, None
    if resume:
        if resume == "auto" and not (output_dir or cfg.output_dir):
            raise ConfigError("--resume auto continues the newest checkpoint of the run folder: give it with --output")
        if resume != "auto" and not (output_dir or cfg.output_dir):
            out = checkpoints.find(resume, out).parent  # the run folder the checkpoint belongs to
        ckpt = checkpoints.find(resume, out)
        state = checkpoints.check_compatible(cfg, ckpt)
    else:
        prepare_output(out, overwrite)

    extra = {}
    needs = cfg.needs
    teacher_name = cfg.teacher.name_or_path if cfg.teacher is not None and needs.teacher_model else None
    if cfg.kit is not None:
        ensure_kit(cfg.kit, log=log, parts=kit_parts_needed(cfg.model.name_or_path, teacher_name,
                                                            *reward_kit_paths(cfg.reward)))
        if cfg.model.name_or_path == "kit:warm_start":
            ks = kit_summary(cfg.kit)
            extra["warm start (held-out greedy accuracy)"] = f"{ks['test_accuracy']:.3f} after {ks['steps']} SFT steps"
    checked = preflight(cfg, kit_built=True)  # before any actor: models, data, reward functions
    out.mkdir(parents=True, exist_ok=True)
    if ckpt is None:
        clear_run_files(out)  # an earlier run's files (refused above unless overwrite), or an attempt that never trained
    (out / "config.yaml").write_text(dump_config(cfg))
    log(f"[relay-rl] run {cfg.name}: output in {out}"
        + (f"; resuming {ckpt.name} (step {state['step']} of {cfg.train.max_steps})" if ckpt else ""))
    for note in checked.notes:
        log(f"[relay-rl] note: {note}")
    train_data, eval_data = checked.train_data, checked.eval_data

    started_ray = not ray.is_initialized() and not (cfg.cluster.address or _env_address())
    init_ray(cfg.cluster.address, cfg.cluster.namespace, log)
    sched = resolve_schedule(cfg)
    for warning in methods.warnings(cfg):
        log(f"[relay-rl] warning: {warning}")
    run_name = f"{cfg.name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    pools, metrics, ctl = None, None, None
    try:
        pools = create_pools(cfg, run_name, checked.model_path, log, fixed_cluster=started_ray,
                             teacher_path=checked.teacher_path, resume=ckpt)
        metrics = MetricsLog(out, run_name, previous=checkpoints.saved_metrics(ckpt) if ckpt else None)
        pipe = Pipeline(cfg, sched, pools, train_data)
        made, prepared = methods.prepare(cfg, pipe, out, log)  # e.g. rejection sampling: the dataset it keeps
        if made is not None:
            pipe.use_data(made)
        if prepared:
            metrics.write({"step": 0, **prepared})
        cfg = with_epochs(cfg, sched, len(pipe.sampler.ds), pools, log)
        ctl = Controller(cfg, sched, pools, pipe, metrics, eval_data, out, log)
        ctl.control = ray.remote(RunControl).options(name=f"{run_name}/control", namespace=cfg.cluster.namespace,
                                                     num_cpus=0).remote()
        write_run_file(out, run_name, cfg.cluster.namespace, cfg.cluster.address or _env_address())
        log(f"[relay-rl] run {run_name}: `relay-rl scale {out} rollout N` resizes a pool while it runs")
        if state is not None:
            ctl.restore(state)
        t0 = time.time()
        final = ctl.run()
        wall = time.time() - t0
        plot_reward_curve(metrics, out / "reward_curve.png", f"relay-rl {cfg.name}")
        extra["final checkpoint (HF format)"] = str(out / "final")
        log(summary_table(metrics, out, wall, extra, steps_per_batch=sched.K))
        final["wall_s"] = wall
        final["output_dir"] = str(out)
        return final
    except KeyboardInterrupt:
        step = ctl.step if ctl is not None else 0
        raise Interrupted(f"interrupted at step {step} of {cfg.train.max_steps}: the pools were stopped; what was "
                          f"written is kept in {out} (metrics.jsonl up to step {step}"
                          + (", the last checkpoint" if cfg.train.save_steps and step >= cfg.train.save_steps else "")
                          + ")") from None
    finally:
        if ctl is not None:
            ctl.ledger.write(out / "pipeline.json", sched.S * sched.mu)
        if metrics is not None:
            metrics.close()
            if ctl is not None and ctl.step and not (out / "reward_curve.png").exists():
                plot_reward_curve(metrics, out / "reward_curve.png", f"relay-rl {cfg.name}")
        if ctl is not None and ctl.control is not None:
            ray.kill(ctl.control, no_restart=True)
        if pools is not None:
            shutdown_pools(pools)
        if started_ray:
            ray.shutdown()


def with_epochs(cfg: RunConfig, sched: Schedule, rows: int, pools: Pools, log) -> RunConfig:
    """``train.num_train_epochs`` as optimizer steps over ``rows`` training prompts (the learner ranks' schedules
    follow); ``cfg`` unchanged without it."""
    epochs = cfg.train.num_train_epochs
    if epochs is None:
        return cfg
    prompts_per_step = sched.prompts_per_generation / sched.K
    steps = max(1, math.ceil(epochs * rows / prompts_per_step))
    get_all([r.set_max_steps.remote(steps) for r in pools.trainers])
    log(f"[relay-rl] {epochs:g} epoch(s) over {rows} training prompts: {steps} optimizer steps "
        f"({prompts_per_step:g} prompts per step)")
    return cfg.model_copy(update={"train": cfg.train.model_copy(update={"max_steps": steps})})


def _env_address() -> str | None:
    import os
    return os.environ.get("RAY_ADDRESS")


class Controller:
    def __init__(self, cfg: RunConfig, sched: Schedule, pools: Pools, pipe: Pipeline, metrics: MetricsLog,
                 eval_data, out: Path, log):
        self.cfg, self.sched, self.pools, self.pipe = cfg, sched, pools, pipe
        self.metrics, self.eval_data, self.out, self.log = metrics, eval_data, out, log
        self.version = 0  # learner policy version = optimizer steps applied
        self.next_gen = 0  # id of the next generation batch to launch
        self.batches_needed = sched.batches_needed(cfg.train.max_steps)
        self.inflight: deque = deque()  # launched, not yet admitted
        self.admitted_microsteps = 0  # micro-steps admitted to the learner and not yet consumed
        self.ledger = Ledger()  # every generated sample: trained on, or counted as dropped
        self.current_gen: dict = {}  # statistics of the generation batch the learner is consuming
        self.failures: dict[str, int] = {}  # consecutive failing batches per reward function
        self.last_eval: dict = {}
        self.step = 0  # the last optimizer step finished
        self.health = Health(cfg, log)
        self.learner_restarts = 0
        self.control = None  # the run's mailbox for ``relay-rl scale`` (cluster/control.py)
        self.control_take = None  # its pending ``take``

    # ------------------------------------------------------------------------------------------------------------
    def run(self) -> dict:
        t = self.cfg.train
        if t.eval_steps and self.eval_data is not None and self.step == 0:
            self.evaluate(step=0)
        bar = tqdm(total=t.max_steps, initial=self.step, desc=f"{self.cfg.name}", unit="step", dynamic_ncols=True,
                   file=sys.stderr, mininterval=1.0)
        with bar:
            while self.step < t.max_steps and not self.reached_target():
                if STOP_REQUESTED.is_set():  # a Ctrl-C whose KeyboardInterrupt was lost on the way
                    raise KeyboardInterrupt("stop requested")
                step, t0 = self.step + 1, time.time()
                self.apply_control()  # pool sizes asked for by `relay-rl scale`
                try:
                    self.launch_generations()  # 1. rollout
                    admission = self.admit_for_step()  # 2. admit
                    learned = self.learn(admission)  # 3. learn
                    record = self.record(step, learned, time.time() - t0)  # 4. record, refresh the reference, eval, save
                    self.step = step
                    self.after_step(step)
                except ray.exceptions.RayError as e:  # an actor died, or a rank's peer failed in a collective
                    self.heal_learner(e)  # a dead learner rank: back to the newest checkpoint (else re-raises)
                    bar.reset(total=t.max_steps)
                    bar.update(self.step)
                    continue
                bar.update(1)
                if step % t.logging_steps == 0 or step == t.max_steps:
                    bar.set_postfix(self._postfix(record), refresh=False)
        if self.reached_target():
            self.log(f"[relay-rl] step {self.step}: eval accuracy {self.last_eval['eval/accuracy']:.3f} reached "
                     f"train.target_eval_accuracy ({t.target_eval_accuracy}): stopped")
        if t.eval_steps and self.eval_data is not None and self.last_eval.get("step") != self.step:
            self.evaluate(self.step)
        self.save(self.out / "final")
        self.ledger.write(self.out / "pipeline.json", self.sched.S * self.sched.mu)
        return {**self.metrics.history[-1], **self.last_eval}

    def reached_target(self) -> bool:
        """``train.target_eval_accuracy``: the last evaluation reached it (the run stops there)."""
        target = self.cfg.train.target_eval_accuracy
        return target is not None and self.step > 0 and self.last_eval.get("eval/accuracy", -1.0) >= target

    # 1. rollout -------------------------------------------------------------------------------------------------
    def launch_generations(self) -> None:
        """``wait``: launch the batch to be admitted n-th once the learner reaches v_a(n) - k (§1.3): with k = 0 it is
        sampled with the weights of the previous batch's last step; with k > 0 it overlaps training and is at most k
        versions stale at admission. ``drop`` / ``use``: keep max_inflight_generations batches in flight."""
        s, a = self.sched, self.cfg.algorithm
        while len(self.inflight) < self.batches_needed - self.ledger.admitted_batches:
            n = self.ledger.admitted_batches + len(self.inflight)  # its place in admission order
            if a.staleness_policy == "wait":
                if s.admission_version(n) - s.k > self.version:
                    break
            elif len(self.inflight) >= (a.max_inflight_generations or s.k + 1):
                break
            self.pipe.sync_rollout(self.version)
            self.inflight.append(self.pipe.launch(self.next_gen))
            self.next_gen += 1
        self.pipe.advance(self.inflight)

    # 2. admit ---------------------------------------------------------------------------------------------------
    def admit_for_step(self) -> list:
        admission = []
        policy = self.cfg.algorithm.staleness_policy
        while self.admitted_microsteps < self.sched.GA:
            if not self.inflight:
                self.launch_generations()
            gen = self.pipe.wait(self.inflight.popleft())
            self.check_rewards(gen.stats)
            self.health.generation(gen.gen_id, gen.stats)
            self.ledger.generated(gen)
            lag = self.version - gen.version
            if lag > self.sched.k:
                if policy == "wait":  # cannot happen by construction; guard the invariant loudly
                    raise RuntimeError(f"generation batch {gen.gen_id} is {lag} versions stale at admission "
                                       f"(max_staleness {self.sched.k})")
                if policy == "drop":
                    self.ledger.dropped(gen, lag)
                    self.log(f"[relay-rl] dropped generation batch {gen.gen_id}: {lag} versions stale at admission "
                             f"(max_staleness {self.sched.k}); {self.ledger.dropped_samples} samples dropped so far")
                    continue
                self.ledger.stale_used(gen, lag)
            # the ranks' statistics (refs, fetched with the step's results) and dynamic sampling's counts
            admission += [*self.pipe.admit(gen), gen.once]
            self.ledger.admitted(gen, self.sched.S * self.sched.mu)
            self.admitted_microsteps += self.sched.S * self.sched.mu
            self.current_gen = {**gen.stats, "admission_lag": lag}
        return admission

    # 3. learn ---------------------------------------------------------------------------------------------------
    def learn(self, admission: list) -> dict:
        """GA micro-batches on every rank, one optimizer step: the policy version goes up by one."""
        t0 = time.time()
        self.pipe.rest_rollout(len(self.inflight))  # colocated vLLM frees its KV cache while the learner trains
        steps = [r.train_step.remote() for r in self.pools.trainers]
        self.pipe.advance(self.inflight)  # while the learner trains
        admitted = [a for a in admission if isinstance(a, ray.ObjectRef)]
        results = get_all([*admitted, *steps])  # a failed admission surfaces here
        learned = reduce_stats([*results, *(a for a in admission if not isinstance(a, ray.ObjectRef))])
        learned["timing/driver_learn_s"] = time.time() - t0
        self.ledger.consumed(learned.pop("consumed/gen_id"), self.sched.P)
        self.version += 1
        self.admitted_microsteps -= self.sched.GA
        return learned

    def check_rewards(self, stats: dict) -> None:
        """Report failing reward functions; stop after max_consecutive_failures in a row; restart hung scorers."""
        errors = stats.get("reward_errors", {})
        for name, err in errors.items():
            self.failures[name] = self.failures.get(name, 0) + 1
            self.log(f"[relay-rl] reward function {name} failed ({self.failures[name]} in a row): {err}; "
                     "its scores for this batch are None (excluded, not 0)")
            if self.failures[name] >= self.cfg.reward.max_consecutive_failures:
                raise RunError(f"reward function {name} failed {self.failures[name]} batches in a row "
                               f"(reward.max_consecutive_failures): {err}. Fix the function (try it on a few rows "
                               "of the dataset), or remove it from reward.reward_funcs")
        for name in list(self.failures):
            if name not in errors:
                self.failures[name] = 0
        for index in stats.get("reward_stuck", []):
            self.log(f"[relay-rl] restarting reward worker {index}: a reward function outran reward.timeout_s")
            self.pipe.restart_reward_worker(index)

    # 4. record --------------------------------------------------------------------------------------------------
    def record(self, step: int, learned: dict, step_s: float) -> dict:
        g = self.current_gen
        rec = {"step": step, "policy_version": self.version,
               **{k: v for k, v in g.items() if k not in ("reward_errors", "reward_stuck", "rows", "work")}, **learned,
               **self.pipe.sync_stats(), "timing/step_s": step_s,
               "samples": self.sched.B * self.sched.P * self.sched.GA,
               "queue/inflight": len(self.inflight), **self.ledger.counters(),
               "restarts/learner": self.learner_restarts, "restarts/redone_batches": self.pipe.redone}
        tokens = learned.get("completions/tokens", 0.0)
        rec["tokens_per_s"] = tokens / max(step_s, 1e-9)
        rec["tokens_per_s/learner"] = tokens / max(learned.get("timing/train_s") or step_s, 1e-9)
        rec["tokens_per_s/rollout"] = g.get("completions/tokens", 0.0) / max(g.get("timing/generate_s") or step_s, 1e-9)
        rec.update({f"replicas/{pool}": n for pool, n in self.pools.replicas().items()})
        for k in [k for k in rec if k.startswith("teacher/bytes/")]:  # a generation batch feeds K steps
            rec[k.replace("/bytes/", "/bytes_per_step/")] = rec[k] / self.sched.K
        rec.setdefault("timing/sync_s", 0.0)
        for name in g.get("reward_errors", {}):
            rec[f"rewards/{name}/failed"] = 1.0
        stop = self.health.step(step, rec)  # may add warnings; a run that learns nothing stops (after the record)
        self.metrics.write(rec)
        if stop is not None:
            raise stop
        return rec

    def after_step(self, step: int) -> None:
        t = self.cfg.train
        methods.after_step(self.cfg, step, self.pipe)  # e.g. GRPO's reference refresh
        if t.eval_steps and self.eval_data is not None and step % t.eval_steps == 0:
            self.evaluate(step)
        if t.save_steps and step % t.save_steps == 0:
            self.checkpoint(step)

    def evaluate(self, step: int) -> dict:
        t0 = time.time()
        self.pipe.sync_rollout(self.version)
        res = self.pipe.evaluate(self.eval_data, step)
        self.pipe.sync_stats()
        res.update({"step": step, "policy_version": self.version, "timing/eval_s": time.time() - t0})
        self.metrics.write(res)
        self.last_eval = res
        if "eval/accuracy" in res:
            self.log(f"[relay-rl] step {step}: eval accuracy {res['eval/accuracy']:.3f} "
                     f"(reward {res['eval/reward']:.3f}, {res['eval/samples']} samples, {res['timing/eval_s']:.1f}s)")
        return res

    def save(self, path: Path) -> None:
        get_all([r.save_hf.remote(str(path)) for r in self.pools.learner])
        self.log(f"[relay-rl] saved HF checkpoint {path}")

    # checkpoints (cluster/checkpoint.py) ------------------------------------------------------------------------
    def checkpoint(self, step: int) -> Path:
        """An HF model plus everything a resume needs, written aside and moved into place once complete."""
        t0 = time.time()
        tmp = checkpoints.begin(self.out, step)
        get_all([r.save_hf.remote(str(tmp)) for r in self.pools.learner])
        get_all([r.save_state.remote(str(tmp / "relay")) for r in self.pools.learner]
                + [c.save_state.remote(str(tmp / "relay" / "critic")) for c in self.pools.critic])
        for pool in methods.moving_pools(self.cfg):  # e.g. a refreshed reference: its weights are the run's state
            ray.get(self.pools.teachers[pool][0].save.remote(str(tmp / "relay" / pool)))
        path = checkpoints.commit(tmp, self.state(), self.metrics.history)
        gone = checkpoints.rotate(self.out, self.cfg.train.save_total_limit)
        self.log(f"[relay-rl] saved checkpoint {path} ({time.time() - t0:.1f}s"
                 + (f"; removed {', '.join(p.name for p in gone)}" if gone else "") + ")")
        return path

    def apply_control(self) -> None:
        """Resize pools at the step boundary, as ``relay-rl scale`` asked; new rollout replicas get the current
        weights before they generate. A request that cannot be met is answered with why; the run goes on."""
        if self.control is None:
            return
        # one ``take`` stays in flight, so a step boundary costs no round trip to the mailbox
        if self.control_take is None:
            self.control_take = self.control.take.remote()
        if not ray.wait([self.control_take], timeout=0)[0]:
            return
        requests, self.control_take = ray.get(self.control_take), None
        for req in requests:
            pool, n = req["pool"], req["n"]
            try:
                if pool in methods.moving_pools(self.cfg):
                    raise ConfigError(f"the {pool} pool's weights move during this run: it cannot be resized")
                text = resize(self.pools, pool, n)
                if pool == "rollout":
                    self.pipe.sync_rollout(self.version, force=True)
                    self.pipe.sync_stats()
                self.log(f"[relay-rl] step {self.step}: scaled {text}")
            except ConfigError as e:
                text = f"refused: {e}"
                self.log(f"[relay-rl] step {self.step}: scale {pool} -> {n} {text}")
            self.control.answer.remote(req["id"], text, self.pools.replicas())

    def heal_learner(self, error: BaseException) -> None:
        """A learner rank died: replace the learner group from the newest checkpoint and continue from there (the
        steps after it are redone: nothing is trained twice; their prompts are drawn again, in the same order)."""
        from .pools import dead_learner_ranks, restart_learner
        dead = dead_learner_ranks(self.pools)
        if not dead:
            raise error  # not the learner: the pipeline's own retries have given up
        t = self.cfg.train
        found = checkpoints.checkpoints(self.out)
        if self.learner_restarts >= t.max_restarts or not found:
            raise RunError(f"learner rank(s) {dead} died at step {self.step + 1} and the run cannot heal: "
                           + (f"train.max_restarts ({t.max_restarts}) restarts used" if found else
                              "no checkpoint to continue from (set train.save_steps)")
                           + f". Continue with `relay-rl train ... --resume auto --output {self.out}`") from None
        ckpt = found[-1]
        state = json.loads((ckpt / "relay" / "driver.json").read_text())
        self.learner_restarts += 1
        self.log(f"[relay-rl] learner rank(s) {dead} died at step {self.step + 1} ({type(error).__name__}); "
                 f"restarting the learner group from {ckpt.name} (restart {self.learner_restarts} of "
                 f"{t.max_restarts}); steps {state['step'] + 1}-{self.step} are redone")
        self.inflight.clear()  # launched for later steps; the checkpoint's own in-flight batches are relaunched
        restart_learner(self.pools, self.cfg, self.metrics.run_name, ckpt, self.log)
        self.restore(state)
        self.pipe.sync_rollout(self.version, force=True)  # the rollout pool back to the checkpoint's weights
        self.pipe.sync_stats()
        self.metrics.truncate(state["step"])

    def state(self) -> dict:
        """The driver's part of a checkpoint (JSON)."""
        return {"step": self.step, "version": self.version, "next_gen": self.next_gen,
                "admitted_microsteps": self.admitted_microsteps, "sampler": self.pipe.sampler.state(),
                "ledger": self.ledger.state(), "failures": self.failures, "last_eval": self.last_eval,
                "current_gen": self.current_gen, "health": self.health.state(),
                "inflight": [{"gen_id": g.gen_id, "records": g.records} for g in self.inflight],
                "config": self.cfg.model_dump(mode="json")}

    def restore(self, state: dict) -> None:
        """Continue from a checkpoint's driver state (the pools already hold its weights and learner state)."""
        self.step, self.version, self.next_gen = state["step"], state["version"], state["next_gen"]
        self.admitted_microsteps = state["admitted_microsteps"]
        self.pipe.sampler.restore(state["sampler"])
        self.pipe.rollout_version = self.version  # the rollout pool was created from the checkpoint's weights
        self.ledger.restore(state["ledger"])
        self.failures, self.last_eval, self.current_gen = state["failures"], state["last_eval"], state["current_gen"]
        self.health.restore(state["health"])
        for g in state["inflight"]:  # batches in flight at the save (max_staleness > 0): sampled again, same prompts
            self.inflight.append(self.pipe.launch(g["gen_id"], g["records"]))
            self.ledger.regenerated += 1

    def _postfix(self, rec: dict) -> dict:
        out = {"reward": f"{rec.get('reward/mean') or 0:.3f}", "loss": f"{rec.get('loss') or 0:.4f}"}
        if "eval/accuracy" in self.last_eval:
            out["eval_acc"] = f"{self.last_eval['eval/accuracy']:.3f}"
        out["stale"] = int(rec.get("staleness/max") or 0)
        return out


class Ledger:
    """Accounting of every generation batch: generated, admitted (and how many micro-steps it was consumed), dropped
    as too stale, or used although too stale. Nothing is lost without being counted."""

    def __init__(self):
        self.samples: dict[int, int] = {}  # gen_id -> samples generated
        self.admitted_ids: list[int] = []
        self.dropped_ids: dict[int, int] = {}  # gen_id -> lag
        self.stale_used_ids: dict[int, int] = {}
        self.microsteps: dict[int, int] = {}  # gen_id -> micro-steps consumed (per rank)
        self.expected: dict[int, int] = {}
        self.regenerated = 0  # batches in flight at a checkpoint, sampled again on resume
        self.work: dict[str, int] = {}  # "<pool>/<replica>" -> rows it generated or scored
        self.filtered: dict[int, int] = {}  # gen_id -> samples dynamic sampling left out of it

    @property
    def admitted_batches(self) -> int:
        return len(self.admitted_ids)

    def state(self) -> dict:
        return {"samples": self.samples, "admitted_ids": self.admitted_ids, "dropped_ids": self.dropped_ids,
                "stale_used_ids": self.stale_used_ids, "microsteps": self.microsteps, "expected": self.expected,
                "regenerated": self.regenerated, "work": self.work, "filtered": self.filtered}

    def restore(self, state: dict) -> None:
        ints = lambda d: {int(k): v for k, v in d.items()}  # noqa: E731  (JSON keys are strings)
        self.samples, self.dropped_ids = ints(state["samples"]), ints(state["dropped_ids"])
        self.stale_used_ids, self.microsteps = ints(state["stale_used_ids"]), ints(state["microsteps"])
        self.expected, self.admitted_ids = ints(state["expected"]), list(state["admitted_ids"])
        self.regenerated, self.work = state.get("regenerated", 0), dict(state.get("work", {}))
        self.filtered = ints(state.get("filtered", {}))

    @property
    def dropped_samples(self) -> int:
        """Samples of batches dropped as too stale, and those dynamic sampling left out of the other batches."""
        return sum(self.samples[g] if g in self.dropped_ids else self.filtered.get(g, 0) for g in self.samples)

    def generated(self, gen) -> None:
        self.samples[gen.gen_id] = gen.stats["rows"]  # every round's samples
        if gen.filtered_rows:
            self.filtered[gen.gen_id] = gen.filtered_rows
        for key, rows in gen.stats.get("work", {}).items():  # "rollout/0" -> rows it produced
            self.work[key] = self.work.get(key, 0) + rows

    def dropped(self, gen, lag: int) -> None:
        self.dropped_ids[gen.gen_id] = lag

    def stale_used(self, gen, lag: int) -> None:
        self.stale_used_ids[gen.gen_id] = lag

    def admitted(self, gen, microsteps: int) -> None:
        self.admitted_ids.append(gen.gen_id)
        self.expected[gen.gen_id] = microsteps

    def consumed(self, hist: dict, ranks: int) -> None:
        for gen_id, n in hist.items():
            self.microsteps[int(gen_id)] = self.microsteps.get(int(gen_id), 0) + n // ranks

    def counters(self) -> dict:
        return {"pipeline/generated_samples": sum(self.samples.values()),
                "pipeline/admitted_samples": sum(self.samples[g] - self.filtered.get(g, 0) for g in self.admitted_ids),
                "pipeline/dropped_samples": self.dropped_samples,
                "pipeline/filtered_samples": sum(self.filtered.values()),
                "pipeline/stale_used_samples": sum(self.samples[g] - self.filtered.get(g, 0)
                                                   for g in self.stale_used_ids)}

    def write(self, path: Path, microsteps_per_batch: int) -> None:
        import json
        path.write_text(json.dumps({
            "microsteps_per_batch": microsteps_per_batch, "generated": self.samples, "admitted": self.admitted_ids,
            "dropped": self.dropped_ids, "stale_used": self.stale_used_ids, "consumed_microsteps": self.microsteps,
            "regenerated_at_resume": self.regenerated, "work_per_replica": self.work,
            "filtered_by_dynamic_sampling": self.filtered, **self.counters()}, indent=1))
