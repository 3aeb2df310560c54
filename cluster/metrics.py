"""Metrics: metrics.jsonl, Ray dashboard gauges, the reward curve, the end-of-run summary. (The ranks' statistics
are merged by ``relay_rl.stats``.)"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path


class MetricsLog:
    """Appends one JSON line per record to metrics.jsonl, mirrors key values to Ray's metrics (dashboard) and hands
    every record to the run's experiment trackers (``train.report_to``, cluster/trackers.py)."""

    # metrics.jsonl key -> (Prometheus gauge, pool label). Ray exports them as ray_<name>{run, pool} on every node's
    # metrics endpoint (the dashboard's Metrics page and deploy/grafana/relay_rl.json read them).
    GAUGES = {
        "reward": ("relay_rl_reward_mean", "reward"),
        "eval/accuracy": ("relay_rl_eval_accuracy", "rollout"),
        "loss": ("relay_rl_loss", "learner"),
        "kl": ("relay_rl_kl", "learner"),
        "entropy": ("relay_rl_entropy", "learner"),
        "grad_norm": ("relay_rl_grad_norm", "learner"),
        "staleness/max": ("relay_rl_staleness_max", "learner"),
        "staleness/mean": ("relay_rl_staleness_mean", "learner"),
        "tokens_per_s/rollout": ("relay_rl_tokens_per_s", "rollout"),
        "tokens_per_s/learner": ("relay_rl_tokens_per_s", "learner"),
        "tokens_per_s": ("relay_rl_tokens_per_s", "run"),
        "queue/inflight": ("relay_rl_generation_queue_depth", "rollout"),
        "timing/sync_s": ("relay_rl_sync_seconds", "rollout"),
        "sync/bytes": ("relay_rl_sync_bytes", "rollout"),
        "timing/generate_s": ("relay_rl_seconds_per_step", "rollout"),
        "timing/reward_s": ("relay_rl_seconds_per_step", "reward"),
        "timing/train_s": ("relay_rl_seconds_per_step", "learner"),
        "restarts/learner": ("relay_rl_restarts", "learner"),
        "restarts/redone_batches": ("relay_rl_restarts", "rollout"),
        "pipeline/dropped_samples": ("relay_rl_dropped_samples", "learner"),
        "pipeline/generated_samples": ("relay_rl_generated_samples", "rollout"),
        "replicas/rollout": ("relay_rl_replicas", "rollout"),
        "replicas/reward": ("relay_rl_replicas", "reward"),
        "replicas/learner": ("relay_rl_replicas", "learner"),
    }

    def __init__(self, out_dir: Path, run_name: str, previous: list[dict] | None = None, trackers=None):
        """``previous``: the records of a resumed run up to its checkpoint (the file is rewritten with them; the
        trackers had them already). ``trackers``: a started ``Trackers``, closed with the log."""
        self.trackers = trackers
        self.completions_path = out_dir / "completions.jsonl"
        self.path = out_dir / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(self.path, "w", buffering=1)
        self.history: list[dict] = list(previous or [])
        for record in self.history:
            self.file.write(json.dumps(record) + "\n")
        self.run_name = run_name
        self._gauges = None
        if previous is not None:  # a resume: the completions logged after its checkpoint are logged again
            self._keep_completions(max((r.get("step", 0) for r in self.history), default=0))

    def _ray_gauges(self):
        if self._gauges is None:
            try:
                from ray.util.metrics import Gauge

                made = {
                    name: Gauge(
                        name,
                        description=f"relay-rl {name[len('relay_rl_') :].replace('_', ' ')}",
                        tag_keys=("run", "pool"),
                    )
                    for name, _ in self.GAUGES.values()
                }
                self._gauges = {k: (made[name], pool) for k, (name, pool) in self.GAUGES.items()}
            except Exception:  # noqa: BLE001  (metrics are optional; never fail a run for them)
                self._gauges = {}
        return self._gauges

    def write(self, record: dict) -> None:
        record = {k: _clean(v) for k, v in record.items()}
        self.file.write(json.dumps(record) + "\n")
        self.history.append(record)
        if self.trackers is not None:
            self.trackers.log(record)
        for k, (g, pool) in self._ray_gauges().items():
            v = record.get(k)
            if isinstance(v, (int, float)) and math.isfinite(v):
                g.set(v, tags={"run": self.run_name, "pool": pool})

    def truncate(self, step: int) -> None:
        """Forget the records after ``step`` (a learner restart redoes those steps); the file is rewritten."""
        self.history = [r for r in self.history if r.get("step", 0) <= step]
        self.file.close()
        self.file = open(self.path, "w", buffering=1)
        for record in self.history:
            self.file.write(json.dumps(record) + "\n")
        self._keep_completions(step)

    def _keep_completions(self, step: int) -> None:
        if self.completions_path.is_file():
            kept = [ln for ln in self.completions_path.read_text().splitlines() if json.loads(ln)["step"] <= step]
            self.completions_path.write_text("".join(ln + "\n" for ln in kept))

    def table(self, rows: list[dict], step: int) -> None:
        """The completions table of ``step`` (``train.log_completions``): appended to completions.jsonl, one line
        per row, and logged to the trackers."""
        with open(self.completions_path, "a") as f:
            for row in rows:
                f.write(json.dumps({k: _clean(v) for k, v in row.items()}) + "\n")
        if self.trackers is not None:
            self.trackers.table(rows, step)

    def close(self) -> None:
        self.file.close()
        if self.trackers is not None:
            self.trackers.finish()

    def series(self, key: str) -> tuple[list, list]:
        pts = [(r["step"], r[key]) for r in self.history if isinstance(r.get(key), (int, float))]
        return [p[0] for p in pts], [p[1] for p in pts]


