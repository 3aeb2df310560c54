"""A reward model (an HF sequence-classification checkpoint with its own tokenizer) as a reward function: its scores
equal a direct transformers forward of the re-tokenised prompt + completion, batching changes nothing, and chat
prompts go through the reward model's chat template."""

import pytest
import torch

from relay_rl.reward_workers.registry import resolve


@pytest.fixture(scope="module")
def reward_model_dir(kit, tmp_path_factory):
    """A tiny Qwen3 sequence classifier on the kit's tokenizer (random head: the test is about plumbing)."""
    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForSequenceClassification

    tok = AutoTokenizer.from_pretrained(kit["warm_start"])
    torch.manual_seed(0)
    config = Qwen3Config(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        num_labels=1,
        max_position_embeddings=64,
        pad_token_id=tok.pad_token_id,
    )
    out = tmp_path_factory.mktemp("rm")
    Qwen3ForSequenceClassification(config).save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


def test_scores_equal_a_direct_forward(reward_model_dir):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    prompts = ["1+2=", "13+4=", "7+7=", "20+20="]
    completions = ["3", "17", "15", "40"]
    _, fn = resolve({"name": "reward_model", "kwargs": {"model": reward_model_dir, "batch_size": 3}}, None)
    got = fn(prompts=prompts, completions=completions)
    tok = AutoTokenizer.from_pretrained(reward_model_dir)
    rm = AutoModelForSequenceClassification.from_pretrained(reward_model_dir).eval()
    with torch.no_grad():
        want = [float(rm(**tok(p + c, return_tensors="pt")).logits[0, 0]) for p, c in zip(prompts, completions)]
    assert got == pytest.approx(want, abs=1e-5)  # padding in batches of 3 changes nothing
    assert len(set(round(x, 6) for x in got)) > 1


def test_chat_prompts_use_the_reward_models_template(reward_model_dir):
    from transformers import AutoTokenizer

    from relay_rl.reward_workers.reward_model import texts_for_reward_model

    tok = AutoTokenizer.from_pretrained(reward_model_dir)
    tok.chat_template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
    texts = texts_for_reward_model(tok, [[{"role": "user", "content": "1+2="}]], ["3"])
    assert texts == ["<user>1+2=<assistant>3"]


def test_a_folder_that_is_not_a_checkpoint_is_refused(tmp_path):
    with pytest.raises(ValueError, match="no config.json"):
        resolve({"name": "reward_model", "kwargs": {"model": str(tmp_path)}}, None)


def test_a_run_combines_a_reward_model_a_judge_and_a_rule_reward(ray_cluster, kit, reward_model_dir, tmp_path):
    """Through the reward actors of a real run, weighted by ``reward_weights``: the kit's verifier, the reward model
    (0.5) and an LLM judge served by the run's judge pool (weight 0: logged, not summed; tests/integration/
    test_judge.py checks its verdicts). Two reward replicas beside one rollout replica split its chunks (both call the
    one judge pool)."""
    import json

    from relay_rl.cluster.config import validate_dict
    from relay_rl.cluster.runner import train
    from tests.conftest import quickstart_dict
    from tests.integration.test_judge import judge_spec

    raw = quickstart_dict(
        train={"max_steps": 2, "eval_steps": None, "save_steps": None},
        reward={
            "reward_funcs": [
                "arithmetic_exact",
                {"name": "reward_model", "kwargs": {"model": reward_model_dir}},
                judge_spec("kit:warm_start", score_range=[0, 300]),
            ],
            "reward_weights": [1.0, 0.5, 0.0],
        },
        cluster={
            "learner": {"replicas": 1, "num_cpus": 1},
            "judge": {"num_cpus": 0.25},
            "rollout": {"replicas": 1},
            "reward": {"replicas": 2, "num_cpus": 0.25},
        },
    )
    train(validate_dict(raw), output_dir=str(tmp_path))
    steps = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    assert [r["step"] for r in steps] == [1, 2]
    for r in steps:
        rm, rule = r["rewards/reward_model/mean"], r["rewards/arithmetic_exact/mean"]
        assert rm != 0.0 and r["reward"] == pytest.approx(rule + 0.5 * rm, abs=1e-5)
        assert "rewards/llm_judge/mean" in r and 0 <= r["rewards/llm_judge/unparseable"] <= 1, r
        assert r["replicas/judge"] == 1
    # the reward pool scales apart from the rollout pool: two reward replicas split the one rollout chunk
    work = json.loads((tmp_path / "pipeline.json").read_text())["work_per_replica"]
    assert work["reward/0"] > 0 and work["reward/1"] > 0 and work["reward/0"] + work["reward/1"] == work["rollout/0"]


def test_a_causal_lm_is_refused_before_any_actor_starts(kit):
    """The kit's warm start is a Qwen3ForCausalLM: AutoModelForSequenceClassification would give it an untrained
    score head. Refused from config.json alone, naming the path, the architecture and what to give instead."""
    with pytest.raises(ValueError) as e:
        resolve({"name": "reward_model", "kwargs": {"model": kit["warm_start"]}}, None)
    msg = str(e.value)
    assert kit["warm_start"] in msg and "Qwen3ForCausalLM" in msg and "ForSequenceClassification" in msg
    assert "RewardTrainer" in msg


def test_a_model_type_without_a_classification_class_is_refused(tmp_path):
    import json

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "no_such_family"}))
    with pytest.raises(ValueError, match="no sequence-classification class"):
        resolve({"name": "reward_model", "kwargs": {"model": str(tmp_path)}}, None)


def test_the_pre_flight_names_a_causal_lm_reward_model(kit):
    from relay_rl.cluster.config import validate_dict
    from relay_rl.cluster.preflight import preflight
    from relay_rl.errors import ConfigError
    from tests.conftest import quickstart_dict

    raw = quickstart_dict(reward={"reward_funcs": [{"name": "reward_model", "kwargs": {"model": kit["warm_start"]}}]})
    with pytest.raises(ConfigError, match=r"reward_funcs\[0\].*Qwen3ForCausalLM, not a sequence classifier"):
        preflight(validate_dict(raw), kit_built=True)
