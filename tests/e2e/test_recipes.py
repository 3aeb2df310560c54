"""Every recipe in deploy/recipes validates as written and runs two optimizer steps end to end on the quickstart kit.

Recipes carry the paper's values (models, data and sizes included); here the model, data, reward and sizes are
overridden on the command line, the way a user tries a recipe on a laptop. The schedule keeps the recipe's shape: the
same number of optimizer steps per generation batch (K) and passes (mu), shrunk to tiny batches.
"""

import json
import math
from pathlib import Path

import pytest
import yaml

from relay_rl.cluster.config import load_config, resolve_schedule
from tests.conftest import RECIPES

PAPER_RECIPES = sorted(p for p in RECIPES.glob("*.yaml") if p.stem != "quickstart")
# recipes that a learning test runs on the kit already (longer than two steps, through the same overlays): not again.
# (ppo_reward_model stays: here its critic starts from the kit's reward model, which test_ppo.py's run does not do.)
LEARNING_TESTS = {
    "ppo": "test_ppo.py",
    "code_grpo": "test_code_learns.py",
    "sdpo": "test_self_distillation.py",
    "sdft": "test_self_distillation.py",
    "deepseek_r1_pipeline": "test_r1_pipeline.py",
    "tool_grpo": "test_agents.py",
}
KIT_CODE = RECIPES.parent / "overlays" / "kit_code.yaml"  # the kit's code task, for recipes that run code
KIT_RM = RECIPES.parent / "overlays" / "kit_reward_model.yaml"  # the kit's reward model, for recipes that use one

KIT = [
    "kit={}",
    "model.name_or_path=kit:warm_start",
    "model.dtype=float32",
    "data.train=kit:train",
    "data.eval=null",
    "data.prompt_column=prompt",
    "rollout.max_completion_length=5",
    "rollout.max_prompt_length=16",
    "train.max_steps=2",
    "train.eval_steps=null",
    "train.save_steps=null",
    "train.warmup_steps=0",
    "train.warmup_ratio=0.0",
    "cluster.address=null",
    "cluster.learner.replicas=1",
    "cluster.learner.num_cpus=1",
    "cluster.rollout.replicas=1",
    "cluster.rollout.num_cpus=0.5",
    "cluster.reward.replicas=1",
    "cluster.reward.num_cpus=0.5",
    "cluster.teacher.num_cpus=0.5",
    "cluster.rollout.num_gpus=0",
    "cluster.learner.num_gpus=0",
    "cluster.teacher.num_gpus=0",
    "cluster.reward.num_gpus=0",
    "cluster.critic.num_gpus=0",
    "cluster.critic.num_cpus=0",
    "cluster.frozen_rollout.num_gpus=0",
    "cluster.frozen_rollout.num_cpus=0.5",
    "rollout.engine=hf",
    "reward.reward_weights=null",
]


