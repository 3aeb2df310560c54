"""Self-distillation (docs/methods/self-distillation.md, SDPO and SDFT): the model is its own teacher, re-prompted with
what the student does not see (a successful sibling's answer, the row's privileged context), scoring the student's own
completion tokens. The pieces both families share:

    knobs            ``SelfDistillationKnobs`` (TRL 1.16's names; SDPO's defaults, SDFT redeclares its own)
    teacher pool     ``self_teacher``: the policy's initial weights, re-prompted by the family (``teacher_spec``);
                     ``base`` stays frozen, ``live`` copies the policy after every step, ``ema`` mixes
                     theta_T <- (1 - tau) theta_T + tau theta every ``teacher_sync_steps`` (``after_step``)
    divergence D_t   per completion position, student and teacher log-probs at the rollout temperature:
                       full_logits    JSD_alpha(p_S, p_T) over the vocabulary
                       topk_logits    the same on the student's top-k tokens, renormalised, or with a tail bucket
                       sampled_token  sg[log p_S(o_t) - log p_T(o_t)] * log p_S(o_t)   (alpha = 1: reverse KL)
    IS clip          D_t * min(exp(clamp(sg[log p_S(o_t) - log pi_old(o_t)], -20, 20)), distillation_is_clip), where
                     pi_old exists (the batch carries old log-probs)
    aggregation      L_distill = (1/B) sum_i [sum_t D_t M_t / max(1, sum_t M_t)] / GA, with M the loss mask (rows
                     without a teacher context: all zero, yet they count in B)
"""

from __future__ import annotations

import string
from typing import Literal, Optional

import torch
from pydantic import Field, model_validator

from relay_rl.learner.divergences import generalized_jsd, log_tail
from relay_rl.learner.logprobs import scaled_log_softmax
from relay_rl.schema import Strict

from .base import TeacherSpec

TEACHER_POOL = "self_teacher"
IS_LOG_CLAMP = 20.0


class SelfDistillationKnobs(Strict):
    """The distillation and teacher knobs of SDPO and SDFT (TRL 1.16's names; SDPO's defaults)."""

    distillation_alpha: float = Field(1.0, ge=0, le=1)
    """JSD interpolation: 0 is forward KL(p_T||p_S), 1 reverse KL(p_S||p_T), in between the generalised JSD."""
    distillation_mode: Literal["sampled_token", "full_logits", "topk_logits"] = "sampled_token"
    """``sampled_token``: REINFORCE on the sampled token's log-ratio (alpha 1; the teacher serves one log-prob per
    token). ``full_logits`` / ``topk_logits``: the divergence over the vocabulary / the student's top-k tokens (the
    teacher serves its full distribution: small vocabularies)."""
    distillation_topk: Optional[int] = Field(None, ge=1)
    """k of ``topk_logits`` (the student's top-k tokens at each position)."""
    distillation_is_clip: Optional[float] = Field(2.0, gt=0)
    """Cap of the importance ratio p_S / pi_old that weights D_t where old log-probs exist. None: no weight."""
    distillation_add_tail: bool = False
    """``topk_logits``: one more bucket holding the mass outside the top-k on both sides (else renormalise)."""
    teacher_model_kind: Literal["base", "live", "ema"] = "ema"
    """The self-teacher's weights: ``base`` the frozen initial policy, ``live`` the current policy (synced after
    every step), ``ema`` theta_T <- (1 - teacher_update_rate) theta_T + teacher_update_rate theta."""
    teacher_update_rate: float = Field(0.05, ge=0, le=1)
    """tau of the EMA teacher."""
    teacher_sync_steps: int = Field(1, ge=1)
    """Optimizer steps between EMA updates of the teacher."""

    @model_validator(mode="after")
    def _distillation_rules(self):
        if self.distillation_mode == "sampled_token" and self.distillation_alpha != 1.0:
            raise ValueError(
                f"distillation_mode sampled_token is reverse KL only: it needs distillation_alpha 1.0 "
                f"(got {self.distillation_alpha}); or use full_logits / topk_logits"
            )
        if self.distillation_mode == "topk_logits" and self.distillation_topk is None:
            raise ValueError(
                "distillation_mode topk_logits needs distillation_topk (the student's top-k tokens per "
                "position), e.g. 100"
            )
        return self


