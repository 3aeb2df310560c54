"""Float64 reference checks of the group-relative advantages (docs/methods/grpo.md#advantages and tests/README.md's
reference checks, "Advantages").

``ref_advantages`` below is an independent, loop-based transcription of docs/methods/grpo.md#advantages
(sum_then_normalize
with scale_rewards group / batch / none, normalize_then_sum = GDPO, None -> NaN, unscorable rows, Bessel nanstd with
n <= 1 -> NaN, final NaN -> 0). It is compared with ``learner.advantages.compute_advantages`` on random reward matrices
(several groups, scattered NaNs, an unscorable row, a group with a single scorable row, an all-equal group, shuffled
and non-contiguous group ids); then every "Advantages" reference check (tests/README.md) is checked on hand-made inputs.
"""

from __future__ import annotations

import math

import pytest
import torch

from relay_rl.learner.advantages import compute_advantages

EPS_A = 1e-4
F64 = torch.float64


# ----------------------------------------------------------------------------------------------------------------
# independent reference (python floats, written from the docs)
# ----------------------------------------------------------------------------------------------------------------
def _nanmean(xs):
    v = [x for x in xs if not math.isnan(x)]
    return sum(v) / len(v) if v else math.nan


def _nanstd(xs):
    """Bessel-corrected std over the non-NaN values; NaN when there are <= 1 of them."""
    v = [x for x in xs if not math.isnan(x)]
    if len(v) <= 1:
        return math.nan
    m = sum(v) / len(v)
    return math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1))


def _weighted_sum(row, w):
    """sum_k w_k x_k skipping NaN terms; NaN when every term is NaN."""
    terms = [wk * x for wk, x in zip(w, row) if not math.isnan(x)]
    return sum(terms) if terms else math.nan


def ref_advantages(R, gid, w, scale="group", agg="sum_then_normalize"):
    R, gid, w = R.tolist(), gid.tolist(), w.tolist()
    N, K = len(R), len(w)
    members = {}
    for i, g in enumerate(gid):
        members.setdefault(g, []).append(i)
    unscorable = [all(math.isnan(x) for x in R[i]) for i in range(N)]
    total = [_weighted_sum(R[i], w) for i in range(N)]  # the reported reward: sum_k w_k R_ik
    if agg == "sum_then_normalize":
        A = []
        batch_std = _nanstd(total)
        for i in range(N):
            grp = [total[j] for j in members[gid[i]]]
            a = total[i] - _nanmean(grp)
            if scale == "group":
                a = a / (_nanstd(grp) + EPS_A)
            elif scale == "batch":
                a = a / (batch_std + EPS_A)
            A.append(a)
    else:  # GDPO: per-function group z-scores, weighted sum, batch standardisation
        z = [[math.nan] * K for _ in range(N)]
        for k in range(K):
            for i in range(N):
                col = [R[j][k] for j in members[gid[i]]]
                z[i][k] = (R[i][k] - _nanmean(col)) / (_nanstd(col) + EPS_A)
        # NaN z terms (a None entry, or a group column with <= 1 value) are skipped as in step 1 of the default mode;
        # r_i is NaN only for an unscorable row (TRL 1.16's reading: nansum, then unscorable rows -> NaN).
        r = [
            math.nan if unscorable[i] else sum(wk * x for wk, x in zip(w, z[i]) if not math.isnan(x)) for i in range(N)
        ]
        m, s = _nanmean(r), _nanstd(r)
        A = [(x - m) / (s + EPS_A) for x in r]
    A = [0.0 if math.isnan(a) else a for a in A]
    return torch.tensor(A, dtype=F64), torch.tensor(total, dtype=F64)


def random_rewards(seed, G=4, groups=6, K=3, p_nan=0.2, shuffle=True, special=True):
    g = torch.Generator().manual_seed(seed)
    N = G * groups
    R = torch.randn(N, K, generator=g, dtype=F64) * 2 + torch.rand(K, generator=g, dtype=F64)
    R[torch.rand(N, K, generator=g, dtype=F64) < p_nan] = math.nan
    R[G : 2 * G] = 0.5  # an all-equal group
    if special:
        R[1] = math.nan  # an unscorable row
        R[2 * G + 1 : 3 * G] = math.nan  # a group with a single scorable row
    gid = torch.arange(groups).repeat_interleave(G) * 7 + 3  # non-contiguous labels
    if shuffle:  # group ids are labels: rows need not be consecutive
        perm = torch.randperm(N, generator=g)
        R, gid = R[perm], gid[perm]
    w = torch.tensor([1.0, 0.5, -0.3, 2.0][:K], dtype=F64)
    return R, gid, w


