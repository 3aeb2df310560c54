"""Online preference learning (docs/methods/preference.md): online DPO (2402.04792) and XPO (2405.21046), TRL's names.

    needs      rewards (weighted reward functions or reward models judge each pair); the reference pool (log pi_ref of
               every sample at temperature 1); XPO also a frozen rollout pool holding the reference's weights
    sources    online DPO: both completions of a prompt from the policy (num_generations 2); XPO: one from the policy,
               one from the frozen reference pool (``group_sources``)
    assemble   per prompt, score s = weighted reward (- ``missing_eos_penalty`` without EOS; None (NaN) loses); the
               chosen y_w is the first sample if s_1 >= s_2 (XPO: the policy's sample if its score >= the reference's),
               else the second; a pair whose two scores are both None (with ``drop_ties``, equal) is left out (its
               rows count nothing). Rows are
               ordered chosen, rejected for each pair, pairs shuffled, so micro-batches and rank shards hold whole pairs
    objective  h = [log pi(y_w) - log pi_ref(y_w)] - [log pi(y_l) - log pi_ref(y_l)] with sequence sums over the
               completion tokens at temperature 1;  sigmoid: -log sigma(beta h);  ipo: (h - 1/(2 beta))^2;
               XPO adds alpha * log pi(y_ref), the policy's log-likelihood of the reference sample. Mean over the
               micro-batch's pairs, /GA. beta and alpha: one value per epoch, the last repeating

The DPO loss needs no pi_old, so staleness only ages the data (pairs carry the versions that sampled them; the
reference samples of XPO carry none).
"""

from __future__ import annotations

import math
from typing import Literal, Optional, Union

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator, model_validator

from relay_rl.batch import group_rows
from relay_rl.learner.advantages import total_reward
from relay_rl.learner.logprobs import token_logprobs

from .base import POLICY, TEACHER, Batching, Family, Needs, Objective, TeacherSpec

Schedule = list[float]


def _as_schedule(v):
    return [v] if isinstance(v, (int, float)) else v


class OnlineDPOConfig(Batching):
    """Online DPO (TRL's OnlineDPOConfig)."""

    name: Literal["online_dpo"] = "online_dpo"
    num_generations: int = 2
    """Two completions per prompt: a pair (the only value these families take)."""
    per_device_train_batch_size: int = Field(8, ge=2)
    """Rows per micro-batch: an even number, so that micro-batches hold whole pairs."""
    beta: Union[float, Schedule] = Field(default_factory=lambda: [0.1])
    """The DPO temperature; a list is a per-epoch schedule whose last value repeats."""
    loss_type: Literal["sigmoid", "ipo"] = "sigmoid"
    """sigmoid: -log sigma(beta h) (DPO); ipo: (h - 1/(2 beta))^2."""
    missing_eos_penalty: Optional[float] = None
    """Subtracted from the score of a completion that ends without EOS (before the pair is judged)."""
    drop_ties: bool = False
    """relay-rl's: leave out a pair whose two scores are equal (its rows count nothing, as a pair without preference).
    False is TRL's rule (the first sample, XPO's policy sample, wins a tie). A binary verifier ties on most pairs, and
    each tie then pushes one arbitrary answer over another (XPO: the policy's own answer over the reference's)."""

    _schedule = field_validator("beta", mode="before")(classmethod(lambda cls, v: _as_schedule(v)))

    @model_validator(mode="after")
    def _pairs(self):
        if self.num_generations != 2:
            raise ValueError(
                f"algorithm {self.name} judges pairs: num_generations must be 2 (got "
                f"{self.num_generations}); set algorithm.num_generations: 2 (on the kit: add "
                "deploy/overlays/kit_preference.yaml after kit.yaml)"
            )
        if self.per_device_train_batch_size % 2:
            raise ValueError(
                f"per_device_train_batch_size ({self.per_device_train_batch_size}) must be even: a "
                "micro-batch holds whole pairs"
            )
        for knob in ("beta", "alpha"):
            if knob in type(self).model_fields and not getattr(self, knob):
                raise ValueError(f"{knob}: the schedule is empty; give one value, or a list with one per epoch")
        if any(not math.isfinite(b) or b <= 0 for b in self.beta):
            raise ValueError(f"beta: every value must be a positive number (got {self.beta})")
        return self


