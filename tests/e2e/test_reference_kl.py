"""KL to a reference model held by the teacher pool (beta > 0), and the TR-DPO reference refresh.

The reference is the frozen initial policy, so the step-1 KL is exactly 0 and later steps' KL is positive; with
``sync_ref_model`` (alpha = 1, every 2 steps) the reference becomes the policy again and the KL returns to 0.
"""

import json

from relay_rl.cluster.config import validate_dict
from relay_rl.cluster.runner import train
from tests.conftest import quickstart_dict


def test_reference_kl_and_refresh(ray_cluster, kit, tmp_path):
    raw = quickstart_dict(
        algorithm={
            "beta": 0.04,
            "sync_ref_model": True,
            "ref_model_sync_steps": 2,
            "ref_model_mixup_alpha": 1.0,
            "per_device_train_batch_size": 32,
        },
        train={"max_steps": 4, "eval_steps": None, "learning_rate": 1e-3, "lr_scheduler_type": "constant"},
        cluster={"learner": {"replicas": 1, "num_cpus": 1}, "teacher": {"replicas": 1, "num_cpus": 0.5}},
    )
    train(validate_dict(raw), output_dir=str(tmp_path))
    steps = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    kl = [r["kl"] for r in steps if "loss" in r]
    assert len(kl) == 4
    assert kl[0] < 1e-6 and kl[2] < 1e-6, kl  # the reference equals the policy (initially; after the refresh)
    assert kl[1] > 1e-5 and kl[3] > 1e-5, kl  # one step later they differ
