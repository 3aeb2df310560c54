"""PPO's math (docs/methods/ppo.md) against independent float64 references written as plain Python loops over each row's
own length: KL estimators, the per-token reward, GAE with ragged masks and V = 0 past the end, whitening with and
without the mean, the clipped policy and value losses and their gradients."""

import math
import statistics

import pytest
import torch

from relay_rl.learner import ppo_losses as ppo

F64 = torch.float64
LENGTHS = [5, 3, 1, 4]  # ragged rows, right-padded to T = 5
T = 5


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    B = len(LENGTHS)
    mask = torch.tensor([[1.0] * n + [0.0] * (T - n) for n in LENGTHS], dtype=F64)
    rand = lambda: torch.randn(B, T, generator=g, dtype=F64)  # noqa: E731
    return mask, rand


def _rows(x, mask):
    return [[float(x[i, t]) for t in range(int(mask[i].sum()))] for i in range(len(mask))]


def test_kl_estimators():
    old = torch.tensor([[-1.0, -0.5, -2.0]], dtype=F64)
    ref = torch.tensor([[-1.2, -0.5, -1.0]], dtype=F64)
    k1 = ppo.kl_per_token(old, ref, "k1")
    k3 = ppo.kl_per_token(old, ref, "k3")
    for t in range(3):
        x = float(ref[0, t] - old[0, t])
        assert float(k1[0, t]) == pytest.approx(float(old[0, t] - ref[0, t]), rel=1e-12)
        assert float(k3[0, t]) == pytest.approx(math.exp(x) - 1 - x, rel=1e-12)
    assert (k3 >= 0).all() and float(k3[0, 1]) == 0.0  # 0 exactly where the log-probs agree
    with pytest.raises(ValueError, match="kl_estimator"):
        ppo.kl_per_token(old, ref, "k2")


@pytest.mark.parametrize("shift_mean", [True, False])
def test_whitening_with_and_without_the_mean(shift_mean):
    mask, rand = _batch(1)
    x = rand() * 3 + 2
    got = ppo.masked_whiten(x, mask, shift_mean=shift_mean)
    flat = [v for row in _rows(x, mask) for v in row]
    mean, var = statistics.fmean(flat), statistics.variance(flat)  # Bessel n / (n - 1)
    want = [[(v - mean) / math.sqrt(var + 1e-8) + (0.0 if shift_mean else mean) for v in row] for row in _rows(x, mask)]
    assert _rows(got, mask) == [pytest.approx(r, rel=1e-12) for r in want]
    assert float((got * (1 - mask)).abs().sum()) == 0.0
    assert float(ppo.masked_var(x, mask)) == pytest.approx(var, rel=1e-12)


def test_token_rewards_put_the_score_on_the_last_completion_token():
    mask, rand = _batch(2)
    kl = rand()
    scores = torch.tensor([1.0, -0.5, 2.0, 0.25], dtype=F64)
    r, non_score = ppo.token_rewards(scores, kl, mask, kl_coef=0.05)
    for i, n in enumerate(LENGTHS):
        want = [-0.05 * float(kl[i, t]) + (float(scores[i]) if t == n - 1 else 0.0) for t in range(n)]
        assert [float(r[i, t]) for t in range(n)] == pytest.approx(want, rel=1e-12)
        assert float(r[i, n:].abs().sum()) == 0.0 and float(non_score[i, n:].abs().sum()) == 0.0
    white, _ = ppo.token_rewards(scores, kl, mask, kl_coef=0.05, whiten=True)
    assert torch.allclose(white, ppo.masked_whiten(r, mask, shift_mean=False))
    assert float(ppo.masked_mean(white, mask)) == pytest.approx(float(ppo.masked_mean(r, mask)), rel=1e-9)


def _gae_reference(rewards, values, gamma, lam):
    """One row, its own length: V = 0 past the end."""
    n, adv, last = len(rewards), [0.0] * len(rewards), 0.0
    for t in reversed(range(n)):
        next_v = values[t + 1] if t + 1 < n else 0.0
        delta = rewards[t] + gamma * next_v - values[t]
        last = delta + gamma * lam * last
        adv[t] = last
    return adv, [a + v for a, v in zip(adv, values)]


