"""Float64 checks of GOLD's cross-tokenizer loss, Universal Logit Distillation (docs/methods/distillation.md,
``use_uld_loss``).

The references below are written independently of ``learner.uld``: byte alignment as the intersection of
the two sets of token-end offsets (random segmentations of one string), group merging and the sorted, zero-padded L1
with plain Python loops over numpy arrays. Then the properties: zero loss for identical inputs, invariance to a
relabelling of either vocabulary, non-negativity, padding when V_s != V_t, the two merge strategies on hand-computed
groups, gradients by ``torch.autograd.gradcheck``, the batch mean and the CE term. A last test, skipped when TRL is
not installed, compares with TRL's own ``ULDLoss`` on a cross-tokenizer example.
"""

from __future__ import annotations

import math
import random
import types

import numpy as np
import pytest
import torch

from relay_rl.learner.uld import (
    alignment_groups,
    completion_ce_loss,
    merge_group_probs,
    merge_groups,
    token_byte_spans,
    token_char_spans,
    uld_batch_loss,
    uld_loss,
    uld_total_loss,
)

F64 = torch.float64
STRATEGIES = ["observed", "bayesian"]


# ----------------------------------------------------------------------------------------------- references
def ref_merge(P: np.ndarray, ids, positions, strategy: str, eps: float = 1e-8) -> list[float]:
    """One group, one side, with loops: base row times the clamped scalar probabilities of the observed tokens."""
    positions = list(positions)
    if strategy == "observed":
        base, scalars = positions[0], positions[1:]
    else:
        base, scalars = positions[-1], positions[:-1]
    factor = 1.0
    for j in scalars:
        factor *= max(float(P[j, int(ids[j])]), eps)
    return [float(P[base, v]) * factor for v in range(P.shape[1])]


def ref_uld(Ps: np.ndarray, ids_s, Pt: np.ndarray, ids_t, groups, strategy: str, top_k=None) -> float:
    """Mean over usable groups of sum_j |sorted_desc(q_s)_j - sorted_desc(q_t)_j|, zero-padded to max(V_s, V_t)."""
    total, n = 0.0, 0
    for sg, tg in groups:
        if not sg or not tg:
            continue
        qs = sorted(ref_merge(Ps, ids_s, sg, strategy), reverse=True)
        qt = sorted(ref_merge(Pt, ids_t, tg, strategy), reverse=True)
        V = max(len(qs), len(qt))
        qs += [0.0] * (V - len(qs))
        qt += [0.0] * (V - len(qt))
        K = V if top_k is None else min(top_k, V)
        total += sum(abs(qs[j] - qt[j]) for j in range(K))
        n += 1
    return total / n if n else 0.0


def ref_alignment(s_pieces: list[str], t_pieces: list[str]) -> list[tuple[list[int], list[int]]]:
    """For two non-empty-token segmentations of the same string: cut at the common token ends."""

    def ends(pieces):
        out, pos = [], 0
        for p in pieces:
            pos += len(p.encode("utf-8"))
            out.append(pos)
        return out

    se, te = ends(s_pieces), ends(t_pieces)
    cuts = sorted(set(se) & set(te))
    groups, prev = [], -1
    for c in cuts:
        groups.append(([i for i, e in enumerate(se) if prev < e <= c], [i for i, e in enumerate(te) if prev < e <= c]))
        prev = c
    return groups


def random_segmentation(text: str, rng: random.Random, p_cut: float) -> list[str]:
    pieces, cur = [], ""
    for ch in text:
        cur += ch
        if rng.random() < p_cut:
            pieces.append(cur)
            cur = ""
    if cur:
        pieces.append(cur)
    return pieces


