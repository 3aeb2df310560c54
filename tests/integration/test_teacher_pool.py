"""The teacher pool serves distributions: a real teacher actor on a local Ray cluster, against a direct
transformers forward of the same model (top-k values and ids, full vocabulary, sampled tokens, temperature,
chunking), and the reference pool's log-probs."""
import pytest
import torch

from cluster.batch import Batch


def _batch(tokenizer, prompts, completions):
    """Left-padded prompts, right-padded completions (+ EOS), as the rollout actor builds them."""
    p = [tokenizer(x, add_special_tokens=False)["input_ids"] for x in prompts]
    c = [tokenizer(x, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for x in completions]
    N, tp, tc = len(p), max(map(len, p)), max(map(len, c))
    b = Batch(prompt_ids=torch.zeros(N, tp, dtype=torch.long), prompt_mask=torch.zeros(N, tp, dtype=torch.long),
              completion_ids=torch.zeros(N, tc, dtype=torch.long), completion_mask=torch.zeros(N, tc),
              behaviour_logprobs=torch.full((N, tc), float("nan")), policy_version=torch.zeros(N, dtype=torch.long),
              group_id=torch.arange(N), truncated=torch.zeros(N, dtype=torch.bool), prompts=prompts,
              completions=completions)
    for i, (pi, ci) in enumerate(zip(p, c)):
        b.prompt_ids[i, tp - len(pi):] = torch.tensor(pi)
        b.prompt_mask[i, tp - len(pi):] = 1
        b.completion_ids[i, :len(ci)] = torch.tensor(ci)
        b.completion_mask[i, :len(ci)] = 1
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
            lp = torch.log_softmax(logits[len(p) - 1:len(p) - 1 + len(c)] / temperature, -1)  # row t predicts c[t]
            full = torch.zeros(b.completion_ids.shape[1], lp.shape[-1])
            full[:len(c)] = lp
            out.append(full)
    return torch.stack(out)  # (N, Tc, V), zero rows on padding


@pytest.fixture(scope="module")
def scored(ray_cluster, kit):
    import ray
    from teacher_workers.actor import TeacherWorker
    from transformers import AutoTokenizer
    path = kit["warm_start"]
    tok = AutoTokenizer.from_pretrained(path)
    b = _batch(tok, ["12+34=", "99+9=", "5+5="], ["46", "108", "1"])
    actor = ray.remote(TeacherWorker).options(num_cpus=0.5).remote(path, pool="teacher", max_chunk_elements=60)
    ref_actor = ray.remote(TeacherWorker).options(num_cpus=0.5).remote(path, pool="reference")
    T = 0.7
    out = {kind: ray.get(actor.score.remote(b, {"output": kind, "top_k": 5, "temperature": T}))
           for kind in ("topk", "full", "sampled")}
    out["reference"] = ray.get(ref_actor.score.remote(b, {"output": "sampled", "temperature": T}))
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


def test_bytes_and_seconds_are_reported(scored):
    b, out, _ = scored
    Tc = b.completion_ids.shape[1]
    assert out["topk"].info["teacher_bytes/teacher"] == 3 * Tc * (5 * 4 + 5 * 4 + 4)  # values, int32 ids, tokens
    assert out["full"].info["teacher_bytes/teacher"] == 3 * Tc * (14 * 4 + 4)
    assert out["sampled"].info["teacher_s/teacher"] >= 0
