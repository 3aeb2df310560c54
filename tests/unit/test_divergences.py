"""Float64 reference checks of the distillation family (docs/methods/distillation.md and tests/README.md's reference
checks, "Distillation").

Every reference below is written independently of the code under test, from the spec, with plain Python loops over a
small vocabulary (numpy only for log-softmax and random draws):

* the generalised JSD at beta 0, 0.3, 0.5, 1 and its properties (JSD_beta(p, p) = 0, the KL endpoints, the bound
  log 2 at beta = 0.5, the limits JSD_beta / beta -> KL(p_T||p_S) and JSD_beta / (1 - beta) -> KL(p_S||p_T)) and its
  gradient w.r.t. free student logits (``torch.autograd.gradcheck`` and the closed form
  dJSD/dp_S(x) = (1 - beta) log(p_S(x) / m(x)), through the softmax Jacobian);
* the top-k support (teacher's top-k ids): k = |V| without the tail equals the full vocabulary, with the tail the
  support sums to 1 (within TAIL_MIN at k = |V|), and without the tail both sides are renormalised on the k tokens;
* the temperature of the loss: GKD at 1, on-policy distillation and GOLD at ``rollout.temperature`` (through
  ``DistillObjective.loss`` on configs built with ``validate_dict``);
* the step normaliser N_step over GA micro-batches and P ranks, with ragged masks and all-padding rows;
* MiniLLM's reward-to-go (hand-computed values and a loop reference), the per-token advantage with R_t detached, and
  the single-step KL term;
* GKD's per-micro-batch source mixing.

No Ray, no model, no process group (``all_reduce_sum`` is the identity at world size 1; P = 2 is simulated).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from relay_rl.batch import Batch
from relay_rl.cluster.config import resolve_schedule, validate_dict
from relay_rl.learner.divergences import TAIL_MIN, generalized_jsd, kl, log_tail, topk_support
from relay_rl.learner.methods.base import DATASET, POLICY, TEACHER
from relay_rl.learner.methods.distill import (
    Distillation,
    DistillObjective,
    GKDConfig,
    GOLDConfig,
    OnPolicyDistillationConfig,
)
from relay_rl.learner.methods.minillm import MiniLLMObjective, reward_to_go
from tests.conftest import quickstart_dict

F64 = torch.float64
BETAS = [0.0, 0.3, 0.5, 1.0]


# ----------------------------------------------------------------------------------------------- references
def np_log_softmax(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def ref_kl(p, q) -> float:
    """KL(p||q) = sum_x p(x) log(p(x)/q(x)) over probability lists (0 log 0 = 0)."""
    return sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q) if pi > 0)


def ref_jsd(pS, pT, beta: float) -> float:
    """docs/methods/distillation.md: KL(p_T||p_S) at beta 0, KL(p_S||p_T) at beta 1, otherwise
    beta KL(p_T||m) + (1 - beta) KL(p_S||m) with m = (1 - beta) p_S + beta p_T."""
    pS, pT = [float(x) for x in pS], [float(x) for x in pT]
    if beta == 0:
        return ref_kl(pT, pS)
    if beta == 1:
        return ref_kl(pS, pT)
    m = [(1 - beta) * s + beta * t for s, t in zip(pS, pT)]
    return beta * ref_kl(pT, m) + (1 - beta) * ref_kl(pS, m)


def ref_jsd_grid(student_logp: np.ndarray, teacher_logp: np.ndarray, beta: float) -> np.ndarray:
    """ref_jsd at every leading position of (..., V) log-prob arrays."""
    lead = student_logp.shape[:-1]
    out = np.zeros(lead)
    for idx in np.ndindex(*lead):
        out[idx] = ref_jsd(np.exp(student_logp[idx]), np.exp(teacher_logp[idx]), beta)
    return out


def ref_jsd_grad_logits(z: np.ndarray, pT: np.ndarray, beta: float) -> np.ndarray:
    """Closed-form d JSD_beta(softmax(z), p_T) / dz for one position: g(x) = dJSD/dp_S(x), then the softmax
    Jacobian p_S (g - <p_S, g>). beta = 0: g = -p_T/p_S; beta = 1: g = log(p_S/p_T) + 1; else
    g = (1 - beta) log(p_S/m) (the m-derivatives of the two KL terms cancel)."""
    pS = np.exp(np_log_softmax(z))
    if beta == 0:
        g = -pT / pS
    elif beta == 1:
        g = np.log(pS / pT) + 1
    else:
        m = (1 - beta) * pS + beta * pT
        g = (1 - beta) * np.log(pS / m)
    return pS * (g - (pS * g).sum())


def ref_reward_to_go(R, M, gamma: float, normalize: bool) -> list[list[float]]:
    """A_t - A = sum_{j>=t} gamma^(j-t) R_j M_j (/ sum_{j>=t} gamma^(j-t) M_j), 0 where M_t = 0. Python loops."""
    out = []
    for r_row, m_row in zip(R, M):
        T = len(r_row)
        row = []
        for t in range(T):
            if m_row[t] == 0:
                row.append(0.0)
                continue
            num = sum(gamma ** (j - t) * r_row[j] * m_row[j] for j in range(t, T))
            den = sum(gamma ** (j - t) * m_row[j] for j in range(t, T))
            row.append(num / den if normalize else num)
        out.append(row)
    return out


# ----------------------------------------------------------------------------------------------- builders
def rand_logp(rng, *shape, scale=2.0) -> np.ndarray:
    return np_log_softmax(rng.normal(0.0, scale, size=shape))


def make_batch(
    mask,
    *,
    teacher_dist=None,
    teacher_dist_ids=None,
    teacher_logprobs=None,
    completion_ids=None,
    advantages=None,
    V=5,
    seed=0,
    mask_dtype=torch.float32,
) -> Batch:
    mask = torch.as_tensor(np.asarray(mask, dtype=np.float64)).to(mask_dtype)
    N, Tc = mask.shape
    g = torch.Generator().manual_seed(seed)
    if completion_ids is None:
        completion_ids = torch.randint(0, V, (N, Tc), generator=g)
    return Batch(
        prompt_ids=torch.ones(N, 2, dtype=torch.long),
        prompt_mask=torch.ones(N, 2, dtype=torch.long),
        completion_ids=torch.as_tensor(completion_ids, dtype=torch.long),
        completion_mask=mask,
        behaviour_logprobs=torch.full((N, Tc), float("nan")),
        policy_version=torch.zeros(N, dtype=torch.long),
        group_id=torch.arange(N, dtype=torch.long),
        truncated=torch.zeros(N, dtype=torch.bool),
        advantages=None if advantages is None else torch.as_tensor(advantages, dtype=torch.float32),
        teacher_logprobs=None if teacher_logprobs is None else torch.as_tensor(teacher_logprobs, dtype=F64),
        teacher_dist=None if teacher_dist is None else torch.as_tensor(teacher_dist, dtype=F64),
        teacher_dist_ids=None if teacher_dist_ids is None else torch.as_tensor(teacher_dist_ids, dtype=torch.int32),
        info={"num_items_in_batch": float(mask.sum())},
    )


def make_cfg(algorithm: dict, *, temperature=0.5, replicas=1):
    raw = quickstart_dict(
        teacher={"name_or_path": "kit:teacher"},
        rollout={"temperature": temperature},
        cluster={"learner": {"replicas": replicas, "num_cpus": 0.5}},
    )
    raw["algorithm"] = algorithm  # replaced whole: the GRPO knobs of the quickstart are not distillation knobs
    cfg = validate_dict(raw)
    return cfg, resolve_schedule(cfg)


# ======================================================================================== 1. the generalised JSD
@pytest.mark.parametrize("beta", BETAS + [0.7])
def test_jsd_matches_loop_reference(beta):
    rng = np.random.default_rng(1)
    s, t = rand_logp(rng, 3, 4, 6), rand_logp(rng, 3, 4, 6)
    got = generalized_jsd(torch.tensor(s), torch.tensor(t), beta)
    assert got.shape == (3, 4) and got.dtype == F64
    np.testing.assert_allclose(got.numpy(), ref_jsd_grid(s, t, beta), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("beta", BETAS)
def test_jsd_of_identical_distributions_is_zero(beta):
    p = torch.tensor(rand_logp(np.random.default_rng(2), 5, 7))
    got = generalized_jsd(p, p.clone(), beta)
    torch.testing.assert_close(got, torch.zeros(5, dtype=F64), rtol=0, atol=1e-14)


def test_jsd_endpoints_are_the_two_kls():
    rng = np.random.default_rng(3)
    s, t = rand_logp(rng, 4, 6), rand_logp(rng, 4, 6)
    fwd = np.array([ref_kl(np.exp(t[i]), np.exp(s[i])) for i in range(4)])  # KL(p_T||p_S)
    rev = np.array([ref_kl(np.exp(s[i]), np.exp(t[i])) for i in range(4)])  # KL(p_S||p_T)
    assert np.abs(fwd - rev).max() > 1e-3  # the two directions differ on these inputs
    S, Tt = torch.tensor(s), torch.tensor(t)
    np.testing.assert_allclose(generalized_jsd(S, Tt, 0.0).numpy(), fwd, rtol=1e-12)
    np.testing.assert_allclose(generalized_jsd(S, Tt, 1.0).numpy(), rev, rtol=1e-12)
    np.testing.assert_allclose(kl(S, Tt).numpy(), rev, rtol=1e-12)  # kl(logp, logq) = KL(p||q)


def test_jsd_half_is_bounded_by_log2():
    rng = np.random.default_rng(4)
    s, t = rand_logp(rng, 200, 5, scale=4.0), rand_logp(rng, 200, 5, scale=4.0)
    got = generalized_jsd(torch.tensor(s), torch.tensor(t), 0.5)
    assert float(got.min()) >= -1e-15 and float(got.max()) <= math.log(2) + 1e-12
    # nearly disjoint supports approach the bound
    a = np_log_softmax(np.array([[30.0, 0.0, 0.0, 0.0]]))
    b = np_log_softmax(np.array([[0.0, 30.0, 0.0, 0.0]]))
    near = float(generalized_jsd(torch.tensor(a), torch.tensor(b), 0.5))
    assert math.log(2) - 1e-6 < near <= math.log(2) + 1e-12


def test_jsd_limits_at_the_endpoints():
    rng = np.random.default_rng(5)
    s, t = rand_logp(rng, 6, 5), rand_logp(rng, 6, 5)
    S, Tt = torch.tensor(s), torch.tensor(t)
    fwd = np.array([ref_kl(np.exp(t[i]), np.exp(s[i])) for i in range(6)])
    rev = np.array([ref_kl(np.exp(s[i]), np.exp(t[i])) for i in range(6)])
    eps = 1e-6
    np.testing.assert_allclose(generalized_jsd(S, Tt, eps).numpy() / eps, fwd, rtol=1e-4)
    np.testing.assert_allclose(generalized_jsd(S, Tt, 1 - eps).numpy() / eps, rev, rtol=1e-4)
    # the mixture form itself tends to 0 at both ends (the endpoints are defined by the KL forms instead)
    assert float(generalized_jsd(S, Tt, eps).abs().max()) < 1e-4


@pytest.mark.parametrize("beta", BETAS)
def test_jsd_gradient_wrt_student_logits(beta):
    rng = np.random.default_rng(6)
    z = torch.tensor(rng.normal(size=(2, 3, 5)), dtype=F64, requires_grad=True)
    t = torch.tensor(rand_logp(rng, 2, 3, 5))

    def f(z_):
        return generalized_jsd(torch.log_softmax(z_, -1), t, beta)

    assert torch.autograd.gradcheck(f, (z,), eps=1e-6, atol=1e-8, rtol=1e-6)
    f(z).sum().backward()
    want = np.zeros((2, 3, 5))
    for i, j in np.ndindex(2, 3):
        want[i, j] = ref_jsd_grad_logits(z.detach().numpy()[i, j], np.exp(t.numpy()[i, j]), beta)
    np.testing.assert_allclose(z.grad.numpy(), want, rtol=1e-10, atol=1e-13)


# ======================================================================================== 2. top-k support
def teacher_topk(teacher_logp_V: np.ndarray, k: int):
    """The teacher's top-k ids (descending) and their (unrenormalised) log-probs, as a teacher pool serves them."""
    ids = np.argsort(-teacher_logp_V, axis=-1, kind="stable")[..., :k]
    return ids, np.take_along_axis(teacher_logp_V, ids, -1)


