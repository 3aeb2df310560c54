"""Checks before anything waits: pools the cluster cannot host, and data that cannot load, fail at once with the field
to change (on the automatic local cluster); a remote cluster that may still grow gets a warning instead."""

import pytest

from relay_rl.cluster.config import validate_dict
from relay_rl.cluster.data import load_data
from relay_rl.cluster.pools import check_resources
from relay_rl.errors import ConfigError
from tests.conftest import quickstart_dict


def test_pools_that_fit_pass_silently(ray_cluster):
    lines = []
    check_resources(validate_dict(quickstart_dict()), fixed=False, log=lines.append)
    assert lines == []


def test_gpu_pools_on_a_cpu_cluster_fail_at_once_naming_the_pool(ray_cluster):
    cfg = validate_dict(quickstart_dict(cluster={"learner": {"replicas": 2, "num_gpus": 1}}))
    with pytest.raises(ConfigError) as e:
        check_resources(cfg, fixed=True)
    msg = str(e.value)
    assert "cluster.learner: each actor needs CPU 1, GPU 1; no node has that" in msg
    assert "the pools need 2 GPU in all; the cluster has 0" in msg and "num_gpus=0" in msg
    assert "cluster.rollout" not in msg  # the rollout pool fits


def test_too_many_cpus_in_all_and_colocated_bundles(ray_cluster):
    cfg = validate_dict(quickstart_dict(cluster={"reward": {"replicas": 40, "num_cpus": 1}}))
    with pytest.raises(ConfigError, match="the pools need 41.5 CPU in all; the cluster has 8"):
        check_resources(cfg, fixed=True)
    colocated = validate_dict(
        quickstart_dict(
            cluster={
                "colocate": True,
                "learner": {"replicas": 2, "num_cpus": 6},
                "rollout": {"replicas": 2, "num_cpus": 3},
            }
        )
    )
    with pytest.raises(
        ConfigError,
        match=r"cluster.learner: each rank \(with its colocated rollout replica\) needs "
        r"CPU 9; no node has that",
    ):
        check_resources(colocated, fixed=True)


def test_a_cluster_that_may_grow_gets_a_warning(ray_cluster):
    cfg = validate_dict(quickstart_dict(cluster={"learner": {"replicas": 2, "num_gpus": 1}}))
    lines = []
    check_resources(cfg, fixed=False, log=lines.append)
    assert len(lines) == 1 and "warning" in lines[0] and "autoscaler" in lines[0]


def test_data_that_cannot_load_names_the_field(tmp_path):
    cfg = validate_dict(quickstart_dict(data={"train": str(tmp_path / "missing.jsonl"), "eval": None}))
    with pytest.raises(ConfigError, match=r"data.train: cannot load .*missing.jsonl.*does not exist"):
        load_data(cfg.data, cfg.kit)