class XPOConfig(OnlineDPOConfig):
    """XPO (TRL's XPOConfig): online DPO against the reference's own samples, with an exploration bonus."""

    name: Literal["xpo"] = "xpo"
    alpha: Union[float, Schedule] = Field(default_factory=lambda: [1e-5])
    """Weight of alpha * log pi(y_ref) (per-epoch schedule, the last value repeating)."""

    _alpha_schedule = field_validator("alpha", mode="before")(classmethod(lambda cls, v: _as_schedule(v)))


def scheduled(values: list[float], epoch: int) -> float:
    """The schedule's value for ``epoch`` (0-based): one value per epoch, the last repeating."""
    return values[min(epoch, len(values) - 1)]


# ----------------------------------------------------------------------------------------------------------------
# judging the pairs
# ----------------------------------------------------------------------------------------------------------------
def scores(batch, alg, reward_weights) -> torch.Tensor:
    """The score of every row (N,): weighted reward, less ``missing_eos_penalty`` without EOS, NaN when unscorable."""
    s = total_reward(batch.rewards, reward_weights).double()
    if alg.missing_eos_penalty is not None:
        s = s - alg.missing_eos_penalty * batch.truncated.double()
    return s


def choose(first: float, second: float) -> Optional[int]:
    """0 when the first sample wins (ties included), 1 when the second does; NaN (unscorable) loses; None when both
    are NaN (the pair carries no preference)."""
    a, b = (-math.inf if math.isnan(x) else x for x in (first, second))
    if math.isinf(a) and math.isinf(b) and a < 0 and b < 0:
        return None
    return 0 if a >= b else 1


