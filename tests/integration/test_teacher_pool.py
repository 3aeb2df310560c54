"""The teacher pool serves distributions: a real teacher actor on a local Ray cluster, against a direct
transformers forward of the same model (top-k values and ids, full vocabulary, sampled tokens, temperature,
chunking), and the reference pool's log-probs."""

import pytest
import torch

from relay_rl.batch import Batch


def _batch(tokenizer, prompts, completions):
    """Left-padded prompts, right-padded completions (+ EOS), as the rollout actor builds them."""
    p = [tokenizer(x, add_special_tokens=False)["input_ids"] for x in prompts]
    c = [tokenizer(x, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for x in completions]
    N, tp, tc = len(p), max(map(len, p)), max(map(len, c))
    b = Batch(
        prompt_ids=torch.zeros(N, tp, dtype=torch.long),
        prompt_mask=torch.zeros(N, tp, dtype=torch.long),
        completion_ids=torch.zeros(N, tc, dtype=torch.long),
        completion_mask=torch.zeros(N, tc),
        behaviour_logprobs=torch.full((N, tc), float("nan")),
        policy_version=torch.zeros(N, dtype=torch.long),
        group_id=torch.arange(N),
        truncated=torch.zeros(N, dtype=torch.bool),
        prompts=prompts,
        completions=completions,
    )
    for i, (pi, ci) in enumerate(zip(p, c)):
        b.prompt_ids[i, tp - len(pi) :] = torch.tensor(pi)
        b.prompt_mask[i, tp - len(pi) :] = 1
        b.completion_ids[i, : len(ci)] = torch.tensor(ci)
        b.completion_mask[i, : len(ci)] = 1
    return b


def _direct(model_path, b: Batch, temperature: float) -> torch.Tensor:
    """log softmax(logits / T) at completion positions from a plain transformers forward (no relay-rl code)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    out = []
    with torch.no_grad():
        for i in range(len(b)):
            p = b.prompt_ids[i][b.prompt_mask[i] > 0]
            c = b.completion_ids[i][b.completion_mask[i] > 0]
            logits = model(input_ids=torch.cat([p, c])[None]).logits[0]  # (Tp + Tc, V)
            lp = torch.log_softmax(logits[len(p) - 1 : len(p) - 1 + len(c)] / temperature, -1)  # row t predicts c[t]
            full = torch.zeros(b.completion_ids.shape[1], lp.shape[-1])
            full[: len(c)] = lp
            out.append(full)
    return torch.stack(out)  # (N, Tc, V), zero rows on padding


@pytest.fixture(scope="module")
def scored(ray_cluster, kit):
    import ray
    from transformers import AutoTokenizer

    from relay_rl.teacher_workers.actor import TeacherWorker

    path = kit["warm_start"]
    tok = AutoTokenizer.from_pretrained(path)
    b = _batch(tok, ["12+34=", "99+9=", "5+5="], ["46", "108", "1"])
    actor = ray.remote(TeacherWorker).options(num_cpus=0.5).remote(path, pool="teacher", max_chunk_elements=60)
    ref_actor = (
        ray.remote(TeacherWorker).options(num_cpus=0.5).remote(path, pool="reference", attn_implementation="eager")
    )
    T = 0.7
    out = {
        kind: ray.get(actor.score.remote(b, {"output": kind, "top_k": 5, "temperature": T}))
        for kind in ("topk", "full", "sampled")
    }
    out["reference"] = ray.get(ref_actor.score.remote(b, {"output": "sampled", "temperature": T}))
    out["attention"] = ray.get(
        [a.__ray_call__.remote(lambda w: w.model.config._attn_implementation) for a in (actor, ref_actor)]
    )
    yield b, out, _direct(path, b, T)
    for a in (actor, ref_actor):
        ray.kill(a)


def test_topk_equals_a_direct_forward(scored):
    b, out, direct = scored
    top = out["topk"]
    m = b.completion_mask.bool()
    values, ids = direct.topk(5, dim=-1)
    assert top.teacher_dist.shape == (3, b.completion_ids.shape[1], 5) and top.teacher_dist_ids.dtype == torch.int32
    torch.testing.assert_close(top.teacher_dist[m], values[m], atol=1e-5, rtol=1e-5)
    assert torch.equal(top.teacher_dist_ids[m].long(), ids[m])
    assert (top.teacher_dist[m][:, :-1] >= top.teacher_dist[m][:, 1:]).all()  # sorted, most likely first


def test_full_and_sampled_and_reference_equal_a_direct_forward(scored):
    b, out, direct = scored
    m = b.completion_mask.bool()
    torch.testing.assert_close(out["full"].teacher_dist[m], direct[m], atol=1e-5, rtol=1e-5)
    tokens = direct.gather(-1, b.completion_ids.unsqueeze(-1)).squeeze(-1)
    for kind in ("topk", "full", "sampled"):
        torch.testing.assert_close(out[kind].teacher_logprobs[m], tokens[m], atol=1e-5, rtol=1e-5)
    assert out["sampled"].teacher_dist is None
    torch.testing.assert_close(out["reference"].ref_logprobs[m], tokens[m], atol=1e-5, rtol=1e-5)
    assert out["reference"].teacher_logprobs is None
    assert out["attention"] == ["sdpa", "eager"]  # the reference ran eager attention: the same log-probs


def test_bytes_and_seconds_are_reported(scored):
    b, out, _ = scored
    Tc = b.completion_ids.shape[1]
    assert out["topk"].info["teacher_bytes/teacher"] == 3 * Tc * (5 * 4 + 5 * 4 + 4)  # values, int32 ids, tokens
    assert out["full"].info["teacher_bytes/teacher"] == 3 * Tc * (14 * 4 + 4)
    assert out["sampled"].info["teacher_s/teacher"] >= 0


def test_self_teacher_scores_each_row_under_its_teacher_prompt(ray_cluster, kit_r1):
    """SDFT's self-teacher (a real actor): every row is scored under "<hint>|<prompt>" (cut to its last
    max_prompt_length tokens), equal to a direct forward of that prompt; the batch keeps the student's prompt and is
    flagged with its teacher context."""
    import ray
    from transformers import AutoTokenizer

    from relay_rl.cluster.config import load_config
    from relay_rl.teacher_workers.actor import TeacherWorker
    from tests.conftest import RECIPES

    o = RECIPES.parent / "overlays"
    cfg = load_config(
        RECIPES / "sdft.yaml",
        [
            str(o / "kit.yaml"),
            str(o / "kit_sdft.yaml"),
            "algorithm.distillation_mode=sampled_token",
            "algorithm.distillation_alpha=1",
            "rollout.max_prompt_length=8",
        ],
    )
    path = kit_r1["warm_start"]
    tok = AutoTokenizer.from_pretrained(path)
    b = _batch(tok, ["12+34=", "70+55="], ["46", "125"])
    b.columns = {"privileged_context": ["46", "125"]}
    actor = ray.remote(TeacherWorker).remote(path, run_config=cfg.model_dump(mode="json"), pool="self_teacher")
    spec = {"output": "sampled", "temperature": 1.0, "reprompt": True}
    out = ray.get(actor.score.remote(b, spec))
    assert torch.equal(out.prompt_ids, b.prompt_ids) and out.teacher_context.tolist() == [True, True]
    # "46|12+34=" and "125|70+55=" have 9 and 10 tokens: the teacher saw their last 8
    want = _batch(tok, ["6|12+34=", "5|70+55="], ["46", "125"])
    direct = _direct(path, want, 1.0).gather(-1, want.completion_ids.unsqueeze(-1)).squeeze(-1) * want.completion_mask
    assert torch.allclose(out.teacher_logprobs * out.completion_mask, direct, atol=1e-5)
    out = ray.get(actor.score.remote(b.replace(columns={"privileged_context": ["4", "1"]}), spec))  # short hints
    unhinted = _direct(path, b, 1.0).gather(-1, b.completion_ids.unsqueeze(-1)).squeeze(-1) * b.completion_mask
    assert float((out.teacher_logprobs * out.completion_mask).sum()) < float(
        unhinted.sum()
    )  # a hint cut short misleads


def test_ema_teacher_update(ray_cluster, kit, kit_r1):
    """mix_weights(tau): theta_T <- (1 - tau) theta_T + tau theta for every parameter (SDPO's EMA teacher)."""
    import ray
    from transformers import AutoModelForCausalLM

    from relay_rl.learner.methods.self_distillation import ema
    from relay_rl.teacher_workers.actor import TeacherWorker
    from relay_rl.transport.object_store import to_arrays

    teacher = TeacherWorker(kit_r1["base"])
    start = {k: v.detach().clone() for k, v in teacher.model.named_parameters()}
    policy = dict(AutoModelForCausalLM.from_pretrained(kit_r1["warm_start"]).named_parameters())
    teacher.mix_weights([ray.put(to_arrays({k: v.detach() for k, v in policy.items()}))], 0.05)
    for k, p in teacher.model.named_parameters():
        assert torch.allclose(p.detach(), ema(start[k], policy[k].detach(), 0.05), atol=1e-7), k
