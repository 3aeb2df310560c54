"""Learning from a teacher's token distributions (docs/methods/distillation.md): GKD, on-policy distillation, GOLD.

    needs      a teacher pool serving the teacher's distribution at every completion position (top-k or full
               vocabulary, at the loss temperature); with ``seq_kd`` a frozen rollout pool holding the teacher's
               weights; no rewards (a reward section, if given, only scores for the metrics)
    sources    per micro-batch, u ~ U(0, 1): u <= lmbda -> the student samples (on-policy); else the teacher samples
               (``seq_kd``); else the dataset's completions (GKD's mixing; on-policy distillation is always on-policy)
    assemble   rows back in micro-batch order (each micro-batch is one source), nothing else
    objective  JSD_beta(p_S, p_T) per completion token, summed over valid tokens and divided by the step's global
               valid-token count (all GA micro-batches, all ranks)

Temperature: GKD's loss is at temperature 1 (``temperature`` is for sampling only); on-policy distillation and
GOLD divide student and teacher logits by ``rollout.temperature``. GOLD's cross-tokenizer mode (``use_uld_loss``)
replaces the JSD by ULD (``learner/uld.py``): the teacher pool has already aligned the two tokenisations and merged
and sorted its side of every group (``teacher_workers/retokenize.py``); the student's groups are merged from its own
log-probs here, and

    L_mb = [ w_uld * (1/B) sum_b (1/G_b) sum_g || sort(q^S_g) - sort(q^T_g) ||_1  +  w_ce * CE ] / GA

with CE the student's token-mean NLL of its completion tokens (logits at temperature 1).
"""

from __future__ import annotations

import random
from typing import ClassVar, Literal, Optional

import torch
from pydantic import Field, model_validator

from relay_rl.learner.divergences import generalized_jsd, log_tail, topk_support
from relay_rl.learner.logprobs import scaled_log_softmax
from relay_rl.learner.uld import merge_groups, sorted_l1

from .base import DATASET, POLICY, TEACHER, Batching, Family, Needs, Objective, TeacherSpec, step_tokens


class DistillBase(Batching):
    num_generations: int = Field(1, ge=1)
    """Completions per prompt (1: TRL's distillation trainers sample one per prompt)."""
    beta: float = Field(0.5, ge=0, le=1)
    """JSD interpolation: 0 is forward KL(p_T||p_S), 1 reverse KL(p_S||p_T), in between the generalised JSD."""
    loss_top_k: int = Field(0, ge=0)
    """0: the teacher serves its full-vocabulary log-probs (small vocabularies); k > 0: its top-k tokens and
    log-probs, and the divergence is taken on that support (relay-rl also offers it for gkd and gold)."""
    loss_add_tail: bool = False
    """With loss_top_k: add a bucket holding the mass outside the top-k on both sides (else renormalise on it)."""

    scaled_loss: ClassVar[bool] = True  # student and teacher logits divided by the sampling temperature in the loss
    lmbda_fixed: ClassVar[float | None] = None  # on-policy distillation: always the student's own samples

    @model_validator(mode="after")
    def _groups_in_micro_batches(self):
        if self.per_device_train_batch_size % self.num_generations:
            raise ValueError(
                f"per_device_train_batch_size ({self.per_device_train_batch_size}) must be a multiple of "
                f"num_generations ({self.num_generations}): each micro-batch comes from one source"
            )
        return self

    @property
    def on_policy_fraction(self) -> float:
        return self.lmbda_fixed if self.lmbda_fixed is not None else self.lmbda


class GKDConfig(DistillBase):
    """GKD (2306.13649; TRL's GKDConfig)."""

    name: Literal["gkd"] = "gkd"
    lmbda: float = Field(0.5, ge=0, le=1)
    """Fraction of micro-batches whose completions the student generates (on-policy)."""
    seq_kd: bool = False
    """The other micro-batches: teacher-generated completions (True) or the dataset's (False)."""
    scaled_loss: ClassVar[bool] = False  # GKD's loss is at temperature 1


class OnPolicyDistillationConfig(DistillBase):
    """On-policy distillation (Thinking Machines; TRL 1.16's DistillationTrainer): reverse KL on the student's own
    samples, logits of both at ``rollout.temperature``."""

    name: Literal["on_policy_distillation"] = "on_policy_distillation"
    beta: float = Field(1.0, ge=0, le=1)
    """1.0: reverse KL(p_S||p_T), mode seeking (TRL's default)."""
    lmbda_fixed: ClassVar[float | None] = 1.0


