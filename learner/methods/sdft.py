"""SDFT, self-distillation fine-tuning (2601.19897; docs/methods/self-distillation.md; TRL 1.16's SDFTTrainer names):
on-policy self-distillation with no reward and no policy-gradient term.

    needs      the ``self_teacher`` pool (the policy's initial weights by default: ``teacher_model_kind: base``),
               re-prompted with ``teacher_prompt_template`` ("{prompt}\\n\\n{privileged_context}": any dataset column
               by name); no rewards (a reward section, if given, scores samples and ``eval/accuracy`` only)
    sources    the policy samples from the prompt, or with ``generate_from_teacher`` from the teacher's prompt (it
               still learns on the prompt alone)
    assemble   a row shuffle
    objective  L = (1/B) sum_i [sum_t D_t M'_t / max(1, sum_t M'_t)] / GA, M' = M without the first
               ``num_loss_tokens_to_skip`` completion tokens; D_t and the IS clip of ``self_distillation``
"""

from __future__ import annotations

from typing import Literal, Optional

import torch
from pydantic import Field, model_validator

from .base import Batching, Family, Needs, Objective
from .self_distillation import (
    SelfDistillationKnobs,
    check_template,
    distillation_loss,
    rewrite_prompt,
    sync_teacher,
    teacher_moves,
    teacher_spec,
    template_fields,
)


class SDFTConfig(Batching, SelfDistillationKnobs):
    name: Literal["sdft"] = "sdft"
    distillation_alpha: float = Field(0.5, ge=0, le=1)
    distillation_mode: Literal["sampled_token", "full_logits", "topk_logits"] = "topk_logits"
    distillation_topk: Optional[int] = Field(100, ge=1)
    teacher_model_kind: Literal["base", "live", "ema"] = "base"
    """The self-teacher's weights: ``base`` the frozen initial policy (SDFT's default), ``live``, ``ema``."""
    teacher_prompt_template: str = "{prompt}\n\n{privileged_context}"
    """The teacher's prompt: {prompt} (the user turn's text) and dataset columns by name."""
    generate_from_teacher: bool = False
    """Sample from the teacher's prompt (the student still learns on the prompt alone; no IS clip then)."""
    num_loss_tokens_to_skip: int = Field(0, ge=0)
    """Leave the first this many completion tokens out of the loss."""

    @model_validator(mode="after")
    def _template(self):
        check_template("teacher_prompt_template", self.teacher_prompt_template, None, ("prompt",))
        return self


def teacher_prompt(prompt, row: dict, template: str):
    """The teacher's version of ``prompt``: the template filled with its text and the row's columns (chat messages
    as their texts, one per line)."""
    columns = {f: context_text(row.get(f), f) for f in template_fields(template) if f != "prompt"}
    return rewrite_prompt(prompt, lambda text: template.format(**columns, prompt=text))


def context_text(value, column: str) -> str:
    if value is None:
        raise ValueError(f"the teacher prompt reads the dataset column {column!r}, which is missing or null in a row")
    if isinstance(value, list):
        return "\n".join(str(m.get("content", "")) if isinstance(m, dict) else str(m) for m in value)
    return str(value)


def teacher_prompts(batch, cfg) -> tuple[list, torch.Tensor]:
    """Every row's teacher prompt; every row has its context."""
    tpl = cfg.algorithm.teacher_prompt_template
    rows = [{k: v[i] for k, v in batch.columns.items()} for i in range(len(batch))]
    return [teacher_prompt(p, row, tpl) for p, row in zip(batch.prompts, rows)], torch.ones(
        len(batch), dtype=torch.bool
    )


def generation_prompts(cfg, records: list[dict]) -> list | None:
    """``generate_from_teacher``: the policy samples from the teacher's prompts."""
    a, col = cfg.algorithm, cfg.data.prompt_column
    if not a.generate_from_teacher:
        return None
    return [teacher_prompt(r[col], r, a.teacher_prompt_template) for r in records]


def assemble(batch, alg, reward_weights, seed: int):
    perm = torch.randperm(len(batch), generator=torch.Generator().manual_seed(seed))
    return batch.select(perm), {}


class SDFTObjective(Objective):
    @property
    def reuses_batches(self) -> bool:
        """A generation batch outlives the step it was admitted in: pi_old (for the IS clip) is computed then."""
        s = self.sched
        return s.GA % (s.S * s.mu) != 0

    @torch.no_grad()
    def admit(self, model, shard):
        if self.reuses_batches and not self.alg.generate_from_teacher:
            shard.old_logprobs = model.logprobs_no_grad(shard, self.temperature)
        return shard, {}

    def loss(self, mb, logits_BTV):
        d = logits_BTV.device
        mask_BT = mb.completion_mask.to(d).to(logits_BTV.dtype)
        skip = self.alg.num_loss_tokens_to_skip
        if skip:
            mask_BT = mask_BT * (torch.arange(mask_BT.shape[1], device=d) >= skip).to(mask_BT.dtype)
        return distillation_loss(self.alg, mb, logits_BTV, self.temperature, mask_BT, self.sched.GA)


class SDFT(Family):
    configs = (SDFTConfig,)
    objective = SDFTObjective

    def needs(self, cfg) -> Needs:
        return Needs(rewards=False, teachers=(teacher_spec(cfg),))

    def data_columns(self, cfg) -> dict[str, str]:
        """The dataset columns the teacher's prompt reads."""
        fields = template_fields(cfg.algorithm.teacher_prompt_template)
        return {f: "algorithm.teacher_prompt_template" for f in fields if f != "prompt"}

    teacher_prompts = staticmethod(teacher_prompts)

    generation_prompts = staticmethod(generation_prompts)

    assemble = staticmethod(assemble)

    def moving_pools(self, cfg) -> list[str]:
        return teacher_moves(cfg)

    def after_step(self, cfg, step: int, driver) -> None:
        sync_teacher(cfg, step, driver)
