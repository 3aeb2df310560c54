"""SDPO, self-distillation policy optimisation (2601.20802; TRL 1.16's SDPOTrainer names;
docs/methods/self-distillation.md).

The GRPO loss, blended with self-distillation from the model re-prompted with what its siblings found:

    needs      rewards; the ``self_teacher`` pool (the policy's weights, re-prompted per row; base, live or EMA);
               the reference pool when beta > 0
    teacher    ``teacher_prompts``: for sample i of group g, the solution is the first sibling j in g with reward >=
               success_reward_threshold (j != i under dont_reprompt_on_self_success), the feedback the row's non-empty
               ``privileged_context`` (include_environment_feedback; with environment_feedback_only_without_solution
               only when there is no solution); the teacher prompt is reprompt_template filled with the prompt,
               solution_template(demo) and feedback_template(feedback) (absent parts empty). A row with neither keeps
               its prompt and is masked out of the distillation term
    assemble   GRPO's (group advantages, shuffle) plus the re-prompt statistics
    objective  L = (1 - w) L_PG + w L_distill / GA   (w = distillation_weight; L_PG is GRPO's loss, /GA included;
               L_distill of ``learner.methods.self_distillation``)

What differs from TRL 1.16: L_PG is relay-rl's GRPO loss unchanged (its dapo normaliser is the generation batch's
token count, KL, delta and the rollout correction apply); TRL's SDPO normalises its own dapo term as the micro-batch
token mean and has none of those.
"""

from __future__ import annotations

import re
from typing import Literal

import torch
from pydantic import Field, model_validator

from relay_rl.batch import group_rows
from relay_rl.learner.advantages import total_reward

from . import grpo
from .base import Family, Needs
from .grpo import GRPOConfig, GRPOObjective
from .self_distillation import (
    SelfDistillationKnobs,
    check_template,
    distillation_loss,
    rewrite_prompt,
    sync_teacher,
    teacher_moves,
    teacher_spec,
)

FEEDBACK_COLUMN = "privileged_context"
THINK_BLOCK = re.compile(r"<think>.*?</think>", re.DOTALL)


class SDPOConfig(GRPOConfig, SelfDistillationKnobs):
    name: Literal["sdpo"] = "sdpo"
    loss_type: Literal["grpo", "bnpo", "dr_grpo", "dapo"] = "dapo"
    """The policy-gradient term's surrogate and aggregation (SDPO blends one of these)."""
    distillation_weight: float = Field(1.0, ge=0, le=1)
    """w: 0 is the pure policy-gradient loss, 1 pure self-distillation."""
    use_successful_as_teacher: bool = True
    """Give the teacher a sibling's completion that reached success_reward_threshold."""
    success_reward_threshold: float = 1.0
    """A sibling is successful when its weighted reward reaches this."""
    dont_reprompt_on_self_success: bool = True
    """A sample is never shown itself as the solution."""
    include_environment_feedback: bool = False
    """Give the teacher the row's ``privileged_context`` column (environment feedback) when it is not empty."""
    environment_feedback_only_without_solution: bool = False
    """Use the feedback only for samples that have no successful sibling."""
    remove_thinking_from_demonstration: bool = False
    """Strip ``<think>...</think>`` from the sibling's completion before it is shown."""
    max_reprompt_len: int = Field(10240, ge=1)
    """Teacher prompts are cut to their last this many tokens."""
    reprompt_template: str = "{prompt}{solution}{feedback}\n\nCorrectly solve the original question.\n"
    """The teacher's prompt: {prompt} (the user turn's text), {solution}, {feedback}."""
    solution_template: str = "\nCorrect solution:\n\n{successful_previous_attempt}\n\n"
    """How a successful sibling is shown: {successful_previous_attempt}."""
    feedback_template: str = "\nThe following is feedback from your unsuccessful earlier attempt:\n\n{feedback_raw}\n\n"
    """How the feedback is shown: {feedback_raw}."""

    @model_validator(mode="after")
    def _templates(self):
        check_template("reprompt_template", self.reprompt_template, {"prompt", "solution", "feedback"}, ("prompt",))
        check_template("solution_template", self.solution_template, {"successful_previous_attempt"})
        check_template("feedback_template", self.feedback_template, {"feedback_raw"})
        return self


