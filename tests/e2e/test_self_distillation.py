"""SDPO and SDFT end to end on the kit's r1 variant (its warm start also learned to read a hint, "46|12+34=" -> 46,
so the model re-prompted with a sibling's answer or with the row's hint is a strong teacher of itself). Real pools:
the self-teacher actor re-prompts every row and scores the student's own tokens, the rollout and reward actors,
DeepSpeed ZeRO-3 learner ranks over gloo."""

import json

import pytest
from safetensors.torch import load_file

from relay_rl.cluster.config import load_config
from relay_rl.cluster.runner import train
from tests.conftest import RECIPES

OVERLAYS = RECIPES.parent / "overlays"
ONE_RANK = ["cluster.learner.replicas=1", "cluster.learner.num_cpus=1", "train.save_steps=null"]


def _run(recipe: str, tmp_path, *overrides):
    """The recipe with the kit overlays (kit.yaml, then kit_<family>.yaml), on one learner rank."""
    family = recipe.removesuffix(".yaml")
    cfg = load_config(
        RECIPES / recipe, [str(OVERLAYS / "kit.yaml"), str(OVERLAYS / f"kit_{family}.yaml"), *ONE_RANK, *overrides]
    )
    train(cfg, output_dir=str(tmp_path))
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "loss" in r], {r["step"]: r["eval/accuracy"] for r in rows if "eval/accuracy" in r}


@pytest.mark.slow
def test_sdpo_raises_held_out_accuracy(ray_cluster, kit_r1, tmp_path):
    """The recipe's knobs (top-k 100 on the kit's 17 tokens, alpha 0.5, EMA teacher, pure self-distillation)."""
    steps = 60
    rows, evals = _run(
        "sdpo.yaml",
        tmp_path,
        f"train.max_steps={steps}",
        f"train.eval_steps={steps}",
        "algorithm.generation_batch_size=64",
    )
    assert evals[steps] >= evals[0] + 0.08, evals  # measured: 0.670 -> 0.785 / 0.830 (two seeds)
    assert all(0 < r["self_distillation/reprompt_sample_fraction"] <= 1 for r in rows)
    assert rows[0]["teacher/bytes/self_teacher"] > 0


@pytest.mark.slow
def test_sdft_with_the_hint_lowers_its_divergence_and_raises_accuracy_without_it(ray_cluster, kit_r1, tmp_path):
    """The student samples from "12+34="; the frozen initial model shown "46|12+34=" scores those tokens. Held-out
    accuracy is measured without the hint."""
    steps = 60
    rows, evals = _run(
        "sdft.yaml",
        tmp_path,
        f"train.max_steps={steps}",
        f"train.eval_steps={steps}",
        "algorithm.generation_batch_size=64",
        "algorithm.num_generations=1",
    )
    assert evals[steps] >= evals[0] + 0.10, evals  # measured: 0.670 -> 0.890
    first = sum(r["self_distillation/distillation_loss"] for r in rows[:10]) / 10
    last = sum(r["self_distillation/distillation_loss"] for r in rows[-10:]) / 10
    assert last < 0.8 * first, (first, last)  # measured: 0.065 -> 0.038


def test_live_teacher_follows_the_policy_and_samples_from_its_prompt(ray_cluster, kit_r1, tmp_path):
    """teacher_model_kind live: after every step the self-teacher holds the policy's weights (the checkpoint saves
    both: they are equal); generate_from_teacher samples from the hinted prompt, so almost every sample is right."""
    rows, _ = _run(
        "sdft.yaml",
        tmp_path,
        "train.max_steps=2",
        "train.eval_steps=null",
        "train.save_steps=2",
        "algorithm.teacher_model_kind=live",
        "algorithm.generate_from_teacher=true",
        "algorithm.distillation_mode=sampled_token",
        "algorithm.distillation_alpha=1.0",
        "algorithm.num_generations=1",
        "algorithm.generation_batch_size=64",
    )
    assert [r["step"] for r in rows] == [1, 2]
    assert rows[0]["reward"] > 0.9  # sampled behind the hint (the warm start reads it: 1.0 held-out)
    ckpt = tmp_path / "checkpoint-2"
    policy, teacher = (load_file(str(p / "model.safetensors")) for p in (ckpt, ckpt / "relay" / "self_teacher"))
    assert policy.keys() == teacher.keys() and all((policy[k] == teacher[k]).all() for k in policy)
    start = load_file(str(kit_r1["warm_start"] + "/model.safetensors"))
    assert any(not (start[k] == policy[k]).all() for k in start)  # it moved, and the teacher with it
