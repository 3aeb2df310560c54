"""Float64 reference checks of the GRPO-family policy loss (docs/methods/grpo.md and the reference checks of
tests/README.md "Ratios", "Surrogates", "Multipliers" and "Aggregation").

``ref_loss`` is an independent, row-by-row transcription of the per-micro-batch loss L_mb written from the spec:
the ratio levels, the nine surrogates, the multipliers in order (off-policy mask, a precomputed
entropy mask M^H, the rollout correction rho, the k3 KL with or without bias correction), the aggregations
with GA, S, P, L_max, N and train/eval, and the static entropy bonus. For every loss_type x
importance_sampling_level it is compared with ``learner.losses.policy_loss`` in value and in gradient (w.r.t. the
current log-probs and the entropies) on random float64 batches with ragged masks, holes and all-masked rows, under six
scenarios that together cover all four rollout-correction modes. Then each reference check of tests/README.md gets its
own test. The adaptive-entropy trajectory (the "Aggregation" checks' last item) lives in the learner actor and is not
tested here.
"""

from __future__ import annotations

import math

import pytest
import torch

from relay_rl.learner.losses import (
    LossScale,
    PolicyBatch,
    entropy_threshold,
    importance_ratio,
    k3_kl,
    off_policy_mask,
    policy_loss,
    rollout_is_weights,
)
from relay_rl.learner.methods.grpo import GRPOConfig

F64 = torch.float64
NAN = float("nan")
LOSS_TYPES = ["grpo", "bnpo", "dr_grpo", "dapo", "luspo", "cispo", "sapo", "vespo", "gmpo"]
CLIPPED = ["grpo", "bnpo", "dr_grpo", "dapo", "luspo"]
LEVELS = ["token", "sequence", "sequence_token"]


def close(a, b, rtol=1e-6, atol=1e-10):
    torch.testing.assert_close(a, b, rtol=rtol, atol=atol)


# ---- independent reference, written from the docs -----------------------------------------------------------
def ref_rho(old, beh, mask, mode, c_min, c_max):
    """The rollout correction: Delta = M (log pi_old - log pi_beh), NaN -> 0; token or sequence (product); truncate or
    mask."""
    delta = torch.where((mask > 0) & ~torch.isnan(beh) & ~torch.isnan(old), old - beh, torch.zeros_like(old))
    level, how = mode.split("_")
    rho = delta.exp() if level == "token" else delta.sum(1, keepdim=True).exp()
    lo = -math.inf if c_min is None else c_min
    hi = math.inf if c_max is None else c_max
    if how == "truncate":
        return torch.where(rho < lo, torch.full_like(rho, lo), torch.where(rho > hi, torch.full_like(rho, hi), rho))
    return torch.where((rho >= lo) & (rho <= hi), rho, torch.zeros_like(rho))