@pytest.mark.parametrize("beta", BETAS)
def test_topk_full_vocabulary_without_tail_equals_full(beta):
    rng = np.random.default_rng(7)
    V = 6
    s, t = rand_logp(rng, 2, 3, V), rand_logp(rng, 2, 3, V)
    ids, tK = teacher_topk(t, V)
    sK, tK2 = topk_support(torch.tensor(s), torch.tensor(tK), torch.tensor(ids, dtype=torch.int32), add_tail=False)
    got = generalized_jsd(sK, tK2, beta)
    np.testing.assert_allclose(got.numpy(), ref_jsd_grid(s, t, beta), rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("k", [6, 3, 1])
def test_topk_tail_support_sums_to_one(k):
    rng = np.random.default_rng(8)
    V = 6
    s, t = rand_logp(rng, 2, 3, V), rand_logp(rng, 2, 3, V)
    ids, tK = teacher_topk(t, k)
    sK, tK2 = topk_support(torch.tensor(s), torch.tensor(tK), torch.tensor(ids), add_tail=True)
    assert sK.shape == tK2.shape == (2, 3, k + 1)
    for side in (sK, tK2):
        total = side.exp().sum(-1)
        if k == V:  # the tail is clamped at TAIL_MIN: the sum is 1 + TAIL_MIN (TRL 1.16: 1 + 1e-7)
            assert float((total - 1).abs().max()) <= TAIL_MIN + 1e-12
        else:
            torch.testing.assert_close(total, torch.ones(2, 3, dtype=F64), rtol=0, atol=1e-12)
    # values against the loop reference: the student's own probabilities on the teacher's ids, then 1 - their sum
    for i, j in np.ndindex(2, 3):
        ps = [math.exp(s[i, j, v]) for v in ids[i, j]]
        pt = [math.exp(t[i, j, v]) for v in ids[i, j]]
        ws = ps + [max(1 - sum(ps), TAIL_MIN)]
        wt = pt + [max(1 - sum(pt), TAIL_MIN)]
        np.testing.assert_allclose(sK[i, j].exp().numpy(), ws, rtol=1e-9, atol=1e-15)
        np.testing.assert_allclose(tK2[i, j].exp().numpy(), wt, rtol=1e-9, atol=1e-15)
    if k == V:  # with the tail at k = |V| the JSD is the full one up to the clamped bucket
        got = generalized_jsd(sK, tK2, 0.5).numpy()
        np.testing.assert_allclose(got, ref_jsd_grid(s, t, 0.5), atol=1e-6)


@pytest.mark.parametrize("beta", BETAS)
@pytest.mark.parametrize("add_tail", [False, True])
def test_topk_partial_support_against_loop_reference(beta, add_tail):
    rng = np.random.default_rng(9)
    V, k = 7, 3
    s, t = rand_logp(rng, 2, 4, V), rand_logp(rng, 2, 4, V)
    ids, tK = teacher_topk(t, k)
    sK, tK2 = topk_support(torch.tensor(s), torch.tensor(tK), torch.tensor(ids), add_tail=add_tail)
    got = generalized_jsd(sK, tK2, beta).numpy()
    want = np.zeros((2, 4))
    for i, j in np.ndindex(2, 4):
        ps = [math.exp(s[i, j, v]) for v in ids[i, j]]
        pt = [math.exp(t[i, j, v]) for v in ids[i, j]]
        if add_tail:
            ps, pt = ps + [1 - sum(ps)], pt + [1 - sum(pt)]
        else:  # both renormalised over the k tokens
            ps, pt = [x / sum(ps) for x in ps], [x / sum(pt) for x in pt]
        want[i, j] = ref_jsd(ps, pt, beta)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-13)
    if not add_tail:
        torch.testing.assert_close(sK.exp().sum(-1), torch.ones(2, 4, dtype=F64), rtol=0, atol=1e-12)
        torch.testing.assert_close(tK2.exp().sum(-1), torch.ones(2, 4, dtype=F64), rtol=0, atol=1e-12)