def template_fields(template: str) -> list[str]:
    """The ``{placeholders}`` of a format string."""
    return [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]


def check_template(name: str, template: str, allowed: set[str] | None, required: tuple[str, ...] = ()) -> list[str]:
    """A format-string knob: it parses, has the ``required`` placeholders and (``allowed`` given) no others.
    Returns its placeholders."""
    try:
        fields = template_fields(template)
    except ValueError as e:
        raise ValueError(
            f"{name} is not a valid template ({e}): write placeholders as {{name}} and a literal brace as {{{{ or }}}}"
        ) from None
    for f in required:
        if f not in fields:
            raise ValueError(f"{name} must contain {{{f}}} (got {template!r})")
    bad = [f for f in fields if not f.isidentifier() or (allowed is not None and f not in allowed)]
    if bad:
        raise ValueError(
            f"{name}: unknown placeholder {{{bad[0]}}} in {template!r}"
            + (f"; allowed: {', '.join('{' + a + '}' for a in sorted(allowed))}" if allowed else "")
        )
    return fields


def last_user_text(messages: list[dict]) -> str:
    """The text of a conversation's last message, which must be the user's (the turn a teacher prompt rewrites)."""
    last = messages[-1]
    if last.get("role") != "user":
        raise ValueError(
            f"a teacher prompt rewrites the conversation's last user turn, but the last message has "
            f"role {last.get('role')!r}: prompts that end with an assistant prefill are not supported"
        )
    content = last.get("content", "")
    if isinstance(content, list):
        return " ".join(part.get("text", "") for part in content if part.get("type") == "text")
    return content


def rewrite_prompt(prompt, fill) -> object:
    """The teacher's version of a prompt: ``fill(text)`` of a string prompt; for chat messages, the system and
    earlier messages kept and the last user turn replaced by ``fill`` of its text."""
    if isinstance(prompt, list):
        return prompt[:-1] + [{"role": "user", "content": fill(last_user_text(prompt))}]
    return fill(prompt)


# ----------------------------------------------------------------------------------------------------------------
# the teacher pool
# ----------------------------------------------------------------------------------------------------------------
def teacher_spec(cfg) -> TeacherSpec:
    """The self-teacher: the policy's weights, re-prompted by the family, serving sampled-token log-probs or (for
    full_logits / topk_logits) its full distribution, at the rollout temperature."""
    a = cfg.algorithm
    output = "sampled" if a.distillation_mode == "sampled_token" else "full"
    return TeacherSpec(TEACHER_POOL, output, temperature=cfg.rollout.temperature or 1.0, model="policy", reprompt=True)


def teacher_moves(cfg) -> list[str]:
    """A live or EMA teacher's weights are the run's state: saved in checkpoints."""
    return [TEACHER_POOL] if cfg.algorithm.teacher_model_kind != "base" else []


def sync_teacher(cfg, step: int, driver) -> None:
    """live: the policy's weights after every step; ema: every ``teacher_sync_steps``, one EMA update."""
    a = cfg.algorithm
    if a.teacher_model_kind == "live":
        driver.sync_teacher(TEACHER_POOL, 1.0)
    elif a.teacher_model_kind == "ema" and step % a.teacher_sync_steps == 0:
        driver.sync_teacher(TEACHER_POOL, a.teacher_update_rate)


def ema(theta_T: torch.Tensor, theta: torch.Tensor, tau: float) -> torch.Tensor:
    """One EMA update, theta_T <- (1 - tau) theta_T + tau theta (what ``TeacherWorker.mix_weights`` does in place)."""
    return (1 - tau) * theta_T + tau * theta