def ref_loss(
    cfg,
    logp,
    mask,
    A,
    old=None,
    beh=None,
    refl=None,
    H=None,
    MH=None,
    rho=None,
    GA=1,
    S=1,
    P=1,
    Lmax=8,
    N=1.0,
    train=True,
    c=0.0,
):
    lt, level = cfg.loss_type, cfg.importance_sampling_level
    B, T = logp.shape
    eps_l = cfg.epsilon if cfg.epsilon is not None else (0.4 if lt == "gmpo" else 0.2)
    eps_h = cfg.epsilon_high if cfg.epsilon_high is not None else eps_l
    old = logp.detach() if old is None else old
    ga = GA if train else 1
    A_tok = A if A.dim() == 2 else A[:, None].expand(B, T)
    A_seq = A if A.dim() == 1 else A[:, 0]
    valid = [mask[i] > 0 for i in range(B)]
    n = [int(v.sum()) for v in valid]
    k3 = lambda i: (refl[i] - logp[i]).exp() - (refl[i] - logp[i]) - 1  # noqa: E731
    total = logp.new_zeros(())
    if lt == "gmpo":  # per-sequence geometric mean of the clipped log-ratios, over M^e = M x M^H
        for i in range(B):
            ve = valid[i] if MH is None else valid[i] & (MH[i] > 0)
            lam = logp[i] - old[i]
            if A_seq[i] > 0:  # min(lam, clamp(lam, -eps_l, eps_h)) = min(lam, eps_h)
                lam_bar = torch.where(lam > eps_h, torch.full_like(lam, eps_h), lam)
            else:  # max(lam, clamp(lam, -eps_l, eps_h)) = max(lam, -eps_l)
                lam_bar = torch.where(lam < -eps_l, torch.full_like(lam, -eps_l), lam)
            L_i = -A_seq[i] * (lam_bar[ve].sum() / max(1, int(ve.sum()))).exp()
            if cfg.beta:
                L_i = L_i + cfg.beta * k3(i)[valid[i]].sum() / max(1, n[i])
            total = total + L_i
        loss = total / B / ga
    else:
        lam = logp - old
        if level == "token":
            r = lam.exp()
        else:
            log_s = torch.stack([lam[i][valid[i]].sum() / max(1, n[i]) for i in range(B)])[:, None]
            r = log_s.exp().expand(B, T) if level == "sequence" else (logp - logp.detach() + log_s.detach()).exp()
        if lt in CLIPPED:
            r_cap = torch.where(r > cfg.delta, torch.full_like(r, cfg.delta), r) if cfg.delta is not None else r
            unclipped, clipped = r_cap * A_tok, r.clamp(1 - eps_l, 1 + eps_h) * A_tok
            ell = -torch.where(unclipped < clipped, unclipped, clipped)
        elif lt == "cispo":
            ell = -torch.where(r > eps_h, torch.full_like(r, eps_h), r).detach() * A_tok * logp
        elif lt == "sapo":
            tau = torch.where(
                A_tok > 0,
                torch.tensor(cfg.sapo_temperature_pos, dtype=F64),
                torch.tensor(cfg.sapo_temperature_neg, dtype=F64),
            )
            ell = -(4 / tau) * torch.sigmoid(tau * (r - 1)) * A_tok
        elif lt == "vespo":
            phis = []
            for i in range(B):
                log_w = lam[i].detach()[valid[i]].clamp(-20, 20).sum()
                if rho is not None and rho.shape[1] == T:  # token-level correction folded into w
                    log_w = log_w + rho[i][valid[i]].log().clamp(math.log(1e-8), 20).sum()
                w = log_w.clamp(math.log(1e-8), 20).exp()
                k, Lam = (
                    (cfg.vespo_k_pos, cfg.vespo_lambda_pos)
                    if A_seq[i] >= 0
                    else (cfg.vespo_k_neg, cfg.vespo_lambda_neg)
                )
                phi = w**k * torch.exp(Lam * (1 - w))
                phis.append(phi if torch.isfinite(phi) else torch.zeros_like(phi))
            ell = -torch.stack(phis)[:, None] * A_tok * logp
        # multipliers, in order
        if cfg.off_policy_mask_threshold is not None:
            pi_s = old if beh is None else torch.where(torch.isnan(beh), old, beh)  # pi_beh where available
            keep = []
            for i in range(B):
                k_bar = (pi_s[i] - logp[i].detach())[valid[i]].nan_to_num(0.0).sum() / max(1, n[i])
                keep.append(0.0 if (A_seq[i] < 0 and k_bar > cfg.off_policy_mask_threshold) else 1.0)
            ell = ell * torch.tensor(keep, dtype=F64)[:, None]
        if MH is not None:
            ell = ell * MH
        if rho is not None and lt != "vespo":
            ell = ell * rho
        if cfg.beta:
            D = torch.stack([k3(i) for i in range(B)])
            ell = ell + cfg.beta * (r * D if cfg.use_bias_correction_kl else D)
        row = [ell[i][valid[i]].sum() for i in range(B)]
        if lt in ("grpo", "sapo"):
            loss = sum(row[i] / max(1, n[i]) for i in range(B)) / B / ga
        elif lt == "bnpo":
            loss = sum(row) / max(1, sum(n)) / ga
        elif lt == "dr_grpo":
            loss = sum(row) / (B * Lmax) / ga
        elif lt == "luspo":
            loss = sum(row) / B / ga
        else:  # dapo, cispo, vespo
            loss = sum(row) / (max(N, 1) / P * (GA / S if train else 1))
    if c and H is not None:  # static entropy bonus over M_eff = M x M^H
        m_eff = mask if MH is None else mask * MH
        Hs = torch.cat([H[i][m_eff[i] > 0] for i in range(B)])
        loss = loss - c * Hs.sum() / max(1, Hs.numel()) / ga
    return loss


# ---- random inputs and the two runners ---------------------------------------------------------------------------
def make_inputs(seed, B=6, T=8, per_token_A=False, noise=0.3):
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, generator=g, dtype=F64)  # noqa: E731
    uni = lambda *s: torch.rand(*s, generator=g, dtype=F64)  # noqa: E731
    lengths = torch.tensor([T, T - 3, 0, 3, 1, 0, T - 1, 2, T, 4][:B])
    mask = (torch.arange(T)[None] < lengths[:, None]).to(F64)
    if B > 1 and T > 3:
        mask[0, 2] = mask[1, 1] = 0.0  # holes (tool tokens)
    logp = -(uni(B, T) * 2 + 0.05)
    old = torch.where(mask > 0, logp + noise * rnd(B, T), -3 * uni(B, T))  # garbage (finite) on padding
    beh = old + 0.2 * rnd(B, T)
    beh[uni(B, T) < 0.15] = NAN  # the engine has no log-prob for some tokens
    A = rnd(B, T) if per_token_A else rnd(B)
    if not per_token_A and B >= 4:
        A[0], A[1], A[3] = A[0].abs() + 0.1, -A[1].abs() - 0.1, -A[3].abs() - 0.1
    return dict(
        logp=logp,
        mask=mask,
        A=A,
        old=old,
        beh=beh,
        ref=logp + noise * rnd(B, T),
        H=uni(B, T) * 2,
        MH=(uni(B, T) > 0.35).to(F64) * mask,
    )


