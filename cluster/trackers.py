"""Experiment trackers (``train.report_to``, TRL's knob): TensorBoard, MLflow, Weights & Biases and Trackio, each
through its own library. The driver gives every tracker the resolved run file when the run starts, every record it
writes to metrics.jsonl (same keys, same step), and the sampled completions table (``train.log_completions``). A
tracker that fails is reported once and left out for the rest of the run: a tracker never stops a run."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import time
from pathlib import Path

from .config.sections import TRACKERS


def installed(name: str) -> bool:
    """The tracker's library imports here (its extra, ``pip install 'relay-rl[<name>]'``, is installed)."""
    return importlib.util.find_spec(name) is not None


def resolve_report_to(report_to) -> list[str]:
    """``none`` -> [], ``all`` -> every installed tracker, a name or a list of names -> those names."""
    names = [report_to] if isinstance(report_to, str) else list(report_to)
    if names == ["all"]:
        return [n for n in TRACKERS if installed(n)]
    return [n for n in names if n != "none"]


def scalars(record: dict) -> dict[str, float]:
    """The record's finite numbers (its ``step`` aside): what a tracker plots."""
    return {
        k: float(v)
        for k, v in record.items()
        if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    }


class TensorBoard:
    """Event files in ``<run folder>/tensorboard`` (``tensorboard --logdir <run folder>``)."""

    def start(self, out: Path, run_name: str, project: str, config: dict, config_text: str) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(out / "tensorboard"), flush_secs=10)
        self.writer.add_text("run_file", f"```yaml\n{config_text}\n```")

    def log(self, values: dict[str, float], step: int) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)

    def table(self, rows: list[dict], step: int) -> None:
        columns = list(rows[0])
        lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        lines += ["| " + " | ".join(_cell(row[c]) for c in columns) + " |" for row in rows]
        self.writer.add_text("completions", "\n".join(lines), step)

    def finish(self) -> None:
        self.writer.close()


class MLflow:
    """``MLFLOW_TRACKING_URI`` (a tracking server, or any store MLflow takes), else an SQLite store in the run folder
    (``mlflow ui --backend-store-uri sqlite:///<run folder>/mlflow.db``). The experiment is
    ``MLFLOW_EXPERIMENT_NAME``, else ``train.project``."""

    def start(self, out: Path, run_name: str, project: str, config: dict, config_text: str) -> None:
        from mlflow import MlflowClient
        from mlflow.entities import Param

        uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{out / 'mlflow.db'}"
        self.client = MlflowClient(uri)
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or project
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            experiment = found.experiment_id
        else:  # a store of our own keeps its artifacts beside it
            local = None if os.environ.get("MLFLOW_TRACKING_URI") else (out / "mlflow-artifacts").as_uri()
            experiment = self.client.create_experiment(name, artifact_location=local)
        self.run_id = self.client.create_run(experiment, run_name=run_name).info.run_id
        self.client.log_text(self.run_id, config_text, "run_file.yaml")
        params = [Param(k, str(v)[:6000]) for k, v in _flatten(config).items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 parameters per request
            self.client.log_batch(self.run_id, params=params[i : i + 100])

    def log(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, step) for k, v in values.items()]
        for i in range(0, len(metrics), 1000):
            self.client.log_batch(self.run_id, metrics=metrics[i : i + 1000])

    def table(self, rows: list[dict], step: int) -> None:
        data = {c: [row[c] for row in rows] for c in rows[0]}
        self.client.log_table(self.run_id, data=data, artifact_file=f"completions/step_{step:06d}.json")

    def finish(self) -> None:
        self.client.set_terminated(self.run_id)


class WandB:
    """A W&B run in the ``WANDB_PROJECT`` project, else ``train.project``; ``WANDB_MODE=offline`` writes it to the run
    folder's ``wandb/`` (``wandb sync`` uploads it later)."""

    def start(self, out: Path, run_name: str, project: str, config: dict, config_text: str) -> None:
        import wandb

        self.wandb = wandb
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT") or project, name=run_name, config=config, dir=str(out)
        )

    def log(self, values: dict[str, float], step: int) -> None:
        self.run.log(values, step=step)

    def table(self, rows: list[dict], step: int) -> None:
        columns = list(rows[0])
        table = self.wandb.Table(columns=columns, data=[[row[c] for c in columns] for row in rows])
        self.run.log({"completions": table}, step=step)

    def finish(self) -> None:
        self.run.finish()


class Trackio:
    """A Trackio run in project ``train.project``, stored where Trackio keeps its runs (``TRACKIO_DIR``, by default
    ``~/.cache/huggingface/trackio``; ``trackio show`` opens the dashboard)."""

    def start(self, out: Path, run_name: str, project: str, config: dict, config_text: str) -> None:
        import trackio

        self.trackio = trackio
        self.run = trackio.init(
            project=project, name=run_name, config=config, embed=False, auto_log_cpu=False, auto_log_gpu=False
        )

    def log(self, values: dict[str, float], step: int) -> None:
        self.run.log(values, step=step)

    def table(self, rows: list[dict], step: int) -> None:
        import pandas as pd

        self.run.log({"completions": self.trackio.Table(dataframe=pd.DataFrame(rows))}, step=step)

    def finish(self) -> None:
        self.run.finish()


KINDS = {"tensorboard": TensorBoard, "mlflow": MLflow, "wandb": WandB, "trackio": Trackio}


class Trackers:
    """The run's trackers. Every call goes to each of them; one that raises is reported once and dropped."""

    def __init__(self, names: list[str], say):
        self.active = [(name, KINDS[name]()) for name in names]
        self.say = say

    def start(self, out: Path, run_name: str, project: str, config: dict, config_text: str) -> None:
        self._each("start", out, run_name, project, config, config_text)
        for name, _ in self.active:
            self.say(f"[relay-rl] reporting to {name} (run {run_name})")

    def log(self, record: dict) -> None:
        values = scalars(record)
        if values and self.active:
            self._each("log", values, int(record.get("step", 0)))

    def table(self, rows: list[dict], step: int) -> None:
        if rows and self.active:
            self._each("table", rows, step)

    def finish(self) -> None:
        self._each("finish")
        self.active = []

    def _each(self, method: str, *args) -> None:
        for entry in list(self.active):
            name, tracker = entry
            try:
                getattr(tracker, method)(*args)
            except Exception as e:  # noqa: BLE001  (a tracker never stops a run)
                self.active.remove(entry)
                first = (str(e).strip().splitlines() or [""])[0][:300]
                self.say(
                    f"[relay-rl] warning: the {name} tracker failed ({type(e).__name__}: {first}); the run goes on "
                    f"without it (metrics.jsonl has every step)"
                )


def _flatten(config: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = json.dumps(value) if isinstance(value, (list, dict)) else value
    return out


def _cell(value) -> str:
    text = f"{value:.4g}" if isinstance(value, float) else str(value)
    return text.replace("|", "\\|").replace("\n", "<br>")