class GOLDConfig(DistillBase):
    """GOLD (TRL's experimental GOLDTrainer): GKD's data mixing, the JSD at ``rollout.temperature`` for a shared
    tokenizer, and Universal Logit Distillation across tokenizers."""

    name: Literal["gold"] = "gold"
    lmbda: float = Field(0.5, ge=0, le=1)
    """Fraction of micro-batches whose completions the student generates (on-policy)."""
    seq_kd: bool = False
    """The other micro-batches: teacher-generated completions (True) or the dataset's (False)."""
    use_uld_loss: bool = False
    """Cross-tokenizer mode: the teacher re-tokenises each sequence with its own tokenizer; tokens are aligned by
    byte offsets and the loss is the L1 distance of sorted probability vectors (ULD)."""
    uld_token_merge_strategy: Literal["observed", "bayesian"] = "observed"
    """How the probabilities of a token split in one tokenisation are merged into one vector (ULD)."""
    uld_distillation_weight: float = Field(1.0, ge=0)
    uld_crossentropy_weight: float = Field(0.0, ge=0)
    """Weight of the student's NLL of its completion tokens, added to ULD."""
    uld_student_temperature: float = Field(1.0, gt=0)
    """Temperature of the student's logits in the ULD loss (TRL's; the JSD of a shared tokenizer uses
    ``rollout.temperature``)."""
    uld_teacher_temperature: float = Field(1.0, gt=0)
    """Temperature of the teacher's logits in the ULD loss."""
    uld_skip_student_eos: bool = True
    """Leave the student's trailing EOS out of the ULD alignment (TRL's default)."""
    uld_skip_teacher_eos: bool = True
    """Leave the teacher's trailing EOS out of the ULD alignment (TRL's default). With both kept, the two EOS form a
    group of their own; with one kept, it has no counterpart and is dropped."""
    uld_use_hybrid_loss: bool = False
    """Hybrid ULD: tokens whose text exists in both vocabularies are compared entry by entry with the generalised JSD
    (``beta``), the rest by sorted L1 (TRL's ``uld_use_hybrid_loss``)."""
    uld_hybrid_matched_weight: Optional[float] = Field(None, ge=0)
    """Weight of the matched (JSD) part; with ``uld_hybrid_unmatched_weight``, both set or both None. None: the
    share of the teacher's vocabulary that the student's also has (TRL's adaptive weighting)."""
    uld_hybrid_unmatched_weight: Optional[float] = Field(None, ge=0)
    """Weight of the unmatched (sorted L1) part. None: 1 - the matched weight."""

    @model_validator(mode="after")
    def _uld_rules(self):
        if self.use_uld_loss and self.seq_kd:
            raise ValueError(
                "use_uld_loss with seq_kd: teacher-generated completions are in the teacher's tokens, "
                "which the student cannot train on; set seq_kd: false"
            )
        if (self.uld_hybrid_matched_weight is None) != (self.uld_hybrid_unmatched_weight is None):
            raise ValueError(
                "uld_hybrid_matched_weight and uld_hybrid_unmatched_weight are set together (both numbers) or left "
                f"unset together (adaptive weights); got {self.uld_hybrid_matched_weight} and "
                f"{self.uld_hybrid_unmatched_weight}"
            )
        return self


def loss_temperature(cfg) -> float:
    """The temperature of student and teacher logits in the JSD (ULD has its own, per side)."""
    return (cfg.rollout.temperature or 1.0) if cfg.algorithm.scaled_loss else 1.0


def uses_uld(alg) -> bool:
    return getattr(alg, "use_uld_loss", False)