def run(fn, cfg, d, *, old=True, beh=True, rho=None, ent_mask=False, c=0.0, GA=1, S=1, P=1, Lmax=8, N=None, train=True):
    """Loss and gradients (w.r.t. log pi_theta and H) of the implementation (fn=None) or of ``ref_loss``."""
    logp, H = d["logp"].clone().requires_grad_(), d["H"].clone().requires_grad_()
    N = float(3 * d["mask"].sum() + 2) if N is None else N
    o, b = (d["old"] if old else None), (d["beh"] if beh else None)
    MH = d["MH"] if ent_mask else None
    if fn is None:
        w = rollout_is_weights(d["old"], d["beh"], d["mask"], *rho)[0] if rho else None
        x = PolicyBatch(
            logprobs_BT=logp,
            mask_BT=d["mask"],
            advantages=d["A"],
            old_logprobs_BT=o,
            behaviour_logprobs_BT=b,
            ref_logprobs_BT=d["ref"],
            entropy_BT=H,
            entropy_mask_BT=MH,
            is_weights=w,
        )
        loss, _ = policy_loss(
            cfg,
            x,
            LossScale(GA=GA, S=S, P=P, max_completion_length=Lmax, num_items_in_batch=N, train=train, entropy_coef=c),
        )
    else:
        w = ref_rho(d["old"], d["beh"], d["mask"], *rho) if rho else None
        loss = fn(cfg, logp, d["mask"], d["A"], o, b, d["ref"], H, MH, w, GA, S, P, Lmax, N, train, c)
    g_logp, g_H = torch.autograd.grad(loss, [logp, H], allow_unused=True)
    return loss.detach(), g_logp, (torch.zeros_like(H) if g_H is None else g_H)


def make_cfg(**kw):
    kw.setdefault("vllm_importance_sampling_correction", False)
    return GRPOConfig(**kw)


SCENARIOS = {
    "plain": dict(cfg={}, run=dict(old=False, beh=False)),
    "token_truncate": dict(
        cfg=dict(
            epsilon=0.2,
            epsilon_high=0.28,
            delta=1.25,
            off_policy_mask_threshold=0.02,
            beta=0.05,
            use_bias_correction_kl=True,
        ),
        run=dict(rho=("token_truncate", 0.8, 1.3), ent_mask=True, c=0.01, GA=2, S=4, P=2, Lmax=12),
    ),
    "sequence_mask": dict(
        cfg=dict(
            epsilon=0.15,
            beta=0.1,
            use_bias_correction_kl=False,
            off_policy_mask_threshold=0.0,
            sapo_temperature_pos=0.7,
            sapo_temperature_neg=1.6,
            vespo_k_pos=1.7,
            vespo_lambda_pos=2.3,
            vespo_k_neg=2.6,
            vespo_lambda_neg=1.3,
        ),
        run=dict(rho=("sequence_mask", 0.5, 2.0), c=0.02, GA=4, S=2, P=1, Lmax=10, train=False),
    ),
    "token_mask": dict(
        cfg=dict(epsilon=0.25, epsilon_high=0.3, delta=1.4, beta=0.02),
        run=dict(rho=("token_mask", None, 1.2), ent_mask=True, GA=3, S=3, P=4),
    ),
    "sequence_truncate": dict(
        cfg=dict(beta=0.2, use_bias_correction_kl=True, off_policy_mask_threshold=0.05),
        run=dict(rho=("sequence_truncate", 0.7, None), ent_mask=True, c=0.05, GA=2, S=1, P=2, Lmax=9),
    ),
    "no_behaviour": dict(  # the off-policy mask falls back to pi_old
        cfg=dict(off_policy_mask_threshold=0.01, epsilon_high=0.3),
        run=dict(beh=False, c=0.03, GA=2, S=2, Lmax=8, train=False),
    ),
}
TYPE_OVERRIDES = {"cispo": dict(epsilon_high=1.1), "gmpo": dict(epsilon=0.1, epsilon_high=0.15)}


def scenario(loss_type, level, name):
    sc = SCENARIOS[name]
    kw = dict(sc["cfg"], loss_type=loss_type, importance_sampling_level=level)
    if name != "plain":
        kw.update(TYPE_OVERRIDES.get(loss_type, {}))
    r = dict(sc["run"])
    if r.get("rho"):
        mode, lo, hi = r["rho"]
        if loss_type == "vespo":  # vespo needs a token-level correction (a config rule)
            mode = mode.replace("sequence", "token")
        r["rho"] = (mode, lo, hi)
        kw.update(
            vllm_importance_sampling_correction=True,
            vllm_importance_sampling_mode=mode,
            vllm_importance_sampling_clip_min=lo,
            vllm_importance_sampling_clip_max=hi,
        )
    return make_cfg(**kw), r


# ---- the implementation against the reference: every loss_type x level, value and gradient -----------------------
@pytest.mark.parametrize("name", list(SCENARIOS))
@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_policy_loss_matches_reference(loss_type, level, name):
    cfg, kw = scenario(loss_type, level, name)
    d = make_inputs(100 * LOSS_TYPES.index(loss_type) + 10 * LEVELS.index(level) + list(SCENARIOS).index(name))
    loss, g, gH = run(None, cfg, d, **kw)
    loss_r, g_r, gH_r = run(ref_loss, cfg, d, **kw)
    close(loss, loss_r)
    close(g, g_r)
    close(gH, gH_r)
    assert g.abs().sum() > 0 and torch.isfinite(g).all()
    assert (g[d["mask"] == 0] == 0).all()  # padding never receives gradient
    assert (gH.abs().sum() > 0) == bool(kw.get("c"))


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("loss_type", CLIPPED + ["cispo", "sapo"])
def test_per_token_advantages_match_reference(loss_type, level):
    cfg, kw = scenario(loss_type, level, "token_mask")  # no off-policy mask: it is defined with a per-row A
    d = make_inputs(7 + LEVELS.index(level), per_token_A=True)
    for a, b in zip(run(None, cfg, d, **kw), run(ref_loss, cfg, d, **kw)):
        close(a, b)