# ----------------------------------------------------------------------------------------------------------------
# the teacher's prompts
# ----------------------------------------------------------------------------------------------------------------
def teacher_prompts(batch, cfg) -> tuple[list, torch.Tensor]:
    """Each row's teacher prompt (docs/methods/self-distillation.md) and whether it has a teacher context (N,) bool.
    Groups are the rows sharing a group id, in row order (the first successful sibling is the first such row)."""
    a = cfg.algorithm
    weights = cfg.reward.reward_weights or [1.0] * batch.rewards.shape[1]
    r = total_reward(batch.rewards, weights)  # NaN where unscorable: never a success
    success = (r >= a.success_reward_threshold).tolist()
    groups = group_rows(batch.group_id.tolist())
    feedback = batch.columns.get(FEEDBACK_COLUMN, [None] * len(batch))
    prompts, active = [], []
    for i, g in enumerate(batch.group_id.tolist()):
        solved = (
            [j for j in groups[g] if success[j] and not (a.dont_reprompt_on_self_success and j == i)]
            if a.use_successful_as_teacher
            else []
        )
        has_feedback = isinstance(feedback[i], str) and feedback[i].strip() != ""
        use_feedback = (
            a.include_environment_feedback
            and has_feedback
            and not (a.environment_feedback_only_without_solution and solved)
        )
        if not solved and not use_feedback:
            prompts.append(batch.prompts[i])
            active.append(False)
            continue
        solution = ""
        if solved:
            demo = batch.completions[solved[0]]
            if a.remove_thinking_from_demonstration:
                demo = THINK_BLOCK.sub("", demo).strip()
            solution = a.solution_template.format(successful_previous_attempt=demo)
        fb = a.feedback_template.format(feedback_raw=feedback[i]) if use_feedback else ""
        prompts.append(
            rewrite_prompt(
                batch.prompts[i],
                lambda text, solution=solution, fb=fb: a.reprompt_template.format(
                    prompt=text, solution=solution, feedback=fb
                ),
            )
        )
        active.append(True)
    return prompts, torch.tensor(active, dtype=torch.bool)


def assemble(batch, alg, reward_weights, seed: int):
    """GRPO's assembly, and how many rows the teacher saw with a context."""
    batch, stats = grpo.assemble(batch, alg, reward_weights, seed)
    stats["self_distillation/reprompt_sample_fraction"] = float(batch.teacher_context.float().mean())
    return batch, stats


# ----------------------------------------------------------------------------------------------------------------
# the objective
# ----------------------------------------------------------------------------------------------------------------
class SDPOObjective(GRPOObjective):
    """(1 - w) L_PG + w L_distill / GA, the distillation term over the rows with a teacher context."""

    def loss(self, mb, logits_BTV):
        w, d = self.alg.distillation_weight, logits_BTV.device
        pg, stats = super().loss(mb, logits_BTV) if w < 1 else (0.0, {})
        mask_BT = mb.completion_mask.to(d) * mb.teacher_context.to(d).unsqueeze(1).to(logits_BTV.dtype)
        distill, d_stats = distillation_loss(self.alg, mb, logits_BTV, self.temperature, mask_BT, self.sched.GA)
        stats.update(d_stats)
        stats["self_distillation/policy_loss"] = ("mean", float(pg.detach()) if torch.is_tensor(pg) else pg, 1.0)
        return (1 - w) * pg + w * distill, stats


class SDPO(Family):
    """GRPO's checks, warnings and reference refresh, the self-teacher beside; no dynamic sampling."""

    configs = (SDPOConfig,)
    objective = SDPOObjective

    def needs(self, cfg) -> Needs:
        return Needs(rewards=True, teachers=(teacher_spec(cfg), *grpo.reference_spec(cfg)))

    def data_columns(self, cfg) -> dict[str, str]:
        a = cfg.algorithm
        return {FEEDBACK_COLUMN: "algorithm.include_environment_feedback"} if a.include_environment_feedback else {}

    teacher_prompts = staticmethod(teacher_prompts)

    def reprompt_length(self, cfg) -> int:
        return cfg.algorithm.max_reprompt_len or cfg.rollout.max_prompt_length

    assemble = staticmethod(assemble)

    def check(self, cfg) -> None:
        grpo.metric_column(cfg)
        grpo.check_gdpo(cfg)

    def warnings(self, cfg) -> list[str]:
        return grpo.staleness_warnings(cfg)

    def moving_pools(self, cfg) -> list[str]:
        return grpo.refreshed_reference(cfg) + teacher_moves(cfg)

    def after_step(self, cfg, step: int, driver) -> None:
        grpo.refresh_reference(cfg, step, driver)  # a refreshed reference (sync_ref_model)
        sync_teacher(cfg, step, driver)