@pytest.mark.parametrize("gamma, lam", [(1.0, 0.95), (0.9, 0.8), (1.0, 1.0), (0.99, 0.0)])
def test_gae_with_ragged_masks(gamma, lam):
    mask, rand = _batch(3)
    rewards, values = rand(), rand()
    junk = (1 - mask) * 1e3  # whatever sits on padding must not leak into completions
    adv, ret = ppo.gae(rewards + junk, values + junk, mask, gamma, lam)
    for i, (r_row, v_row) in enumerate(zip(_rows(rewards, mask), _rows(values, mask))):
        want_adv, want_ret = _gae_reference(r_row, v_row, gamma, lam)
        n = LENGTHS[i]
        assert [float(adv[i, t]) for t in range(n)] == pytest.approx(want_adv, rel=1e-12, abs=1e-12)
        assert [float(ret[i, t]) for t in range(n)] == pytest.approx(want_ret, rel=1e-12, abs=1e-12)
        assert float(adv[i, n:].abs().sum()) == 0.0 and float(ret[i, n:].abs().sum()) == 0.0
    if gamma == lam == 1.0:  # Monte Carlo: R_t is the sum of the rewards to go
        for i, row in enumerate(_rows(rewards, mask)):
            assert [float(ret[i, t]) for t in range(len(row))] == pytest.approx(
                [sum(row[t:]) for t in range(len(row))], rel=1e-12
            )


def test_policy_loss_value_and_gradient():
    mask, rand = _batch(4)
    old = -rand().abs()
    new = (old + 0.3 * rand()).requires_grad_()
    adv = rand()
    eps = 0.2
    loss, stats = ppo.policy_loss(new, old, adv, mask, eps)
    loss.backward()
    grad, new = new.grad, new.detach()
    n = sum(LENGTHS)
    terms, grads, clipped = [], {}, 0
    for i, L in enumerate(LENGTHS):
        for t in range(L):
            rho, a = math.exp(float(new[i, t]) - float(old[i, t])), float(adv[i, t])
            u, c = -a * rho, -a * min(max(rho, 1 - eps), 1 + eps)
            terms.append(max(u, c))
            clipped += c > u
            grads[i, t] = (-a * rho / n) if u >= c else 0.0  # the clipped branch is constant in theta
    assert float(loss.detach()) == pytest.approx(sum(terms) / n, rel=1e-12)
    assert float(stats["policy/clipfrac_avg"]) == pytest.approx(clipped / n)
    for (i, t), g in grads.items():
        assert float(grad[i, t]) == pytest.approx(g, rel=1e-10, abs=1e-14)
    assert float(grad[mask == 0].abs().sum()) == 0.0


def test_value_loss_value_and_gradient():
    mask, rand = _batch(5)
    old_v, ret = rand(), rand()
    v = (old_v + 0.5 * rand()).requires_grad_()
    eps_v = 0.2
    loss, stats = ppo.value_loss(v, old_v, ret, mask, eps_v)
    loss.backward()
    grad, v = v.grad, v.detach()
    n = sum(LENGTHS)
    terms, clipped = [], 0
    for i, L in enumerate(LENGTHS):
        for t in range(L):
            vv, vo, R = float(v[i, t]), float(old_v[i, t]), float(ret[i, t])
            vc = vo + min(max(vv - vo, -eps_v), eps_v)
            u, c = (vv - R) ** 2, (vc - R) ** 2
            terms.append(max(u, c))
            clipped += c > u
            inside = abs(vv - vo) < eps_v
            g = (vv - R) / n if u >= c else ((vc - R) / n if inside else 0.0)
            assert float(grad[i, t]) == pytest.approx(g, rel=1e-10, abs=1e-14)
    assert float(loss.detach()) == pytest.approx(0.5 * sum(terms) / n, rel=1e-12)
    assert float(stats["val/clipfrac_avg"]) == pytest.approx(clipped / n)


def test_whitened_advantages_have_zero_mean_and_unit_std():
    mask, rand = _batch(6)
    adv, _ = ppo.gae(rand(), rand(), mask, 1.0, 0.95)
    white = ppo.masked_whiten(adv, mask)
    flat = [v for row in _rows(white, mask) for v in row]
    assert statistics.fmean(flat) == pytest.approx(0.0, abs=1e-12)
    assert statistics.stdev(flat) == pytest.approx(1.0, rel=1e-6)


# ----------------------------------------------------------------------------------------------- verl's knobs
def verl_policy_token(rho: float, a: float, eps: float, c: float | None) -> float:
    """One token's policy loss as verl's ``compute_policy_loss_vanilla`` defines it (verl 0.9,
    verl/trainer/ppo/core_algos.py): pg1 = -A rho, pg2 = -A clip(rho, 1 - eps, 1 + eps), l = max(pg1, pg2); with the
    dual clip pg3 = -A c and, where A < 0, l = min(l, pg3)."""
    pg1, pg2 = -a * rho, -a * min(max(rho, 1 - eps), 1 + eps)
    loss = max(pg1, pg2)
    if c is not None and a < 0:
        loss = min(loss, -a * c)
    return loss