def test_topk_tail_gradient_wrt_student_logits():
    rng = np.random.default_rng(10)
    V, k = 6, 2
    z = torch.tensor(rng.normal(size=(2, 2, V)), dtype=F64, requires_grad=True)
    ids, tK = teacher_topk(rand_logp(rng, 2, 2, V), k)
    ids_t, tK_t = torch.tensor(ids), torch.tensor(tK)
    for add_tail in (False, True):

        def f(z_, add_tail=add_tail):
            sK, tK2 = topk_support(torch.log_softmax(z_, -1), tK_t, ids_t, add_tail)
            return generalized_jsd(sK, tK2, 0.3)

        assert torch.autograd.gradcheck(f, (z,), eps=1e-6, atol=1e-8, rtol=1e-6)


def test_log_tail_clamps_at_tail_min():
    full = torch.tensor(rand_logp(np.random.default_rng(11), 3, 4))
    torch.testing.assert_close(log_tail(full), torch.full((3, 1), math.log(TAIL_MIN), dtype=F64), rtol=0, atol=1e-6)


# ======================================================================================== 3. temperature placement
CASES = [  # (algorithm dict, the temperature its loss divides the student logits by, given rollout.temperature 0.5)
    ({"name": "gkd", "per_device_train_batch_size": 2, "beta": 0.5}, 1.0),
    ({"name": "gkd", "per_device_train_batch_size": 2, "beta": 0.3}, 1.0),
    ({"name": "on_policy_distillation", "per_device_train_batch_size": 2}, 0.5),  # beta 1.0 by default
    ({"name": "on_policy_distillation", "per_device_train_batch_size": 2, "beta": 0.0}, 0.5),
    ({"name": "gold", "per_device_train_batch_size": 2, "beta": 0.5}, 0.5),
]


