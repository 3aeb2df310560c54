"""The quickstart reporting to TensorBoard, MLflow and W&B (offline) with its completions logged: each tracker, read
back with its own library, holds exactly what metrics.jsonl holds; the completions table is in completions.jsonl and
on the console, with each row's reward, advantage, policy version and staleness."""

import json
import re

from relay_rl.cluster.config import load_config
from relay_rl.cluster.runner import train
from tests.conftest import RECIPES
from tests.unit.test_trackers import expected, last_per_step, read_mlflow, read_tensorboard, read_wandb, wandb_scalars

STEPS = 3
DOCS = RECIPES.parents[1] / "docs" / "metrics.md"


def documented(key: str) -> bool:
    """``key`` is named in docs/metrics.md (``<fn>``-style placeholders match one path segment)."""
    names = re.findall(r"`([a-z_][a-z0-9_/<>.]*)`", DOCS.read_text())
    return any(
        re.fullmatch(re.sub(r"<[a-z_]+>", "[^/]+", re.escape(n).replace(r"\<", "<").replace(r"\>", ">")), key)
        for n in names
    )


def test_the_quickstart_reports_to_the_trackers_and_logs_its_completions(ray_cluster, kit, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "WANDB_PROJECT"):
        monkeypatch.delenv(var, raising=False)
    cfg = load_config(
        RECIPES / "quickstart.yaml",
        [
            f"train.max_steps={STEPS}",
            f"train.eval_steps={STEPS}",
            "train.report_to=[tensorboard,mlflow,wandb]",
            "train.run_name=qs-tracked",
            "train.log_completions=true",
            "train.num_completions_to_print=2",
            "train.logging_steps=2",
        ],
    )
    said: list[str] = []
    train(cfg, output_dir=str(tmp_path), log=said.append)
    assert not [s for s in said if "tracker failed" in s], said
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    want = expected(records)
    assert {"reward", "reward_std", "loss", "eval/accuracy", "num_tokens", "completions/mean_length"} <= set(want)
    assert [s for s, _ in want["reward"]] == list(range(1, STEPS + 1)) and [s for s, _ in want["eval/accuracy"]] == [
        0,
        STEPS,
    ]

    tb = read_tensorboard(tmp_path)
    assert set(tb) == set(want)
    for key, points in want.items():
        assert [s for s, _ in tb[key]] == [s for s, _ in points], key
        assert all(abs(a - b) <= 1e-6 * max(1.0, abs(b)) for (_, a), (_, b) in zip(tb[key], points)), key

    ml, params = read_mlflow(tmp_path, "qs-tracked")
    assert ml == {k: sorted(p) for k, p in want.items()}
    assert (
        params["algorithm.num_generations"] == "8" and params["train.report_to"] == '["tensorboard", "mlflow", "wandb"]'
    )

    wandb_rows = read_wandb(tmp_path)
    assert wandb_scalars(wandb_rows) == last_per_step(want)
    assert [row["_step"] for row in wandb_rows if "completions" in row] == [2, 3]  # the table, as a W&B Table

    # the completions table: logged at the logging steps (2) and the last (3), 64 rows each (the whole batch here)
    rows = [json.loads(line) for line in (tmp_path / "completions.jsonl").read_text().splitlines()]
    assert sorted({r["step"] for r in rows}) == [2, 3] and len(rows) == 2 * 64
    for r in rows:
        assert set(r) == {
            "step",
            "prompt",
            "completion",
            "arithmetic_exact",
            "advantage",
            "policy_version",
            "staleness",
        }
        assert r["prompt"].endswith("=") and r["arithmetic_exact"] in (0.0, 1.0)
        assert r["policy_version"] == r["step"] - 1 and r["staleness"] == 0  # max_staleness 0
    step3 = [r for r in rows if r["step"] == 3]
    # GRPO's advantages: a rewarded completion of a varied group is above its group's mean
    assert all(r["advantage"] > 0 for r in step3 if r["arithmetic_exact"] == 1.0 and r["advantage"] != 0)
    assert all(r["advantage"] <= 0 for r in step3 if r["arithmetic_exact"] == 0.0)
    undocumented = sorted({k for r in records for k in r if not documented(k)})
    assert not undocumented, f"metrics missing from docs/metrics.md: {undocumented}"
    printed = [s for s in said if "completions (2 of 64 sampled rows)" in s]
    assert len(printed) == 2 and "arithmetic_exact" in printed[0] and "staleness" in printed[0]