# ----------------------------------------------------------------------------------------------------------------
# the objective
# ----------------------------------------------------------------------------------------------------------------
class DistillObjective(Objective):
    """L_mb = sum_{t in mb} JSD_beta(p_S, p_T)_t M_t / (N_step / P): the step objective is the global token mean."""

    def begin_step(self, micro_batches) -> None:
        self.step_tokens = step_tokens(micro_batches)  # N_step: tokens actually trained on, all ranks

    def loss(self, mb, logits_BTV):
        d = logits_BTV.device
        mask_BT = mb.completion_mask.to(d)
        if uses_uld(self.alg):
            return self.uld_loss(mb, logits_BTV, mask_BT)
        D_BT = self.divergence(mb, logits_BTV)
        loss = (D_BT * mask_BT).sum() * self.sched.P / max(self.step_tokens, 1.0)
        return loss, {"distill/divergence": ("mean", float((D_BT.detach() * mask_BT).sum()), float(mask_BT.sum()))}

    def divergence(self, mb, logits_BTV) -> torch.Tensor:
        d, a = logits_BTV.device, self.alg
        student = scaled_log_softmax(logits_BTV, loss_temperature(self.cfg))  # (B, T, V)
        teacher = mb.teacher_dist.to(d).to(student.dtype)  # (B, T, V) or (B, T, k): log-probs at the same T
        if mb.teacher_dist_ids is not None and a.loss_top_k == 1 and a.beta > 0:
            student, teacher = top1_support(
                student,
                teacher,
                mb.teacher_dist_ids.to(d),
                mb.teacher_logprobs.to(d),
                mb.completion_ids.to(d),
                a.beta,
                a.loss_add_tail,
            )
        elif mb.teacher_dist_ids is not None:
            student, teacher = topk_support(student, teacher, mb.teacher_dist_ids.to(d), a.loss_add_tail)
        return generalized_jsd(student, teacher, a.beta)

    def uld_loss(self, mb, logits_BTV: torch.Tensor, mask_BT: torch.Tensor):
        """GOLD's cross-tokenizer loss of one micro-batch: ULD over the aligned groups (+ w_ce * CE), / GA. With
        ``uld_use_hybrid_loss`` each group's loss is w_m JSD_beta(matched entries) + w_u sorted-L1(unmatched
        entries)."""
        a, d = self.alg, logits_BTV.device
        logp_BTV = scaled_log_softmax(logits_BTV, a.uld_student_temperature)
        groups_BT = mb.uld_groups.to(d).long()
        teacher_BGK = mb.teacher_dist.to(d).to(logp_BTV.dtype)
        top_k = a.loss_top_k or None
        rows, n_groups, parts = [], 0, torch.zeros(2, dtype=torch.float64)
        for b in range(logp_BTV.shape[0]):
            G = int(groups_BT[b].max())
            if G == 0:  # nothing aligned: contributes 0, counts in B
                rows.append(logp_BTV[b].sum() * 0.0)
                continue
            student_groups = [torch.nonzero(groups_BT[b] == g).flatten().tolist() for g in range(1, G + 1)]
            q_GV = merge_groups(logp_BTV[b], mb.completion_ids[b].to(d), student_groups, a.uld_token_merge_strategy)
            if a.uld_use_hybrid_loss:
                row, matched, unmatched = self.hybrid_row(mb, b, q_GV, teacher_BGK[b, :G], top_k)
                parts += torch.tensor([float(matched), float(unmatched)], dtype=torch.float64)
                rows.append(row)
            else:
                rows.append(sorted_l1(q_GV, teacher_BGK[b, :G], top_k).mean())
            n_groups += G
        uld = torch.stack(rows).mean()
        loss = a.uld_distillation_weight * uld
        stats = {"distill/divergence": ("mean", float(uld.detach()), 1.0), "distill/uld_groups": ("sum", n_groups, 1.0)}
        if a.uld_use_hybrid_loss:
            B = float(logp_BTV.shape[0])
            stats["distill/uld_matched"] = ("mean", float(parts[0]), B)
            stats["distill/uld_unmatched"] = ("mean", float(parts[1]), B)
        if a.uld_crossentropy_weight > 0:
            nll_BT = -scaled_log_softmax(logits_BTV, 1.0).gather(-1, mb.completion_ids.to(d).unsqueeze(-1)).squeeze(-1)
            ce = (nll_BT * mask_BT).sum() / mask_BT.sum().clamp(min=1.0)
            loss = loss + a.uld_crossentropy_weight * ce
            stats["distill/ce"] = ("mean", float(ce.detach()), 1.0)
        return loss / self.sched.GA, stats

    def hybrid_row(self, mb, b: int, q_s_GV: torch.Tensor, teacher_unmatched_GK: torch.Tensor, top_k):
        """One row of hybrid ULD: (w_m matched + w_u unmatched, matched, unmatched). The teacher served its merged
        group probabilities at the vocabulary entries both tokenizers share (``teacher_matched``, in the order of
        ``uld_matched_ids``, the student's ids of those entries) and its other entries sorted (``teacher_dist``)."""
        a, G, d = self.alg, q_s_GV.shape[0], q_s_GV.device
        ids_M = mb.uld_matched_ids[b].to(d).long()
        q_t_GM = mb.teacher_matched[b, :G].to(d).to(q_s_GV.dtype)
        unmatched_V = torch.ones(q_s_GV.shape[-1], dtype=torch.bool, device=d)
        unmatched_V[ids_M] = False
        log = lambda q: torch.log(q.clamp_min(1e-8))  # noqa: E731  (TRL compares probabilities as log-probs)
        matched = (
            generalized_jsd(log(q_s_GV[:, ids_M]), log(q_t_GM), a.beta).sum() / G if len(ids_M) else 0.0 * q_s_GV.sum()
        )
        if unmatched_V.any() and teacher_unmatched_GK.shape[-1] > 0:
            unmatched = sorted_l1(q_s_GV[:, unmatched_V], teacher_unmatched_GK, top_k).sum() / G
        else:
            unmatched = 0.0 * q_s_GV.sum()
        if a.uld_hybrid_matched_weight is None:  # adaptive: the share of the teacher's vocabulary that is matched
            w_m = len(ids_M) / max(1, int(mb.info["uld_teacher_vocab"]))
            w_u = 1.0 - w_m
        else:
            w_m, w_u = a.uld_hybrid_matched_weight, a.uld_hybrid_unmatched_weight
        return w_m * matched + w_u * unmatched, matched.detach(), unmatched.detach()