def _clean(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, float):
        return round(v, 6)
    return v


def format_table(rows: list[dict], step: int, total: int, width: int = 40) -> str:
    """Rows of the completions table as console text: one line per row, long texts cut to ``width``."""

    def cell(v) -> str:
        text = "None" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)
        text = text.replace("\n", "\\n")
        return text if len(text) <= width else text[: width - 3] + "..."

    columns = [c for c in rows[0] if c != "step"] if rows else []
    cells = [[cell(row[c]) for c in columns] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    lines = [f"[relay-rl] step {step}: completions ({len(rows)} of {total} sampled rows)"]
    lines.append("  " + " | ".join(c.ljust(w) for c, w in zip(columns, widths)))
    lines += ["  " + " | ".join(v.ljust(w) for v, w in zip(r, widths)) for r in cells]
    return "\n".join(lines)


def plot_reward_curve(log: MetricsLog, path: Path, title: str, curve: tuple[str, str] | None = None) -> None:
    """Train reward, held-out accuracy and, on its own axis, the family's ``curve`` metric (key, label)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    steps, reward = log.series("reward")
    if steps:
        ax.plot(steps, reward, lw=0.8, alpha=0.45, label="train reward (mean)")
        w = max(1, len(reward) // 30)
        smooth = [
            sum(reward[max(0, i - w + 1) : i + 1]) / len(reward[max(0, i - w + 1) : i + 1]) for i in range(len(reward))
        ]
        ax.plot(steps, smooth, lw=1.8, label=f"train reward ({w}-step mean)")
    es, acc = log.series("eval/accuracy")
    if es:
        ax.plot(es, acc, "o-", lw=1.8, label="eval accuracy (held-out)")
    ds, div = log.series(curve[0]) if curve else ([], [])
    if ds:  # e.g. distillation: the divergence to the teacher, on its own axis
        ax2 = ax.twinx()
        ax2.plot(ds, div, color="tab:red", lw=0.8, alpha=0.6, label=curve[1])
        ax2.set_ylabel(curve[1].split(" ")[0])
        ax2.legend(loc="upper right")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("reward / accuracy")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:  # nothing to show when every reward was None
        ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def summary_table(
    log: MetricsLog,
    out_dir: Path,
    wall_s: float,
    extra: dict,
    steps_per_batch: float = 1.0,
    curve: tuple[str, str] | None = None,
) -> str:
    """The one-screen end-of-run summary. Rates and times are over all optimizer steps; a generation batch feeds
    ``steps_per_batch`` (K) steps, and each of them logs that batch's generate time, so the per-step share is 1/K.
    ``curve``: the family's own progress metric (key, label), shown first -> last."""
    es, acc = log.series("eval/accuracy")
    train = [r for r in log.history if "loss" in r]
    rows = [("steps", f"{train[-1]['step'] if train else 0}"), ("wall time", f"{wall_s:.0f} s")]
    if acc:
        rows.append(
            ("eval accuracy", f"{acc[0]:.3f} (step {es[0]}) -> {acc[-1]:.3f} (step {es[-1]}), best {max(acc):.3f}")
        )
    if train:
        last = train[-max(1, len(train) // 10) :]
        total = lambda k: sum(r.get(k) or 0 for r in train)  # noqa: E731
        mean = lambda k: total(k) / len(train)  # noqa: E731
        step_s = max(1e-9, total("timing/step_s"))
        generate = f"generate {mean('timing/generate_s') / steps_per_batch:.3f}s"
        if steps_per_batch != 1:
            generate += f" ({mean('timing/generate_s'):.3f}s per generation batch of {steps_per_batch:g} steps)"
        if any("reward" in r for r in train):
            rows.append(("train reward (last 10%)", f"{sum(r.get('reward') or 0 for r in last) / len(last):.3f}"))
        key = curve[0] if curve else None
        if key and any(key in r for r in train):
            rows.append(
                (
                    f"{curve[1].split(' ')[0]} (first -> last 10%)",
                    f"{train[0][key]:.4f} -> {sum(r[key] for r in last) / len(last):.4f}",
                )
            )
        rows += [
            ("samples/s", f"{total('samples') / step_s:.1f}"),
            ("tokens/s", f"{total('completions/tokens') / step_s:.0f}"),
            (
                "time per step (mean)",
                f"{generate}, train {mean('timing/train_s'):.3f}s, "
                f"sync {mean('timing/sync_s'):.3f}s, step {mean('timing/step_s'):.3f}s",
            ),
            ("staleness max", f"{max((r.get('staleness/max') or 0) for r in train):.0f}"),
        ]
    rows += list(extra.items())
    rows += [("metrics", str(out_dir / "metrics.jsonl")), ("reward curve", str(out_dir / "reward_curve.png"))]
    width = max(len(k) for k, _ in rows)
    lines = ["", "relay-rl run summary", "-" * 60] + [f"{k:<{width}}  {v}" for k, v in rows] + ["-" * 60]
    return "\n".join(lines)


class Timer:
    def __init__(self):
        self.t = time.time()

    def lap(self) -> float:
        now = time.time()
        dt, self.t = now - self.t, now
        return dt