def assert_close(a, b, rtol=1e-9, atol=1e-12):
    torch.testing.assert_close(a, b, rtol=rtol, atol=atol)


# ----------------------------------------------------------------------------------------------------------------
# the implementation against the reference
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize(
    "scale,agg",
    [
        ("group", "sum_then_normalize"),
        ("batch", "sum_then_normalize"),
        ("none", "sum_then_normalize"),
        ("group", "normalize_then_sum"),
        ("none", "normalize_then_sum"),
    ],
)
def test_matches_reference(seed, shuffle, scale, agg):
    R, gid, w = random_rewards(seed, shuffle=shuffle)
    A, r = compute_advantages(R, gid, w, scale, agg)
    A_ref, r_ref = ref_advantages(R, gid, w, scale, agg)
    assert A.dtype == F64 and A.shape == (R.shape[0],)
    assert torch.isfinite(A).all()
    assert_close(A, A_ref)
    torch.testing.assert_close(r, r_ref, rtol=1e-12, atol=1e-12, equal_nan=True)
    assert (A != 0).sum() >= R.shape[0] // 2  # the random case is not degenerate


@pytest.mark.parametrize("agg", ["sum_then_normalize", "normalize_then_sum"])
def test_single_reward_function(agg):
    R, gid, w = random_rewards(7, K=1)
    A, _ = compute_advantages(R, gid, w, "group", agg)
    assert_close(A, ref_advantages(R, gid, w, "group", agg)[0])


def test_unknown_options_raise():
    R, gid, w = random_rewards(0)
    with pytest.raises(ValueError):
        compute_advantages(R, gid, w, "groups", "sum_then_normalize")
    with pytest.raises(ValueError):
        compute_advantages(R, gid, w, "group", "sum")


# ----------------------------------------------------------------------------------------------------------------
# reference checks: "Advantages"
# ----------------------------------------------------------------------------------------------------------------
def test_two_completions_group_scaling():
    """G=2, rewards [0, 1], group scaling: A = ±0.5/(sqrt(0.5) + 1e-4) = ±0.7070068."""
    A, r = compute_advantages(
        torch.tensor([[0.0], [1.0]], dtype=F64), torch.tensor([0, 0]), torch.tensor([1.0], dtype=F64), "group"
    )
    assert_close(A, torch.tensor([-0.7070068, 0.7070068], dtype=F64), rtol=0, atol=5e-8)
    assert_close(A, torch.tensor([-0.5, 0.5], dtype=F64) / (math.sqrt(0.5) + 1e-4))
    assert_close(r, torch.tensor([0.0, 1.0], dtype=F64))


@pytest.mark.parametrize("scale", ["group", "none"])
def test_group_sums_to_zero_and_equal_group_is_zero(scale):
    R, gid, w = random_rewards(3, p_nan=0.1, shuffle=True)  # NaN rows and a single-row group still sum to 0
    A, _ = compute_advantages(R, gid, w, scale)
    for g in gid.unique():
        assert abs(float(A[gid == g].sum())) < 1e-10
    equal = (R == 0.5).all(dim=1)
    assert equal.sum() == 4 and (A[equal] == 0).all()
    assert (A[~equal].abs() > 1e-3).sum() >= 8  # other groups are not trivially zero


def test_batch_scaling_keeps_group_mean_divides_by_batch_std():
    R, gid, w = random_rewards(4, p_nan=0.0, shuffle=False, special=False)
    A, r = compute_advantages(R, gid, w, "batch")
    vals = r.tolist()
    batch_std = float(torch.tensor(vals, dtype=F64).std(unbiased=True))
    for g in gid.unique():
        sel = gid == g
        # A * (batch std + eps) + group mean recovers r
        assert_close(A[sel] * (batch_std + EPS_A) + r[sel].mean(), r[sel])
        assert abs(float(A[sel].sum())) < 1e-10
    A_group, _ = compute_advantages(R, gid, w, "group")
    assert not torch.allclose(A, A_group)  # the divisor really is the batch's, not the group's