def top1_support(
    student_logp_BTV, teacher_topk_BTK, teacher_ids_BTK, teacher_sampled_BT, sampled_BT, beta: float, add_tail: bool
):
    """``loss_top_k: 1`` as TRL compares it: the support is the sampled token alone for beta = 1 (reverse KL's
    expectation is under the student, whose sample it is), else {the teacher's top-1, the sampled token} (one entry
    when they are the same token); renormalised on it, or with ``add_tail`` a tail bucket. (..., 2) log-probs, a
    left-out entry at log 0 = -1e4 (no probability, no NaN in the gradient)."""
    off = -1e4
    s_sampled = student_logp_BTV.gather(-1, sampled_BT.long().unsqueeze(-1))  # (B, T, 1)
    t_sampled = teacher_sampled_BT.to(student_logp_BTV.dtype).unsqueeze(-1)
    if beta == 1:
        s, t = s_sampled, t_sampled
        if add_tail:
            return torch.cat([s, log_tail(s)], -1), torch.cat([t, log_tail(t)], -1)
        return s - s, t - t  # one entry, renormalised: probability 1 on both sides
    top1 = teacher_ids_BTK[..., :1].long()
    same = top1 == sampled_BT.long().unsqueeze(-1)  # (B, T, 1): then the second entry is left out
    s = torch.cat(
        [student_logp_BTV.gather(-1, top1), torch.where(same, torch.full_like(s_sampled, off), s_sampled)], -1
    )
    t = torch.cat([teacher_topk_BTK[..., :1], torch.where(same, torch.full_like(t_sampled, off), t_sampled)], -1)
    if add_tail:
        return torch.cat([s, log_tail(s)], -1), torch.cat([t, log_tail(t)], -1)
    return s - torch.logsumexp(s, -1, keepdim=True), t - torch.logsumexp(t, -1, keepdim=True)


# ----------------------------------------------------------------------------------------------------------------
# the family
# ----------------------------------------------------------------------------------------------------------------
class Distillation(Family):
    configs = (GKDConfig, OnPolicyDistillationConfig, GOLDConfig)
    objective = DistillObjective
    curve = ("distill/divergence", "divergence to the teacher")

    def needs(self, cfg) -> Needs:
        a = cfg.algorithm
        uld = uses_uld(a)
        served = TeacherSpec(
            "teacher",
            "topk" if a.loss_top_k else "full",
            a.loss_top_k,
            a.uld_teacher_temperature if uld else loss_temperature(cfg),
            retokenize=uld,
            merge=getattr(a, "uld_token_merge_strategy", "observed"),
            skip_student_eos=uld and a.uld_skip_student_eos,
            skip_teacher_eos=uld and a.uld_skip_teacher_eos,
            hybrid=uld and a.uld_use_hybrid_loss,
        )
        return Needs(
            rewards=False,
            teachers=(served,),
            frozen_rollout=getattr(a, "seq_kd", False),
            teacher_model=True,
            same_vocabulary=not uld,
        )

    def sources(self, alg, n_micro_batches: int, seed: int) -> list[str]:
        """One draw u ~ U(0, 1) per micro-batch (seeded per generation batch): u <= lmbda, the student samples; else
        the teacher (``seq_kd``) or the dataset's completions."""
        rng = random.Random(seed)
        other = TEACHER if getattr(alg, "seq_kd", False) else DATASET
        return [POLICY if rng.random() <= alg.on_policy_fraction else other for _ in range(n_micro_batches)]

    def completion_column_fix(self, alg):
        fix = super().completion_column_fix(alg)
        return fix and fix + ", or lmbda: 1.0 (only the policy's own samples)"

    def assemble(self, batch, alg, reward_weights, seed):
        """Rows in prompt order, so micro-batch m (rank m // S, slice m % S) holds the rows of its own source."""
        batch = batch.select(torch.argsort(batch.group_id, stable=True))
        return batch.replace(info={**batch.info, "num_items_in_batch": float(batch.completion_mask.sum())}), {}
