"""PPO as a family of the run file (TRL's PPOConfig names, their aliases and the errors when two spellings disagree),
the critic's value forward against a transformers sequence classifier's own pooled score, and whitening over two
real gloo ranks against the float64 whitening of the whole batch."""

import os
import socket

import pytest
import torch

from relay_rl.cluster.config import validate_dict
from relay_rl.errors import ConfigError
from tests.conftest import quickstart_dict


def ppo(algorithm: dict, **sections) -> dict:
    return quickstart_dict(algorithm=None, **sections) | {"algorithm": {"name": "ppo", **algorithm}}


def test_trl_defaults_and_aliases():
    cfg = validate_dict(ppo({}))
    a = cfg.algorithm
    assert (a.cliprange, a.cliprange_value, a.vf_coef, a.kl_coef, a.kl_estimator, a.gamma, a.lam) == (
        0.2,
        0.2,
        0.1,
        0.05,
        "k1",
        1.0,
        0.95,
    )
    assert a.num_iterations == a.num_ppo_epochs == 4 and a.num_generations == 1 and not a.whiten_rewards
    assert cfg.needs.critic and [t.pool for t in cfg.needs.teachers] == ["reference"]
    cfg = validate_dict(
        ppo(
            {
                "num_mini_batches": 2,
                "gradient_accumulation_steps": 3,
                "response_length": 7,
                "per_device_train_batch_size": 4,
            },
            rollout={"max_completion_length": None},
        )
    )
    assert cfg.algorithm.steps_per_generation == 6 and cfg.rollout.max_completion_length == 7
    assert validate_dict(cfg.model_dump(mode="json")).algorithm == cfg.algorithm  # what a learner rank re-reads
    assert not validate_dict(ppo({"kl_coef": 0.0})).needs.teachers  # no KL: no reference pool


@pytest.mark.parametrize(
    "algorithm, sections, match",
    [
        ({"num_ppo_epochs": 2, "num_iterations": 3}, {}, "num_ppo_epochs .2. and num_iterations .3. are one knob"),
        ({"num_mini_batches": 2, "steps_per_generation": 3}, {}, r"steps_per_generation \(3\) must be"),
        ({"response_length": 7}, {"rollout": {"max_completion_length": 5}}, "response_length .7. and rollout.max_comp"),
        ({"stop_token_id": 3}, {}, "stop_token_id is not supported"),
        ({}, {"cluster": {"learner": {"replicas": 2}, "critic": {"replicas": 1}}}, "cluster.critic.replicas .1. must"),
        ({"loss_type": "dapo"}, {}, r"algorithm.loss_type: unknown field.*knob of algorithm.name grpo"),
    ],
)
def test_bad_ppo_settings_name_the_field(algorithm, sections, match):
    with pytest.raises(ConfigError, match=match):
        validate_dict(ppo(algorithm, **sections))


def test_two_reward_models_need_a_value_model():
    rm = {"name": "reward_model", "kwargs": {"model": "/rm"}}
    with pytest.raises(ConfigError, match="set algorithm.value_model"):
        validate_dict(ppo({}, reward={"reward_funcs": [rm, rm]}))
    from relay_rl.learner.methods.ppo import value_model_path

    assert value_model_path(validate_dict(ppo({}, reward={"reward_funcs": [rm, "arithmetic_exact"]}))) == "/rm"
    policy = validate_dict(ppo({}))
    assert value_model_path(policy) == policy.model.name_or_path
    assert value_model_path(validate_dict(ppo({"value_model": "/v"}))) == "/v"
    assert policy.needs.critic.model == policy.model.name_or_path  # the critic role's CriticSpec starts there


def test_critic_values_are_the_classifier_score_of_each_prefix():
    """V_t (the state before completion token t) equals the sequence classifier's own pooled score of the prompt
    plus the first t completion tokens, for left-padded prompts and right-padded completions."""
    from transformers import Qwen3Config, Qwen3ForSequenceClassification

    from relay_rl.learner.logprobs import completion_values

    torch.manual_seed(0)
    model = (
        Qwen3ForSequenceClassification(
            Qwen3Config(
                vocab_size=16,
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=2,
                num_key_value_heads=1,
                head_dim=16,
                num_labels=1,
                pad_token_id=0,
            )
        )
        .eval()
        .double()
    )
    prompt_ids = torch.tensor([[0, 5, 6, 7], [8, 9, 10, 11]])
    prompt_mask = (prompt_ids != 0).long()
    completion_ids = torch.tensor([[3, 4, 2], [12, 0, 0]])
    completion_mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    with torch.no_grad():
        V = completion_values(model, prompt_ids, prompt_mask, completion_ids, completion_mask)
        for i in range(2):
            prompt = prompt_ids[i][prompt_mask[i] > 0]
            for t in range(int(completion_mask[i].sum())):
                ids = torch.cat([prompt, completion_ids[i, :t]]).unsqueeze(0)
                want = model(input_ids=ids).logits[0, 0]
                assert float(V[i, t]) == pytest.approx(float(want), rel=1e-6)  # V is returned in float32


def _whiten_rank(rank: int, port: int, x, mask, out):
    import torch.distributed as dist

    from relay_rl.learner import ppo_losses as ppo
    from relay_rl.learner.collectives import all_reduce_sum

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    half = slice(rank * 2, rank * 2 + 2)
    for shift in (True, False):
        out[(rank, shift)] = ppo.masked_whiten(x[half], mask[half], shift_mean=shift, all_reduce=all_reduce_sum)
    dist.destroy_process_group()


def test_whitening_across_two_ranks_equals_whitening_the_whole_batch():
    import torch.multiprocessing as mp

    from relay_rl.learner import ppo_losses as ppo

    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 5, generator=g, dtype=torch.float64) * 3 + 1
    mask = torch.tensor([[1.0] * n + [0.0] * (5 - n) for n in (5, 2, 4, 1)], dtype=torch.float64)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = mp.Manager().dict()
    mp.start_processes(_whiten_rank, args=(port, x, mask, out), nprocs=2, start_method="spawn")
    for shift in (True, False):
        whole = ppo.masked_whiten(x, mask, shift_mean=shift)  # one process, every row
        got = torch.cat([out[(0, shift)], out[(1, shift)]])
        assert torch.allclose(got, whole, rtol=1e-12, atol=1e-12)
        assert not torch.allclose(ppo.masked_whiten(x[:2], mask[:2], shift_mean=shift), whole[:2])  # local differs