@pytest.mark.parametrize(
    "scale,agg",
    [
        ("group", "sum_then_normalize"),
        ("batch", "sum_then_normalize"),
        ("none", "sum_then_normalize"),
        ("group", "normalize_then_sum"),
    ],
)
def test_unscorable_row_is_zero_and_invisible(scale, agg):
    R, gid, w = random_rewards(5, p_nan=0.0, shuffle=False, special=False)
    R[9] = math.nan  # unscorable (all K functions returned None)
    A, r = compute_advantages(R, gid, w, scale, agg)
    assert A[9] == 0 and math.isnan(float(r[9]))
    keep = torch.arange(R.shape[0]) != 9
    A_del, _ = compute_advantages(R[keep], gid[keep], w, scale, agg)
    assert_close(A[keep], A_del)
    assert A[8].abs() > 1e-3  # its siblings are non-trivial


def test_partial_none_counts_as_zero():
    R = torch.tensor([[1.0, math.nan], [0.0, 2.0], [3.0, 1.0], [math.nan, 4.0]], dtype=F64)
    gid = torch.tensor([0, 0, 0, 0])
    w = torch.tensor([1.0, 2.0], dtype=F64)
    A, r = compute_advantages(R, gid, w, "group")
    A0, r0 = compute_advantages(torch.nan_to_num(R, nan=0.0), gid, w, "group")
    assert_close(r, torch.tensor([1.0, 4.0, 5.0, 8.0], dtype=F64))
    assert_close(A, A0)


@pytest.mark.parametrize("c", [0.1, 3.0, 250.0])
def test_weight_scaling_invariance(c):
    R, gid, w = random_rewards(6, p_nan=0.1, shuffle=True)
    A1, r1 = compute_advantages(R, gid, w, "group")
    Ac, rc = compute_advantages(R, gid, w * c, "group")
    assert_close(Ac, A1, rtol=2e-2, atol=1e-3)  # unchanged up to the 1e-4 term
    # and exactly: A_c (c s + eps) / c = A_1 (s + eps), with s the group std of the unit-weight rewards
    for g in gid.unique():
        sel = (gid == g) & ~torch.isnan(r1)
        if sel.sum() < 2:
            continue
        s = float(r1[sel].std(unbiased=True))
        assert_close(Ac[sel] * (c * s + EPS_A) / c, A1[sel] * (s + EPS_A))


def test_gdpo_batch_mean_zero_std_one():
    R, gid, w = random_rewards(8, p_nan=0.0, shuffle=True, special=False)
    A, _ = compute_advantages(R, gid, w, "batch", "normalize_then_sum")
    assert abs(float(A.mean())) < 1e-12
    assert abs(float(A.std(unbiased=True)) - 1.0) < 1e-3
    # GDPO ignores scale_rewards
    for scale in ("group", "none"):
        assert_close(compute_advantages(R, gid, w, scale, "normalize_then_sum")[0], A)


def test_gdpo_single_function_is_batch_standardised_group_z():
    R, gid, w = random_rewards(9, K=1, p_nan=0.0, shuffle=False, special=False)
    w = torch.ones(1, dtype=F64)
    A, _ = compute_advantages(R, gid, w, "group", "normalize_then_sum")
    z = torch.empty(R.shape[0], dtype=F64)
    for g in gid.unique():
        sel = gid == g
        x = R[sel, 0]
        z[sel] = (x - x.mean()) / (x.std(unbiased=True) + EPS_A)
    expect = (z - z.mean()) / (z.std(unbiased=True) + EPS_A)
    assert_close(A, expect)
    # and it differs from plain sum_then_normalize with group scaling (which stops at z)
    assert_close(compute_advantages(R, gid, w, "group")[0], z)
    assert not torch.allclose(A, z)


def test_small_groups_get_zero():
    """Fewer than 2 scorable completions in a group: zero advantages (nanstd of n <= 1 is NaN -> 0)."""
    R = torch.tensor([[1.0], [math.nan], [2.0], [5.0]], dtype=F64)
    gid = torch.tensor([0, 0, 1, 1])
    A, _ = compute_advantages(R, gid, torch.ones(1, dtype=F64), "group")
    assert A[0] == 0 and A[1] == 0 and A[2] < 0 < A[3]
    A_none, _ = compute_advantages(R, gid, torch.ones(1, dtype=F64), "none")
    assert A_none[0] == 0 and A_none[1] == 0 and float(A_none[3]) == pytest.approx(1.5)
