"""Float64 reference checks of SDPO and SDFT (docs/methods/self-distillation.md and tests/README.md's reference checks,
"Distillation").

The references are written from the spec with plain Python loops over a small vocabulary: every divergence mode
(full_logits at alpha 0, 0.5, 1; topk_logits with the student's top-k, renormalised or with the tail bucket;
sampled_token and its REINFORCE gradient), the IS clip, the aggregation (a row without teacher context adds 0 and
counts in B), SDPO's blend (w = 0 is GRPO's loss, w = 1 pure distillation), SDFT's skipped tokens, the EMA update,
and the config rules. No Ray, no model, no process group.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from relay_rl.batch import Batch
from relay_rl.cluster.config import resolve_schedule, validate_dict
from relay_rl.learner.divergences import TAIL_MIN
from relay_rl.learner.methods.grpo import GRPOObjective
from relay_rl.learner.methods.sdft import SDFTObjective
from relay_rl.learner.methods.sdpo import SDPOObjective
from relay_rl.learner.methods.self_distillation import (
    distillation_loss,
    ema,
    is_clip_weight,
    per_token_divergence,
    sequence_mean,
)
from tests.conftest import quickstart_dict
from tests.unit.test_divergences import ref_jsd as jsd  # the JSD_alpha by loops (alpha is its beta)

F64 = torch.float64
B, T, V = 3, 4, 6


def cfg_of(name: str, **algorithm):
    raw = quickstart_dict(algorithm=None)
    raw["algorithm"] = {"name": name, "num_generations": 2, "per_device_train_batch_size": 4, **algorithm}
    if name == "sdft":
        raw["algorithm"].setdefault("distillation_mode", "full_logits")
    return validate_dict(raw)


# ----------------------------------------------------------------------------------------------- references
def softmax(row) -> list[float]:
    m = max(row)
    e = [math.exp(x - m) for x in row]
    return [x / sum(e) for x in e]


def ref_divergence(student, teacher, mode, a, k=None, tail=False):
    """D (B, T) by loops: student / teacher are (B, T, V) logits already divided by the temperature."""
    out = np.zeros((B, T))
    for b in range(B):
        for t in range(T):
            pS, pT = softmax(student[b][t]), softmax(teacher[b][t])
            if mode == "full_logits":
                out[b, t] = jsd(pS, pT, a)
                continue
            top = sorted(range(V), key=lambda i: -pS[i])[:k]  # the student's top-k
            s, q = [pS[i] for i in top], [pT[i] for i in top]
            if tail:
                s, q = s + [max(1 - sum(s), TAIL_MIN)], q + [max(1 - sum(q), TAIL_MIN)]
            else:
                s, q = [x / sum(s) for x in s], [x / sum(q) for x in q]
            out[b, t] = jsd(s, q, a)
    return out


class MB:
    """What the objectives read of a micro-batch."""

    def __init__(self, teacher_logits=None, ids=None, mask=None, context=None, old=None, temperature=1.0):
        g = torch.Generator().manual_seed(7)
        self.completion_ids = ids if ids is not None else torch.randint(0, V, (B, T), generator=g)
        self.completion_mask = (
            mask if mask is not None else torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1.0]], dtype=F64)
        )
        tl = teacher_logits / temperature
        self.teacher_dist = torch.log_softmax(tl, -1)
        self.teacher_logprobs = self.teacher_dist.gather(-1, self.completion_ids.unsqueeze(-1)).squeeze(-1)
        self.teacher_context = context if context is not None else torch.ones(B, dtype=torch.bool)
        self.loss_mask = self.completion_mask  # single-turn: no tool tokens
        self.old_logprobs = old
        self.prompt_ids = None


def logits(seed: int) -> torch.Tensor:
    return torch.randn(B, T, V, generator=torch.Generator().manual_seed(seed), dtype=F64)


# ----------------------------------------------------------------------------------------------- divergences
@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_full_logits_is_the_jsd(alpha):
    a = cfg_of("sdft", distillation_mode="full_logits", distillation_alpha=alpha).algorithm
    s, t = logits(0), logits(1)
    got = per_token_divergence(a, MB(t), s, temperature=1.0)
    assert np.allclose(got.numpy(), ref_divergence(s.tolist(), t.tolist(), "full_logits", alpha), atol=1e-12)


@pytest.mark.parametrize("tail", [False, True])
@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_topk_logits_on_the_students_top_k(alpha, tail):
    a = cfg_of(
        "sdft",
        distillation_mode="topk_logits",
        distillation_topk=3,
        distillation_alpha=alpha,
        distillation_add_tail=tail,
    ).algorithm
    s, t = logits(2), logits(3)
    got = per_token_divergence(a, MB(t), s, temperature=1.0)
    assert np.allclose(got.numpy(), ref_divergence(s.tolist(), t.tolist(), "topk", alpha, k=3, tail=tail), atol=1e-12)


def test_topk_support_is_the_students_not_the_teachers():
    """A teacher whose top token is the student's least likely: top-1 on the student's support compares one bucket
    that both renormalise to 1, so D = 0; on the teacher's top-1 it would not be."""
    a = cfg_of("sdft", distillation_mode="topk_logits", distillation_topk=1).algorithm
    s = logits(4)
    t = -s  # the teacher ranks the vocabulary the other way round
    assert float(per_token_divergence(a, MB(t), s, temperature=1.0).abs().max()) < 1e-12


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_topk_of_the_whole_vocabulary_without_tail_is_full_logits(alpha):
    s, t = logits(5), logits(6)
    full = cfg_of("sdft", distillation_mode="full_logits", distillation_alpha=alpha).algorithm
    topk = cfg_of("sdft", distillation_mode="topk_logits", distillation_topk=V, distillation_alpha=alpha).algorithm
    assert torch.allclose(
        per_token_divergence(topk, MB(t), s, 1.0), per_token_divergence(full, MB(t), s, 1.0), atol=1e-12
    )