@pytest.mark.parametrize("alg,tau", CASES, ids=[f"{a['name']}-{a.get('beta', 'default')}" for a, _ in CASES])
def test_loss_temperature_placement(alg, tau):
    cfg, sched = make_cfg(alg, temperature=0.5)
    beta = cfg.algorithm.beta
    assert sched.P == 1 and sched.GA == 1
    assert (
        Distillation().needs(cfg).teachers[0].temperature == tau
    )  # the teacher serves its log-probs at the loss temperature
    rng = np.random.default_rng(12)
    V = 5
    logits = rng.normal(0.0, 1.5, size=(2, 3, V))
    teacher = rand_logp(rng, 2, 3, V)
    mask = np.array([[1, 1, 1], [1, 1, 0]], dtype=np.float64)
    mb = make_batch(mask, teacher_dist=teacher, V=V)
    obj = DistillObjective(cfg, sched)
    obj.begin_step([mb])
    assert obj.step_tokens == 5.0
    loss, stats = obj.loss(mb, torch.tensor(logits, dtype=F64))

    def ref(T):
        D = ref_jsd_grid(np_log_softmax(logits / T), teacher, beta)
        return float((D * mask).sum() / mask.sum())

    assert float(loss) == pytest.approx(ref(tau), rel=1e-10, abs=1e-13)
    wrong = 0.5 if tau == 1.0 else 1.0
    assert abs(ref(wrong) - ref(tau)) > 1e-3  # the check can tell the two placements apart
    kind, total, count = stats["distill/divergence"]
    assert kind == "mean" and count == 5.0 and total == pytest.approx(ref(tau) * 5, rel=1e-10)


