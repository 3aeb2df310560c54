"""Pools resized while the run goes on: rollout 1 -> 2 -> 1 and reward 1 -> 2 in one run, through the real
``relay-rl scale`` command (a separate process joining the run's Ray cluster) and the run's control actor; requests
that cannot be met are refused with a message and the run goes on."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import ray

from cluster.config import validate_dict
from cluster.controller import train
from tests.conftest import quickstart_dict

ROOT = Path(__file__).resolve().parents[2]


def _step(path: Path) -> int:
    if not path.exists():
        return 0
    return max((json.loads(x).get("step", 0) for x in path.read_text().splitlines() if '"loss"' in x), default=0)


def _scale(out: Path, *args) -> tuple[int, str]:
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    p = subprocess.run([sys.executable, "-m", "cluster.cli", "scale", str(out), *map(str, args)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
    return p.returncode, p.stdout + p.stderr


def test_rollout_and_reward_pools_resized_during_a_run(ray_cluster, kit, tmp_path, capsys):
    raw = quickstart_dict(train={"max_steps": 16, "eval_steps": None, "seed": 0},
                          cluster={"learner": {"replicas": 1, "num_cpus": 1}})
    answers: dict = {}

    def operator():
        metrics = tmp_path / "metrics.jsonl"
        while _step(metrics) < 2:
            time.sleep(0.2)
        answers["rollout 2"] = _scale(tmp_path, "rollout", 2)
        answers["rollout 0"] = _scale(tmp_path, "rollout", 0)
        answers["rollout 64"] = _scale(tmp_path, "rollout", 64)
        answers["learner 2"] = _scale(tmp_path, "learner", 2)
        run = json.loads((tmp_path / "run.json").read_text())["run"]
        control = ray.get_actor(f"{run}/control", namespace="relay-rl")
        request = ray.get(control.request.remote("reward", 2))
        while ray.get(control.status.remote(request)) is None:
            time.sleep(0.2)
        start = _step(metrics)
        while _step(metrics) < start + 4:
            time.sleep(0.2)
        answers["rollout 1"] = _scale(tmp_path, "rollout", 1)

    t = threading.Thread(target=operator, daemon=True)
    t.start()
    train(validate_dict(raw), output_dir=str(tmp_path))
    t.join(timeout=60)
    assert answers["rollout 2"] == (0, "relay-rl: rollout: 2 replica(s)\n"), answers
    assert answers["rollout 0"][0] == 2 and "at least 1 replica" in answers["rollout 0"][1]
    assert answers["rollout 64"][0] == 2 and "cannot host 63 more replica(s)" in answers["rollout 64"][1]
    assert answers["learner 2"][0] == 2 and "cannot be resized while a run goes on" in answers["learner 2"][1]
    assert answers["rollout 1"][0] == 0, answers
    err = capsys.readouterr().err
    assert "scaled rollout: 2 replica(s)" in err and "scaled reward: 2 replica(s)" in err
    ledger = json.loads((tmp_path / "pipeline.json").read_text())
    work = ledger["work_per_replica"]
    assert work.get("rollout/1", 0) > 0 and work.get("reward/1", 0) > 0, work  # the new replicas did work
    steps = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    assert [r["step"] for r in steps] == list(range(1, 17))
    assert all(r["staleness/max"] == 0 for r in steps)  # new replicas generated with the current weights
    assert steps[-1]["replicas/rollout"] == 1 and steps[-1]["replicas/reward"] == 2

    # the operator's view: the run's gauges on the node's Prometheus endpoint, labelled by run and pool, and every
    # panel of the Grafana dashboard reads one of them
    run = json.loads((tmp_path / "run.json").read_text())["run"]
    text = _prometheus("ray_relay_rl_replicas")
    for name, pool in (("relay_rl_loss", "learner"), ("relay_rl_replicas", "rollout"), ("relay_rl_reward_mean", "reward"),
                       ("relay_rl_tokens_per_s", "rollout"), ("relay_rl_sync_bytes", "rollout")):
        assert any(line.startswith(f"ray_{name}{{") and f'run="{run}"' in line and f'pool="{pool}"' in line
                   for line in text.splitlines()), (name, pool)
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "relay_rl.json").read_text())
    exported = {line.split("{")[0] for line in text.splitlines() if line.startswith("ray_relay_rl_")}
    for panel in dashboard["panels"]:
        assert panel["targets"][0]["expr"].split("{")[0] in exported, panel["title"]


def _prometheus(wanted: str, timeout_s: float = 60) -> str:
    """The metrics text of the nodes' Prometheus endpoints, once ``wanted`` appears (Ray flushes every few s)."""
    import urllib.request
    deadline, text = time.time() + timeout_s, ""
    while time.time() < deadline:
        text = ""
        for node in ray.nodes():
            port = node.get("MetricsExportPort")
            if node.get("Alive") and port:
                try:
                    with urllib.request.urlopen(f"http://{node['NodeManagerAddress']}:{port}/metrics", timeout=5) as r:
                        text += r.read().decode()
                except OSError:
                    pass
        if wanted in text:
            return text
        time.sleep(2)
    raise AssertionError(f"{wanted} not on the nodes' metrics endpoints after {timeout_s:.0f}s")
