"""Runs that cannot learn say so. Read after every step from the step's record:

- a generation batch where no completion could be scored is reported;
- a large share of groups with identical rewards for several steps in a row is a warning (console and metrics),
  with the likely causes;
- ``train.max_idle_steps`` steps in a row with a gradient norm of exactly 0 stop the run (a ``RunError``, raised by
  the controller once the step is recorded).
"""

from __future__ import annotations

from relay_rl.errors import RunError

ZERO_VARIANCE_STREAK = 5  # steps in a row before the warning


class Health:
    def __init__(self, cfg, log):
        self.cfg, self.log = cfg, log
        self.idle_since: int | None = None  # first step of the current run of zero-gradient steps
        self.zero_var_streak = 0
        self.warned_zero_var = False
        self.unscorable_batches = 0

    def state(self) -> dict:
        return {
            "idle_since": self.idle_since,
            "zero_var_streak": self.zero_var_streak,
            "warned_zero_var": self.warned_zero_var,
            "unscorable_batches": self.unscorable_batches,
        }

    def restore(self, state: dict) -> None:
        self.idle_since, self.zero_var_streak = state["idle_since"], state["zero_var_streak"]
        self.warned_zero_var, self.unscorable_batches = state["warned_zero_var"], state["unscorable_batches"]

    def generation(self, gen_id: int, stats: dict) -> None:
        """A generation batch arrived (scored)."""
        if stats.get("reward/unscorable") == 1.0:
            self.unscorable_batches += 1
            if self.unscorable_batches in (1, 10, 100, 1000):  # counted every time, said now and then
                self.log(
                    f"[relay-rl] warning: generation batch {gen_id}: no completion could be scored (every reward "
                    "function returned None or failed for every completion): it carries nothing to learn "
                    f"({self.unscorable_batches} such batch{'es' if self.unscorable_batches > 1 else ''} so "
                    "far; pipeline/unscorable_batches counts them)"
                )

    def step(self, step: int, rec: dict) -> RunError | None:
        """After the step's record is made; may add ``warning/*`` keys to it. Returns the error that stops a run that
        learns nothing (raised once the record is written)."""
        t = self.cfg.train
        rec["pipeline/unscorable_batches"] = self.unscorable_batches
        share = rec.get("frac_reward_zero_std")
        if share is not None and t.zero_variance_warning < 1 and share >= t.zero_variance_warning:
            self.zero_var_streak += 1
        else:
            self.zero_var_streak, self.warned_zero_var = 0, False
        if self.zero_var_streak >= ZERO_VARIANCE_STREAK and not self.warned_zero_var:
            self.warned_zero_var = True
            rec["warning/zero_variance_groups"] = 1.0
            r = rec.get("reward")
            self.log(
                f"[relay-rl] warning: for {self.zero_var_streak} steps, {share:.0%} of the groups got identical "
                f"rewards (mean reward {r:.3f}): those groups have zero advantage and teach nothing. Likely: "
                + (
                    "the task is too hard for the model (every completion fails)"
                    if r is not None and r <= 0
                    else "the task is already solved (every completion succeeds)"
                    if r is not None and r >= 1
                    else "a reward that does not vary between completions"
                )
                + "; also check that the reward reads the right column. Options: an easier warm start, more "
                "num_generations, a graded reward, or DAPO's dynamic sampling"
            )
        grad = rec.get("grad_norm")
        if grad is not None and grad == 0.0:
            self.idle_since = step if self.idle_since is None else self.idle_since
        else:
            self.idle_since = None
        if t.max_idle_steps and self.idle_since is not None and step - self.idle_since + 1 >= t.max_idle_steps:
            return RunError(
                f"nothing was learned for {step - self.idle_since + 1} steps in a row (steps "
                f"{self.idle_since}-{step}: gradient norm 0): {self._cause(rec)}. The metrics so far are "
                "in metrics.jsonl; train.max_idle_steps sets how many such steps stop a run (0: never)"
            )
        return None

    def _cause(self, rec: dict) -> str:
        if rec.get("reward/unscorable") == 1.0:
            return (
                "no completion could be scored: every reward function returned None (or failed) for every "
                "completion; check the reward function and the dataset column it reads"
            )
        if rec.get("frac_reward_zero_std") == 1.0:
            return (
                "every group's completions got identical rewards, so every advantage is 0: the task is too hard "
                "or too easy for the model, or the reward does not vary"
            )
        return "every sample's weight in the loss was 0"
