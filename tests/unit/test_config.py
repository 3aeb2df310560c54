"""Run-file validation: good files load; bad ones fail before anything starts, naming file, field, line, options."""

import textwrap

import pytest

from relay_rl.cluster.config import load_config, resolve_schedule
from relay_rl.errors import ConfigError
from tests.conftest import RECIPES


def write(tmp_path, text: str):
    p = tmp_path / "run.yaml"
    p.write_text(textwrap.dedent(text))
    return p


GOOD = """\
name: t
kit: {}
model: {name_or_path: "kit:warm_start"}
data: {train: "kit:train", eval: "kit:test"}
reward: {reward_funcs: [arithmetic_exact]}
algorithm:
  num_generations: 8
  per_device_train_batch_size: 8
cluster:
  learner: {replicas: 2}
"""


@pytest.mark.parametrize("recipe", sorted(RECIPES.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_recipe_validates(recipe):
    from relay_rl.cluster.config import StagedConfig

    cfg = load_config(recipe)
    for run in [s.cfg for s in cfg.stages] if isinstance(cfg, StagedConfig) else [cfg]:  # a staged file: each stage
        resolve_schedule(run)


def test_good_file_and_defaults(tmp_path):
    cfg = load_config(write(tmp_path, GOOD))
    assert cfg.algorithm.loss_type == "dapo"  # TRL 1.16 default
    assert cfg.algorithm.epsilon_low == 0.2 and cfg.algorithm.epsilon_up == 0.2
    assert cfg.train.zero_stage == 3
    s = resolve_schedule(cfg)
    assert (s.S, s.generation_batch_size, s.prompts_per_generation, s.K) == (1, 16, 2, 1)


def test_unknown_key_names_file_field_line_and_allowed(tmp_path):
    p = write(tmp_path, GOOD.replace("  num_generations: 8\n", "  num_generations: 8\n  num_generatons: 4\n"))
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert f"{p}:8" in msg and "algorithm.num_generatons" in msg and "unknown field" in msg
    assert "num_generations" in msg.split("allowed here:")[1]


def test_wrong_value_shows_allowed_values(tmp_path):
    p = write(tmp_path, GOOD.replace("  num_generations: 8\n", "  num_generations: 8\n  loss_type: ppo\n"))
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert "algorithm.loss_type" in msg and "'dapo'" in msg and "'ppo'" in msg and f"{p}:8" in msg


def test_attn_implementation_is_checked_where_it_is_written(tmp_path):
    p = write(
        tmp_path,
        GOOD.replace(
            'model: {name_or_path: "kit:warm_start"}',
            'model: {name_or_path: "kit:warm_start", attn_implementation: fast}',
        ),
    )
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert "model.attn_implementation" in msg and "'fast'" in msg and "eager" in msg and f"{p}:3" in msg
    cfg = load_config(
        write(tmp_path, GOOD),
        [
            "model.attn_implementation=eager",
            "teacher.name_or_path=kit:teacher",
            "teacher.attn_implementation=kernels-community/flash-attn",
        ],
    )
    assert (cfg.model.attn_implementation, cfg.teacher.attn_implementation) == ("eager", "kernels-community/flash-attn")
    assert load_config(write(tmp_path, GOOD)).model.attn_implementation is None  # transformers' default


def test_cpu_fast_overlay(tmp_path):
    """The 2-core fast settings (README, Performance): one ZeRO-0 rank in bfloat16 (eager attention: the learner's
    default in bf16 on CPU, tests/e2e/test_learns.py), 64 completions per step, 2 steps per generation batch,
    generation one version ahead of the learner."""
    cfg = load_config(RECIPES / "quickstart.yaml", [str(RECIPES.parent / "overlays" / "cpu_fast.yaml")])
    s = resolve_schedule(cfg)
    assert (s.P, s.B * s.P * s.GA, s.K, s.k) == (1, 64, 2, 1)
    assert (cfg.train.zero_stage, cfg.model.dtype, cfg.model.attn_implementation) == (0, "bfloat16", None)
    assert cfg.algorithm.old_logprob_source == "behaviour"


@pytest.mark.parametrize("recipe", sorted(RECIPES.glob("*.yaml")), ids=lambda p: p.stem)
def test_gpu_colocated_overlay_fits_every_recipe(recipe):
    """deploy/overlays/gpu_colocated.yaml: vLLM on the learner ranks' GPUs, weights by ipc, on any recipe (a staged
    pipeline takes it in every stage)."""
    cfg = load_config(recipe, [str(RECIPES.parent / "overlays" / "gpu_colocated.yaml")])
    for c in [s.cfg for s in cfg.stages] if hasattr(cfg, "stages") else [cfg]:
        assert (c.cluster.colocate, c.rollout.engine, c.rollout.weight_transport) == (True, "vllm", "ipc")
        assert c.cluster.learner.num_gpus + c.cluster.rollout.num_gpus == 1.0
        assert c.cluster.rollout.replicas <= c.cluster.learner.replicas


def test_bounds_and_missing(tmp_path):
    with pytest.raises(ConfigError, match=r"algorithm.num_generations: Input should be greater than or equal to 2"):
        load_config(write(tmp_path, GOOD.replace("num_generations: 8", "num_generations: 1")))
    with pytest.raises(ConfigError, match=r"reward: required field is missing"):
        load_config(write(tmp_path, GOOD.replace("reward: {reward_funcs: [arithmetic_exact]}\n", "")))


def test_batch_rules(tmp_path):
    # 8 * 2 ranks * S=1 = 16 completions; G=5 does not divide it
    with pytest.raises(ConfigError, match="whole groups"):
        load_config(write(tmp_path, GOOD.replace("num_generations: 8", "num_generations: 5")))
    with pytest.raises(ConfigError, match="not both"):
        load_config(
            write(
                tmp_path,
                GOOD + "  steps_per_generation: 2\n  generation_batch_size: 32\n".replace("  steps", "  steps"),
            ),
            ["algorithm.steps_per_generation=2", "algorithm.generation_batch_size=32"],
        )
    with pytest.raises(ConfigError, match="divisible by per_device_train_batch_size"):
        load_config(write(tmp_path, GOOD), ["algorithm.generation_batch_size=24"])
    with pytest.raises(ConfigError, match="gradient_accumulation_steps"):
        load_config(
            write(tmp_path, GOOD), ["algorithm.gradient_accumulation_steps=2", "algorithm.steps_per_generation=3"]
        )
    cfg = load_config(write(tmp_path, GOOD), ["algorithm.generation_batch_size=64"])
    s = resolve_schedule(cfg)
    assert (s.S, s.K, s.admission_version(1), s.admission_version(2)) == (4, 4, 4, 8)
    cfg = load_config(write(tmp_path, GOOD), ["algorithm.gradient_accumulation_steps=4"])
    s = resolve_schedule(cfg)  # S = GA = 4: one generation per step
    assert (s.S, s.K, s.admission_version(3)) == (4, 1, 3)
    cfg = load_config(
        write(tmp_path, GOOD), ["algorithm.gradient_accumulation_steps=4", "algorithm.steps_per_generation=2"]
    )
    s = resolve_schedule(cfg)  # two generation batches per optimizer step
    assert (s.K, s.admission_version(1), s.admission_version(2), s.batches_needed(3)) == (0.5, 0, 1, 6)


def test_overrides_parse_yaml_and_are_validated(tmp_path):
    p = write(tmp_path, GOOD)
    cfg = load_config(p, ["train.max_steps=7", "rollout.top_k=20", "reward.reward_weights=[2.0]"])
    assert (cfg.train.max_steps, cfg.rollout.top_k, cfg.reward.reward_weights) == (7, 20, [2.0])
    with pytest.raises(
        ConfigError,
        match=r"train.max_stepz: unknown field.*command-line override|command-line override.*train.max_stepz",
    ):
        load_config(p, ["train.max_stepz=3"])
    with pytest.raises(ConfigError, match="expected key.path=value"):
        load_config(p, ["train.max_steps"])


def test_cross_field_rules_say_what_to_do(tmp_path):
    with pytest.raises(ConfigError, match="vllm_importance_sampling_clip_max"):
        load_config(write(tmp_path, GOOD), ["algorithm.vllm_importance_sampling_cap=3.0"])
    with pytest.raises(ConfigError, match="reward_weights has 2 values but there are 1"):
        load_config(write(tmp_path, GOOD), ["reward.reward_weights=[1.0,2.0]"])
    with pytest.raises(ConfigError, match="no kit section"):
        load_config(write(tmp_path, GOOD.replace("kit: {}\n", "")))
    with pytest.raises(ConfigError, match="teacher.replicas"):
        load_config(write(tmp_path, GOOD), ["algorithm.beta=0.1", "cluster.teacher.replicas=0"])
    with pytest.raises(ConfigError, match="token_truncate or token_mask"):
        load_config(write(tmp_path, GOOD), ["algorithm.loss_type=vespo"])
    with pytest.raises(ConfigError, match=r"weight_transport: ipc .* set cluster.colocate: true"):
        load_config(write(tmp_path, GOOD), ["rollout.weight_transport=ipc"])
    with pytest.raises(ConfigError, match="partial_rollouts needs weight_transport: object_store"):
        load_config(
            write(tmp_path, GOOD),
            ["rollout.weight_transport=ipc", "cluster.colocate=true", "rollout.partial_rollouts=true"],
        )
    colocated = load_config(write(tmp_path, GOOD), ["rollout.weight_transport=ipc", "cluster.colocate=true"])
    assert colocated.rollout.weight_transport == "ipc"
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "name: [unclosed\n"))
    with pytest.raises(ConfigError, match="no such run file"):
        load_config(tmp_path / "missing.yaml")