@pytest.mark.parametrize("add_tail", [False, True])
def test_loss_topk_through_objective(add_tail):
    """On-policy distillation served top-k (loss_top_k 3): the objective equals the loop reference on the teacher's
    ids, with the student at logits / T."""
    alg = {
        "name": "on_policy_distillation",
        "per_device_train_batch_size": 2,
        "loss_top_k": 3,
        "loss_add_tail": add_tail,
        "beta": 0.5,
    }
    cfg, sched = make_cfg(alg, temperature=0.5)
    assert Distillation().needs(cfg).teachers[0].output == "topk" and Distillation().needs(cfg).teachers[0].top_k == 3
    rng = np.random.default_rng(13)
    V, k = 6, 3
    logits = rng.normal(0.0, 1.5, size=(2, 3, V))
    ids, tK = teacher_topk(rand_logp(rng, 2, 3, V), k)
    mask = np.array([[1, 1, 0], [1, 1, 1]], dtype=np.float64)
    mb = make_batch(mask, teacher_dist=tK, teacher_dist_ids=ids, V=V)
    obj = DistillObjective(cfg, sched)
    obj.begin_step([mb])
    loss, _ = obj.loss(mb, torch.tensor(logits, dtype=F64))
    s = np_log_softmax(logits / 0.5)
    total = 0.0
    for i, j in np.ndindex(2, 3):
        if not mask[i, j]:
            continue
        ps = [math.exp(s[i, j, v]) for v in ids[i, j]]
        pt = [math.exp(tK[i, j, n]) for n in range(k)]
        if add_tail:
            ps, pt = ps + [1 - sum(ps)], pt + [1 - sum(pt)]
        else:
            ps, pt = [x / sum(ps) for x in ps], [x / sum(pt) for x in pt]
        total += ref_jsd(ps, pt, 0.5)
    assert float(loss) == pytest.approx(total / mask.sum(), rel=1e-9)


# ======================================================================================== 4. normalisers
MASKS = [  # four micro-batches of B = 3 rows: padding, a row with no valid token, one micro-batch all padding
    np.array([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]]),
    np.array([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]]),
    np.array([[0, 0, 0], [0, 0, 0], [0, 0, 0]]),
    np.array([[1, 1, 0], [1, 1, 1], [0, 0, 0]]),
]


def _micro_batches(V=5, seed=14):
    rng = np.random.default_rng(seed)
    out = []
    for n, m in enumerate(MASKS):
        logits = rng.normal(0.0, 1.5, size=(*m.shape, V))
        teacher = rand_logp(rng, *m.shape, V)
        out.append((make_batch(m, teacher_dist=teacher, V=V, seed=n), logits, teacher, m.astype(np.float64)))
    return out


def _global_token_mean(items, beta, T=1.0):
    num = sum(float((ref_jsd_grid(np_log_softmax(lg / T), te, beta) * m).sum()) for _, lg, te, m in items)
    den = sum(float(m.sum()) for *_, m in items)
    return num / den


def test_step_normaliser_one_rank_ga_micro_batches():
    """P = 1, GA = 4: the step objective sum_mb L_mb is the global token mean of D over the step."""
    cfg, sched = make_cfg(
        {"name": "gkd", "per_device_train_batch_size": 3, "gradient_accumulation_steps": 4, "beta": 0.3}
    )
    assert (sched.P, sched.GA) == (1, 4)
    items = _micro_batches()
    obj = DistillObjective(cfg, sched)
    obj.begin_step([mb for mb, *_ in items])
    assert obj.step_tokens == sum(float(m.sum()) for *_, m in items) == 16.0
    losses = [obj.loss(mb, torch.tensor(lg, dtype=F64))[0] for mb, lg, _, _ in items]
    assert float(losses[2]) == 0.0  # the all-padding micro-batch adds nothing
    assert all(torch.isfinite(x) for x in losses)
    assert float(sum(losses)) == pytest.approx(_global_token_mean(items, 0.3), rel=1e-10)


