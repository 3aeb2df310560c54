"""PPO end to end on the kit (deploy/recipes/ppo.yaml through deploy/overlays/kit.yaml): 2 policy ranks and 2 critic
ranks (two DeepSpeed ZeRO-3 groups over gloo), the reference pool for the KL penalty, the reward pool. It must raise
held-out accuracy with the verifier reward, and a run resumed from a checkpoint taken in the middle of a generation
batch (num_ppo_epochs passes) must repeat the uninterrupted run's policy and critic numbers exactly. With the kit's
trained reward model in place of the verifier (deploy/recipes/ppo_reward_model.yaml + deploy/overlays/
kit_reward_model.yaml) it runs end to end and keeps the reward model's held-out reward."""

from __future__ import annotations

import json

import pytest

from relay_rl.cluster.config import load_config
from relay_rl.cluster.runner import train
from tests.conftest import RECIPES, ROOT

KIT = [
    str(ROOT / "deploy" / "overlays" / "kit.yaml"),
    "algorithm.generation_batch_size=null",
    "algorithm.missing_eos_penalty=null",
    "rollout.temperature=1.0",
    "train.learning_rate=5e-5",
    "algorithm.num_generations=1",
]


def ppo_config(*overrides: str, recipe: str = "ppo.yaml", overlays: tuple = ()):
    return load_config(RECIPES / recipe, [*KIT[:1], *overlays, *KIT[1:], *overrides])


def _rows(out) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_ppo_learns_the_kit_task(ray_cluster, kit, tmp_path):
    steps = 32
    cfg = ppo_config(
        "reward.reward_funcs=[arithmetic_exact]",
        "algorithm.per_device_train_batch_size=32",
        f"train.max_steps={steps}",
        f"train.eval_steps={steps}",
    )
    assert cfg.algorithm.num_ppo_epochs == 4 and cfg.cluster.learner.replicas == 2
    train(cfg, output_dir=str(tmp_path))
    rows = _rows(tmp_path)
    evals = {r["step"]: r["eval/accuracy"] for r in rows if "eval/accuracy" in r}
    records = [r for r in rows if "loss" in r]
    assert [r["step"] for r in records] == list(range(1, steps + 1))
    # a generation batch serves num_ppo_epochs = 4 optimizer steps: staleness 0..3 (docs/methods/ppo.md,
    # docs/staleness.md)
    assert max(r["staleness/max"] for r in records) == 3 and all(r["staleness/max"] <= 3 for r in records)
    admitted = [r for r in records if "objective/kl" in r]
    assert len(admitted) == steps // 4  # PPO's rollout metrics, once per generation batch
    for key in (
        "objective/kl",
        "objective/entropy",
        "objective/non_score_reward",
        "objective/rlhf_reward",
        "val/num_eos_tokens",
    ):
        assert all(key in r for r in admitted), key
    for key in (
        "policy/approxkl_avg",
        "policy/clipfrac_avg",
        "val/clipfrac_avg",
        "loss/policy_avg",
        "loss/value_avg",
        "critic/grad_norm",
        "replicas/critic",
    ):
        assert all(key in r for r in records), key
    assert records[-1]["replicas/critic"] == 2
    # the critic learns the returns: its loss falls from the first generation batch to the last
    first, last = (sum(r["loss/value_avg"] for r in part) / 4 for part in (records[:4], records[-4:]))
    assert last < first, (first, last)
    assert evals[steps] >= evals[0] + 0.07, evals


