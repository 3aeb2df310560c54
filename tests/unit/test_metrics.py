"""The end-of-run summary: rates over all steps, and the per-step share of a generation batch that feeds K steps."""

from pathlib import Path
from types import SimpleNamespace

from relay_rl.cluster.metrics import MetricsLog, summary_table


def fake_log(rows):
    log = SimpleNamespace(history=rows)
    log.series = lambda key: MetricsLog.series(log, key)
    return log


def test_summary_rates_and_generation_share():
    # K = 4: every step of a batch logs the batch's generate time (2.0 s); 2 batches, 8 steps of 1 s, 64 samples
    rows = [
        {
            "step": s,
            "loss": 0.0,
            "reward": 0.5,
            "samples": 64,
            "completions/tokens": 200.0,
            "timing/step_s": 1.0,
            "timing/generate_s": 2.0,
            "timing/train_s": 0.5,
            "timing/sync_s": 0.1,
            "staleness/max": (s - 1) % 4,
        }
        for s in range(1, 9)
    ]
    rows += [{"step": 0, "eval/accuracy": 0.5}, {"step": 8, "eval/accuracy": 0.75}]
    text = summary_table(fake_log(rows), Path("/run"), 10.0, {}, steps_per_batch=4)
    lines = dict(line.split("  ", 1) for line in text.splitlines() if "  " in line)
    assert lines["samples/s"].strip() == "64.0" and lines["tokens/s"].strip() == "200"
    assert "generate 0.500s (2.000s per generation batch of 4 steps)" in lines["time per step (mean)"]
    assert "0.500 (step 0) -> 0.750 (step 8)" in lines["eval accuracy"]
    assert lines["staleness max"].strip() == "3"
