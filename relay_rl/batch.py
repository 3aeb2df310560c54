"""One columnar batch type for every hop: rollout -> reward -> teacher -> learner.

A row is one completion. Tensors are padded: prompts on the left, completions on the right. The batch pickles its
tensors as numpy arrays, so ``ray.put`` / ``ray.get`` read them zero-copy from the object store.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Optional

import numpy as np
import torch

TENSOR_FIELDS = (
    "prompt_ids",
    "prompt_mask",
    "completion_ids",
    "completion_mask",
    "behaviour_logprobs",
    "policy_version",
    "group_id",
    "truncated",
    "mixed_version",
    "rewards",
    "advantages",
    "old_logprobs",
    "ref_logprobs",
    "is_weights",
    "teacher_logprobs",
    "teacher_dist",
    "teacher_dist_ids",
    "uld_groups",
    "teacher_matched",
    "uld_matched_ids",
    "scores",
    "values",
    "returns",
    "teacher_context",
    "frozen_sample",
    "preference",
    "tool_mask",
)
# tensors whose second dimension is the completion length (padded on the right when batches are joined)
_COMPLETION_DIM = (
    "completion_ids",
    "completion_mask",
    "behaviour_logprobs",
    "old_logprobs",
    "ref_logprobs",
    "teacher_logprobs",
    "teacher_dist",
    "teacher_dist_ids",
    "uld_groups",
    "teacher_matched",
    "values",
    "returns",
    "tool_mask",
)
# ... and the prompt length (padded on the left)
_PROMPT_DIM = ("prompt_ids", "prompt_mask")


@dataclass
class Batch:
    # -- from the rollout engine --
    prompt_ids: torch.Tensor  # (N, Tp) long, left-padded
    prompt_mask: torch.Tensor  # (N, Tp) long, 1 on prompt tokens
    completion_ids: torch.Tensor  # (N, Tc) long, right-padded
    completion_mask: torch.Tensor  # (N, Tc) float, 1 on completion tokens up to and including EOS (M)
    behaviour_logprobs: torch.Tensor  # (N, Tc) float, log pi_beh of each sampled token, NaN where absent
    policy_version: torch.Tensor  # (N,) long, v_b: the weights version that sampled the row
    group_id: torch.Tensor  # (N,) long, rows of one prompt share it
    truncated: torch.Tensor  # (N,) bool, the completion hit max_completion_length without EOS
    mixed_version: Optional[torch.Tensor] = None  # (N,) bool, sampled across a weight sync (partial rollout)
    frozen_sample: Optional[torch.Tensor] = None  # (N,) bool, sampled by a frozen pool (a teacher's or the reference's
    # weights: GKD's seq_kd, XPO), so its policy_version is no policy's and it has no staleness
    # -- from the reward pool --
    rewards: Optional[torch.Tensor] = None  # (N, K) float, one column per reward function, NaN = None
    # -- from assembly / teacher / learner admission --
    advantages: Optional[torch.Tensor] = None  # (N,) or (N, Tc) float
    old_logprobs: Optional[torch.Tensor] = None  # (N, Tc) log pi_old (recomputed at admission)
    ref_logprobs: Optional[torch.Tensor] = None  # (N, Tc) log pi_ref (teacher pool)
    is_weights: Optional[torch.Tensor] = None  # (N, Tc) or (N, 1) rollout importance weights rho (no grad)
    # -- from a distillation teacher pool (teacher_workers/), log-probs at the loss temperature --
    teacher_logprobs: Optional[torch.Tensor] = None  # (N, Tc) log p_T of each completion token
    teacher_dist: Optional[torch.Tensor] = None  # (N, Tc, k) top-k log-probs, or (N, Tc, V) the full vocabulary
    teacher_dist_ids: Optional[torch.Tensor] = None  # (N, Tc, k) int32 token ids of the top-k; None when full
    # cross-tokenizer (GOLD's ULD): teacher_dist is then (N, G, k) the teacher's merged group probabilities, sorted
    # in descending order, and uld_groups (N, Tc) int32 the 1-based group of each completion token (0: not aligned)
    uld_groups: Optional[torch.Tensor] = None
    # hybrid ULD: teacher_dist then holds only the entries of the teacher's vocabulary the student's lacks (sorted),
    # teacher_matched (N, G, M) the merged group probabilities at the M entries both have, and uld_matched_ids (N, M)
    # int32 the student's ids of those entries (the same in every row)
    teacher_matched: Optional[torch.Tensor] = None
    uld_matched_ids: Optional[torch.Tensor] = None
    # -- PPO (learner/methods/ppo.py) --
    scores: Optional[torch.Tensor] = None  # (N,) the weighted reward of each completion
    values: Optional[torch.Tensor] = None  # (N, Tc) V_old from the critic, once per generation batch
    returns: Optional[torch.Tensor] = None  # (N, Tc) GAE returns R_t = A_t + V_old_t (the critic's targets)
    # -- preference pairs (online DPO, XPO): rows ordered chosen, rejected, chosen, ... --
    preference: Optional[torch.Tensor] = None  # (N,) float, +1 chosen, -1 rejected, 0 a pair left out (unscorable)
    # -- self-distillation (SDPO, SDFT) --
    teacher_context: Optional[torch.Tensor] = None  # (N,) bool, the self-teacher saw the row with a context
    # -- multi-turn rollouts (rollout_workers/agent.py) --
    tool_mask: Optional[torch.Tensor] = None  # (N, Tc) float, 1 on tokens the policy sampled, 0 on a tool message's
    # tokens (in the context, out of the loss: ``loss_mask``); 1 past the end. None: single-turn
    trajectories: list = field(default_factory=list)  # per row: its completion as chat messages, turns, tool calls,
    # failures, seconds in tools, the environment as it ended, ... (``Trajectory.summary``); empty: single-turn
    # -- text side, aligned with rows --
    prompts: list = field(default_factory=list)  # prompt as given (str or chat messages)
    completions: list = field(default_factory=list)  # decoded completion text
    columns: dict = field(default_factory=dict)  # dataset columns (except the prompt), repeated per completion
    # -- scalars --
    info: dict = field(default_factory=dict)  # e.g. generate_s, num_items_in_batch

    # ------------------------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.completion_ids.shape[0]

    def tensors(self) -> dict[str, torch.Tensor]:
        return {k: getattr(self, k) for k in TENSOR_FIELDS if getattr(self, k) is not None}

    def replace(self, **kw) -> Batch:
        return dataclasses.replace(self, **kw)

    def select(self, idx: Sequence[int] | torch.Tensor) -> Batch:
        idx = torch.as_tensor(idx, dtype=torch.long)
        il = idx.tolist()
        return self.replace(
            **{k: v[idx] for k, v in self.tensors().items()},
            prompts=[self.prompts[i] for i in il] if self.prompts else [],
            completions=[self.completions[i] for i in il] if self.completions else [],
            trajectories=[self.trajectories[i] for i in il] if self.trajectories else [],
            columns={k: [v[i] for i in il] for k, v in self.columns.items()},
            info=dict(self.info),
        )

    def split(self, n: int) -> list[Batch]:
        """Cut into n consecutive equal parts."""
        size = len(self)
        if size % n:
            raise ValueError(f"cannot split {size} rows into {n} equal parts")
        m = size // n
        return [self.select(range(i * m, (i + 1) * m)) for i in range(n)]

    @staticmethod
    def concat(batches: Sequence[Batch]) -> Batch:
        """Join batches row-wise, padding prompts on the left and completions on the right."""
        first = batches[0]
        tp = max(b.prompt_ids.shape[1] for b in batches)
        tc = max(b.completion_ids.shape[1] for b in batches)
        out = {}
        for k in TENSOR_FIELDS:
            vals = [getattr(b, k) for b in batches]
            if all(v is None for v in vals):
                continue
            if any(v is None for v in vals):
                raise ValueError(f"cannot join batches where only some have {k}")
            if k in _PROMPT_DIM:
                vals = [_pad(v, tp, left=True, value=0) for v in vals]
            elif k in _COMPLETION_DIM or (
                k in ("advantages", "is_weights") and vals[0].dim() == 2 and vals[0].shape[1] > 1
            ):
                fill = float("nan") if k in ("behaviour_logprobs",) else 1 if k == "tool_mask" else 0
                vals = [_pad(v, tc, left=False, value=fill) for v in vals]
            out[k] = torch.cat(vals)
        cols = {k: [x for b in batches for x in b.columns[k]] for k in first.columns}
        return Batch(
            **out,
            prompts=[p for b in batches for p in b.prompts],
            completions=[c for b in batches for c in b.completions],
            trajectories=[t for b in batches for t in b.trajectories],
            columns=cols,
            info=dict(first.info),
        )

    def trim(self) -> Batch:
        """Drop completion columns that no row uses (after selection the batch may be narrower)."""
        used = int(self.completion_mask.sum(0).nonzero().max().item()) + 1 if self.completion_mask.any() else 1
        if used == self.completion_ids.shape[1]:
            return self
        kw = {k: getattr(self, k)[:, :used] for k in _COMPLETION_DIM if getattr(self, k) is not None}
        for k in ("advantages", "is_weights"):
            v = getattr(self, k)
            if v is not None and v.dim() == 2 and v.shape[1] > 1:
                kw[k] = v[:, :used]
        return self.replace(**kw)

    @property
    def num_completion_tokens(self) -> int:
        return int(self.completion_mask.sum().item())

    @property
    def loss_mask(self) -> torch.Tensor:
        """(N, Tc) the tokens a loss counts: the completion mask without tool-message tokens (TRL's
        ``completion_mask * tool_mask``). ``completion_mask`` stays the attention mask."""
        return self.completion_mask if self.tool_mask is None else self.completion_mask * self.tool_mask

    # ------------------------------------------------------------------------------------------------------------
    # pickling: numpy arrays, so the object store hands them out zero-copy
    def __reduce__(self):
        arrays = {k: v.detach().cpu().numpy() for k, v in self.tensors().items()}
        rest = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in TENSOR_FIELDS}
        return (_rebuild_batch, (arrays, rest))


def _rebuild_batch(arrays: dict[str, np.ndarray], rest: dict[str, Any]) -> Batch:
    with warnings.catch_warnings():  # arrays from the object store are read-only; we never write into them
        warnings.simplefilter("ignore", UserWarning)
        tensors = {k: torch.from_numpy(v) for k, v in arrays.items()}
    return Batch(**tensors, **rest)


def group_rows(group_ids: Sequence[int]) -> dict[int, list[int]]:
    """Row indices of each group, groups in order of first appearance."""
    rows: dict[int, list[int]] = {}
    for i, g in enumerate(group_ids):
        rows.setdefault(g, []).append(i)
    return rows


def with_chat_template_kwargs(tokenizer, kwargs: dict | None):
    """``tokenizer`` whose every ``apply_chat_template`` call gets ``kwargs`` (``rollout.chat_template_kwargs``, e.g.
    Qwen3's ``enable_thinking``); a keyword a call gives itself wins. Every role binds them where it loads its
    tokenizer, so no call site passes them. Returns the same tokenizer."""
    if kwargs:
        tokenizer.apply_chat_template = functools.partial(type(tokenizer).apply_chat_template, tokenizer, **kwargs)
    return tokenizer


def prompt_token_ids(tokenizer, prompt) -> list[int]:
    """A prompt's token ids: a string as it is (no special tokens added), chat messages through the chat template
    with the generation prompt."""
    if isinstance(prompt, list):
        return chat_token_ids(tokenizer, prompt, generation_prompt=True)
    return list(tokenizer(prompt, add_special_tokens=False)["input_ids"])


def chat_token_ids(tokenizer, messages: list, generation_prompt: bool = False) -> list[int]:
    """Chat messages through the tokenizer's chat template, as token ids."""
    return list(
        tokenizer.apply_chat_template(
            messages, add_generation_prompt=generation_prompt, tokenize=True, return_dict=False
        )
    )


def left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token id lists -> (ids (N, T) long, mask (N, T) long), padded on the left (prompts)."""
    width = max(1, max((len(r) for r in rows), default=0))
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if len(r):
            ids[i, width - len(r) :] = torch.as_tensor(list(r), dtype=torch.long)
            mask[i, width - len(r) :] = 1
    return ids, mask


def _pad(x: torch.Tensor, width: int, left: bool, value) -> torch.Tensor:
    pad = width - x.shape[1]
    if pad <= 0:
        return x
    filler = torch.full((x.shape[0], pad, *x.shape[2:]), value, dtype=x.dtype)
    return torch.cat([filler, x] if left else [x, filler], dim=1)