@pytest.mark.parametrize("mode", ["token_truncate", "token_mask", "sequence_truncate", "sequence_mask"])
@pytest.mark.parametrize("clip", [(None, 3.0), (0.6, 1.5), (1.1, None), (0.2, 0.9)])
def test_rollout_is_weights_matches_reference(mode, clip):
    d = make_inputs(11, B=8, T=6)
    rho, _ = rollout_is_weights(d["old"], d["beh"], d["mask"], mode, *clip)
    expect = ref_rho(d["old"], d["beh"], d["mask"], mode, *clip)
    assert rho.shape == ((8, 6) if mode.startswith("token") else (8, 1))
    close(rho, expect, rtol=1e-12, atol=0)


# ---- reference checks: Ratios ----------------------------------------------------------------------------------------
def one_token(cfg, lam, A, logp=-0.7, **kw):
    """l and dl/dlog pi_theta of a single token (B = 1, T = 1, N = GA = S = P = L_max = 1: L_mb = l)."""
    d = dict(
        logp=torch.tensor([[logp]], dtype=F64),
        mask=torch.ones(1, 1, dtype=F64),
        A=torch.tensor([A], dtype=F64),
        old=torch.tensor([[logp - lam]], dtype=F64),
        beh=torch.tensor([[NAN]], dtype=F64),
        ref=torch.tensor([[logp]], dtype=F64),
        H=torch.ones(1, 1, dtype=F64),
        MH=torch.ones(1, 1, dtype=F64),
    )
    loss, g, _ = run(None, cfg, d, N=1.0, Lmax=1, **kw)
    return float(loss), float(g[0, 0])


@pytest.mark.parametrize("level", LEVELS)
def test_shortcut_ratio_is_one_and_grpo_is_reinforce(level):
    d = make_inputs(1)
    r = importance_ratio(d["logp"], d["logp"].detach(), d["mask"], level)
    assert (r == 1).all()
    _, g, _ = run(None, make_cfg(loss_type="grpo", importance_sampling_level=level), d, old=False, beh=False)
    n = d["mask"].sum(1, keepdim=True).clamp(min=1)
    close(g, -d["A"][:, None] * d["mask"] / (n * d["mask"].shape[0]), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_unit_lengths_sequence_equals_token(loss_type):
    d = make_inputs(2, T=1)
    d["mask"] = torch.ones(6, 1, dtype=F64)
    d["MH"] = torch.tensor([[1.0], [0.0], [1.0], [1.0], [0.0], [1.0]], dtype=F64)
    out = {}
    for level in LEVELS:
        cfg, kw = scenario(loss_type, level, "token_truncate")
        out[level] = run(None, cfg, d, **kw)
    for level in ("sequence", "sequence_token"):
        for a, b in zip(out[level], out["token"]):
            close(a, b, rtol=1e-12, atol=1e-15)


def test_gspo_equals_grpo_on_policy():
    d = make_inputs(3)
    d["old"] = d["logp"].clone()
    tok = run(None, make_cfg(loss_type="grpo"), d)
    seq = run(None, make_cfg(loss_type="grpo", importance_sampling_level="sequence"), d)
    for a, b in zip(seq, tok):
        close(a, b, rtol=1e-12, atol=1e-15)
    assert tok[1].abs().sum() > 0


@pytest.mark.parametrize("loss_type", [t for t in LOSS_TYPES if t != "gmpo"])
def test_sequence_token_equals_sequence_with_per_sequence_advantages(loss_type):
    d = make_inputs(4)
    kw = dict(loss_type=loss_type, epsilon_high=1.1 if loss_type == "cispo" else None)
    seq = run(None, make_cfg(importance_sampling_level="sequence", **kw), d)
    st = run(None, make_cfg(importance_sampling_level="sequence_token", **kw), d)
    close(st[0], seq[0], rtol=1e-12, atol=1e-15)
    close(st[1], seq[1], rtol=1e-9, atol=1e-14)
    assert seq[1].abs().sum() > 0


@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "luspo", "sapo"])
def test_sequence_token_differs_with_per_token_advantages(loss_type):
    d = make_inputs(5, per_token_A=True, noise=0.02)  # ratios inside the clip range
    seq = run(None, make_cfg(loss_type=loss_type, importance_sampling_level="sequence"), d)
    st = run(None, make_cfg(loss_type=loss_type, importance_sampling_level="sequence_token"), d)
    close(st[0], seq[0], rtol=1e-12, atol=1e-15)  # same value
    assert not torch.allclose(st[1], seq[1], rtol=1e-3, atol=1e-6)  # different gradient