def test_ppo_raises_the_kit_reward_models_reward(ray_cluster, kit, tmp_path):
    steps = 32
    cfg = ppo_config(
        "algorithm.per_device_train_batch_size=32",
        f"train.max_steps={steps}",
        f"train.eval_steps={steps}",
        "algorithm.value_model=kit:warm_start",
        recipe="ppo_reward_model.yaml",
        overlays=(str(ROOT / "deploy" / "overlays" / "kit_reward_model.yaml"),),
    )
    rm = cfg.reward.reward_funcs[0]
    assert rm.name == "reward_model" and rm.kwargs["model"] == "kit:reward_model"
    train(cfg, output_dir=str(tmp_path))
    rows = _rows(tmp_path)
    evals = {r["step"]: r for r in rows if "eval/reward" in r}
    records = [r for r in rows if "loss" in r]
    assert [r["step"] for r in records] == list(range(1, steps + 1))
    assert all("rewards/reward_model/mean" in r for r in records if "objective/kl" in r)
    # held-out: the reward model's mean score of greedy answers holds (measured with the kit's current reward model,
    # held-out pairwise 0.93: 7.23 -> 7.31 in reward-model units, 0.723 -> 0.731 at weight 0.1; over six variants of
    # seed, steps, lr, KL and whitening the change stayed within -0.012..+0.021). An earlier reward model (0.96, on
    # an earlier warm start's mistakes) rose by 0.046: PPO on this reward model does not reliably raise its score in
    # 32 steps (README, Limitations). The verifier (weight 0) is logged beside it.
    first, last = evals[0], evals[steps]
    assert last["eval/reward"] >= first["eval/reward"] - 0.02, (first, last)
    assert "eval/rewards/arithmetic_exact/mean" in last


@pytest.fixture(scope="module")
def uninterrupted(ray_cluster, kit, tmp_path_factory):
    out = tmp_path_factory.mktemp("ppo_resume") / "a"
    cfg = ppo_config(
        "reward.reward_funcs=[arithmetic_exact]",
        "algorithm.per_device_train_batch_size=8",
        "train.max_steps=4",
        "train.save_steps=2",
        "train.eval_steps=null",
        "cluster.learner.replicas=1",
        "cluster.learner.num_cpus=1",
    )  # 1 + 1 ranks: what resume needs
    train(cfg, output_dir=str(out))
    return cfg, out


COMPARED = (
    "loss",
    "loss/policy_avg",
    "grad_norm",
    "policy/clipfrac_avg",
    "policy/approxkl_avg",
    "loss/value_avg",
    "val/vpred",
    "critic/grad_norm",
    "critic/learning_rate",
    "staleness/max",
)


def test_a_resumed_ppo_run_restores_the_critic_exactly(uninterrupted, tmp_path):
    """Checkpoint 2 falls in the middle of the first generation batch (4 passes): both groups' queued rows (V_old,
    returns, advantages) and the critic's optimizer state must come back."""
    cfg, a = uninterrupted
    assert (a / "checkpoint-2" / "relay" / "critic" / "deepspeed").is_dir()
    train(cfg, output_dir=str(tmp_path), resume=str(a / "checkpoint-2"))
    steps_a = {r["step"]: r for r in _rows(a) if "loss" in r}
    steps_b = {r["step"]: r for r in _rows(tmp_path) if "loss" in r}
    for step in (3, 4):
        for key in COMPARED:
            assert steps_a[step].get(key) is not None, key
            assert steps_b[step][key] == steps_a[step][key], (step, key)


def test_a_ppo_checkpoint_of_one_rank_resumes_on_two(uninterrupted, tmp_path):
    """The same mid-batch checkpoint (1 policy + 1 critic rank, 8 rows per micro-step) continued on 2 + 2 ranks of
    4 rows: both DeepSpeed groups through the universal checkpoint, both groups' queued rows cut in two. The numbers
    equal the uninterrupted run's up to float rounding."""
    cfg, a = uninterrupted
    wider = cfg.model_copy(deep=True)
    wider.cluster.learner.replicas = 2
    wider.cluster.learner.num_cpus = 0.5
    wider.algorithm.per_device_train_batch_size = 4
    train(wider, output_dir=str(tmp_path), resume=str(a / "checkpoint-2"))
    for group in ("", "critic/"):
        assert (a / "checkpoint-2" / "relay" / group / "deepspeed" / "state_universal" / "relay-converted").is_file()
    steps_a = {r["step"]: r for r in _rows(a) if "loss" in r}
    steps_b = {r["step"]: r for r in _rows(tmp_path) if "loss" in r}
    for step in (3, 4):
        for key in COMPARED:
            assert steps_b[step][key] == pytest.approx(steps_a[step][key], rel=1e-4, abs=1e-6), (step, key)