@pytest.mark.parametrize("how", ["begin_step_with_both_ranks", "explicit_step_tokens"])
def test_step_normaliser_two_ranks(how):
    """P = 2, GA = 2, simulated without a process group. ``begin_step_with_both_ranks``: each rank's objective gets
    N_step from ``begin_step`` called with the micro-batches of both ranks (what the all-reduce of the rank-local
    counts gives). ``explicit_step_tokens``: ``begin_step`` with the rank's own micro-batches, then ``step_tokens``
    set to the global count by hand. The average over ranks of each rank's sum_mb L_mb is the global token mean."""
    cfg, sched = make_cfg(
        {"name": "gkd", "per_device_train_batch_size": 3, "gradient_accumulation_steps": 2, "beta": 0.5}, replicas=2
    )
    assert (sched.P, sched.GA) == (2, 2)
    items = _micro_batches()
    ranks = [items[0:2], items[2:4]]  # rank 1 holds the all-padding micro-batch
    n_global = sum(float(m.sum()) for *_, m in items)
    per_rank = []
    for own in ranks:
        obj = DistillObjective(cfg, sched)
        if how == "begin_step_with_both_ranks":
            obj.begin_step([mb for mb, *_ in items])
        else:
            obj.begin_step([mb for mb, *_ in own])
            assert obj.step_tokens == sum(float(m.sum()) for *_, m in own)  # world size 1: no all-reduce
            obj.step_tokens = n_global
        assert obj.step_tokens == n_global
        per_rank.append(sum(float(obj.loss(mb, torch.tensor(lg, dtype=F64))[0]) for mb, lg, _, _ in own))
    assert sum(per_rank) / 2 == pytest.approx(_global_token_mean(items, 0.5), rel=1e-10)


def test_step_with_no_valid_token_is_zero():
    cfg, sched = make_cfg({"name": "gkd", "per_device_train_batch_size": 3})
    mb, lg, _, _ = _micro_batches()[2]
    obj = DistillObjective(cfg, sched)
    obj.begin_step([mb])
    assert obj.step_tokens == 0.0
    loss, _ = obj.loss(mb, torch.tensor(lg, dtype=F64, requires_grad=True))
    assert float(loss.detach()) == 0.0 and torch.isfinite(loss.detach())


def test_assemble_counts_valid_tokens():
    mask = np.array([[1, 1, 0], [1, 0, 0], [0, 0, 0]])
    mb = make_batch(mask, teacher_dist=rand_logp(np.random.default_rng(0), 3, 3, 5))
    out, _ = Distillation().assemble(mb.replace(group_id=torch.tensor([2, 0, 1])), GKDConfig(), [], 0)
    assert out.info["num_items_in_batch"] == 3.0
    assert out.group_id.tolist() == [0, 1, 2]


# ======================================================================================== 5. MiniLLM
@pytest.mark.parametrize("normalize", [False, True])
def test_reward_to_go_gamma_zero_is_the_reward(normalize):
    rng = np.random.default_rng(15)
    R = torch.tensor(rng.normal(size=(3, 5)), dtype=F64)
    M = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [0, 0, 0, 0, 0]], dtype=F64)
    torch.testing.assert_close(reward_to_go(R, M, 0.0, normalize), R * M, rtol=0, atol=1e-15)


@pytest.mark.parametrize("gamma", [0.3, 0.9, 1.0])
def test_reward_to_go_constant_reward_normalized(gamma):
    M = torch.ones(2, 6, dtype=F64)
    R = torch.full((2, 6), -0.7, dtype=F64)
    torch.testing.assert_close(reward_to_go(R, M, gamma, True), R, rtol=0, atol=1e-14)


HAND = [  # (R, M, normalize, expected), gamma = 0.5
    ([1.0, 2.0, 3.0], [1, 1, 1], False, [1 + 0.5 * 2 + 0.25 * 3, 2 + 0.5 * 3, 3.0]),  # 2.75, 3.5, 3
    ([1.0, 2.0, 3.0], [1, 1, 1], True, [2.75 / 1.75, 3.5 / 1.5, 3.0]),
    ([1.0, 2.0, 3.0, 100.0], [1, 1, 1, 0], False, [2.75, 3.5, 3.0, 0.0]),  # padding: R at padding is ignored
    ([1.0, 2.0, 3.0, 100.0], [1, 1, 1, 0], True, [2.75 / 1.75, 3.5 / 1.5, 3.0, 0.0]),
    ([1.0, 2.0, 3.0], [1, 1, 0], False, [2.0, 2.0, 0.0]),
    ([1.0, 2.0, 3.0], [1, 1, 0], True, [2.0 / 1.5, 2.0, 0.0]),
]