def test_sequence_ratio_is_padding_invariant_geometric_mean():
    d = make_inputs(6)
    s = importance_ratio(d["logp"], d["old"], d["mask"], "sequence")
    assert s.shape == (6, 1)
    tok = (d["logp"] - d["old"]).exp()
    for i in range(6):
        v = tok[i][d["mask"][i] > 0]
        close(s[i, 0], v.prod() ** (1 / v.numel()) if v.numel() else torch.tensor(1.0, dtype=F64), rtol=1e-12)
    pad = lambda x, fill: torch.cat([x, fill], 1)  # noqa: E731
    garbage = torch.randn(6, 5, dtype=F64, generator=torch.Generator().manual_seed(0))
    s_pad = importance_ratio(
        pad(d["logp"], garbage), pad(d["old"], -garbage.abs()), pad(d["mask"], 0 * garbage), "sequence"
    )
    close(s_pad, s, rtol=1e-12, atol=0)
    close(importance_ratio(d["logp"], d["old"], d["mask"], "sequence_token")[:, :1], s, rtol=1e-12, atol=0)


# ---- reference checks: Surrogates ------------------------------------------------------------------------------------
GRID_R = [0.3, 0.7, 0.79, 0.81, 0.95, 1.0, 1.1, 1.27, 1.29, 1.6, 3.0]


@pytest.mark.parametrize("loss_type", CLIPPED)
def test_clipped_token_gradient(loss_type):
    cfg = make_cfg(loss_type=loss_type, epsilon=0.2, epsilon_high=0.28)
    for A in (1.3, -0.6):
        for r in GRID_R:
            loss, g = one_token(cfg, math.log(r), A)
            assert loss == pytest.approx(-min(r * A, min(max(r, 0.8), 1.28) * A), rel=1e-12)
            if (A > 0 and r > 1.28) or (A < 0 and r < 0.8):
                assert g == 0.0
            else:
                assert g == pytest.approx(-A * r, rel=1e-12)


def test_delta_two_sided_clipping():
    base = make_cfg(loss_type="grpo", epsilon_high=0.28)
    capped = make_cfg(loss_type="grpo", epsilon_high=0.28, delta=2.0)
    for r in GRID_R + [1.9, 2.5, 6.0]:
        assert one_token(capped, math.log(r), 0.9) == pytest.approx(one_token(base, math.log(r), 0.9), rel=1e-12)
        loss, g = one_token(capped, math.log(r), -0.9)
        if r > 2.0:  # l = |A| delta, no gradient
            assert loss == pytest.approx(0.9 * 2.0, rel=1e-12) and g == 0.0
        else:
            assert (loss, g) == pytest.approx(one_token(base, math.log(r), -0.9), rel=1e-12)
            assert r <= 1.28 or g == pytest.approx(0.9 * r, rel=1e-12)


def test_cispo_gradient_never_zeroed():
    cfg = make_cfg(loss_type="cispo", epsilon_high=5.0)
    for A in (0.8, -1.7):
        for r in (0.2, 0.9, 1.0, 3.0, 5.5, 20.0):
            _, g = one_token(cfg, math.log(r), A)
            assert g == pytest.approx(-min(r, 5.0) * A, rel=1e-12) and g != 0.0
        assert one_token(cfg, 0.0, A)[1] == pytest.approx(-A, rel=1e-12)  # r = 1: REINFORCE
    assert one_token(make_cfg(loss_type="cispo"), 0.0, 1.0)[1] == pytest.approx(-0.2, rel=1e-12)  # cap falls to 0.2


@pytest.mark.parametrize("temps", [(1.0, 1.05), (0.5, 2.0)])
def test_sapo_smooth_gate(temps):
    cfg = make_cfg(loss_type="sapo", sapo_temperature_pos=temps[0], sapo_temperature_neg=temps[1])
    for A in (1.4, -0.8):
        tau = temps[0] if A > 0 else temps[1]
        loss, g = one_token(cfg, 0.0, A)
        assert loss == pytest.approx(-2 * A / tau, rel=1e-12) and g == pytest.approx(-A, rel=1e-12)
        for r in GRID_R + [0.01, 10.0]:
            loss, g = one_token(cfg, math.log(r), A)
            assert loss == pytest.approx(-(4 / tau) * A / (1 + math.exp(-tau * (r - 1))), rel=1e-12)
            assert abs(g / r) <= abs(A) * (1 + 1e-12)  # dl/dr = (dl/dlog pi) / r


@pytest.mark.parametrize("knobs", [(2.0, 3.0, 3.0, 2.0), (1.7, 2.3, 2.6, 1.3)])
@pytest.mark.parametrize("A", [1.2, -0.7])
def test_vespo_phi(A, knobs):
    cfg = make_cfg(
        loss_type="vespo",
        vespo_k_pos=knobs[0],
        vespo_lambda_pos=knobs[1],
        vespo_k_neg=knobs[2],
        vespo_lambda_neg=knobs[3],
    )
    k, Lam = knobs[:2] if A >= 0 else knobs[2:]
    ws = [i / 200 for i in range(1, 801)]
    phis = [-one_token(cfg, math.log(w), A, logp=-0.9)[1] / A for w in ws]  # dl/dlog pi = -phi A: phi has no grad
    for w, phi in zip(ws, phis):
        assert phi == pytest.approx(w**k * math.exp(Lam * (1 - w)), rel=1e-9)
    assert -one_token(cfg, 0.0, A)[1] / A == pytest.approx(1.0, rel=1e-12)  # phi(1) = 1
    assert ws[max(range(len(ws)), key=phis.__getitem__)] == pytest.approx(k / Lam, abs=0.005)
    weird = make_cfg(loss_type="vespo", vespo_k_pos=-60.0, vespo_k_neg=-60.0)
    assert one_token(weird, -30.0, A)[1] == 0.0  # non-finite phi becomes 0