def rand_logprobs(T: int, V: int, seed: int, scale: float = 2.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.log_softmax(scale * torch.randn(T, V, generator=g, dtype=F64), dim=-1)


def rand_ids(T: int, V: int, seed: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, V, (T,), generator=g).tolist()


def cross_tok_case(seed: int, text: str = "the quick brown fox, 12+34=46!", V_s: int = 14, V_t: int = 114):
    """Random student / teacher segmentations of one text (both with a trailing EOS) and random distributions."""
    rng = random.Random(seed)
    s_pieces = random_segmentation(text, rng, 0.7) + [""]
    t_pieces = random_segmentation(text, rng, 0.3) + [""]
    groups = alignment_groups(token_byte_spans(s_pieces), token_byte_spans(t_pieces))
    T_s, T_t = len(s_pieces), len(t_pieces)
    return dict(
        s_lp=rand_logprobs(T_s, V_s, seed + 1),
        s_ids=rand_ids(T_s, V_s, seed + 2),
        t_lp=rand_logprobs(T_t, V_t, seed + 3),
        t_ids=rand_ids(T_t, V_t, seed + 4),
        groups=groups,
    )


# ----------------------------------------------------------------------------------------------- spans, alignment
def test_byte_spans():
    assert token_byte_spans(["1", "2", "3", ""]) == [(0, 1), (1, 2), (2, 3), (3, 3)]
    assert token_byte_spans(["12", "3", ""]) == [(0, 2), (2, 3), (3, 3)]
    assert token_byte_spans(["h", "é", "llo"]) == [(0, 1), (1, 3), (3, 6)]  # é is 2 UTF-8 bytes
    assert token_byte_spans([b"\xc3", b"\xa9", "x"]) == [(0, 1), (1, 2), (2, 3)]  # raw byte pieces
    assert token_char_spans is token_byte_spans
    assert token_byte_spans([]) == []


def test_alignment_split_token_and_eos():
    groups = alignment_groups(token_byte_spans(["1", "2", "3", ""]), token_byte_spans(["12", "3", ""]))
    assert groups == [([0, 1], [0]), ([2], [1]), ([3], [2])]
    # and symmetrically
    groups = alignment_groups(token_byte_spans(["12", "3", ""]), token_byte_spans(["1", "2", "3", ""]))
    assert groups == [([0], [0, 1]), ([1], [2]), ([2], [3])]


def test_alignment_identical_tokenisations_are_one_to_one():
    pieces = ["The", " cat", " sat", ".", ""]
    spans = token_byte_spans(pieces)
    assert alignment_groups(spans, spans) == [([i], [i]) for i in range(len(pieces))]


def test_alignment_boundaries_coincide_only_at_end():
    assert alignment_groups(token_byte_spans(["ab", "cd"]), token_byte_spans(["a", "bc", "d"])) == [([0, 1], [0, 1, 2])]
    assert alignment_groups(token_byte_spans(["ab", "cd", ""]), token_byte_spans(["a", "bc", "d", ""])) == [
        ([0, 1], [0, 1, 2]),
        ([2], [3]),
    ]


def test_alignment_zero_width_and_length_mismatch():
    # EOS on one side only: dropped
    assert alignment_groups(token_byte_spans(["ab", "c", ""]), token_byte_spans(["a", "bc"])) == [([0, 1], [0, 1])]
    assert alignment_groups(token_byte_spans(["a", "bc"]), token_byte_spans(["ab", "c", ""])) == [([0, 1], [0, 1])]
    # one-sided zero-width token right after a common cut joins the next group; inside an open group it stays there
    assert alignment_groups(token_byte_spans(["ab", "", "c"]), token_byte_spans(["ab", "c"])) == [
        ([0], [0]),
        ([1, 2], [1]),
    ]
    assert alignment_groups(token_byte_spans(["a", "", "bc"]), token_byte_spans(["abc"])) == [([0, 1, 2], [0])]
    # zero-width on both sides at the same offset after a cut: its own 1:1 group
    assert alignment_groups(token_byte_spans(["ab", "", "c"]), token_byte_spans(["a", "b", "", "c"])) == [
        ([0], [0, 1]),
        ([1], [2]),
        ([2], [3]),
    ]
    # student text longer: its tokens past the teacher's end are dropped
    assert alignment_groups(token_byte_spans(["1", "2", "3", "4"]), token_byte_spans(["12"])) == [([0, 1], [0])]
    # unclosed tail (both sides non-empty, different byte ranges): dropped, or kept as TRL does on request
    s_sp, t_sp = token_byte_spans(["a", "b", "c"]), token_byte_spans(["ab", "cd"])
    assert alignment_groups(s_sp, t_sp) == [([0, 1], [0])]
    assert alignment_groups(s_sp, t_sp, keep_unclosed_tail=True) == [([0, 1], [0]), ([2], [1])]
    assert alignment_groups([], token_byte_spans(["a"])) == []
    with pytest.raises(ValueError):
        alignment_groups([(0, 2), (2, 1)], [(0, 2)])


@pytest.mark.parametrize("seed", range(25))
def test_alignment_matches_common_cut_reference(seed):
    rng = random.Random(seed)
    text = "".join(rng.choice("ab cdé€1") for _ in range(rng.randint(1, 40)))
    s_pieces = random_segmentation(text, rng, rng.uniform(0.1, 0.9))
    t_pieces = random_segmentation(text, rng, rng.uniform(0.1, 0.9))
    groups = alignment_groups(token_byte_spans(s_pieces), token_byte_spans(t_pieces))
    assert groups == ref_alignment(s_pieces, t_pieces)
    for sg, tg in groups:  # each group covers the same text on both sides
        assert "".join(s_pieces[i] for i in sg) == "".join(t_pieces[j] for j in tg)
    assert [i for sg, _ in groups for i in sg] == list(range(len(s_pieces)))
    assert [j for _, tg in groups for j in tg] == list(range(len(t_pieces)))


# ----------------------------------------------------------------------------------------------- merging
def test_merge_two_token_group_by_hand():
    probs = torch.tensor([[0.6, 0.3, 0.1], [0.2, 0.5, 0.3]], dtype=F64)
    ids = [0, 1]
    # observed: row 0 times p_1(y_1) = 0.5
    torch.testing.assert_close(
        merge_group_probs(probs, ids, [0, 1], "observed"), torch.tensor([0.30, 0.15, 0.05], dtype=F64)
    )
    # bayesian: p_0(y_0) = 0.6 times row 1
    torch.testing.assert_close(
        merge_group_probs(probs, ids, [0, 1], "bayesian"), torch.tensor([0.12, 0.30, 0.18], dtype=F64)
    )
    # a single token is its own row, under both strategies
    for strategy in STRATEGIES:
        torch.testing.assert_close(merge_group_probs(probs, ids, [1], strategy), probs[1])
    assert merge_group_probs(probs, ids, [], "observed").abs().sum() == 0


def test_merge_three_token_group_by_hand_and_eps():
    probs = torch.tensor([[0.5, 0.25, 0.25], [0.1, 0.8, 0.1], [0.4, 0.4, 0.2]], dtype=F64)
    ids = [2, 1, 0]
    # observed: row 0 * p_1(1) * p_2(0) = row 0 * 0.8 * 0.4
    torch.testing.assert_close(
        merge_group_probs(probs, ids, [0, 1, 2], "observed"), torch.tensor([0.16, 0.08, 0.08], dtype=F64)
    )
    # bayesian: p_0(2) * p_1(1) * row 2 = 0.25 * 0.8 * row 2
    torch.testing.assert_close(
        merge_group_probs(probs, ids, [0, 1, 2], "bayesian"), torch.tensor([0.08, 0.08, 0.04], dtype=F64)
    )
    # the group may sit anywhere in the sequence
    torch.testing.assert_close(merge_group_probs(probs, ids, [1, 2], "observed"), probs[1] * 0.4)
    # scalar factors are clamped at eps
    tiny = torch.tensor([[0.5, 0.5], [1.0, 0.0]], dtype=F64)
    exact = dict(rtol=1e-12, atol=0.0)  # the values are ~1e-9: the default float64 atol would hide them
    torch.testing.assert_close(merge_group_probs(tiny, [0, 1], [0, 1], "observed"), tiny[0] * 1e-8, **exact)
    torch.testing.assert_close(merge_group_probs(tiny, [0, 1], [0, 1], "observed", eps=0.0), tiny[0] * 0.0, **exact)
    # the same clamp in the log-space, all-groups version
    tiny_lp = torch.tensor([[math.log(0.5), math.log(0.5)], [0.0, -80.0]], dtype=F64)
    torch.testing.assert_close(merge_groups(tiny_lp, [0, 1], [[0, 1]], "observed"), tiny[:1] * 1e-8, **exact)
    torch.testing.assert_close(
        merge_groups(tiny_lp, [0, 1], [[0, 1]], "observed", eps=0.0), tiny[:1] * math.exp(-80.0), **exact
    )
    with pytest.raises(ValueError):
        merge_group_probs(probs, ids, [0, 1], "mean")


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_vectorised_merge_matches_reference(strategy):
    case = cross_tok_case(3)
    for lp, ids, side in ((case["s_lp"], case["s_ids"], 0), (case["t_lp"], case["t_ids"], 1)):
        sides = [g[side] for g in case["groups"]]
        assert any(len(g) > 1 for g in sides) or side == 0
        got = merge_groups(lp, ids, sides, strategy)
        P = lp.exp().numpy()
        for gi, g in enumerate(sides):
            np.testing.assert_allclose(got[gi].numpy(), ref_merge(P, ids, g, strategy), rtol=1e-12, atol=1e-300)
            torch.testing.assert_close(got[gi], merge_group_probs(lp.exp(), ids, g, strategy))


# ----------------------------------------------------------------------------------------------- the loss
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_identical_tokenizers_and_distributions_give_zero(strategy):
    lp = rand_logprobs(7, 11, 0)
    ids = rand_ids(7, 11, 1)
    groups = [([i], [i]) for i in range(7)]
    loss, n = uld_loss(lp, ids, lp.clone(), ids, groups, strategy)
    assert n == 7 and loss.item() == 0.0
    # same for merged groups, as long as both sides group alike
    loss, _ = uld_loss(lp, ids, lp.clone(), ids, [([0, 1, 2], [0, 1, 2]), ([3, 4], [3, 4])], strategy)
    assert loss.item() == 0.0


def test_identical_tokenizers_equals_mean_sorted_l1_numpy():
    T, V = 6, 9
    s_lp, t_lp = rand_logprobs(T, V, 10), rand_logprobs(T, V, 11)
    ids = rand_ids(T, V, 12)
    groups = alignment_groups(token_byte_spans(list("abcdef")), token_byte_spans(list("abcdef")))
    ps, pt = np.exp(s_lp.numpy()), np.exp(t_lp.numpy())
    ref = np.mean([np.abs(-np.sort(-ps[t]) - (-np.sort(-pt[t]))).sum() for t in range(T)])
    for strategy in STRATEGIES:
        loss, n = uld_loss(s_lp, ids, t_lp, ids, groups, strategy)
        assert n == T
        assert loss.item() == pytest.approx(ref, rel=1e-12)
    assert ref > 0.1  # a non-trivial case


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_cross_tokenizer_loss_matches_loop_reference(seed, strategy):
    case = cross_tok_case(seed)
    assert any(len(sg) > 1 or len(tg) > 1 for sg, tg in case["groups"])
    loss, n = uld_loss(case["s_lp"], case["s_ids"], case["t_lp"], case["t_ids"], case["groups"], strategy)
    ref = ref_uld(
        case["s_lp"].exp().numpy(), case["s_ids"], case["t_lp"].exp().numpy(), case["t_ids"], case["groups"], strategy
    )
    assert n == len(case["groups"])
    assert loss.item() == pytest.approx(ref, rel=1e-12)
    for top_k in (1, 5, 500):
        loss_k, _ = uld_loss(
            case["s_lp"], case["s_ids"], case["t_lp"], case["t_ids"], case["groups"], strategy, top_k=top_k
        )
        ref_k = ref_uld(
            case["s_lp"].exp().numpy(),
            case["s_ids"],
            case["t_lp"].exp().numpy(),
            case["t_ids"],
            case["groups"],
            strategy,
            top_k=top_k,
        )
        assert loss_k.item() == pytest.approx(ref_k, rel=1e-12)


def test_strategies_differ_on_split_tokens():
    case = cross_tok_case(0)
    a, _ = uld_loss(case["s_lp"], case["s_ids"], case["t_lp"], case["t_ids"], case["groups"], "observed")
    b, _ = uld_loss(case["s_lp"], case["s_ids"], case["t_lp"], case["t_ids"], case["groups"], "bayesian")
    assert abs(a.item() - b.item()) > 1e-6


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_invariant_to_vocabulary_permutation(strategy):
    case = cross_tok_case(5)
    base, _ = uld_loss(case["s_lp"], case["s_ids"], case["t_lp"], case["t_ids"], case["groups"], strategy)
    g = torch.Generator().manual_seed(99)
    V_t = case["t_lp"].size(-1)
    perm = torch.randperm(V_t, generator=g)  # new column k holds old token perm[k]
    inv = torch.argsort(perm)  # old token i now sits at column inv[i]
    t_lp_perm = case["t_lp"][:, perm]
    t_ids_perm = [int(inv[i]) for i in case["t_ids"]]
    perm_loss, _ = uld_loss(case["s_lp"], case["s_ids"], t_lp_perm, t_ids_perm, case["groups"], strategy)
    assert perm_loss.item() == pytest.approx(base.item(), rel=1e-12)
    # and of the student's
    V_s = case["s_lp"].size(-1)
    perm_s = torch.randperm(V_s, generator=g)
    inv_s = torch.argsort(perm_s)
    perm_loss, _ = uld_loss(
        case["s_lp"][:, perm_s],
        [int(inv_s[i]) for i in case["s_ids"]],
        case["t_lp"],
        case["t_ids"],
        case["groups"],
        strategy,
    )
    assert perm_loss.item() == pytest.approx(base.item(), rel=1e-12)
    # a non-sorting L1 would not be invariant: sanity check that the permutation is not trivial
    assert not torch.equal(perm, torch.arange(V_t))


@pytest.mark.parametrize("seed", range(10))
def test_loss_is_non_negative(seed):
    case = cross_tok_case(seed, V_s=5 + seed, V_t=3 + 2 * seed)
    for strategy in STRATEGIES:
        loss, _ = uld_loss(case["s_lp"], case["s_ids"], case["t_lp"], case["t_ids"], case["groups"], strategy)
        assert loss.item() >= 0.0


def test_padding_to_common_vocabulary_size():
    V_s, V_t, T = 14, 114, 4
    s_lp, t_lp = rand_logprobs(T, V_s, 20, scale=3.0), rand_logprobs(T, V_t, 21, scale=3.0)
    ids_s, ids_t = rand_ids(T, V_s, 22), rand_ids(T, V_t, 23)
    groups = [([i], [i]) for i in range(T)]
    ps, pt = np.exp(s_lp.numpy()), np.exp(t_lp.numpy())
    ref = 0.0
    for t in range(T):
        a = np.concatenate([np.sort(ps[t])[::-1], np.zeros(V_t - V_s)])
        b = np.sort(pt[t])[::-1]
        ref += np.abs(a - b).sum() / T
    loss, _ = uld_loss(s_lp, ids_s, t_lp, ids_t, groups)
    assert loss.item() == pytest.approx(ref, rel=1e-12)
    # swapped roles (the student has the larger vocabulary) give the same number: L1 is symmetric
    loss_sw, _ = uld_loss(t_lp, ids_t, s_lp, ids_s, groups)
    assert loss_sw.item() == pytest.approx(ref, rel=1e-12)
    # the padded tail matters: dropping it (comparing only the first V_s entries) gives a smaller number
    trunc, _ = uld_loss(s_lp, ids_s, t_lp, ids_t, groups, top_k=V_s)
    assert trunc.item() < loss.item()


def test_no_groups_and_empty_sides():
    lp = rand_logprobs(3, 5, 0).requires_grad_()
    loss, n = uld_loss(lp, [0, 1, 2], rand_logprobs(2, 7, 1), [0, 1], [])
    assert n == 0 and loss.item() == 0.0
    loss.backward()
    assert lp.grad is not None and lp.grad.abs().sum() == 0
    # pairs with an empty side are skipped
    t_lp = rand_logprobs(2, 7, 1)
    a, n = uld_loss(lp.detach(), [0, 1, 2], t_lp, [0, 1], [([0], [0]), ([1, 2], [])])
    b, _ = uld_loss(lp.detach(), [0, 1, 2], t_lp, [0, 1], [([0], [0])])
    assert n == 1 and a.item() == b.item()
    with pytest.raises(ValueError):
        uld_loss(lp.detach(), [0, 1, 2], t_lp, [0, 1], [([0], [0])], strategy="last")
    with pytest.raises(ValueError):
        uld_loss(lp.detach(), [0, 1, 2], t_lp, [0, 1], [([0], [0])], top_k=0)


# ----------------------------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("top_k", [None, 3])
def test_gradcheck_student_logprobs(strategy, top_k):
    case = cross_tok_case(1, text="ab cd+ef", V_s=5, V_t=8)
    assert any(len(sg) > 1 for sg, _ in case["groups"]) or any(len(tg) > 1 for _, tg in case["groups"])
    s_lp = case["s_lp"].clone().requires_grad_()

    def f(x):
        return uld_loss(x, case["s_ids"], case["t_lp"], case["t_ids"], case["groups"], strategy, top_k)[0]

    assert torch.autograd.gradcheck(f, (s_lp,), eps=1e-6, atol=1e-8, rtol=1e-6)


def test_gradcheck_split_student_tokens_both_strategies():
    # student splits every teacher token, so the scalar factors of the student side carry gradient
    s_pieces, t_pieces = ["a", "b", "c", "d", ""], ["ab", "cd", ""]
    groups = alignment_groups(token_byte_spans(s_pieces), token_byte_spans(t_pieces))
    assert groups == [([0, 1], [0]), ([2, 3], [1]), ([4], [2])]
    s_lp = rand_logprobs(5, 4, 30).requires_grad_()
    t_lp = rand_logprobs(3, 6, 31)
    s_ids, t_ids = [1, 2, 0, 3, 1], [4, 0, 2]
    for strategy in STRATEGIES:
        assert torch.autograd.gradcheck(
            lambda x, strategy=strategy: uld_loss(x, s_ids, t_lp, t_ids, groups, strategy)[0],
            (s_lp,),
            eps=1e-6,
            atol=1e-8,
            rtol=1e-6,
        )
        # the observed tokens' own entries get gradient through the scalar factors
        s_lp.grad = None
        uld_loss(s_lp, s_ids, t_lp, t_ids, groups, strategy)[0].backward()
        scalar_row = 1 if strategy == "observed" else 0
        assert s_lp.grad[scalar_row, s_ids[scalar_row]].abs() > 0


def test_teacher_is_constant_and_dtype_follows_student():
    case = cross_tok_case(2)
    s_lp = case["s_lp"].clone().requires_grad_()
    t_lp = case["t_lp"].float().requires_grad_()
    loss, _ = uld_loss(s_lp, case["s_ids"], t_lp, case["t_ids"], case["groups"])
    assert loss.dtype == F64
    loss.backward()
    assert t_lp.grad is None
    assert s_lp.grad is not None and s_lp.grad.abs().sum() > 0


# ----------------------------------------------------------------------------------------------- batch, CE, total
def test_batch_mean_counts_rows_without_groups():
    cases = [cross_tok_case(s) for s in range(3)]
    s_lps = [c["s_lp"].clone().requires_grad_() for c in cases]
    args = ([c["s_ids"] for c in cases], [c["t_lp"] for c in cases], [c["t_ids"] for c in cases])
    groups = [c["groups"] for c in cases]
    groups[1] = []  # this row has nothing aligned
    loss, counts = uld_batch_loss(s_lps, args[0], args[1], args[2], groups, "bayesian")
    per_row = [
        ref_uld(c["s_lp"].exp().numpy(), c["s_ids"], c["t_lp"].exp().numpy(), c["t_ids"], g, "bayesian")
        for c, g in zip(cases, groups)
    ]
    assert counts == [len(groups[0]), 0, len(groups[2])]
    assert loss.item() == pytest.approx(sum(per_row) / 3, rel=1e-12)
    loss.backward()
    assert s_lps[1].grad.abs().sum() == 0 and s_lps[0].grad.abs().sum() > 0
    with pytest.raises(ValueError):
        uld_batch_loss([], [], [], [], [])


def test_ce_term_and_total():
    s_lps = [rand_logprobs(4, 6, 40), rand_logprobs(2, 6, 41)]
    s_ids = [[1, 5, 0, 2], [3, 3]]
    ref_ce = -sum(float(lp[t, y]) for lp, ids in zip(s_lps, s_ids) for t, y in enumerate(ids)) / 6
    ce = completion_ce_loss(s_lps, s_ids)
    assert ce.item() == pytest.approx(ref_ce, rel=1e-12)
    # check against torch's own cross entropy on the concatenation (token mean)
    torch.testing.assert_close(ce, torch.nn.functional.nll_loss(torch.cat(s_lps), torch.tensor(sum(s_ids, []))))
    with pytest.raises(ValueError):
        completion_ce_loss([s_lps[0]], [[1, 2]])

    t_lps = [rand_logprobs(2, 9, 42), rand_logprobs(1, 9, 43)]
    t_ids = [[0, 1], [2]]
    groups = [
        alignment_groups(token_byte_spans(["a", "b", "c", "d"]), token_byte_spans(["ab", "cd"])),
        alignment_groups(token_byte_spans(["x", "y"]), token_byte_spans(["xy"])),
    ]
    uld, _ = uld_batch_loss(s_lps, s_ids, t_lps, t_ids, groups)
    total, uld_part, ce_part = uld_total_loss(s_lps, s_ids, t_lps, t_ids, groups)
    assert total.item() == pytest.approx(uld.item(), rel=1e-14) and ce_part.item() == 0.0  # defaults 1.0 / 0.0
    total, uld_part, ce_part = uld_total_loss(
        s_lps, s_ids, t_lps, t_ids, groups, distillation_weight=0.5, crossentropy_weight=0.25
    )
    assert uld_part.item() == pytest.approx(uld.item(), rel=1e-14)
    assert ce_part.item() == pytest.approx(ref_ce, rel=1e-12)
    assert total.item() == pytest.approx(0.5 * uld.item() + 0.25 * ref_ce, rel=1e-12)
    # CE may use other (untempered) log-probs
    other = [lp * 0.5 for lp in s_lps]
    _, _, ce_other = uld_total_loss(s_lps, s_ids, t_lps, t_ids, groups, crossentropy_weight=1.0, ce_logprobs=other)
    assert ce_other.item() == pytest.approx(ref_ce * 0.5, rel=1e-12)
    # gradient of the total through both terms
    x = s_lps[0].clone().requires_grad_()
    assert torch.autograd.gradcheck(
        lambda a: uld_total_loss([a, s_lps[1]], s_ids, t_lps, t_ids, groups, crossentropy_weight=0.3)[0],
        (x,),
        eps=1e-6,
        atol=1e-8,
        rtol=1e-6,
    )


# ----------------------------------------------------------------------------------------------- TRL parity
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_matches_trl_uld_loss(strategy):
    """TRL's ULDLoss (extended ULD, EOS kept) on one cross-tokenizer row. TRL's "bayesian" slice is the shifted one
    (row t predicts token t); its "observed" slice is unshifted, which these functions reproduce when given it."""
    gold = pytest.importorskip("trl.experimental.gold.gold_trainer")
    cfg = types.SimpleNamespace(
        uld_crossentropy_weight=0.0,
        uld_distillation_weight=1.0,
        uld_student_temperature=1.0,
        uld_teacher_temperature=1.0,
        uld_skip_student_eos=False,
        uld_skip_teacher_eos=False,
        use_extended_uld=True,
        uld_token_merge_strategy=strategy,
        uld_use_hybrid_loss=False,
        beta=1.0,
    )
    trl_loss = gold.ULDLoss(cfg)

    rng = random.Random(7)
    text = "12+34=46, ok"
    s_pieces = random_segmentation(text, rng, 0.6) + [""]
    t_pieces = random_segmentation(text, rng, 0.3) + [""]
    P, V_s, V_t = 3, 14, 114  # prompt length, vocabularies
    T_s, T_t = len(s_pieces), len(t_pieces)
    g = torch.Generator().manual_seed(0)
    s_logits = torch.randn(1, P + T_s, V_s, generator=g, dtype=F64) * 2
    t_logits = torch.randn(1, P + T_t, V_t, generator=g, dtype=F64) * 2
    s_ids = torch.randint(0, V_s, (1, P + T_s), generator=g)
    t_ids = torch.randint(0, V_t, (1, P + T_t), generator=g)
    s_labels, t_labels = s_ids.clone(), t_ids.clone()
    s_labels[:, :P] = -100
    t_labels[:, :P] = -100
    s_spans, t_spans = token_byte_spans(s_pieces), token_byte_spans(t_pieces)
    s_off = torch.tensor([[(0, 0)] * P + s_spans])
    t_off = torch.tensor([[(0, 0)] * P + t_spans])
    expected = trl_loss(s_logits, t_logits, s_labels, t_labels, s_ids, t_ids, s_off, t_off)

    shift = 1 if strategy == "bayesian" else 0
    s_lp = torch.log_softmax(s_logits[0, P - shift : P + T_s - shift], -1)
    t_lp = torch.log_softmax(t_logits[0, P - shift : P + T_t - shift], -1)
    groups = alignment_groups(s_spans, t_spans)
    assert any(len(sg) > 1 for sg, _ in groups) and any(len(tg) > 1 for _, tg in groups)
    ours, _ = uld_loss(s_lp, s_ids[0, P:], t_lp, t_ids[0, P:], groups, strategy)
    assert ours.item() == pytest.approx(float(expected), rel=1e-10)
