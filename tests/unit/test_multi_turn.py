"""Multi-turn pieces without a cluster: the loss counts only the policy's tokens (a float64 reference), the batch
carries the tool mask and the trajectories, the tool and template checks, the tool-message ids, the turn parser, a
dataset conversation's tool mask, the run-file rules and the trajectory metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from relay_rl.batch import Batch
from relay_rl.cluster.config import resolve_schedule, validate_dict
from relay_rl.cluster.kit.tool_task import CHAT_TEMPLATE, build_tool_tokenizer
from relay_rl.cluster.pipeline import trajectory_stats
from relay_rl.learner.methods.grpo import GRPOObjective
from relay_rl.rollout_workers import tools as T
from tests.conftest import quickstart_dict

F64 = torch.float64


@pytest.fixture(scope="module")
def tok():
    return build_tool_tokenizer()


def batch(mask, tool_mask, V=7, seed=0, behaviour=None, advantages=None) -> Batch:
    mask = torch.as_tensor(mask, dtype=torch.float32)
    N, Tc = mask.shape
    g = torch.Generator().manual_seed(seed)
    return Batch(
        prompt_ids=torch.ones(N, 2, dtype=torch.long),
        prompt_mask=torch.ones(N, 2, dtype=torch.long),
        completion_ids=torch.randint(0, V, (N, Tc), generator=g),
        completion_mask=mask,
        behaviour_logprobs=torch.full((N, Tc), float("nan")) if behaviour is None else behaviour,
        policy_version=torch.zeros(N, dtype=torch.long),
        group_id=torch.arange(N, dtype=torch.long),
        truncated=torch.zeros(N, dtype=torch.bool),
        advantages=torch.randn(N, generator=g) if advantages is None else advantages,
        tool_mask=None if tool_mask is None else torch.as_tensor(tool_mask, dtype=torch.float32),
    )


def objective(loss_type="dapo", **alg):
    raw = quickstart_dict(
        algorithm={"loss_type": loss_type, "per_device_train_batch_size": 8, **alg},
        cluster={"learner": {"replicas": 1, "num_cpus": 1}},
    )
    cfg = validate_dict(raw)
    return GRPOObjective(cfg, resolve_schedule(cfg))


MASK = [[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 0]]
TOOL = [[1, 1, 0, 0, 1, 1], [1, 0, 0, 1, 1, 1], [1, 1, 1, 1, 1, 1]]  # 0: a tool message's tokens


def test_the_loss_counts_only_the_policys_tokens_float64_reference():
    """On-policy (pi_old = sg[pi_theta]) the dapo loss is -(1/N) sum_{i,t} A_i m_it with m = completion_mask *
    tool_mask and N = sum m; its gradient w.r.t. the logits is -(A_i m_it / N)(onehot - softmax(z/T))/T: zero at a
    tool token."""
    obj = objective()
    mb = batch(MASK, TOOL)
    mb.info["num_items_in_batch"] = float(mb.loss_mask.sum())
    rng = np.random.default_rng(3)
    z = torch.tensor(rng.normal(0, 1.0, size=(3, 6, 7)), dtype=F64, requires_grad=True)
    loss, _ = obj.loss(mb, z)
    loss.backward()
    m = (np.array(MASK) * np.array(TOOL)).astype(np.float64)
    A, ids, Tmp = mb.advantages.double().numpy(), mb.completion_ids.numpy(), obj.temperature
    N = m.sum()
    assert float(loss) == pytest.approx(-(A[:, None] * m).sum() / N, rel=1e-12)
    zs = z.detach().numpy() / Tmp
    p = np.exp(zs - zs.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    onehot = np.eye(7)[ids]
    want = -(A[:, None, None] * m[..., None] / N) * (onehot - p) / Tmp
    np.testing.assert_allclose(z.grad.numpy(), want, rtol=1e-10, atol=1e-14)
    assert float(z.grad[0, 2:4].abs().sum()) == 0.0  # tool tokens: no gradient


CASES = [(t, lv) for t in ("grpo", "dapo", "dr_grpo", "bnpo") for lv in ("token", "sequence")]


@pytest.mark.parametrize("loss_type, level", [*CASES, ("cispo", "token"), ("sapo", "token"), ("gmpo", "token")])
def test_a_tool_mask_equals_folding_it_into_the_mask(loss_type, level):
    """Off-policy (pi_old = the behaviour log-probs, NaN at the tool tokens as the engine gives them), every loss type
    and ratio level: the loss with a tool mask is the loss of a batch whose completion mask leaves the tool tokens
    out (the logits are given, so attention is not involved)."""
    obj = objective(loss_type, old_logprob_source="behaviour", importance_sampling_level=level)
    g = torch.Generator().manual_seed(5)
    beh = -torch.rand(3, 6, generator=g) * 2
    tool = torch.tensor(TOOL, dtype=torch.float32)
    with_nan = torch.where(tool == 0, torch.full_like(beh, float("nan")), beh)
    a = batch(MASK, TOOL, behaviour=with_nan, seed=1)
    b = batch((torch.tensor(MASK) * tool).tolist(), None, behaviour=beh, seed=1)
    for mb in (a, b):
        mb.info["num_items_in_batch"] = float(mb.loss_mask.sum())
        mb.old_logprobs = mb.behaviour_logprobs
    z = torch.tensor(np.random.default_rng(4).normal(0, 1.0, size=(3, 6, 7)), dtype=F64)
    la, _ = obj.loss(a, z)
    lb, _ = obj.loss(b, z)
    assert math.isfinite(float(la)) and float(la) == pytest.approx(float(lb), rel=1e-9, abs=1e-12)


def test_batches_join_and_select_with_tool_masks_and_trajectories():
    a = batch([[1, 1, 1]], [[1, 0, 1]])
    a.trajectories = [{"turns": 2}]
    b = batch([[1, 1, 1, 1, 1]], [[1, 1, 0, 0, 1]])
    b.trajectories = [{"turns": 3}]
    j = Batch.concat([a, b])
    assert j.tool_mask.tolist() == [[1, 0, 1, 1, 1], [1, 1, 0, 0, 1]]  # padded with 1: the mask's 0s count
    assert j.loss_mask.tolist() == [[1, 0, 1, 0, 0], [1, 1, 0, 0, 1]]
    assert [t["turns"] for t in j.select([1, 0]).trajectories] == [3, 2]
    assert batch([[1, 0]], None).loss_mask.tolist() == [[1, 0]]  # single-turn: the completion mask


def test_the_kit_template_passes_the_checks_and_renders_tool_messages(tok):
    T.check_chat_template(tok)
    suffix = T.tool_suffix_ids(tok, [{"role": "tool", "name": "multiply", "content": "408"}])
    assert tok.convert_ids_to_tokens(suffix) == ["<|tool|>", "4", "0", "8", "<|assistant|>"]


def test_templates_that_cannot_carry_tool_turns_are_refused(tok):
    import copy

    t = copy.deepcopy(tok)
    t.chat_template = "{% for m in messages %}{{ m.content }}{% endfor %}"  # drops the calls
    with pytest.raises(ValueError, match="drops part of a tool exchange"):
        T.check_chat_template(t)
    t.chat_template = "{{ messages | length }}" + CHAT_TEMPLATE
    with pytest.raises(ValueError, match="not prefix-preserving"):
        T.check_chat_template(t)
    t.chat_template = None
    with pytest.raises(ValueError, match="no chat template"):
        T.check_chat_template(t)
    t.response_template = None
    with pytest.raises(ValueError, match="no response_template"):
        T.set_response_template(t, None)


def test_turns_parse_and_malformed_ones_are_kept_as_text(tok):
    from relay_rl.cluster.kit.tool_task import multiply

    prefix = tok.apply_chat_template(
        [{"role": "user", "content": "12*34="}], add_generation_prompt=True, tokenize=True, return_dict=False
    )

    def ids(text):
        return tok(text, add_special_tokens=False)["input_ids"]

    msg, bad = T.parse_turn(tok, ids("<call:multiply><a>12</a><b>34</b></call><eos>"), prefix, [multiply])
    assert not bad and msg["tool_calls"][0]["function"] == {"name": "multiply", "arguments": {"a": 12, "b": 34}}
    msg, bad = T.parse_turn(tok, ids("408<eos>"), prefix, [multiply])
    assert not bad and msg["content"] == "408" and not msg.get("tool_calls")


def _multiply(a: int, b: int) -> str:
    """Multiply.

    Args:
        a: The first factor.
        b: The second factor.
    """
    return str(a * b)


def _no_doc(a: int) -> str:
    return str(a)


def test_tool_schemas_come_from_hints_and_docstrings():
    schema = T.tool_schema(_multiply, "rollout.tools[0]")
    assert schema["function"]["name"] == "_multiply"
    assert schema["function"]["parameters"]["properties"]["a"]["type"] == "integer"
    with pytest.raises(ValueError, match="no tool schema"):
        T.tool_schema(_no_doc, "rollout.tools[0]")
    with pytest.raises(ValueError, match="use an import path"):
        T.import_object("multiply", "rollout.tools[0]")


def test_an_environments_tools_are_its_public_methods():
    from tests.integration.envs import MultiplyEnv

    assert T.environment_methods(MultiplyEnv) == ["multiply"]
    env = T.check_environment(MultiplyEnv, "tests.integration.envs:MultiplyEnv")
    assert env.reset(answer="6") is None and env.multiply(a=2, b=3) == "6" and env.get_reward() == 1.0


def test_a_dataset_conversation_masks_its_tool_messages(tmp_path, tok):
    """SFT on a tool-using conversation (the kit's warm start): the tool message's tokens are masked, the call and the
    answer (and the header after the tool message) are learned; the ids are the template's rendering."""
    from relay_rl.cluster.config import KitConfig
    from relay_rl.cluster.kit.task import build_model
    from relay_rl.cluster.kit.tool_task import warm_start_conversation
    from relay_rl.rollout_workers.actor import RolloutWorker

    build_model(KitConfig(), tok).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    w = RolloutWorker(str(tmp_path), "hf", "float32", {})
    prompt = [{"role": "user", "content": "52*34="}]
    conversation = warm_start_conversation(52, 34)
    assert [m["role"] for m in conversation] == ["assistant", "tool", "assistant"]
    ids, mask = w._completion_ids(prompt, conversation)
    full = tok.apply_chat_template(prompt + conversation, tokenize=True, return_dict=False)
    head = tok.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=False)
    assert ids == full[len(head) :]
    tokens = tok.convert_ids_to_tokens(ids)
    masked = [t for t, m in zip(tokens, mask) if m == 0]
    assert masked == ["<|tool|>", "1", "7", "6", "8"] and tokens[-1] == "<eos>"
    b = w.from_dataset([{"prompt": prompt, "completion": conversation}], "completion", 24, [0])
    assert b.tool_mask[0, : len(mask)].tolist() == mask and b.loss_mask.sum() == len(ids) - 5


