"""The controller loop. One optimizer step reads like the algorithm:

    1. rollout    sample every generation batch the staleness bound allows at the current policy version
    2. admit      give the learner the generation batches this step needs (scored, advantages, one shard per rank)
    3. learn      GA micro-batches on every rank, one optimizer step: the policy version goes up by one
    4. record     metrics, evaluation, checkpoints

Weights reach the rollout pool lazily: right before a generation (or an evaluation) that needs them.
"""

from __future__ import annotations

import json
import sys
import time
from collections import deque
from pathlib import Path

import ray
from tqdm import tqdm

from relay_rl.errors import ConfigError, RunError
from relay_rl.stats import reduce_stats

from . import checkpoint as checkpoints
from .admission import admit
from .config import RunConfig, Schedule
from .health import Health
from .ledger import Ledger
from .metrics import MetricsLog, format_table
from .pipeline import Pipeline
from .pools import Pools, dead_learner_ranks, get_all, resize, restart_learner
from .report import STOP_REQUESTED


class Controller:
    def __init__(
        self,
        cfg: RunConfig,
        sched: Schedule,
        pools: Pools,
        pipe: Pipeline,
        metrics: MetricsLog,
        eval_data,
        out: Path,
        log,
    ):
        self.cfg, self.sched, self.pools, self.pipe = cfg, sched, pools, pipe
        self.family = cfg.family
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
        self.num_tokens = 0.0  # prompt and completion tokens of the admitted batches (TRL's ``num_tokens``)
        self.pending_table: list | None = None  # the newest admitted batch's completions table, not yet logged

    # ------------------------------------------------------------------------------------------------------------
    def run(self) -> dict:
        t = self.cfg.train
        if t.eval_steps and self.eval_data is not None and self.step == 0:
            self.evaluate(step=0)
        bar = tqdm(
            total=t.max_steps,
            initial=self.step,
            desc=f"{self.cfg.name}",
            unit="step",
            dynamic_ncols=True,
            file=sys.stderr,
            mininterval=1.0,
        )
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
                    record = self.record(
                        step, learned, time.time() - t0
                    )  # 4. record, refresh the reference, eval, save
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
            self.log(
                f"[relay-rl] step {self.step}: eval accuracy {self.last_eval['eval/accuracy']:.3f} reached "
                f"train.target_eval_accuracy ({t.target_eval_accuracy}): stopped"
            )
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
        """``wait``: launch the batch to be admitted n-th once the learner reaches v_a(n) - k (docs/staleness.md): with
        k = 0 it is sampled with the weights of the previous batch's last step; with k > 0 it overlaps training and is
        at most k versions stale at admission. ``drop`` / ``use``: keep max_inflight_generations batches in flight."""
        s, a = self.sched, self.cfg.algorithm
        while len(self.inflight) < self.batches_needed - self.ledger.admitted_batches:
            n = self.ledger.admitted_batches + len(self.inflight)  # its place in admission order
            if a.staleness_policy == "wait":
                if s.admission_version(n) - s.k > self.version:
                    break
            elif len(self.inflight) >= (a.max_inflight_generations or s.k + 1):
                break
            self.pipe.weights.sync(self.version)
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
            table = gen.stats.pop("completions_table", None)  # train.log_completions
            self.check_rewards(gen.stats)
            self.health.generation(gen.gen_id, gen.stats)
            self.ledger.generated(gen)
            lag = self.version - gen.version
            if lag > self.sched.k:
                if policy == "wait":  # cannot happen by construction; guard the invariant loudly
                    raise RuntimeError(
                        f"generation batch {gen.gen_id} is {lag} versions stale at admission "
                        f"(max_staleness {self.sched.k})"
                    )
                if policy == "drop":
                    self.ledger.dropped(gen, lag)
                    self.log(
                        f"[relay-rl] dropped generation batch {gen.gen_id}: {lag} versions stale at admission "
                        f"(max_staleness {self.sched.k}); {self.ledger.dropped_samples} samples dropped so far"
                    )
                    continue
                self.ledger.stale_used(gen, lag)
            # the ranks' statistics (refs, fetched with the step's results) and dynamic sampling's counts
            admission += [*admit(self.pools, gen.shards), gen.once]
            self.ledger.admitted(gen, self.sched.S * self.sched.mu)
            self.admitted_microsteps += self.sched.S * self.sched.mu
            self.current_gen = {**gen.stats, "admission_lag": lag}
            self.num_tokens += gen.stats.get("prompts/tokens", 0.0) + gen.stats.get("completions/tokens", 0.0)
            self.pending_table = table or self.pending_table
        return admission

    # 3. learn ---------------------------------------------------------------------------------------------------
    def learn(self, admission: list) -> dict:
        """GA micro-batches on every rank, one optimizer step: the policy version goes up by one."""
        t0 = time.time()
        self.pipe.weights.rest(len(self.inflight))  # colocated vLLM frees its KV cache while the learner trains
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
            self.log(
                f"[relay-rl] reward function {name} failed ({self.failures[name]} in a row): {err}; "
                "its scores for this batch are None (excluded, not 0)"
            )
            if self.failures[name] >= self.cfg.reward.max_consecutive_failures:
                raise RunError(
                    f"reward function {name} failed {self.failures[name]} batches in a row "
                    f"(reward.max_consecutive_failures): {err}. Fix the function (try it on a few rows "
                    "of the dataset), or remove it from reward.reward_funcs"
                )
        for name in list(self.failures):
            if name not in errors:
                self.failures[name] = 0
        for index in stats.get("reward_stuck", []):
            self.log(f"[relay-rl] restarting reward worker {index}: a reward function outran reward.timeout_s")
            self.pipe.restart_reward_worker(index)

    # 4. record --------------------------------------------------------------------------------------------------
    def record(self, step: int, learned: dict, step_s: float) -> dict:
        g = self.current_gen
        rec = {
            "step": step,
            "policy_version": self.version,
            **{k: v for k, v in g.items() if k not in ("reward_errors", "reward_stuck", "rows", "work")},
            **learned,
            **self.pipe.weights.finish(),
            "timing/step_s": step_s,
            "samples": self.sched.B * self.sched.P * self.sched.GA,
            "queue/inflight": len(self.inflight),
            **self.ledger.counters(),
            "restarts/learner": self.learner_restarts,
            "restarts/redone_batches": self.pipe.redone,
            "num_tokens": self.num_tokens,
        }
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
        if self.pending_table and (step % self.cfg.train.logging_steps == 0 or step == self.cfg.train.max_steps):
            self.log_completions(step, self.pending_table)
            self.pending_table = None
        if stop is not None:
            raise stop
        return rec

    def log_completions(self, step: int, table: list[dict]) -> None:
        """``train.log_completions``: the table to completions.jsonl and the trackers, ``num_completions_to_print``
        of its rows to the console. Staleness: versions between the row's weights and the ones it was trained at."""
        trained_at = self.version - 1
        rows = [{"step": step, **row, "staleness": trained_at - row["policy_version"]} for row in table]
        self.metrics.table(rows, step)
        n = self.cfg.train.num_completions_to_print
        if n != 0:
            self.log(format_table(rows[:n] if n is not None else rows, step, len(rows)))

    def after_step(self, step: int) -> None:
        t = self.cfg.train
        self.family.after_step(self.cfg, step, self.pipe)  # e.g. GRPO's reference refresh
        if t.eval_steps and self.eval_data is not None and step % t.eval_steps == 0:
            self.evaluate(step)
        if t.save_steps and step % t.save_steps == 0:
            self.checkpoint(step)

    def evaluate(self, step: int) -> dict:
        t0 = time.time()
        self.pipe.weights.sync(self.version)
        res = self.pipe.evaluate(self.eval_data, step)
        self.pipe.weights.finish()
        res.update({"step": step, "policy_version": self.version, "timing/eval_s": time.time() - t0})
        self.metrics.write(res)
        self.last_eval = res
        if "eval/accuracy" in res:
            self.log(
                f"[relay-rl] step {step}: eval accuracy {res['eval/accuracy']:.3f} "
                f"(reward {res['eval/reward']:.3f}, {res['eval/samples']} samples, {res['timing/eval_s']:.1f}s)"
            )
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
        get_all(
            [r.save_state.remote(str(tmp / "relay")) for r in self.pools.learner]
            + [c.save_state.remote(str(tmp / "relay" / "critic")) for c in self.pools.critic]
        )
        for pool in self.family.moving_pools(self.cfg):  # e.g. a refreshed reference: its weights are the run's state
            ray.get(self.pools.teachers[pool][0].save.remote(str(tmp / "relay" / pool)))
        path = checkpoints.commit(tmp, self.state(), self.metrics.history)
        gone = checkpoints.rotate(self.out, self.cfg.train.save_total_limit)
        self.log(
            f"[relay-rl] saved checkpoint {path} ({time.time() - t0:.1f}s"
            + (f"; removed {', '.join(p.name for p in gone)}" if gone else "")
            + ")"
        )
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
                if pool in self.family.moving_pools(self.cfg):
                    raise ConfigError(f"the {pool} pool's weights move during this run: it cannot be resized")
                text = resize(self.pools, pool, n)
                if pool == "rollout":
                    self.pipe.weights.sync(self.version, force=True)
                    self.pipe.weights.finish()
                self.log(f"[relay-rl] step {self.step}: scaled {text}")
            except ConfigError as e:
                text = f"refused: {e}"
                self.log(f"[relay-rl] step {self.step}: scale {pool} -> {n} {text}")
            self.control.answer.remote(req["id"], text, self.pools.replicas())

    def heal_learner(self, error: BaseException) -> None:
        """A learner rank died: replace the learner group from the newest checkpoint and continue from there (the
        steps after it are redone: nothing is trained twice; their prompts are drawn again, in the same order)."""
        dead = dead_learner_ranks(self.pools)
        if not dead:
            raise error  # not the learner: the pipeline's own retries have given up
        t = self.cfg.train
        found = checkpoints.checkpoints(self.out)
        if self.learner_restarts >= t.max_restarts or not found:
            raise RunError(
                f"learner rank(s) {dead} died at step {self.step + 1} and the run cannot heal: "
                + (
                    f"train.max_restarts ({t.max_restarts}) restarts used"
                    if found
                    else "no checkpoint to continue from (set train.save_steps)"
                )
                + f". Continue with `relay-rl train ... --resume auto --output {self.out}`"
            ) from None
        ckpt = found[-1]
        state = json.loads((ckpt / "relay" / "driver.json").read_text())
        self.learner_restarts += 1
        self.log(
            f"[relay-rl] learner rank(s) {dead} died at step {self.step + 1} ({type(error).__name__}); "
            f"restarting the learner group from {ckpt.name} (restart {self.learner_restarts} of "
            f"{t.max_restarts}); steps {state['step'] + 1}-{self.step} are redone"
        )
        self.inflight.clear()  # launched for later steps; the checkpoint's own in-flight batches are relaunched
        restart_learner(self.pools, self.cfg, self.metrics.run_name, ckpt, self.log)
        self.restore(state)
        self.pipe.weights.sync(self.version, force=True)  # the rollout pool back to the checkpoint's weights
        self.pipe.weights.finish()
        self.metrics.truncate(state["step"])

    def state(self) -> dict:
        """The driver's part of a checkpoint (JSON)."""
        return {
            "step": self.step,
            "version": self.version,
            "next_gen": self.next_gen,
            "admitted_microsteps": self.admitted_microsteps,
            "sampler": self.pipe.sampler.state(),
            "ledger": self.ledger.state(),
            "failures": self.failures,
            "last_eval": self.last_eval,
            "current_gen": self.current_gen,
            "health": self.health.state(),
            "num_tokens": self.num_tokens,
            "inflight": [{"gen_id": g.gen_id, "records": g.records} for g in self.inflight],
            "config": self.cfg.model_dump(mode="json"),
        }

    def restore(self, state: dict) -> None:
        """Continue from a checkpoint's driver state (the pools already hold its weights and learner state)."""
        self.step, self.version, self.next_gen = state["step"], state["version"], state["next_gen"]
        self.admitted_microsteps = state["admitted_microsteps"]
        self.pipe.sampler.restore(state["sampler"])
        self.pipe.weights.version = self.version  # the rollout pool was created from the checkpoint's weights
        self.ledger.restore(state["ledger"])
        self.failures, self.last_eval, self.current_gen = state["failures"], state["last_eval"], state["current_gen"]
        self.health.restore(state["health"])
        self.num_tokens = state.get("num_tokens", 0.0)
        for g in state["inflight"]:  # batches in flight at the save (max_staleness > 0): sampled again, same prompts
            self.inflight.append(self.pipe.launch(g["gen_id"], g["records"]))
            self.ledger.regenerated += 1

    def _postfix(self, rec: dict) -> dict:
        out = {"reward": f"{rec.get('reward') or 0:.3f}", "loss": f"{rec.get('loss') or 0:.4f}"}
        if "eval/accuracy" in self.last_eval:
            out["eval_acc"] = f"{self.last_eval['eval/accuracy']:.3f}"
        out["stale"] = int(rec.get("staleness/max") or 0)
        return out