def assemble(batch, alg, reward_weights, seed: int):
    """Pairs by group id, chosen first (online DPO: the group's first row wins ties; XPO: the policy's sample), the
    pairs shuffled; ``preference`` +1 chosen, -1 rejected, 0 for a pair without a preference."""
    s = scores(batch, alg, reward_weights).tolist()
    groups = group_rows(batch.group_id.tolist())
    frozen = batch.frozen_sample.tolist() if batch.frozen_sample is not None else [False] * len(batch)
    order, pref, margins, skipped, ties = [], [], [], 0, 0
    for rows in groups.values():
        if len(rows) != 2:
            raise ValueError(f"a pair needs 2 samples per prompt, got {len(rows)}")
        if frozen[rows[0]] and not frozen[rows[1]]:  # XPO: the policy's sample first, so it wins ties
            rows = rows[::-1]
        winner = choose(s[rows[0]], s[rows[1]])
        tied = s[rows[0]] == s[rows[1]]
        ties += tied
        if winner is None or (tied and alg.drop_ties):
            skipped += 1
            order += rows
            pref += [0.0, 0.0]
            continue
        order += [rows[winner], rows[1 - winner]]
        pref += [1.0, -1.0]
        margins.append(s[rows[winner]] - s[rows[1 - winner]])
    perm = torch.randperm(len(order) // 2, generator=torch.Generator().manual_seed(seed))
    rows_ = torch.tensor(order).view(-1, 2)[perm].reshape(-1)
    prefs = torch.tensor(pref).view(-1, 2)[perm].reshape(-1)
    batch = batch.select(rows_).replace(preference=prefs)
    stats = {
        "objective/scores_margin": sum(margins) / max(1, len(margins)),
        "pairs/without_preference": skipped / max(1, len(groups)),
        "pairs/tied": ties / max(1, len(groups)),
    }
    if any(frozen):
        chosen = batch.frozen_sample[prefs > 0]
        stats["pairs/reference_chosen"] = float(chosen.float().mean()) if len(chosen) else 0.0
    return batch, stats


# ----------------------------------------------------------------------------------------------------------------
# the objective
# ----------------------------------------------------------------------------------------------------------------
def dpo_loss(h: torch.Tensor, beta: float, loss_type: str) -> torch.Tensor:
    """Per pair: sigmoid -log sigma(beta h), or ipo (h - 1/(2 beta))^2."""
    if loss_type == "sigmoid":
        return -F.logsigmoid(beta * h)
    return (h - 1 / (2 * beta)) ** 2


class PreferenceObjective(Objective):
    """L_mb = mean over the micro-batch's pairs of [DPO loss(h) (+ alpha log pi(y_ref))] / GA."""

    def loss(self, mb, logits_BTV):
        a, d = self.alg, logits_BTV.device
        mask_BT = mb.completion_mask.to(d)
        logp_BT, _ = token_logprobs(logits_BTV, mb.completion_ids.to(d))  # temperature 1
        seq_B = (logp_BT * mask_BT).sum(-1)  # log pi(y), a sum over the completion's tokens
        ref_B = (mb.ref_logprobs.to(d).to(seq_B.dtype) * mask_BT).sum(-1)
        pref_B = mb.preference.to(d)
        valid_P = pref_B[0::2] != 0  # pairs: rows (0, 1), (2, 3), ...: chosen, rejected
        w, l_ = seq_B[0::2], seq_B[1::2]
        rw, rl = ref_B[0::2], ref_B[1::2]
        h_P = (w - rw) - (l_ - rl)
        epoch = int(mb.info.get("epoch", 0))
        beta = scheduled(a.beta, epoch)
        per_pair = dpo_loss(h_P, beta, a.loss_type)
        stats = {"beta": ("mean", beta, 1.0)}
        if isinstance(a, XPOConfig):
            alpha = scheduled(a.alpha, epoch)
            frozen_B = mb.frozen_sample.to(d)
            bonus_P = (seq_B * frozen_B).view(-1, 2).sum(-1)  # log pi(y_ref): the reference's row of each pair
            stats["loss/dpo"] = ("mean", float((per_pair.detach() * valid_P).sum()), float(valid_P.sum()))
            per_pair = per_pair + alpha * bonus_P
            stats.update(
                {
                    "alpha": ("mean", alpha, 1.0),
                    "loss/xpo": ("mean", float((alpha * bonus_P.detach() * valid_P).sum()), float(valid_P.sum())),
                }
            )
        n = valid_P.sum().clamp(min=1)
        loss = (per_pair * valid_P).sum() / n / self.sched.GA
        k = float(valid_P.sum())
        rew_w, rew_l = (beta * (w - rw)).detach(), (beta * (l_ - rl)).detach()
        pick = lambda x: float((x * valid_P).sum())  # noqa: E731
        stats.update(
            {
                "logps/chosen": ("mean", pick(w.detach()), k),
                "logps/rejected": ("mean", pick(l_.detach()), k),
                "rewards/chosen": ("mean", pick(rew_w), k),
                "rewards/rejected": ("mean", pick(rew_l), k),
                "rewards/margins": ("mean", pick(rew_w - rew_l), k),
                "rewards/accuracies": ("mean", pick((rew_w > rew_l).float()), k),
                "val/contain_eos_token": ("mean", float((~mb.truncated).float().sum()), float(len(mb))),
            }
        )
        return loss, stats


class Preference(Family):
    configs = (OnlineDPOConfig, XPOConfig)
    objective = PreferenceObjective

    def needs(self, cfg) -> Needs:
        ref = TeacherSpec("reference", "sampled", temperature=1.0, model="policy")
        xpo = isinstance(cfg.algorithm, XPOConfig)
        return Needs(rewards=True, teachers=(ref,), frozen_rollout=xpo, frozen_rollout_model="policy")

    def group_sources(self, alg) -> list[str]:
        """XPO: each prompt's pair is one policy sample and one sample of the frozen reference."""
        return [POLICY, TEACHER] if isinstance(alg, XPOConfig) else []

    assemble = staticmethod(assemble)
