"""Experiment trackers (cluster/trackers.py) with their real libraries: what each one wrote, read back with that
library's own reader (W&B: its protobuf records of the offline run file), equals the records given; a tracker that
fails is reported once and the others go on; the completions table reaches completions.jsonl and the console."""

import json
import os
import struct
import tempfile
from pathlib import Path

import pytest

from relay_rl.cluster.metrics import MetricsLog, format_table
from relay_rl.cluster.trackers import Trackers, resolve_report_to, scalars
from relay_rl.errors import ConfigError

RECORDS = [
    {"step": 0, "eval/accuracy": 0.5, "eval/samples": 200, "policy_version": 0},
    *(
        {"step": s, "reward": 0.1 * s, "reward_std": 0.3 / s, "loss": -0.01 * s, "kl": None, "staleness/hist": {"0": 4}}
        for s in (1, 2, 3)
    ),
    {"step": 3, "eval/accuracy": 0.75, "eval/samples": 200, "policy_version": 3},
]
os.environ["TRACKIO_DIR"] = tempfile.mkdtemp(prefix="trackio-")  # trackio reads it on import: its database, for here
TABLE = [{"step": 3, "prompt": "12+34=", "completion": "46", "arithmetic_exact": 1.0, "advantage": 0.5,
          "policy_version": 2, "staleness": 0}]  # fmt: skip


def expected(records: list[dict]) -> dict[str, list[tuple[int, float]]]:
    """{metric: [(step, value), ...]} of metrics.jsonl's records: what every tracker must hold."""
    out: dict = {}
    for r in records:
        for k, v in scalars(r).items():
            out.setdefault(k, []).append((r["step"], v))
    return out


def read_tensorboard(out: Path) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    ea.Reload()
    return {tag: [(e.step, e.value) for e in ea.Scalars(tag)] for tag in ea.Tags()["scalars"]}


def read_mlflow(out: Path, run_name: str) -> tuple[dict, dict]:
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("relay-rl").experiment_id])
    assert run.info.run_name == run_name
    metrics = {
        k: sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, k)) for k in run.data.metrics
    }
    return metrics, run.data.params


def read_wandb(out: Path) -> list[dict]:
    """The history rows of the offline run: wandb's transaction log (LevelDB's log format: 32 KiB blocks of records
    with a 7-byte header; wandb's own 7-byte file header first) of ``wandb.proto`` Records."""
    from wandb.proto import wandb_internal_pb2

    (path,) = (out / "wandb").glob("offline-run-*/run-*.wandb")
    data, pos, rows, pending = path.read_bytes(), 7, [], b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a header is padding
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == 0:
            continue
        pending += chunk
        if kind in (1, 4):  # a full record, or the last piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            if record.WhichOneof("record_type") == "history":
                row: dict = {}
                for item in record.history.item:  # a logged Table's fields are nested under its key
                    if item.key or len(item.nested_key) == 1:
                        row[item.key or item.nested_key[0]] = json.loads(item.value_json)
                    else:
                        row.setdefault(item.nested_key[0], {})["/".join(item.nested_key[1:])] = json.loads(
                            item.value_json
                        )
                rows.append(row)
    return rows


def wandb_scalars(rows: list[dict]) -> dict:
    """{metric: [(step, value), ...]} of W&B's history rows."""
    got: dict = {}
    for row in rows:
        for k, v in row.items():
            if not k.startswith("_") and isinstance(v, (int, float)):
                got.setdefault(k, []).append((row["_step"], v))
    return got


def last_per_step(want: dict) -> dict:
    """W&B keeps one value per metric and step (the last logged): a train and an eval record of one step share it."""
    return {k: list(dict(points).items()) for k, points in want.items()}


def read_trackio(run_name: str) -> dict:
    """The run's logs, through trackio's storage (in ``TRACKIO_DIR``)."""
    from trackio.sqlite_storage import SQLiteStorage

    out: dict = {}
    for log in SQLiteStorage.get_logs("relay-rl", run_name):
        for k, v in log.items():
            if k not in ("step", "timestamp") and isinstance(v, (int, float)):
                out.setdefault(k, []).append((log["step"], v))
    return out