def test_vespo_on_policy_is_reinforce_under_dapo_normaliser():
    d = make_inputs(7)
    _, g, _ = run(None, make_cfg(loss_type="vespo"), d, old=False, GA=2, S=4, P=2, N=40.0)
    close(g, -d["A"][:, None] * d["mask"] / (40.0 / 2 * 2 / 4), rtol=1e-12, atol=1e-15)


def test_gmpo_on_policy_gradient_equals_grpo():
    d = make_inputs(8)
    d["old"] = d["logp"].clone()
    g_gmpo = run(None, make_cfg(loss_type="gmpo"), d, GA=2)[1]
    g_grpo = run(None, make_cfg(loss_type="grpo"), d, GA=2)[1]
    close(g_gmpo, g_grpo, rtol=1e-12, atol=1e-15)


def test_gmpo_saturated_weight():
    d = make_inputs(9, B=4)
    d["A"] = torch.tensor([0.5, 1.0, 2.0, 0.1], dtype=F64)
    d["mask"][2, :2] = 1.0  # no empty row (an empty row has no lambda to saturate)
    d["old"] = d["logp"] - 0.4 - torch.rand(4, 8, dtype=F64, generator=torch.Generator().manual_seed(1)) - 1e-3
    loss, g, _ = run(None, make_cfg(loss_type="gmpo"), d)  # default eps_h = 0.4 (log space)
    close(loss, -(d["A"] * math.exp(0.4)).mean(), rtol=1e-12, atol=0)
    assert (g == 0).all()


# ---- reference checks: Multipliers -----------------------------------------------------------------------------------
def test_off_policy_mask_is_ones_when_sampling_equals_current():
    d = make_inputs(10)
    m = off_policy_mask(d["logp"], d["logp"].clone(), d["A"], d["mask"], 0.0)
    assert (m == 1).all()
    d["beh"] = d["logp"].clone()
    with_mask = run(None, make_cfg(loss_type="dapo", off_policy_mask_threshold=0.0), d)
    without = run(None, make_cfg(loss_type="dapo"), d)
    for a, b in zip(with_mask, without):
        close(a, b, rtol=0, atol=0)


def test_off_policy_mask_zero_only_for_negative_advantage_and_large_kl():
    d = make_inputs(11, B=10)
    d["A"][7] = 0.0  # A = 0 counts as non-negative: kept whatever its k
    d["old"][7] = d["beh"][7] = d["logp"][7] + 1.0
    pi_s = torch.where(torch.isnan(d["beh"]), d["old"], d["beh"])
    m = off_policy_mask(d["logp"], pi_s, d["A"], d["mask"], 0.02)
    for i in range(10):
        v = d["mask"][i] > 0
        k_bar = float((pi_s[i] - d["logp"][i])[v].sum()) / max(1, int(v.sum()))
        assert float(m[i].squeeze()) == (0.0 if (d["A"][i] < 0 and k_bar > 0.02) else 1.0)
    assert (m == 0).any() and (m == 1).any() and m[7] == 1


def test_entropy_threshold_keeps_top_fraction():
    H = torch.rand(1000, dtype=F64, generator=torch.Generator().manual_seed(2)) * 2.8 + 0.1
    H[17], H[503] = 0.1, 2.9  # min and max: both round *up* in float32, so tau must stay in float64
    assert int((H >= entropy_threshold(H, 1.0)).sum()) == 1000
    top = H >= entropy_threshold(H, 0.0)
    assert int(top.sum()) == 1 and bool(top[H.argmax()])
    for q in (0.2, 0.5, 0.8):
        tau = entropy_threshold(H, q)
        close(tau.to(F64), torch.quantile(H, 1 - q), rtol=1e-6, atol=0)  # linear interpolation
        assert abs(float((H >= tau).double().mean()) - q) <= 2e-3