@pytest.mark.parametrize("R,M,normalize,want", HAND)
def test_reward_to_go_hand_computed(R, M, normalize, want):
    got = reward_to_go(torch.tensor([R], dtype=F64), torch.tensor([M], dtype=F64), 0.5, normalize)
    np.testing.assert_allclose(got.numpy()[0], want, rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(ref_reward_to_go([R], [M], 0.5, normalize)[0], want, rtol=1e-14)  # the reference too


@pytest.mark.parametrize("gamma", [0.0, 0.5, 0.95, 1.0])
@pytest.mark.parametrize("normalize", [False, True])
def test_reward_to_go_against_loop_reference(gamma, normalize):
    rng = np.random.default_rng(16)
    R = rng.normal(size=(4, 6))
    M = np.array([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0], [1, 0, 1, 1, 0, 0], [0, 0, 0, 0, 0, 0]], dtype=np.float64)
    got = reward_to_go(torch.tensor(R), torch.tensor(M), gamma, normalize)
    np.testing.assert_allclose(
        got.numpy(), ref_reward_to_go(R.tolist(), M.tolist(), gamma, normalize), rtol=1e-12, atol=1e-14
    )


def _minillm(kd_temperature=2.0, gamma=0.5, normalize=True, single=True, GA=1, rkl=True):
    alg = {
        "name": "minillm",
        "num_generations": 2,
        "per_device_train_batch_size": 2,
        "gradient_accumulation_steps": GA,
        "kd_temperature": kd_temperature,
        "gamma": gamma,
        "length_normalization": normalize,
        "single_step_decomposition": single,
        "rkl_advantage": rkl,
        "vllm_importance_sampling_correction": False,
    }
    cfg, sched = make_cfg(alg, temperature=0.5)
    return MiniLLMObjective(cfg, sched)


def _minillm_inputs(served: str, seed=17, mask_dtype=F64):
    """MiniLLM inputs. The completion mask is float64 by default: ``reward_to_go`` needs R and M of one dtype (see
    ``test_minillm_advantage_float64_logits_float32_mask``)."""
    rng = np.random.default_rng(seed)
    V = 5
    logits = rng.normal(0.0, 1.5, size=(2, 3, V))
    ids = rng.integers(0, V, size=(2, 3))
    mask = np.array([[1, 1, 1], [1, 1, 0]], dtype=np.float64)
    # teacher values exactly representable in float32 (``teacher_token_logprobs`` reads them as float32)
    tdist = rand_logp(rng, 2, 3, V).astype(np.float32).astype(np.float64)
    tlogp = np.take_along_axis(tdist, ids[..., None], -1)[..., 0]
    A = np.array([0.25, -0.5])
    kw = {"teacher_logprobs": tlogp} if served == "sampled" else {}
    mb = make_batch(mask, teacher_dist=tdist, completion_ids=ids, advantages=A, V=V, mask_dtype=mask_dtype, **kw)
    return mb, logits, ids, mask, tdist, tlogp, A


@pytest.mark.parametrize("served", ["sampled", "full"])
@pytest.mark.parametrize("gamma,normalize", [(0.0, True), (0.5, True), (0.5, False), (1.0, True)])
def test_minillm_advantage_values_and_detached(served, gamma, normalize):
    obj = _minillm(kd_temperature=2.0, gamma=gamma, normalize=normalize)
    mb, logits, ids, mask, tdist, tlogp, A = _minillm_inputs(served)
    z = torch.tensor(logits, dtype=F64, requires_grad=True)
    logp_BT = torch.zeros(2, 3, dtype=F64)
    adv = obj.advantages(mb, z, logp_BT)
    assert adv.shape == (2, 3)
    assert adv.grad_fn is None and not adv.requires_grad, "R_t must be detached inside the advantage"
    s = np_log_softmax(logits / 2.0)  # R_t at kd_temperature, not rollout.temperature (0.5)
    R = [[tlogp[i, t] - s[i, t, ids[i, t]] for t in range(3)] for i in range(2)]
    rtg = ref_reward_to_go(R, mask.tolist(), gamma, normalize)
    want = np.array([[A[i] + rtg[i][t] for t in range(3)] for i in range(2)])
    np.testing.assert_allclose(adv.numpy(), want, rtol=1e-12, atol=1e-13)