@pytest.mark.parametrize(
    "change, expect",
    [
        ({"algorithm": {"name": "ppo"}}, "does not train on multi-turn"),
        ({"rollout": {"partial_rollouts": True}}, "do not mix"),
        ({"rollout": {"max_tool_calling_iterations": 0}}, "greater than or equal to 1"),
        (
            {"rollout": {"environment_factory": "x:Y"}, "cluster": {"environment": {"replicas": 0}}},
            "cluster.environment.replicas >= 1",
        ),
    ],
)
def test_run_file_rules(change, expect):
    raw = quickstart_dict(rollout={"tools": ["relay_rl.cluster.kit.tool_task:multiply"]})
    for section, values in change.items():
        raw[section] = values if section == "algorithm" else {**raw.get(section, {}), **values}
    with pytest.raises(ValueError, match=expect.replace("(", r"\(").replace(")", r"\)")):
        validate_dict(raw)


def test_trajectory_metrics():
    b = batch([[1, 1, 1, 1], [1, 1, 0, 0]], [[1, 0, 0, 1], [1, 1, 1, 1]])
    b.trajectories = [
        {"turns": 2, "tool_calls": 1, "tool_failures": 0, "tool_s": 0.2, "malformed": 0, "overflow": False,
         "non_string_results": 1},
        {"turns": 1, "tool_calls": 1, "tool_failures": 1, "tool_s": 0.4, "malformed": 0, "overflow": True,
         "non_string_results": 0},
    ]  # fmt: skip
    s = trajectory_stats(b, [{"trajectories_redone": 1}])
    assert s["tools/call_frequency"] == 1.0 and s["tools/failure_frequency"] == 0.5 and s["tools/turns_mean"] == 1.5
    assert s["tools/success_share"] == 0.5 and s["tools/tool_tokens"] == 2 and s["tools/overflow"] == 1
    assert s["tools/latency_s"] == pytest.approx(0.3) and s["tools/trajectories_redone"] == 1