def test_rollout_correction_identities():
    d = make_inputs(12, B=8)
    for mode in ("token_truncate", "token_mask", "sequence_truncate", "sequence_mask"):
        for clip in ((0.5, 2.0), (0.5, 1.0), (1.0, 2.0)):  # the mask interval is closed: C_min <= rho <= C_max
            rho, _ = rollout_is_weights(d["old"], d["old"].clone(), d["mask"], mode, *clip)
            assert (rho == 1).all()
    tok, _ = rollout_is_weights(d["old"], d["beh"], d["mask"], "token_mask", None, None)
    seq, _ = rollout_is_weights(d["old"], d["beh"], d["mask"], "sequence_mask", None, None)
    close(seq[:, 0], tok.prod(1), rtol=1e-12, atol=0)  # the product of token ratios, no length normalisation
    for level, raw in (("token", tok), ("sequence", seq)):
        trunc, _ = rollout_is_weights(d["old"], d["beh"], d["mask"], f"{level}_truncate", 0.9, 1.1)
        masked, _ = rollout_is_weights(d["old"], d["beh"], d["mask"], f"{level}_mask", 0.9, 1.1)
        close(trunc, raw.clamp(0.9, 1.1), rtol=1e-12, atol=0)
        close(masked, raw * ((raw >= 0.9) & (raw <= 1.1)), rtol=1e-12, atol=0)
        assert (masked == 0).any() and (masked > 0).any()
    # the sequence mask zeroes a whole row of the policy loss
    masked, _ = rollout_is_weights(d["old"], d["beh"], d["mask"], "sequence_mask", 0.9, 1.1)
    cfg, _ = scenario("grpo", "token", "plain")
    _, g, _ = run(None, cfg, d, rho=("sequence_mask", 0.9, 1.1))
    dropped = (masked[:, 0] == 0) & (d["mask"].sum(1) > 0)
    assert dropped.any() and (g[dropped] == 0).all() and g[~dropped].abs().sum() > 0


def test_k3_properties():
    g = torch.Generator().manual_seed(3)
    logp = (-torch.rand(50, dtype=F64, generator=g) * 4).requires_grad_()
    ref = -torch.rand(50, dtype=F64, generator=g) * 4
    D = k3_kl(logp, ref)
    assert (D > 0).all()
    assert (k3_kl(ref, ref) == 0).all()
    (grad,) = torch.autograd.grad(D.sum(), logp)
    close(grad, 1 - (ref - logp.detach()).exp(), rtol=1e-12, atol=1e-15)


def test_k3_small_vocabulary_identity():
    g = torch.Generator().manual_seed(4)
    logit = lambda: torch.randn(5, dtype=F64, generator=g)  # noqa: E731
    lp_theta, lp_ref, lp_old = logit().log_softmax(0), logit().log_softmax(0), logit().log_softmax(0)
    kl = (lp_theta.exp() * (lp_theta - lp_ref)).sum()
    D = k3_kl(lp_theta, lp_ref)
    r = importance_ratio(lp_theta[None], lp_old[None], torch.ones(1, 5, dtype=F64), "token")[0]
    close((lp_theta.exp() * D).sum(), kl, rtol=1e-12, atol=0)
    close((lp_old.exp() * r * D).sum(), kl, rtol=1e-12, atol=0)
    assert abs(float((lp_old.exp() * D).sum() - kl)) > 1e-3


@pytest.mark.parametrize("loss_type", ["dapo", "grpo", "bnpo"])
def test_bias_corrected_kl_on_policy(loss_type):
    d = make_inputs(13)
    d["old"], d["A"] = d["logp"].clone(), torch.zeros(6, dtype=F64)  # no surrogate term: the loss is beta * agg(D)
    bc = run(None, make_cfg(loss_type=loss_type, beta=0.3, use_bias_correction_kl=True), d, N=30.0)
    plain = run(None, make_cfg(loss_type=loss_type, beta=0.3, use_bias_correction_kl=False), d, N=30.0)
    close(bc[0], plain[0], rtol=1e-12, atol=0)
    m, n = d["mask"], d["mask"].sum(1, keepdim=True).clamp(min=1)
    weight = {"dapo": m / 30.0, "grpo": m / (n * 6), "bnpo": m / m.sum()}[loss_type]
    D = k3_kl(d["logp"], d["ref"])
    close(bc[1] - plain[1], 0.3 * weight * D, rtol=1e-9, atol=1e-15)
    assert (bc[1] - plain[1]).abs().sum() > 1e-4


# ---- reference checks: Aggregation -----------------------------------------------------------------------------------
def test_dr_grpo_constant_normaliser():
    d = make_inputs(14)
    cfg = make_cfg(loss_type="dr_grpo", epsilon_high=0.28)
    l8, l16 = run(None, cfg, d, Lmax=8, GA=2)[0], run(None, cfg, d, Lmax=16, GA=2)[0]
    close(l16, l8 / 2, rtol=1e-12, atol=0)
    token_sum = run(None, make_cfg(loss_type="dapo", epsilon_high=0.28), d, N=1.0)[0]  # sum_it l M
    close(l8 * 6 * 8 * 2, token_sum, rtol=1e-12, atol=0)


def test_dapo_step_loss_is_global_token_mean():
    d = make_inputs(15, B=8)
    cfg = make_cfg(loss_type="dapo", epsilon_high=0.28)
    N = float(d["mask"].sum())
    token_mean = run(None, make_cfg(loss_type="bnpo", epsilon_high=0.28), d)  # one micro-batch = whole batch
    for a, b in zip(run(None, cfg, d, N=N), token_mean):  # bnpo equals dapo when GA = S = P = 1
        close(a, b, rtol=1e-12, atol=1e-15)
    token_mean = token_mean[0]
    mbs = [{k: v[i : i + 2] for k, v in d.items()} for i in range(0, 8, 2)]  # a generation batch of 4 micro-batches
    step = sum(run(None, cfg, mb, GA=4, S=4, N=N)[0] for mb in mbs)  # P = 1, GA = S
    close(step, token_mean, rtol=1e-12, atol=0)
    # S = 2 GA: each step's loss is sum_step / (N / 2)
    first = sum(run(None, cfg, mb, GA=2, S=4, N=N)[0] for mb in mbs[:2])
    step_tokens = run(None, cfg, {k: v[:4] for k, v in d.items()}, N=1.0)[0]  # sum of l M over the step's rows
    close(first, step_tokens / (N / 2), rtol=1e-12, atol=0)
    # P = 2 (each rank 2 of the micro-batches, GA = S = 2; the step averages the ranks) = P = 1 (GA = S = 4)
    g1 = torch.cat([run(None, cfg, mb, GA=4, S=4, P=1, N=N)[1] for mb in mbs])
    g2 = torch.cat([0.5 * run(None, cfg, mb, GA=2, S=2, P=2, N=N)[1] for mb in mbs])
    close(g2, g1, rtol=1e-12, atol=1e-15)
    assert g1.abs().sum() > 0