def verl_agg(per_token: list[list[float]], mode: str) -> float:
    """verl's ``agg_loss``: token-mean over all tokens, or seq-mean-token-mean (each row's mean, then the mean)."""
    if mode == "token-mean":
        flat = [x for row in per_token for x in row]
        return sum(flat) / len(flat)
    return sum(sum(row) / len(row) for row in per_token) / len(per_token)


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean"])
@pytest.mark.parametrize("c", [None, 3.0, 1.5])
def test_dual_clip_and_aggregation_match_verl(mode, c):
    mask, rand = _batch(6)
    old = -rand().abs()
    new = (old + 1.5 * rand()).requires_grad_()  # large moves: ratios well past 1 + eps and past c
    adv = rand()
    eps = 0.2
    loss, stats = ppo.policy_loss(new, old, adv, mask, eps, clip_ratio_c=c, loss_agg_mode=mode)
    rows, lower, n = [], 0, sum(LENGTHS)
    for i, L in enumerate(LENGTHS):
        row = []
        for t in range(L):
            rho, a = math.exp(float(new[i, t].detach() - old[i, t])), float(adv[i, t])
            row.append(verl_policy_token(rho, a, eps, c))
            lower += c is not None and a < 0 and max(-a * rho, -a * min(max(rho, 1 - eps), 1 + eps)) > -a * c
        rows.append(row)
    assert float(loss.detach()) == pytest.approx(verl_agg(rows, mode), rel=1e-12)
    if c is not None:
        assert float(stats["policy/clipfrac_lower"]) == pytest.approx(lower / n)
        if c == 1.5:
            assert lower > 0  # the dual clip bit on some tokens of this batch
            plain, _ = ppo.policy_loss(new, old, adv, mask, eps, loss_agg_mode=mode)
            assert float(plain.detach()) > float(loss.detach())
    # gradients by autograd against central differences of the reference (float64)
    loss.backward()
    for i, t in [(0, 0), (1, 2), (2, 0), (3, 3)]:
        fd = (
            verl_loss_at(new, old, adv, eps, c, mode, (i, t), 1e-6)
            - verl_loss_at(new, old, adv, eps, c, mode, (i, t), -1e-6)
        ) / 2e-6
        assert float(new.grad[i, t]) == pytest.approx(fd, rel=1e-5, abs=1e-9)


def verl_loss_at(new, old, adv, eps, c, mode, at, delta) -> float:
    """The reference loss with log pi_theta at position ``at`` moved by ``delta``."""
    x = new.detach().clone()
    x[at] += delta
    rows = [
        [verl_policy_token(math.exp(float(x[r, s] - old[r, s])), float(adv[r, s]), eps, c) for s in range(L)]
        for r, L in enumerate(LENGTHS)
    ]
    return verl_agg(rows, mode)


def test_seq_mean_token_mean_weighs_completions_alike():
    """Each completion counts once, whatever its length: a constant per-row loss gives the mean of the rows'
    constants (token-mean weighs them by length)."""
    mask, _ = _batch()
    per_row = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=F64).unsqueeze(1).expand(-1, T)
    assert float(ppo.aggregate(per_row, mask, "seq-mean-token-mean")) == pytest.approx(2.5)
    by_length = sum(v * n for v, n in zip([1, 2, 3, 4], LENGTHS)) / sum(LENGTHS)
    assert float(ppo.aggregate(per_row, mask, "token-mean")) == pytest.approx(by_length)
    with pytest.raises(ValueError, match="loss_agg_mode"):
        ppo.aggregate(per_row, mask, "seq-mean-token-sum")


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean"])
def test_value_loss_aggregation_matches_verl(mode):
    mask, rand = _batch(7)
    old_v, ret = rand(), rand()
    v = old_v + 0.5 * rand()
    loss, _ = ppo.value_loss(v, old_v, ret, mask, 0.2, loss_agg_mode=mode)
    rows = []
    for i, L in enumerate(LENGTHS):
        row = []
        for t in range(L):
            vv, vo, R = float(v[i, t]), float(old_v[i, t]), float(ret[i, t])
            vc = vo + min(max(vv - vo, -0.2), 0.2)
            row.append(max((vv - R) ** 2, (vc - R) ** 2))
        rows.append(row)
    assert float(loss) == pytest.approx(0.5 * verl_agg(rows, mode), rel=1e-12)