def test_cli_validate_exit_codes(tmp_path, capsys):
    from relay_rl.cluster.cli import main

    lengths = ["rollout.max_prompt_length=16", "rollout.max_completion_length=5"]  # the kit model has 64 positions
    assert main(["validate", str(write(tmp_path, GOOD)), *lengths]) == 0
    assert "# valid." in capsys.readouterr().out
    assert main(["validate", str(write(tmp_path, GOOD)), "algorithm.epsilon=-1"]) == 2
    err = capsys.readouterr().err
    assert "algorithm.epsilon" in err and "greater than 0" in err


OVERLAY = RECIPES.parent / "overlays" / "kit.yaml"


@pytest.mark.parametrize(
    "recipe", sorted(p for p in RECIPES.glob("*.yaml") if "\nstages:" not in p.read_text()), ids=lambda p: p.stem
)  # the staged R1 pipeline has its own overlay (tests/unit/test_stages.py)
def test_kit_overlay_keeps_the_papers_method_knobs(recipe):
    paper = load_config(recipe)
    two_rewards = ["reward.reward_funcs=[arithmetic_exact,think_format]"] if recipe.stem == "gdpo" else []
    pairs = paper.algorithm.name in ("online_dpo", "xpo")  # their own overlay after kit.yaml: G = 2, 64 per batch
    cfg = load_config(
        recipe, [str(OVERLAY), *([str(OVERLAY.parent / "kit_preference.yaml")] if pairs else []), *two_rewards]
    )
    assert cfg.model.name_or_path == "kit:warm_start" and cfg.data.train == "kit:train"
    assert cfg.reward.reward_funcs[0] == "arithmetic_exact"
    sizes = {
        "num_generations",
        "per_device_train_batch_size",
        "gradient_accumulation_steps",
        "generation_batch_size",
        "steps_per_generation",
        *(["drop_ties"] if pairs else []),
    }
    assert cfg.algorithm.model_dump(exclude=sizes) == paper.algorithm.model_dump(exclude=sizes)
    s = resolve_schedule(cfg)
    assert (s.P, s.generation_batch_size, s.K) == (
        (2, 64, 1) if pairs else (2, 256, 4 * paper.algorithm.num_iterations)
    )