@pytest.mark.parametrize("loss_type,ratio", [("grpo", 1.0), ("dapo", 9.0), ("bnpo", 9.0), ("luspo", 9.0)])
def test_length_weighting(loss_type, ratio):
    d = make_inputs(17, B=2, T=9)
    d["mask"] = torch.tensor([[1.0] + [0.0] * 8, [1.0] * 9], dtype=F64)
    d["logp"] = torch.full((2, 9), -1.0, dtype=F64)
    d["A"] = torch.ones(2, dtype=F64)
    _, g, _ = run(None, make_cfg(loss_type=loss_type), d, old=False, N=10.0)
    w = g.sum(1)
    assert float(w[1] / w[0]) == pytest.approx(ratio, rel=1e-12)


def test_luspo_sequence_level_is_length_weighted_mean():
    d = make_inputs(18)
    luspo = run(None, make_cfg(loss_type="luspo", importance_sampling_level="sequence", epsilon_high=0.28), d)[0]
    grpo = make_cfg(loss_type="grpo", importance_sampling_level="sequence", epsilon_high=0.28)
    per_seq = [run(None, grpo, {k: v[i : i + 1] for k, v in d.items()})[0] for i in range(6)]  # l_i (B = 1)
    close(luspo, sum(d["mask"][i].sum() * per_seq[i] for i in range(6)) / 6, rtol=1e-12, atol=1e-15)


def test_masked_truncated_row():
    from relay_rl.learner.advantages import compute_advantages

    rewards = torch.tensor([[1.0], [0.0], [0.5], [2.0]], dtype=F64)
    A_all, _ = compute_advantages(rewards, torch.zeros(4), torch.ones(1, dtype=F64))
    A_wo, _ = compute_advantages(rewards[:3], torch.zeros(3), torch.ones(1, dtype=F64))
    assert not torch.allclose(A_all[:3], A_wo)  # the truncated row (3) still shifts its siblings
    d = make_inputs(19, B=4)
    d["A"] = A_all
    d["mask"][3] = 0.0  # mask_truncated_completions zeroes the row: it leaves the loss and N
    N = float(d["mask"].sum())
    cfg = make_cfg(loss_type="dapo", epsilon_high=0.28)
    loss, g, _ = run(None, cfg, d, N=N)
    loss3, g3, _ = run(None, cfg, {k: v[:3] for k, v in d.items()}, N=N)
    close(loss, loss3, rtol=1e-12, atol=0)
    assert (g[3] == 0).all()
    close(g[:3], g3, rtol=1e-12, atol=0)


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_eval_drops_the_ga_factor(loss_type):
    d = make_inputs(20)
    cfg = make_cfg(loss_type=loss_type)
    train = run(None, cfg, d, GA=4, S=2, P=2)
    ev = run(None, cfg, d, GA=4, S=2, P=2, train=False)
    factor = 2.0 if loss_type in ("dapo", "cispo", "vespo") else 4.0  # dapo family: GA/S; the others: GA
    close(ev[0], train[0] * factor, rtol=1e-12, atol=1e-15)
    close(ev[1], train[1] * factor, rtol=1e-12, atol=1e-15)


def test_adaptive_entropy_trajectory():
    """A scripted sequence of H-hat values yields the expected trajectory of c (clamped; no bonus at step 1)."""
    from relay_rl.learner.losses import AdaptiveEntropy

    ae = AdaptiveEntropy(coef=0.01, target=0.2, delta=0.005, coef_min=0.0, coef_max=0.02)
    used, coefs = [], []
    for h in [0.1, 0.1, 0.1, 0.5, 0.5, 0.5, 0.5, 0.15]:
        used.append(ae.coef_for_step())
        ae.update(h)
        coefs.append(round(ae.coef, 6))
    assert used[0] == 0.0  # H-hat starts at +inf: no bonus at step 1
    assert coefs == [0.015, 0.02, 0.02, 0.015, 0.01, 0.005, 0.0, 0.005]  # clamped at max 0.02 and min 0.0
    # a step applies the c left by the previous step, only when the previous H-hat <= target
    assert used[1:] == [0.015, 0.02, 0.02, 0.0, 0.0, 0.0, 0.0]
    static = AdaptiveEntropy(coef=0.01, target=0.2, delta=0.005, coef_min=0.0, coef_max=1.0, adaptive=False)
    static.update(0.0)
    assert static.coef_for_step() == 0.01
