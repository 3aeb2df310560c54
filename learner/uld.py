"""GOLD's cross-tokenizer loss, Universal Logit Distillation (``use_uld_loss``), as pure functions
(docs/methods/distillation.md).

Student and teacher tokenise the same completion text differently and have different vocabularies, so their
distributions cannot be compared entry by entry. ULD (Boizard et al., 2024; GOLD's extended variant in TRL's
``trl/experimental/gold/gold_trainer.py``) does three things:

1. Alignment (``alignment_groups``): walk the two token sequences over a shared byte axis and cut them into the
   minimal groups ``(S_g, T_g)`` of consecutive student / teacher token indices that cover the same byte range.
2. Merging (``merge_group_probs``, ``merge_groups``): turn each side of a group into one probability vector
   ``q_g`` over that side's vocabulary ("observed" or "bayesian", see ``merge_group_probs``).
3. Sorted L1 (``uld_loss``): sort ``q^s_g`` and ``q^t_g`` in descending order, zero-pad both to ``V = max(V_s, V_t)``
   (optionally keep only the first ``top_k`` entries) and take the L1 distance; average over the sequence's groups:

       ULD_b = (1 / G_b) * sum_g sum_{j < V} | sort_desc(q^s_g)_j - sort_desc(q^t_g)_j |

   and over the batch: ULD = (1 / B) * sum_b ULD_b (a row with no group contributes 0 but counts).
   Total (``uld_total_loss``) = ``uld_distillation_weight`` (1.0) * ULD + ``uld_crossentropy_weight`` (0.0) * CE,
   CE being the student's NLL of its own completion tokens, token mean over the micro-batch.

Sorting makes the loss invariant to any relabelling of either vocabulary, which is the point of ULD.

Conventions (read these before calling):

* Position t's distribution is the one that *predicted* token t (``logprobs_TV[t] = log p(. | prefix, y_<t)``), i.e.
  the caller has already shifted the logits (``logits[:, prompt_len - 1 + t]`` for completion token t) and applied
  the temperature (``log_softmax(logits / tau)``; GOLD's ``uld_student_temperature`` / ``uld_teacher_temperature``).
  TRL's "bayesian" path uses exactly this slice. TRL's "observed" path slices ``logits[start : start + size]``
  without the shift, so its "distribution at token t" is the one that predicts token t+1, and its scalar factors
  ``p_t(y_t)`` are evaluated one position late. We follow the spec's convention for both strategies (the merge
  formulas below are the ones TRL documents); passing unshifted log-probs reproduces TRL's "observed" numbers.
* The functions take *log*-probabilities (``uld_loss``, ``merge_groups``, ``completion_ce_loss``) except
  ``merge_group_probs`` (the one-group reference), which takes probabilities. Everything works in any float dtype;
  the teacher side is cast to the student's dtype/device and detached (it is a constant).
* TRL drops each side's trailing EOS by default (``uld_skip_student_eos`` / ``uld_skip_teacher_eos`` = True). Here
  the caller chooses which completion tokens to pass; when both sides keep a zero-width EOS at the end it becomes
  its own 1:1 group, when only one side keeps it, it is dropped (see ``alignment_groups``).

Not here: TRL's hybrid ULD+JSD variant (``uld_use_hybrid_loss``), the non-extended positional mode
(``use_extended_uld=False``; equivalent to passing 1:1 groups ``([i], [i])`` for ``i < min(T_s, T_t)``), and
TRL's drop of the first group when a "bayesian" answer span starts at index 0 (the caller supplies distributions
for every passed token, so there is nothing to drop).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Optional, Union

import torch
import torch.nn.functional as F

Tensor = torch.Tensor
Span = tuple[int, int]
Group = tuple[list[int], list[int]]  # (student token indices, teacher token indices), both consecutive
TokenIds = Union[Sequence[int], Tensor]

STRATEGIES = ("observed", "bayesian")
DEFAULT_EPS = 1e-8  # TRL clamps the scalar factors p_i(y_i) at 1e-8 before multiplying them in


def token_byte_spans(pieces: Sequence[Union[str, bytes]]) -> list[Span]:
    """Half-open byte spans ``[start, end)`` of consecutive decoded token pieces (cumulative lengths).

    A ``str`` piece counts ``len(piece.encode("utf-8"))`` bytes, a ``bytes`` piece ``len(piece)``; for ASCII text
    bytes and characters coincide. ``""`` (e.g. an EOS decoded with special tokens skipped) gives a zero-width span
    ``(e, e)`` at the current offset. The pieces must concatenate to the completion text: a byte-level BPE token that
    splits a multi-byte character decodes on its own to U+FFFD (3 bytes), which breaks that; pass the raw bytes of
    such tokens, or use the fast tokenizer's offset mapping converted to bytes, instead.

    Example: ``["12", "3", ""] -> [(0, 2), (2, 3), (3, 3)]``.
    """
    spans: list[Span] = []
    pos = 0
    for piece in pieces:
        n = len(piece) if isinstance(piece, (bytes, bytearray)) else len(piece.encode("utf-8"))
        spans.append((pos, pos + n))
        pos += n
    return spans


token_char_spans = token_byte_spans  # the brief's name; the offsets are UTF-8 bytes (= characters for ASCII)


def _ends(spans: Sequence[Sequence[int]], side: str) -> list[int]:
    ends = [int(sp[1]) for sp in spans]
    for a, b in zip(ends, ends[1:]):
        if b < a:
            raise ValueError(f"{side} span ends must be non-decreasing (completion tokens only, in order): {ends}")
    return ends


def alignment_groups(
    student_spans: Sequence[Sequence[int]], teacher_spans: Sequence[Sequence[int]], *, keep_unclosed_tail: bool = False
) -> list[Group]:
    """Minimal groups of consecutive student / teacher token indices that cover the same byte range.

    Only the span *ends* are used (as in TRL's ``_align_by_byte_offsets``): walk both sequences, advancing the side
    whose current token ends earlier; when both current tokens end at the same offset, both advance and the group
    accumulated since the last cut closes. So a group closes exactly where both tokenisations have a boundary at the
    same offset, and no smaller grouping covers equal byte ranges.

    Zero-width tokens (span ``(e, e)``):

    * both sides have one at the same offset right after a common cut (e.g. a trailing EOS on both sides): it is its
      own 1:1 group ``([i], [j])``;
    * one side only, right after a common cut: it joins the next group (it ends at ``e`` while the other side's
      current token ends later), e.g. a stray special token in the middle of the text;
    * one side only, inside an open group: it joins that group;
    * one side only, at the very end (e.g. an EOS the other side does not have): dropped with the tail below.

    Tail: once one side is exhausted, the remaining tokens cannot be matched. They are dropped, so tokens past the
    other side's end (length mismatch, truncation, one-sided EOS) do not enter the loss. TRL instead appends the
    unclosed remainder as a last group and keeps it when both of its sides are non-empty, even though the two sides
    then cover different byte ranges; ``keep_unclosed_tail=True`` reproduces that.

    student_spans: (T_s, 2) byte spans of the student's completion tokens; teacher_spans: (T_t, 2) likewise, in the
    same byte coordinates (both relative to the start of the completion text).
    Returns: ``[(student_indices, teacher_indices), ...]`` in text order; every returned side is non-empty.
    Example: student ``["1","2","3",""]`` vs teacher ``["12","3",""]`` -> ``[([0,1],[0]), ([2],[1]), ([3],[2])]``.
    """
    s_end, t_end = _ends(student_spans, "student"), _ends(teacher_spans, "teacher")
    n_s, n_t = len(s_end), len(t_end)
    groups: list[Group] = []
    s = t = s0 = t0 = 0
    while s < n_s and t < n_t:
        if s_end[s] < t_end[t]:
            s += 1
        elif t_end[t] < s_end[s]:
            t += 1
        else:  # common boundary: close the group
            s, t = s + 1, t + 1
            groups.append((list(range(s0, s)), list(range(t0, t))))
            s0, t0 = s, t
    if keep_unclosed_tail and s0 < n_s and t0 < n_t:
        groups.append((list(range(s0, n_s)), list(range(t0, n_t))))
    return groups


def _check_strategy(strategy: str) -> None:
    if strategy not in STRATEGIES:
        raise ValueError(f"token merge strategy must be one of {STRATEGIES}, got {strategy!r}")


def _split_group(positions: Sequence[int], strategy: str) -> tuple[int, list[int]]:
    """(position whose full distribution is kept, positions contributing a scalar factor)."""
    if strategy == "observed":
        return positions[0], list(positions[1:])
    return positions[-1], list(positions[:-1])


def merge_group_probs(
    probs_TV: Tensor,
    token_ids: TokenIds,
    positions: Sequence[int],
    strategy: str = "observed",
    eps: float = DEFAULT_EPS,
) -> Tensor:
    """One side of one group as a single (unnormalised) probability vector; the one-group reference version.

    probs_TV: (T, V) *probabilities* of one side, ``probs_TV[t] = p(. | prefix, y_<t)`` (the distribution that
    predicted token t). token_ids: (T,) that side's observed tokens y. positions: the side's token indices of the
    group, consecutive ``[i, ..., i+k]``. Returns (V,).

    * 1 token: ``probs_TV[i]``.
    * "observed" (TRL's default): the marginal at the group's FIRST position times the scalar conditional
      probabilities of the actual later tokens, ``q(v) = p_i(v) * prod_{j=i+1..i+k} p_j(y_j)``. An approximation of
      the joint ``p(v, y_{i+1}, ..., y_{i+k})``: the later factors are conditioned on the observed ``y_i``, not on v.
    * "bayesian": the full distribution at the LAST position (conditioned on the actual prefix) times the scalar
      probabilities of the actual earlier tokens, ``q(v) = prod_{j=i..i+k-1} p_j(y_j) * p_{i+k}(v)``: by the chain
      rule, the exact joint probability of "the observed prefix of the group, then v".
    * 0 tokens: zeros (as TRL; ``alignment_groups`` never produces an empty side).

    Each scalar factor is clamped below at ``eps`` (TRL: 1e-8; ``eps=0`` disables). Neither result is renormalised.
    """
    _check_strategy(strategy)
    if len(positions) == 0:
        return torch.zeros_like(probs_TV[0])
    base, scalar_positions = _split_group(positions, strategy)
    out = probs_TV[base]
    for j in scalar_positions:
        factor = probs_TV[j, int(token_ids[j])]
        out = out * (factor.clamp_min(eps) if eps > 0 else factor)
    return out


def merge_groups(
    logprobs_TV: Tensor,
    token_ids: TokenIds,
    groups_one_side: Sequence[Sequence[int]],
    strategy: str = "observed",
    eps: float = DEFAULT_EPS,
) -> Tensor:
    """``merge_group_probs`` for all groups of one side at once, computed in log space.

    logprobs_TV: (T, V) *log*-probabilities, row t predicting token t; token_ids: (T,); groups_one_side: G non-empty
    lists of positions. Returns (G, V) merged probabilities
    ``exp(logprobs_TV[base_g] + sum_{j in scalars_g} max(logprobs_TV[j, y_j], log eps))``, equal to
    ``merge_group_probs(logprobs_TV.exp(), ...)`` group by group, differentiable w.r.t. ``logprobs_TV``.
    """
    _check_strategy(strategy)
    G = len(groups_one_side)
    device = logprobs_TV.device
    if G == 0:
        return logprobs_TV.new_zeros((0, logprobs_TV.size(-1)))
    if any(len(g) == 0 for g in groups_one_side):
        raise ValueError("merge_groups needs non-empty groups")
    bases, scalar_pos, seg = [], [], []
    for gi, g in enumerate(groups_one_side):
        base, scal = _split_group(list(g), strategy)
        bases.append(base)
        scalar_pos.extend(scal)
        seg.extend([gi] * len(scal))
    log_q_GV = logprobs_TV[torch.tensor(bases, dtype=torch.long, device=device)]  # (G, V)
    if scalar_pos:
        ids_T = torch.as_tensor(token_ids, dtype=torch.long, device=device).reshape(-1)
        pos_N = torch.tensor(scalar_pos, dtype=torch.long, device=device)
        lp_N = logprobs_TV[pos_N, ids_T[pos_N]]  # (N,) log p_j(y_j)
        if eps > 0:
            lp_N = lp_N.clamp_min(math.log(eps))
        log_scale_G = lp_N.new_zeros(G).index_add(0, torch.tensor(seg, dtype=torch.long, device=device), lp_N)
        log_q_GV = log_q_GV + log_scale_G[:, None]
    return log_q_GV.exp()


def sorted_l1(q_s_GV: Tensor, q_t_GV: Tensor, top_k: Optional[int] = None) -> Tensor:
    """Per-group ULD distance: (G, V_s), (G, V_t) probability vectors -> (G,).

    Both sorted in descending order along the vocabulary axis, zero-padded to ``V = max(V_s, V_t)`` (probabilities
    are >= 0, so the padding stays at the tail of the order), cut to the first ``top_k`` entries when given
    (``top_k >= V`` changes nothing), then ``sum_j |s_j - t_j|``.
    """
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1 or None, got {top_k}")
    s = q_s_GV.sort(dim=-1, descending=True).values
    t = q_t_GV.sort(dim=-1, descending=True).values
    V = max(s.size(-1), t.size(-1))
    s = F.pad(s, (0, V - s.size(-1)))
    t = F.pad(t, (0, V - t.size(-1)))
    if top_k is not None:
        s, t = s[..., :top_k], t[..., :top_k]
    return (s - t).abs().sum(-1)


def uld_loss(
    student_logprobs_TV: Tensor,
    student_ids: TokenIds,
    teacher_logprobs_TV: Tensor,
    teacher_ids: TokenIds,
    groups: Sequence[Group],
    strategy: str = "observed",
    top_k: Optional[int] = None,
    eps: float = DEFAULT_EPS,
) -> tuple[Tensor, int]:
    """ULD loss of one sequence: ``(1 / G) * sum_g sorted_l1(q^s_g, q^t_g)``, and G.

    student_logprobs_TV: (T_s, V_s) student *log*-probs (temperature applied), row t = the distribution that
    predicted student token t, with gradient. student_ids: (T_s,) the student's completion tokens.
    teacher_logprobs_TV: (T_t, V_t), teacher_ids: (T_t,) likewise for the teacher's tokenisation of the same text;
    treated as constants (detached, cast to the student's dtype/device).
    groups: from ``alignment_groups`` (pairs with an empty side are skipped, as TRL does).
    strategy: "observed" | "bayesian" (``uld_token_merge_strategy``), applied to both sides; top_k: see
    ``sorted_l1``; eps: the clamp of the scalar merge factors.

    Returns ``(loss, G)`` with G the number of groups used ("averaged per sequence length": TRL divides by the
    number of aligned groups). With G = 0 the loss is ``0 * sum(student_logprobs_TV)`` (0, graph kept).
    """
    _check_strategy(strategy)
    pairs = [(list(sg), list(tg)) for sg, tg in groups if len(sg) > 0 and len(tg) > 0]
    if not pairs:
        return student_logprobs_TV.sum() * 0.0, 0
    teacher_lp = teacher_logprobs_TV.detach().to(dtype=student_logprobs_TV.dtype, device=student_logprobs_TV.device)
    q_s = merge_groups(student_logprobs_TV, student_ids, [sg for sg, _ in pairs], strategy, eps)  # (G, V_s)
    q_t = merge_groups(teacher_lp, teacher_ids, [tg for _, tg in pairs], strategy, eps)  # (G, V_t)
    per_group_G = sorted_l1(q_s, q_t, top_k)
    return per_group_G.sum() / len(pairs), len(pairs)


def uld_batch_loss(
    student_logprobs: Sequence[Tensor],
    student_ids: Sequence[TokenIds],
    teacher_logprobs: Sequence[Tensor],
    teacher_ids: Sequence[TokenIds],
    groups: Sequence[Sequence[Group]],
    strategy: str = "observed",
    top_k: Optional[int] = None,
    eps: float = DEFAULT_EPS,
) -> tuple[Tensor, list[int]]:
    """Batch ULD: ``(1 / B) * sum_b ULD_b``; every argument is a length-B list of what ``uld_loss`` takes per row.

    Rows with no usable group contribute 0 but count in B (as TRL's mean over ``distillation_losses``).
    Returns ``(loss, [G_b for each row])``.
    """
    B = len(student_logprobs)
    if B == 0:
        raise ValueError("uld_batch_loss needs at least one sequence")
    if not (len(student_ids) == len(teacher_logprobs) == len(teacher_ids) == len(groups) == B):
        raise ValueError("uld_batch_loss: all per-sequence lists must have the same length")
    losses, counts = [], []
    for b in range(B):
        loss_b, n_b = uld_loss(
            student_logprobs[b], student_ids[b], teacher_logprobs[b], teacher_ids[b], groups[b], strategy, top_k, eps
        )
        losses.append(loss_b)
        counts.append(n_b)
    return torch.stack(losses).mean(), counts


def completion_ce_loss(student_logprobs: Sequence[Tensor], student_ids: Sequence[TokenIds]) -> Tensor:
    """CE term: the student's NLL of its own completion tokens, token mean over the whole micro-batch.

    ``CE = -(1 / sum_b T_b) * sum_b sum_t logprobs_b[t, y_{b,t}]``: what TRL's ``nn.CrossEntropyLoss`` (mean over the
    non-ignored shifted labels) computes. TRL feeds it the raw logits (no temperature) and all completion labels,
    EOS included, whatever ``uld_skip_*_eos`` says, so pass untempered log-probs of every completion token to match.
    student_logprobs: B tensors (T_b, V) of log-probs, row t predicting token t; student_ids: B tensors/lists (T_b,).
    Returns a scalar (``0 * sum`` when there is no token).
    """
    total, count = None, 0
    for lp_TV, ids in zip(student_logprobs, student_ids, strict=True):
        ids_T = torch.as_tensor(ids, dtype=torch.long, device=lp_TV.device).reshape(-1)
        if ids_T.numel() != lp_TV.size(0):
            raise ValueError(f"completion_ce_loss: {ids_T.numel()} ids for {lp_TV.size(0)} positions")
        s = -lp_TV.gather(-1, ids_T[:, None]).sum()
        total = s if total is None else total + s
        count += ids_T.numel()
    if total is None:
        raise ValueError("completion_ce_loss needs at least one sequence")
    return total / count if count > 0 else total * 0.0


def uld_total_loss(
    student_logprobs: Sequence[Tensor],
    student_ids: Sequence[TokenIds],
    teacher_logprobs: Sequence[Tensor],
    teacher_ids: Sequence[TokenIds],
    groups: Sequence[Sequence[Group]],
    strategy: str = "observed",
    top_k: Optional[int] = None,
    distillation_weight: float = 1.0,
    crossentropy_weight: float = 0.0,
    ce_logprobs: Optional[Sequence[Tensor]] = None,
    ce_ids: Optional[Sequence[TokenIds]] = None,
    eps: float = DEFAULT_EPS,
) -> tuple[Tensor, Tensor, Tensor]:
    """``total = distillation_weight * ULD + crossentropy_weight * CE``; returns ``(total, ULD, CE)`` unweighted parts.

    ``ce_logprobs`` / ``ce_ids`` default to ``student_logprobs`` / ``student_ids`` (pass untempered log-probs of all
    completion tokens to match TRL exactly). As in TRL, CE is not computed when ``crossentropy_weight == 0`` (CE is
    then returned as a zero).
    """
    uld, _ = uld_batch_loss(student_logprobs, student_ids, teacher_logprobs, teacher_ids, groups, strategy, top_k, eps)
    if crossentropy_weight > 0:
        ce = completion_ce_loss(
            student_logprobs if ce_logprobs is None else ce_logprobs, student_ids if ce_ids is None else ce_ids
        )
        total = distillation_weight * uld + crossentropy_weight * ce
    else:
        ce = torch.zeros((), dtype=uld.dtype, device=uld.device)
        total = distillation_weight * uld
    return total, uld, ce