def test_overlay_then_overrides_in_order_and_errors_name_the_overlay(tmp_path):
    p = write(tmp_path, GOOD)
    layer = tmp_path / "layer.yaml"
    layer.write_text("train:\n  max_steps: 9\nalgorithm:\n  num_generations: 4\n  loss_type: ppo\n")
    with pytest.raises(ConfigError) as e:
        load_config(p, [str(layer)])
    assert f"{layer}:5: algorithm.loss_type" in str(e.value)
    cfg = load_config(p, [str(layer), "algorithm.loss_type=grpo", "train.max_steps=3"])
    assert (
        cfg.train.max_steps,
        cfg.algorithm.num_generations,
        cfg.algorithm.per_device_train_batch_size,
        cfg.algorithm.loss_type,
    ) == (3, 4, 8, "grpo")  # sections merge key by key; later layers win
    with pytest.raises(ConfigError, match="no such overlay file"):
        load_config(p, [str(tmp_path / "missing.yaml")])


def test_cli_train_reports_a_model_that_cannot_load_before_any_pool(tmp_path, capsys):
    from relay_rl.cluster.cli import main

    run = write(
        tmp_path,
        GOOD.replace("kit: {}\n", "")
        .replace('"kit:warm_start"', f'"{tmp_path}/model"')
        .replace('data: {train: "kit:train", eval: "kit:test"}', f'data: {{train: "{tmp_path}/nope.jsonl"}}'),
    )
    assert main(["train", str(run), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "relay-rl: model.name_or_path: no such folder" in err and f"{tmp_path}/model" in err
    assert "pools up" not in err and not (tmp_path / "out" / "metrics.jsonl").exists()  # failed before any pool


def test_the_r1_kit_stops_its_warm_start_later_and_a_set_field_wins():
    from relay_rl.cluster.config import KitConfig

    assert (KitConfig().warm_start.target_dev_accuracy, KitConfig().warm_start.eval_every) == (0.45, 25)
    r1 = KitConfig(variant="r1").warm_start
    assert (r1.target_dev_accuracy, r1.eval_every) == (0.65, 10)
    mine = KitConfig(variant="r1", warm_start={"eval_every": 5}).warm_start
    assert (mine.target_dev_accuracy, mine.eval_every) == (0.65, 5)