def test_minillm_advantage_float64_logits_float32_mask():
    """Batch.completion_mask is float32 as built everywhere else; the student logits are float64 here. Expected: the
    advantage is computed as with a float64 mask. Found: ``reward_to_go`` with ``length_normalization`` computes
    ``mask_BT @ W_TT.T`` with a float32 mask and a W_TT of R's dtype (float64), which raises
    "expected m1 and m2 to have the same dtype". The unnormalised path and float32 logits are unaffected."""
    obj = _minillm(kd_temperature=2.0, gamma=0.5, normalize=True)
    mb, logits, ids, mask, tdist, tlogp, A = _minillm_inputs("sampled", mask_dtype=torch.float32)
    ref_mb, *_ = _minillm_inputs("sampled", mask_dtype=F64)
    z = torch.tensor(logits, dtype=F64)
    want = obj.advantages(ref_mb, z, torch.zeros(2, 3, dtype=F64))
    try:
        got = obj.advantages(mb, z, torch.zeros(2, 3, dtype=F64))
    except RuntimeError as e:
        pytest.fail(
            "BUG (learner/methods/minillm.py reward_to_go): with length_normalization, a float32 "
            f"completion_mask and float64 R_t (float64 logits), `mask_BT @ W_TT.T` raises: {e}"
        )
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-12)


def test_reward_to_go_mixed_dtypes():
    """The same defect on ``reward_to_go`` alone: R float64, M float32 (the Batch's mask dtype)."""
    R = torch.tensor([[1.0, 2.0, 3.0]], dtype=F64)
    M = torch.tensor([[1.0, 1.0, 1.0]], dtype=torch.float32)
    np.testing.assert_allclose(reward_to_go(R, M, 0.5, False).numpy()[0], [2.75, 3.5, 3.0], rtol=1e-14)
    try:
        got = reward_to_go(R, M, 0.5, True)
    except RuntimeError as e:
        pytest.fail(
            "BUG (learner/methods/minillm.py reward_to_go): normalize=True with R float64 and mask float32 "
            f"raises instead of promoting: {e}"
        )
    np.testing.assert_allclose(got.numpy()[0], [2.75 / 1.75, 3.5 / 1.5, 3.0], rtol=1e-6)


def test_minillm_no_rkl_advantage_is_the_sequence_advantage():
    obj = _minillm(rkl=False)
    mb, logits, *_ = _minillm_inputs("sampled")
    adv = obj.advantages(mb, torch.tensor(logits, dtype=F64), torch.zeros(2, 3, dtype=F64))
    torch.testing.assert_close(adv, torch.tensor([0.25, -0.5]))


@pytest.mark.parametrize("GA", [1, 2])
def test_minillm_single_step_kl_term(GA):
    """loss(single_step_decomposition) - loss(without) = token mean over M of KL(p_S||p_T) at kd_temperature, /GA."""
    mb, logits, ids, mask, tdist, tlogp, A = _minillm_inputs("sampled")
    with_kl, _ = _minillm(single=True, GA=GA).loss(mb, torch.tensor(logits, dtype=F64))
    without, _ = _minillm(single=False, GA=GA).loss(mb, torch.tensor(logits, dtype=F64))
    s = np_log_softmax(logits / 2.0)
    total = sum(ref_kl(np.exp(s[i, t]), np.exp(tdist[i, t])) for i in range(2) for t in range(3) if mask[i, t])
    assert float(with_kl - without) == pytest.approx(total / mask.sum() / GA, rel=1e-6)


# ======================================================================================== 6. GKD's source mixing
def test_sources_extremes():
    assert Distillation().sources(GKDConfig(lmbda=1.0), 200, 0) == [POLICY] * 200
    assert Distillation().sources(GKDConfig(lmbda=0.0), 200, 0) == [DATASET] * 200
    assert Distillation().sources(GKDConfig(lmbda=0.0, seq_kd=True), 200, 0) == [TEACHER] * 200
    assert Distillation().sources(GOLDConfig(lmbda=0.0, seq_kd=True), 50, 1) == [TEACHER] * 50
    assert Distillation().sources(OnPolicyDistillationConfig(), 200, 3) == [POLICY] * 200  # always on-policy


@pytest.mark.parametrize("lmbda", [0.5, 0.2])
def test_sources_fraction(lmbda):
    n = 4000
    got = Distillation().sources(GKDConfig(lmbda=lmbda), n, 7)
    assert len(got) == n and set(got) <= {POLICY, DATASET}
    frac = got.count(POLICY) / n
    assert abs(frac - lmbda) < 0.04, frac  # ~6 standard deviations at n = 4000
    # the draws are per micro-batch and not all in one block
    assert any(a != b for a, b in zip(got, got[1:]))


def test_sources_deterministic_per_seed():
    alg = GKDConfig(lmbda=0.5, seq_kd=True)
    a, b = Distillation().sources(alg, 64, 123), Distillation().sources(alg, 64, 123)
    assert a == b
    assert Distillation().sources(alg, 64, 124) != a  # another seed, another draw (probability 2^-64 of equality)
    assert (
        Distillation().sources(alg, 10, 123) == a[:10]
    )  # the draw of micro-batch m does not depend on how many follow
