"""DAPO's dynamic sampling on a real local cluster (the quickstart's GRPO run on the kit, G = 8): no admitted group
without reward variance, the ledger balances with the dropped groups in it, the learner's batch shape unchanged,
max_num_gen_batches honoured (fill or error), k = 0 reproducible, and with max_staleness, several rollout replicas
and the drop / use staleness policies."""

import pytest

from relay_rl.cluster.config import resolve_schedule
from relay_rl.errors import RunError
from tests.e2e.test_staleness import SLOW_ROLLOUT, assert_ledger_balances, run

ON = {"filter_groups": {"enable": True}}
CONSTANT = {"reward_funcs": ["tests.integration.reward_fns:constant_one"]}  # every group ties


def _check(cfg, steps, ledger):
    sched = resolve_schedule(cfg)
    assert_ledger_balances(ledger, sched)
    filtered = {int(g): n for g, n in ledger["filtered_by_dynamic_sampling"].items()}
    assert ledger["pipeline/filtered_samples"] == sum(filtered.values())
    # a step reports what dynamic sampling left out of the batches it admitted (a batch dropped as too stale counts
    # whole in the ledger)
    assert sum(filtered.get(g, 0) for g in ledger["admitted"]) == sum(
        r.get("dynamic_sampling/dropped_samples", 0) for r in steps
    )
    for r in steps:  # the learner sees the shape it sees without dynamic sampling
        assert r["samples"] == sched.B * sched.P * sched.GA == sum(r["staleness/hist"].values())
    return sched


def test_admitted_groups_all_carry_a_gradient_and_the_ledger_balances(ray_cluster, kit, tmp_path):
    cfg, steps, ledger = run(tmp_path, steps=4, algorithm=ON)
    _check(cfg, steps, ledger)
    assert all(r["frac_reward_zero_std"] == 0.0 and r["dynamic_sampling/filled_groups"] == 0 for r in steps)
    # the kit's warm start (about 0.5 held-out) ties on some groups of 8 (all right or all wrong) every batch
    assert sum(r["dynamic_sampling/dropped_groups"] for r in steps) > 0
    assert all(r["dynamic_sampling/rounds"] >= 1 and 0 < r["dynamic_sampling/kept_group_ratio"] <= 1 for r in steps)
    assert ledger["pipeline/dropped_samples"] == ledger["pipeline/filtered_samples"] > 0


def test_max_num_gen_batches_fills_with_tied_groups_or_stops(ray_cluster, kit, tmp_path):
    cfg, steps, ledger = run(
        tmp_path / "fill",
        steps=2,
        reward=CONSTANT,
        algorithm={"filter_groups": {"enable": True, "max_num_gen_batches": 2}},
    )
    sched = _check(cfg, steps, ledger)
    groups = sched.prompts_per_generation
    for r in steps:
        assert r["dynamic_sampling/rounds"] == 2 and r["dynamic_sampling/filled_groups"] == groups
        assert r["dynamic_sampling/dropped_groups"] == groups and r["frac_reward_zero_std"] == 1.0
    with pytest.raises(RunError, match="0 of the .* groups .* after 2 rounds"):
        run(
            tmp_path / "error",
            steps=2,
            reward=CONSTANT,
            algorithm={"filter_groups": {"enable": True, "max_num_gen_batches": 2, "when_exhausted": "error"}},
        )


def test_k0_runs_with_dynamic_sampling_are_reproducible(ray_cluster, kit, tmp_path):
    def metrics(sub):
        _, steps, _ = run(tmp_path / sub, steps=3, algorithm=ON)
        return [{k: v for k, v in r.items() if not k.startswith(("timing/", "tokens_per_s", "sync/"))} for r in steps]

    assert metrics("a") == metrics("b")


@pytest.mark.parametrize("policy", ["wait", "drop", "use"])
def test_with_stale_batches_and_two_rollout_replicas(ray_cluster, kit, tmp_path, policy):
    """Rounds spread over both rollout replicas; every sample keeps the version that sampled it, so the staleness
    bound holds (wait) and what is dropped or used stale is counted."""
    algorithm = {**ON, "max_staleness": 1, "staleness_policy": policy, "vllm_importance_sampling_correction": True}
    if policy != "wait":
        algorithm.update(max_staleness=0, max_inflight_generations=3)
    cfg, steps, ledger = run(
        tmp_path,
        steps=6,
        reward=SLOW_ROLLOUT,
        algorithm=algorithm,
        cluster={"learner": {"replicas": 1, "num_cpus": 1}, "rollout": {"replicas": 2}},
    )
    _check(cfg, steps, ledger)
    if policy == "wait":
        assert all(r["staleness/max"] <= 1 for r in steps)
    elif policy == "drop":
        assert all(r["staleness/max"] == 0 for r in steps)
    assert ledger["work_per_replica"]["rollout/0"] > 0 and ledger["work_per_replica"]["rollout/1"] > 0
    assert sum(r["dynamic_sampling/dropped_groups"] for r in steps) > 0