@pytest.fixture
def tracked(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    said: list[str] = []
    trackers = Trackers(resolve_report_to("all"), said.append)
    assert [n for n, _ in trackers.active] == ["tensorboard", "mlflow", "wandb", "trackio"]
    trackers.start(tmp_path, "test-run", "relay-rl", {"train": {"max_steps": 3}, "reward": ["a", "b"]}, "name: x\n")
    log = MetricsLog(tmp_path, "test-run", trackers=trackers)
    for r in RECORDS:
        log.write(dict(r))
    log.table(TABLE, 3)
    log.close()
    return tmp_path, said


def test_every_tracker_holds_what_metrics_jsonl_holds(tracked):
    out, said = tracked
    assert not [s for s in said if "failed" in s], said
    jsonl = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in jsonl] == [r["step"] for r in RECORDS]
    want = expected(jsonl)
    assert want["reward"] == [(1, 0.1), (2, 0.2), (3, 0.3)] and "kl" not in want and "staleness/hist" not in want

    tb = read_tensorboard(out)
    assert set(tb) == set(want)
    for k, pts in want.items():
        assert [s for s, _ in tb[k]] == [s for s, _ in pts]
        assert [v for _, v in tb[k]] == pytest.approx([v for _, v in pts], rel=1e-6)  # float32 event values

    ml, params = read_mlflow(out, "test-run")
    assert ml == {k: sorted(pts) for k, pts in want.items()}
    assert params == {"train.max_steps": "3", "reward": '["a", "b"]'}
    assert (out / "mlflow-artifacts").is_dir()

    rows = read_wandb(out)
    assert wandb_scalars(rows) == last_per_step(want)
    assert [(row["_step"], row["completions"]["nrows"]) for row in rows if "completions" in row] == [(3, 1)]

    assert read_trackio("test-run") == want


def test_the_completions_table_reaches_the_file_and_the_trackers(tracked):
    out, _ = tracked
    assert [json.loads(line) for line in (out / "completions.jsonl").read_text().splitlines()] == TABLE
    text = format_table(TABLE, 3, 64)
    assert "12+34=" in text and "arithmetic_exact" in text and "(1 of 64 sampled rows)" in text
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(out / "tensorboard"))
    ea.Reload()
    assert "completions/text_summary" in ea.Tags()["tensors"]
    assert list((out / "mlflow-artifacts").glob("*/artifacts/completions/step_000003.json"))
    (table,) = (out / "wandb").glob("offline-run-*/files/media/table/completions_3_*.table.json")
    assert json.loads(table.read_text())["data"][0][:3] == [3, "12+34=", "46"]


def test_a_failing_tracker_is_reported_once_and_the_run_goes_on(tmp_path, monkeypatch):
    from relay_rl.cluster import trackers as mod

    class Broken(mod.TensorBoard):
        calls = 0

        def log(self, values, step):
            Broken.calls += 1
            if step >= 2:
                raise OSError("disk full")
            super().log(values, step)

    monkeypatch.setattr(mod, "KINDS", {**mod.KINDS, "tensorboard": Broken})
    said: list[str] = []
    trackers = Trackers(["tensorboard", "mlflow"], said.append)
    trackers.start(tmp_path, "r", "relay-rl", {}, "")
    for r in RECORDS:
        trackers.log(r)
    trackers.finish()
    failed = [s for s in said if "failed" in s]
    assert len(failed) == 1 and "tensorboard" in failed[0] and "disk full" in failed[0] and "goes on" in failed[0]
    assert Broken.calls == 3  # steps 0, 1 and the failing 2: left out after it
    ml, _ = read_mlflow(tmp_path, "r")
    assert ml == {k: sorted(pts) for k, pts in expected(RECORDS).items()}  # the other tracker got every record


def test_report_to_values_and_the_preflight_names_the_missing_extra(monkeypatch):
    from relay_rl.cluster import preflight, trackers
    from relay_rl.cluster.config import load_config
    from tests.conftest import RECIPES

    assert resolve_report_to("none") == [] and resolve_report_to("wandb") == ["wandb"]
    assert resolve_report_to(["tensorboard", "mlflow"]) == ["tensorboard", "mlflow"]
    with pytest.raises(ConfigError, match=r"unknown tracker 'tensorbord'"):
        load_config(RECIPES / "quickstart.yaml", ["train.report_to=[tensorbord]"])
    with pytest.raises(ConfigError, match=r"'all' stands alone"):
        load_config(RECIPES / "quickstart.yaml", ["train.report_to=[all,wandb]"])
    cfg = load_config(RECIPES / "quickstart.yaml", ["train.report_to=[tensorboard,wandb]"])
    monkeypatch.setattr(trackers, "installed", lambda name: name != "wandb")  # as on a machine without the extra
    with pytest.raises(ConfigError, match=r"train.report_to names wandb.*pip install 'relay-rl\[wandb\]'"):
        preflight.check_trackers(cfg)
    preflight.check_trackers(load_config(RECIPES / "quickstart.yaml", ["train.report_to=all"]))  # the installed ones
