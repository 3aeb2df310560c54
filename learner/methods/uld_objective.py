"""The learner side of GOLD's cross-tokenizer mode: the student half of ULD for one micro-batch.

The teacher pool has already aligned the tokenisations and merged and sorted its side of every group
(``teacher_workers/retokenize.py``). Here the student's groups are merged from its own log-probs (at the loss
temperature), and the loss is, as ALGORITHMS.md §8 (GOLD) says,

    L_mb = [ w_uld * (1/B) sum_b (1/G_b) sum_g || sort(q^S_g) - sort(q^T_g) ||_1  +  w_ce * CE ] / GA

with CE the student's token-mean NLL of its completion tokens (logits at temperature 1).
"""
from __future__ import annotations

import torch

from learner.logprobs import scaled_log_softmax

from .uld import merge_groups, sorted_l1


def uld_micro_batch_loss(obj, mb, logits_BTV: torch.Tensor, mask_BT: torch.Tensor):
    from .distill import loss_temperature
    a, d = obj.alg, logits_BTV.device
    logp_BTV = scaled_log_softmax(logits_BTV, loss_temperature(obj.cfg))
    groups_BT = mb.uld_groups.to(d).long()
    teacher_BGK = mb.teacher_dist.to(d).to(logp_BTV.dtype)
    top_k = a.loss_top_k or None
    rows, n_groups = [], 0
    for b in range(logp_BTV.shape[0]):
        G = int(groups_BT[b].max())
        if G == 0:  # nothing aligned: contributes 0, counts in B
            rows.append(logp_BTV[b].sum() * 0.0)
            continue
        student_groups = [torch.nonzero(groups_BT[b] == g).flatten().tolist() for g in range(1, G + 1)]
        q_GV = merge_groups(logp_BTV[b], mb.completion_ids[b].to(d), student_groups, a.uld_token_merge_strategy)
        rows.append(sorted_l1(q_GV, teacher_BGK[b, :G], top_k).mean())
        n_groups += G
    uld = torch.stack(rows).mean()
    loss = a.uld_distillation_weight * uld
    stats = {"distill/divergence": ("mean", float(uld.detach()), 1.0), "distill/uld_groups": ("sum", n_groups, 1.0)}
    if a.uld_crossentropy_weight > 0:
        nll_BT = -scaled_log_softmax(logits_BTV, 1.0).gather(-1, mb.completion_ids.to(d).unsqueeze(-1)).squeeze(-1)
        ce = (nll_BT * mask_BT).sum() / mask_BT.sum().clamp(min=1.0)
        loss = loss + a.uld_crossentropy_weight * ce
        stats["distill/ce"] = ("mean", float(ce.detach()), 1.0)
    return loss / obj.sched.GA, stats
