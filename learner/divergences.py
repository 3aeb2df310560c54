"""Divergences between a student and a teacher distribution at every completion position (docs/methods/distillation.md).

Inputs are log-probs over a shared support: the full vocabulary, or a top-k set (``topk_support``). Outputs are one
value per position, (B, T); masking and normalisation are the objective's.
"""

from __future__ import annotations

import math

import torch

Tensor = torch.Tensor
TAIL_MIN = 1e-7  # the tail bucket's probability is clamped here (TRL 1.16: the support sums to 1 + 1e-7 at k = |V|)


def kl(logp_P: Tensor, logq_P: Tensor) -> Tensor:
    """KL(p || q) = sum_x p(x) (log p(x) - log q(x)) over the last axis (0 log 0 = 0)."""
    p = logp_P.exp()
    return torch.where(p > 0, p * (logp_P - logq_P), torch.zeros_like(p)).sum(-1)


def generalized_jsd(student_logp: Tensor, teacher_logp: Tensor, beta: float) -> Tensor:
    """JSD_beta(p_S, p_T): KL(p_T||p_S) at beta = 0 (forward KL), KL(p_S||p_T) at beta = 1 (reverse KL), otherwise
    beta KL(p_T||m) + (1 - beta) KL(p_S||m) with the mixture m = (1 - beta) p_S + beta p_T."""
    if beta == 0:
        return kl(teacher_logp, student_logp)
    if beta == 1:
        return kl(student_logp, teacher_logp)
    log_m = torch.logsumexp(torch.stack([student_logp + math.log(1 - beta), teacher_logp + math.log(beta)]), dim=0)
    return beta * kl(teacher_logp, log_m) + (1 - beta) * kl(student_logp, log_m)


def log_tail(logp_K: Tensor) -> Tensor:
    """log(1 - sum_k p_k): the mass outside a top-k set, as one bucket (clamped at TAIL_MIN)."""
    mass = torch.logsumexp(logp_K, dim=-1, keepdim=True).exp()
    return torch.log((1 - mass).clamp(min=TAIL_MIN))


def topk_support(student_logp_V: Tensor, teacher_logp_K: Tensor, ids_K: Tensor, add_tail: bool):
    """Student and teacher log-probs on the teacher's top-k token set (..., K) plus, with ``add_tail``, a tail bucket
    (..., K + 1); without it both are renormalised over the K tokens."""
    student_logp_K = student_logp_V.gather(-1, ids_K.long())
    if add_tail:
        return (
            torch.cat([student_logp_K, log_tail(student_logp_K)], -1),
            torch.cat([teacher_logp_K, log_tail(teacher_logp_K)], -1),
        )
    return (
        student_logp_K - torch.logsumexp(student_logp_K, -1, keepdim=True),
        teacher_logp_K - torch.logsumexp(teacher_logp_K, -1, keepdim=True),
    )