def kit_overrides(recipe: Path) -> list[str]:
    """The recipe's schedule shrunk: G <= 4, one group per micro-batch, S/GA reduced, mu kept."""
    cfg = load_config(recipe)
    s = resolve_schedule(cfg)
    G = min(s.G, 4)
    g = math.gcd(s.S, s.GA)
    S, GA = min(s.S // g, 16), min(s.GA // g, 4)
    # the kit's verifier: the recipes' math-verify `accuracy` reads only LaTeX answers (deploy/overlays/kit.yaml)
    rewards = (
        "[arithmetic_exact,think_format]"
        if getattr(cfg.algorithm, "multi_objective_aggregation", None) == "normalize_then_sum"
        else "[arithmetic_exact]"
    )
    # a code recipe: the kit's code task, its completions run against the rows' tests (code_tests, the sandbox)
    runs_code = cfg.reward is not None and any(getattr(f, "name", f) == "code_tests" for f in cfg.reward.reward_funcs)
    uses_rm = cfg.reward is not None and any(getattr(f, "name", f) == "reward_model" for f in cfg.reward.reward_funcs)
    task = (
        [str(KIT_CODE), "data.eval=null"]
        if runs_code
        else [str(KIT_RM)]
        if uses_rm
        else [f"reward.reward_funcs={rewards}"]
    )
    # distillation families: the kit's teacher, and its answers as the dataset completions (GKD, GOLD)
    teacher = (
        [
            "teacher.name_or_path=kit:teacher",
            "teacher.dtype=float32",
            "data.completion_column=answer",
            "cluster.teacher.replicas=1",
        ]
        if cfg.needs.teacher_model
        else []
    )
    # SSD: every kit answer is one line under 10 characters, which filter_empty would drop: keep them
    ssd = ["algorithm.filter_empty=false"] if cfg.algorithm.name == "ssd" else []
    return (
        KIT
        + teacher
        + task
        + ssd
        + [
            f"algorithm.num_generations={G}",
            f"algorithm.per_device_train_batch_size={G}",
            f"algorithm.gradient_accumulation_steps={GA}",
            "algorithm.generation_batch_size=null",
            f"algorithm.steps_per_generation={S}",
        ]
    )


def test_there_is_a_recipe_per_paper():
    names = {p.stem for p in PAPER_RECIPES}
    expected = {
        "deepseekmath",
        "deepseek_r1",
        "gspo",
        "gspo_token",
        "gmpo",
        "dapo",
        "long_cot",
        "intellect2",
        "skywork_or1",
        "rule_80_20",
        "dr_grpo",
        "lite_ppo",
        "tis",
        "mis",
        "scalerl",
        "grpo_2",
        "sapo",
        "deepseek_v32",
        "gdpo",
        "luspo",
        "vespo",
        "gkd",
        "on_policy_distillation",
        "gold",
        "minillm",
        "code_grpo",
        "ppo",
        "ppo_reward_model",
        "ssd",
        "sdpo",
        "sdft",
        "deepseek_r1_pipeline",
        "online_dpo",
        "xpo",
    }
    assert expected <= names, sorted(expected - names)


def test_recipes_left_out_here_run_in_their_learning_test():
    for name, test in LEARNING_TESTS.items():
        assert (RECIPES / f"{name}.yaml").is_file() and f'"{name}.yaml"' in (Path(__file__).parent / test).read_text()


@pytest.mark.parametrize("recipe", [p for p in PAPER_RECIPES if p.stem not in LEARNING_TESTS], ids=lambda p: p.stem)
def test_recipe_runs_two_steps_on_the_kit(recipe, ray_cluster, kit, tmp_path):
    from relay_rl.cluster.runner import train

    paper = yaml.safe_load(recipe.read_text())
    cfg = load_config(recipe, kit_overrides(recipe))
    shrunk = {
        "num_generations",
        "per_device_train_batch_size",
        "steps_per_generation",
        "gradient_accumulation_steps",
        "generation_batch_size",
        "filter_empty",
    }
    assert cfg.algorithm.model_dump(exclude=shrunk) == load_config(recipe).algorithm.model_dump(exclude=shrunk), (
        "overrides touched a paper knob"
    )
    assert paper.get("name"), "a recipe names itself"
    train(cfg, output_dir=str(tmp_path))
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2]
    assert all(r["loss"] is not None and math.isfinite(r["loss"]) for r in steps)
    if cfg.reward and "code_tests" in [getattr(f, "name", f) for f in cfg.reward.reward_funcs]:  # the code task ran
        assert cfg.data.train == "kit:code_train" and all("rewards/code_tests/mean" in r for r in steps)
    if cfg.reward and "reward_model" in [getattr(f, "name", f) for f in cfg.reward.reward_funcs]:  # the kit's model
        assert any("rewards/reward_model/mean" in r for r in steps)
    if cfg.algorithm.name in ("online_dpo", "xpo"):  # pairs judged by the kit's reward model
        assert all("rewards/margins" in r and "pairs/tied" in r for r in steps)
    assert (tmp_path / "final" / "model.safetensors").is_file()
    if cfg.algorithm.name == "ssd":  # no reward, no teacher: the model's own samples change it
        from safetensors.torch import load_file

        before, after = (load_file(str(p / "model.safetensors")) for p in (Path(kit["warm_start"]), tmp_path / "final"))
        assert any(not (before[k] == after[k]).all() for k in before)
