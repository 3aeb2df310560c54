"""Staged run files (cluster/stages.py): each stage merged over the top-level sections and validated as a run file,
the model set once, errors that name the stage, field and line, and how overlays and command-line overrides reach
the stages. No actor starts here (the R1 pipeline itself runs in tests/e2e/test_r1_pipeline.py)."""

from __future__ import annotations

import pytest
import yaml

from relay_rl.cluster.config import StagedConfig, load_config
from relay_rl.errors import ConfigError
from tests.conftest import RECIPES

OVERLAYS = RECIPES.parent / "overlays"
BASE = """\
name: two
kit: {}
model: {name_or_path: kit:warm_start}
data: {train: kit:train, eval: kit:test, completion_column: answer}
reward: {reward_funcs: [arithmetic_exact]}
rollout: {max_completion_length: 5, max_prompt_length: 16}
train: {max_steps: 7, learning_rate: 1.0e-4}
stages:
  - name: sft_first
    algorithm: {name: sft, per_device_train_batch_size: 8}
    train: {max_steps: 3}
  - name: then_grpo
    algorithm: {name: grpo, num_generations: 4, per_device_train_batch_size: 8}
"""


def write(tmp_path, text: str, name="run.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_stages_merge_over_the_top_level(tmp_path):
    cfg = load_config(write(tmp_path, BASE))
    assert isinstance(cfg, StagedConfig) and [s.name for s in cfg.stages] == ["sft_first", "then_grpo"]
    first, second = (s.cfg for s in cfg.stages)
    assert (first.algorithm.name, first.train.max_steps, first.train.learning_rate) == ("sft", 3, 1e-4)
    assert (second.algorithm.name, second.train.max_steps) == ("grpo", 7)
    assert first.name == "two-sft_first" and first.model.name_or_path == second.model.name_or_path


def test_command_line_overrides_reach_every_stage_or_one(tmp_path):
    cfg = load_config(write(tmp_path, BASE), ["train.max_steps=2", "stages.then_grpo.train.learning_rate=3e-5"])
    assert [s.cfg.train.max_steps for s in cfg.stages] == [2, 2]  # the command line's last word, in every stage
    assert [s.cfg.train.learning_rate for s in cfg.stages] == [1e-4, 3e-5]
    cfg = load_config(write(tmp_path, BASE), ["stages.0.train.max_steps=5"])  # by index too
    assert [s.cfg.train.max_steps for s in cfg.stages] == [5, 7]


def test_overlay_stages_merge_by_name(tmp_path):
    overlay = write(tmp_path, "stages:\n  - name: then_grpo\n    train: {max_steps: 11}\n", "overlay.yaml")
    cfg = load_config(write(tmp_path, BASE), [str(overlay)])
    assert [s.cfg.train.max_steps for s in cfg.stages] == [3, 11]
    assert cfg.stages[1].cfg.algorithm.num_generations == 4  # the rest of the stage stays


@pytest.mark.parametrize(
    "stage, message",
    [
        (
            "  - name: third\n    model: {name_or_path: kit:base}\n    algorithm: {name: sft}\n",
            r"run.yaml:\d+: stages.third.model.name_or_path: 'kit:base' differs from the run's model",
        ),
        ("  - name: third\n    kit: {}\n    algorithm: {name: sft}\n", r"stages.third.kit: set once, at the top"),
        ("  - name: sft_first\n    algorithm: {name: sft}\n", r"'sft_first' is used twice"),
        ("  - algorithm: {name: sft}\n", r"stages\[2\].name: each stage needs a name"),
        (
            "  - name: third\n    algorithm: {name: sft, loss_type: dapo}\n",
            r"run.yaml:\d+: stages.third.algorithm.loss_type: unknown field",
        ),
        (
            "  - name: third\n    algorithm: {name: grpo, num_generations: 3, per_device_train_batch_size: 8}\n",
            r"\(top level\) \(stage third\): the generation batch",
        ),
    ],
)
def test_stage_errors_name_the_stage_field_and_line(tmp_path, stage, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, BASE + stage))


def test_stages_must_be_a_list(tmp_path):
    with pytest.raises(ConfigError, match="stages: a list of stages"):
        load_config(write(tmp_path, BASE.split("stages:")[0] + "stages: {a: 1}\n"))


def test_the_same_model_in_a_stage_is_allowed(tmp_path):
    text = BASE.replace(
        "  - name: then_grpo\n", "  - name: then_grpo\n    model: {name_or_path: kit:warm_start, dtype: float32}\n"
    )
    assert load_config(write(tmp_path, text)).stages[1].cfg.model.dtype == "float32"


def test_the_r1_pipeline_recipe_and_its_kit_overlay():
    recipe = RECIPES / "deepseek_r1_pipeline.yaml"
    paper = load_config(recipe)
    assert [s.name for s in paper.stages] == ["cold_start", "reasoning_rl", "rejection_sampling", "all_scenarios"]
    assert [s.cfg.algorithm.name for s in paper.stages] == ["sft", "grpo", "rejection_sampling", "grpo"]
    rl = paper.stages[1].cfg.algorithm
    assert (rl.epsilon, rl.beta, rl.num_generations, rl.sync_ref_model) == (10.0, 0.001, 16, True)  # R1's settings
    assert paper.stages[2].cfg.train.num_train_epochs == 2
    assert [f if isinstance(f, str) else f.name for f in paper.stages[2].cfg.algorithm.filters] == [
        "language_mixing",
        "long_paragraphs",
        "code_blocks",
    ]
    kit = load_config(recipe, [str(OVERLAYS / "kit_r1_pipeline.yaml")])
    assert kit.kit.variant == "r1" and kit.stages[0].cfg.model.name_or_path == "kit:base"
    for paper_stage, kit_stage in zip(paper.stages, kit.stages):  # the kit keeps the paper's method knobs
        sized = {
            "num_generations",
            "per_device_train_batch_size",
            "generation_batch_size",
            "ref_model_sync_steps",
            "num_samples",
            "num_prompts",
        }
        assert kit_stage.cfg.algorithm.model_dump(exclude=sized) == paper_stage.cfg.algorithm.model_dump(exclude=sized)
    assert yaml.safe_load((OVERLAYS / "kit_r1_pipeline.yaml").read_text())["kit"] == {"variant": "r1"}