def test_tail_bucket_completes_the_support():
    """With the tail, student and teacher supports each sum to 1 (to the clamp: 1 + TAIL_MIN at k = |V|)."""
    from relay_rl.learner.divergences import log_tail

    s = torch.log_softmax(logits(7), -1)
    for k in (2, V):
        top = s.topk(k, -1).values
        mass = torch.cat([top, log_tail(top)], -1).exp().sum(-1)
        assert torch.allclose(mass, torch.ones_like(mass), atol=TAIL_MIN * 1.01)


def test_temperature_divides_both_sides():
    a = cfg_of("sdft", distillation_mode="full_logits", distillation_alpha=0.5).algorithm
    s, t, tau = logits(8), logits(9), 0.7
    got = per_token_divergence(a, MB(t, temperature=tau), s, temperature=tau)
    want = ref_divergence((s / tau).tolist(), (t / tau).tolist(), "full_logits", 0.5)
    assert np.allclose(got.numpy(), want, atol=1e-12)


def test_sampled_token_value_and_reinforce_gradient():
    """D_t = sg[log p_S(o) - log p_T(o)] log p_S(o); summed over o with weights p_S(o) (enumerating the vocabulary),
    its gradient is exactly the gradient of KL(p_S||p_T)."""
    a = cfg_of("sdpo").algorithm
    assert a.distillation_mode == "sampled_token"
    s, t = logits(10), logits(11)
    mb = MB(t)
    got = per_token_divergence(a, mb, s, 1.0)
    ls = torch.log_softmax(s, -1).gather(-1, mb.completion_ids.unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(got, (ls - mb.teacher_logprobs) * ls, atol=1e-12)
    z = logits(12)[0, 0].clone().requires_grad_(True)  # one position's student logits
    lt = torch.log_softmax(logits(13)[0, 0], -1)
    total = 0.0
    for o in range(V):  # E_{o ~ p_S}[D(o)], with p_S(o) itself held fixed (it is the sampling distribution)
        ls_o = torch.log_softmax(z, -1)[o]
        total = total + torch.softmax(z, -1)[o].detach() * (ls_o - lt[o]).detach() * ls_o
    (g_est,) = torch.autograd.grad(total, z)
    z2 = z.detach().clone().requires_grad_(True)
    p = torch.softmax(z2, -1)
    (g_kl,) = torch.autograd.grad((p * (torch.log(p) - lt)).sum(), z2)
    assert torch.allclose(g_est, g_kl, atol=1e-12)


# ----------------------------------------------------------------------------------------------- IS clip
def test_is_clip_is_capped_and_one_on_policy():
    lp = torch.log_softmax(logits(14), -1)[..., 0]
    assert torch.equal(is_clip_weight(lp, lp, 2.0), torch.ones_like(lp))
    old = lp - torch.linspace(-3, 3, lp.numel(), dtype=F64).reshape(lp.shape)
    w = is_clip_weight(lp, old, 2.0)
    ref = [
        [min(math.exp(max(-20, min(20, float(x - y)))), 2.0) for x, y in zip(r1, r2)]
        for r1, r2 in zip(lp.tolist(), old.tolist())
    ]
    assert torch.allclose(w, torch.tensor(ref, dtype=F64), atol=1e-12) and float(w.max()) <= 2.0
    assert not w.requires_grad  # a weight, not a path of the gradient


def test_is_clip_applies_only_where_old_logprobs_exist():
    a = cfg_of("sdft", distillation_mode="full_logits", distillation_is_clip=1.5).algorithm
    s, t = logits(15), logits(16)
    mask = MB(t).completion_mask
    plain, _ = distillation_loss(a, MB(t), s, 1.0, mask, GA=1)
    ids = MB(t).completion_ids
    ls = torch.log_softmax(s, -1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    old = ls - 1.0  # p_S / pi_old = e: clipped at 1.5
    clipped, _ = distillation_loss(a, MB(t, old=old), s, 1.0, mask, GA=1)
    D = torch.tensor(ref_divergence(s.tolist(), t.tolist(), "full_logits", 0.5))
    assert float(plain) == pytest.approx(float(sequence_mean(D, mask)), rel=1e-12)
    assert float(clipped) == pytest.approx(float(sequence_mean(D * 1.5, mask)), rel=1e-12)


# ----------------------------------------------------------------------------------------------- aggregation
def test_aggregation_mean_per_sequence_then_batch_over_ga():
    a = cfg_of("sdft", distillation_mode="full_logits").algorithm
    s, t = logits(17), logits(18)
    mask = MB(t).completion_mask
    loss, stats = distillation_loss(a, MB(t), s, 1.0, mask, GA=2)
    D = ref_divergence(s.tolist(), t.tolist(), "full_logits", 0.5)
    m = mask.numpy()
    want = np.mean([(D[b] * m[b]).sum() / max(1, m[b].sum()) for b in range(B)]) / 2
    assert float(loss) == pytest.approx(want, rel=1e-12)
    assert stats["self_distillation/loss_tokens"][1] == float(m.sum())


def test_a_row_without_teacher_context_adds_zero_but_counts_in_b():
    cfg = cfg_of("sdpo", distillation_weight=1.0)
    obj = SDPOObjective(cfg, resolve_schedule(cfg))
    s, t = logits(19), logits(20)
    mb = MB(t, context=torch.tensor([True, False, True]))
    loss, _ = obj.loss(mb, s)
    ls = torch.log_softmax(s, -1).gather(-1, mb.completion_ids.unsqueeze(-1)).squeeze(-1)
    D = ((ls - mb.teacher_logprobs) * ls).numpy()
    m = mb.completion_mask.numpy()
    rows = [(D[b] * m[b]).sum() / m[b].sum() for b in (0, 2)]
    assert float(loss) == pytest.approx(sum(rows) / 3 / obj.sched.GA, rel=1e-12)  # / B = 3, not 2


# ----------------------------------------------------------------------------------------------- SDPO's blend
def _policy_batch(t):
    mb = MB(t)
    mb.advantages = torch.tensor([1.0, -0.5, 0.25], dtype=F64)
    mb.behaviour_logprobs = mb.ref_logprobs = mb.is_weights = None
    mb.old_logprobs = None
    mb.info = {"num_items_in_batch": float(mb.completion_mask.sum())}
    return mb


def test_sdpo_weight_zero_is_grpo_and_one_is_distillation():
    s, t = logits(21), logits(22)
    grpo_cfg = validate_dict(
        {
            **quickstart_dict(),
            "algorithm": {
                "name": "grpo",
                "num_generations": 2,
                "per_device_train_batch_size": 4,
                "vllm_importance_sampling_correction": False,
            },
        }
    )
    want_pg, _ = GRPOObjective(grpo_cfg, resolve_schedule(grpo_cfg)).loss(_policy_batch(t), s)
    for w, expect in ((0.0, "pg"), (1.0, "distill"), (0.25, "blend")):
        cfg = cfg_of("sdpo", distillation_weight=w, vllm_importance_sampling_correction=False)
        obj = SDPOObjective(cfg, resolve_schedule(cfg))
        got, _ = obj.loss(_policy_batch(t), s)
        distill, _ = distillation_loss(
            cfg.algorithm, _policy_batch(t), s, 1.0, _policy_batch(t).completion_mask, obj.sched.GA
        )
        want = {"pg": want_pg, "distill": distill, "blend": 0.75 * want_pg + 0.25 * distill}[expect]
        assert float(got) == pytest.approx(float(want), rel=1e-12), w


# ----------------------------------------------------------------------------------------------- SDFT
def test_sdft_skips_the_first_tokens():
    cfg = cfg_of("sdft", distillation_mode="full_logits", num_loss_tokens_to_skip=2)
    obj = SDFTObjective(cfg, resolve_schedule(cfg))
    s, t = logits(23), logits(24)
    mb = MB(t)
    loss, _ = obj.loss(mb, s)
    D = ref_divergence(s.tolist(), t.tolist(), "full_logits", 0.5)
    m = mb.completion_mask.numpy().copy()
    m[:, :2] = 0
    want = np.mean([(D[b] * m[b]).sum() / max(1, m[b].sum()) for b in range(B)]) / obj.sched.GA
    assert float(loss) == pytest.approx(want, rel=1e-12)


def test_sdft_old_logprobs_only_when_batches_are_reused():
    on = cfg_of("sdft")
    off = cfg_of("sdft", generation_batch_size=16)  # S = 2 slices, GA = 1: reused across steps
    assert not SDFTObjective(on, resolve_schedule(on)).reuses_batches
    assert SDFTObjective(off, resolve_schedule(off)).reuses_batches


# ----------------------------------------------------------------------------------------------- EMA, config
def test_ema_update():
    a, b = torch.randn(5, dtype=F64), torch.randn(5, dtype=F64)
    assert torch.allclose(ema(a, b, 0.05), 0.95 * a + 0.05 * b, atol=0)
    assert torch.equal(ema(a, b, 1.0), b) and torch.equal(ema(a, b, 0.0), a)


@pytest.mark.parametrize(
    "algorithm, message",
    [
        ({"name": "sdpo", "distillation_alpha": 0.5}, "sampled_token is reverse KL only"),
        ({"name": "sdpo", "distillation_mode": "topk_logits"}, "needs distillation_topk"),
        ({"name": "sdpo", "reprompt_template": "{solution} solve it"}, "reprompt_template must contain {prompt}"),
        ({"name": "sdpo", "reprompt_template": "{prompt}{answer}"}, "unknown placeholder {answer}"),
        ({"name": "sdpo", "solution_template": "{prompt}"}, "solution_template: unknown placeholder {prompt}"),
        ({"name": "sdpo", "loss_type": "cispo"}, "loss_type"),
        ({"name": "sdpo", "distillation_weight": 1.5}, "distillation_weight"),
        (
            {"name": "sdft", "teacher_prompt_template": "{privileged_context}"},
            "teacher_prompt_template must contain {prompt}",
        ),
        ({"name": "sdft", "teacher_prompt_template": "{prompt} {"}, "not a valid template"),
    ],
)
def test_config_errors(algorithm, message):
    from relay_rl.errors import ConfigError

    raw = quickstart_dict(algorithm=None)
    raw["algorithm"] = algorithm
    with pytest.raises(ConfigError, match=message.replace("{", r"\{").replace("}", r"\}")):
        validate_dict(raw)


def test_needs_a_reprompted_self_teacher():
    for name, served in (("sdpo", "sampled"), ("sdft", "full")):
        spec = cfg_of(name).needs.teachers[0]
        assert (spec.pool, spec.model, spec.reprompt, spec.output) == ("self_teacher", "policy", True, served)
    assert [s.pool for s in cfg_of("sdpo", beta=0.01).needs.teachers] == ["self_teacher", "reference"]
    assert cfg_of("sdpo").needs.rewards and not cfg_of("sdft").needs.rewards


def test_batch_carries_the_teacher_context_through_the_object_store():
    import pickle

    n = 2
    batch = Batch(
        prompt_ids=torch.ones(n, 2, dtype=torch.long),
        prompt_mask=torch.ones(n, 2, dtype=torch.long),
        completion_ids=torch.ones(n, 3, dtype=torch.long),
        completion_mask=torch.ones(n, 3),
        behaviour_logprobs=torch.zeros(n, 3),
        policy_version=torch.zeros(n, dtype=torch.long),
        group_id=torch.arange(n),
        truncated=torch.zeros(n, dtype=torch.bool),
        teacher_context=torch.tensor([True, False]),
    )
    back = pickle.loads(pickle.dumps(Batch.concat([batch, batch]).select([0, 3])))
    assert back.teacher_context.tolist() == [True, False]