# ----------------------------------------------------------------------------------------------------------------
# the loss
# ----------------------------------------------------------------------------------------------------------------
def topk_divergence(student_logp_BTV, teacher_logp_BTV, k: int, alpha: float, add_tail: bool) -> torch.Tensor:
    """JSD_alpha on the student's top-k tokens: both distributions gathered there, then renormalised, or extended by
    a tail bucket log(1 - sum_topk p) (clamped)."""
    ids_BTK = student_logp_BTV.detach().topk(min(k, student_logp_BTV.shape[-1]), dim=-1).indices
    s_BTK, t_BTK = student_logp_BTV.gather(-1, ids_BTK), teacher_logp_BTV.gather(-1, ids_BTK)
    if add_tail:
        s_BTK, t_BTK = torch.cat([s_BTK, log_tail(s_BTK)], -1), torch.cat([t_BTK, log_tail(t_BTK)], -1)
    else:
        s_BTK = s_BTK - torch.logsumexp(s_BTK, -1, keepdim=True)
        t_BTK = t_BTK - torch.logsumexp(t_BTK, -1, keepdim=True)
    return generalized_jsd(s_BTK, t_BTK, alpha)


def sampled_token_divergence(student_logp_BT: torch.Tensor, teacher_logp_BT: torch.Tensor) -> torch.Tensor:
    """D_t = sg[log p_S(o_t) - log p_T(o_t)] * log p_S(o_t): its gradient is REINFORCE's estimate of the reverse
    KL's."""
    return (student_logp_BT - teacher_logp_BT).detach() * student_logp_BT


def per_token_divergence(alg, mb, logits_BTV: torch.Tensor, temperature: float) -> torch.Tensor:
    """D_t (B, T) of ``distillation_mode``; the teacher's served log-probs are at the same temperature."""
    d = logits_BTV.device
    student_BTV = scaled_log_softmax(logits_BTV, temperature)
    if alg.distillation_mode == "sampled_token":
        ids_BT1 = mb.completion_ids.to(d).unsqueeze(-1)
        return sampled_token_divergence(
            student_BTV.gather(-1, ids_BT1).squeeze(-1), mb.teacher_logprobs.to(d).to(student_BTV.dtype)
        )
    teacher_BTV = mb.teacher_dist.to(d).to(student_BTV.dtype)
    if alg.distillation_mode == "full_logits":
        return generalized_jsd(student_BTV, teacher_BTV, alg.distillation_alpha)
    return topk_divergence(
        student_BTV, teacher_BTV, alg.distillation_topk, alg.distillation_alpha, alg.distillation_add_tail
    )


def is_clip_weight(student_logp_BT: torch.Tensor, old_logp_BT: torch.Tensor, clip: float) -> torch.Tensor:
    """min(exp(clamp(sg[log p_S - log pi_old], -20, 20)), clip): 1 on-policy (clip >= 1), never above ``clip``."""
    log_ratio = (student_logp_BT - old_logp_BT).detach().clamp(-IS_LOG_CLAMP, IS_LOG_CLAMP)
    return log_ratio.exp().clamp(max=clip)


def sequence_mean(values_BT: torch.Tensor, mask_BT: torch.Tensor) -> torch.Tensor:
    """(1/B) sum_i [sum_t v M / max(1, sum_t M)]: every row counts in B, a row with no token adds 0."""
    return ((values_BT * mask_BT).sum(-1) / mask_BT.sum(-1).clamp(min=1.0)).mean()


def distillation_loss(alg, mb, logits_BTV: torch.Tensor, temperature: float, mask_BT: torch.Tensor, GA: int):
    """L_distill / GA of one micro-batch, and its statistics."""
    D_BT = per_token_divergence(alg, mb, logits_BTV, temperature)
    if alg.distillation_is_clip is not None and mb.old_logprobs is not None:
        d = logits_BTV.device
        logp_BT = (
            scaled_log_softmax(logits_BTV, temperature).gather(-1, mb.completion_ids.to(d).unsqueeze(-1)).squeeze(-1)
        )
        D_BT = D_BT * is_clip_weight(logp_BT, mb.old_logprobs.to(d).to(logp_BT.dtype), alg.distillation_is_clip)
    loss = sequence_mean(D_BT, mask_BT) / GA
    n = float(mask_BT.sum())
    return loss, {
        "self_distillation/distillation_loss": ("mean", float((D_BT.detach() * mask_BT).sum()), n),
        "self_distillation/loss_tokens": ("sum", n, 1.0),
    }
