"""The reward actor: scores a rollout ``Batch`` with every reward function, one column per function.

A function that raises, returns the wrong number of scores, a score that is not a number (a string, a list), inf or
NaN, or outruns ``timeout_s`` is reported (name, error, an example row) and contained: its column is None (NaN) for
that batch, never silently 0. ``None`` is a valid score ("not applicable"). Lists, tuples, numpy arrays and tensors
of the right length are accepted, as in TRL. A timed-out sync function may still hold a thread, so the actor then
asks to be restarted.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import math
import time
import traceback

import torch

from relay_rl.batch import Batch, with_chat_template_kwargs

from .registry import resolve


class RewardWorker:
    def __init__(
        self,
        reward_funcs: list,
        tokenizer_path: str,
        timeout_s: float = 60.0,
        index: int = 0,
        search_path: list[str] = (),
        chat_template_kwargs: dict | None = None,
    ):
        import sys

        from transformers import AutoTokenizer

        from relay_rl.process import configure_worker

        configure_worker()
        for p in reversed(search_path):  # where ``module:function`` imports are found (the run file's folder, ...)
            if p not in sys.path:
                sys.path.insert(0, p)
        self.index = index
        self.tokenizer = with_chat_template_kwargs(AutoTokenizer.from_pretrained(tokenizer_path), chat_template_kwargs)
        self.funcs = [resolve(spec, self.tokenizer) for spec in reward_funcs]
        self.takes_groups = [_accepts(fn, "group_ids") for _, fn in self.funcs]  # pairwise judges: which rows pair
        self.timeout_s = timeout_s
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=len(self.funcs) + 1)  # + the async loop

    def names(self) -> list[str]:
        return [n for n, _ in self.funcs]

    def score(self, batch: Batch, trainer_state: dict | None = None, part: tuple[int, int] = (0, 1)) -> Batch:
        """Score ``batch``, or with ``part`` = (j, k) only its j-th of k runs of whole groups (in order): the rows
        this replica scores when a rollout chunk is split between k reward replicas. Returns the scored rows."""
        t0 = time.time()
        if part[1] > 1:
            batch = batch.select(group_part(batch.group_id, *part))
        conversational = bool(batch.prompts) and isinstance(batch.prompts[0], list)
        completions = (
            [[{"role": "assistant", "content": c}] for c in batch.completions]
            if conversational
            else list(batch.completions)
        )
        if batch.trajectories:  # multi-turn: the completion's messages (assistant, tool, ...), as TRL passes them
            completions = [t["messages"] for t in batch.trajectories]
        mask = batch.completion_mask.bool()
        extra_logs: dict[str, list] = {}
        metrics: dict[str, float] = {}
        kwargs = dict(batch.columns)
        kwargs.update(
            prompts=list(batch.prompts),
            completions=completions,
            completion_ids=[row[m].tolist() for row, m in zip(batch.completion_ids, mask)],
            trainer_state=trainer_state or {},
            log_extra=lambda column, values: extra_logs.__setitem__(column, list(values)),
            log_metric=lambda name, value: metrics.__setitem__(name, float(value)),
        )
        if batch.trajectories and any(t.get("environment") is not None for t in batch.trajectories):
            kwargs["environments"] = [t.get("environment") for t in batch.trajectories]  # TRL's keyword
        if batch.trajectories and any("agent_reward" in t for t in batch.trajectories):
            kwargs["agent_rewards"] = [t.get("agent_reward") for t in batch.trajectories]  # rollout.agent_program's
        N = len(batch)
        columns, errors, stuck = [], {}, False
        # every function at once: the sync ones on the thread pool, the async ones awaited together on an event loop
        # of their own (the actor's thread may run one); all within one reward.timeout_s from now
        async_funcs = [(i, n, f) for i, (n, f) in enumerate(self.funcs) if inspect.iscoroutinefunction(f)]
        groups = {"group_ids": batch.group_id.tolist()}
        futures = {
            i: self.pool.submit(fn, **kwargs, **(groups if self.takes_groups[i] else {}))
            for i, (_, fn) in enumerate(self.funcs)
            if not inspect.iscoroutinefunction(fn)
        }
        awaited = self.pool.submit(asyncio.run, self._run_async(async_funcs, kwargs, groups)) if async_funcs else None
        deadline = time.time() + self.timeout_s
        results: dict[int, object] = {}
        for i, fut in futures.items():
            try:
                results[i] = fut.result(timeout=max(0.0, deadline - time.time()))
            except concurrent.futures.TimeoutError:
                results[i] = TimeoutError(f"no result after {self.timeout_s:.0f}s (reward.timeout_s)")
                stuck = True
            except Exception as e:  # noqa: BLE001  (contained and reported)
                results[i] = e
        if awaited is not None:
            results.update(awaited.result())  # each bounded by its own wait_for
        for i, (name, _) in enumerate(self.funcs):
            values, col = results[i], torch.full((N,), float("nan"))
            if isinstance(values, BaseException):
                errors[name] = _describe(values)
            else:
                scores, problem = _scores(values, N)
                if problem is None:
                    col = scores
                else:
                    row = problem[1]
                    example = f" (row {row}: completion {batch.completions[row][:80]!r})" if row is not None else ""
                    errors[name] = problem[0] + example
            columns.append(col)
        rewards = torch.stack(columns, dim=1)  # (N, K)
        info = {
            **batch.info,
            "reward_s": time.time() - t0,
            "reward_errors": errors,
            "reward_stuck": stuck,
            "reward_names": self.names(),
            "reward_worker": self.index,
            "reward_metrics": metrics,
            "reward_extra": extra_logs,
        }
        if batch.trajectories:  # the environments stay here: nothing after scoring reads them
            batch = batch.replace(trajectories=[{**t, "environment": None} for t in batch.trajectories])
        return batch.replace(rewards=rewards, info=info)

    async def _run_async(self, funcs, kwargs, groups):
        async def one(i, name, fn):
            try:
                call = fn(**kwargs, **(groups if self.takes_groups[i] else {}))
                return i, await asyncio.wait_for(call, timeout=self.timeout_s)
            except asyncio.TimeoutError:
                return i, TimeoutError(f"no result after {self.timeout_s:.0f}s (reward.timeout_s)")
            except Exception as e:  # noqa: BLE001
                return i, e

        return dict(await asyncio.gather(*(one(*f) for f in funcs)))

    def ping(self) -> bool:
        return True


def _accepts(fn, name: str) -> bool:
    """``fn`` takes the keyword ``name`` (by name, or through **kwargs)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.kind == p.VAR_KEYWORD or p.name == name for p in params)


def group_part(group_id: torch.Tensor, j: int, k: int) -> torch.Tensor:
    """Row indices of the j-th of k contiguous runs of groups (groups in order of first appearance; sizes differ by
    at most one group)."""
    groups = list(dict.fromkeys(group_id.tolist()))
    mine = set(groups[j * len(groups) // k : (j + 1) * len(groups) // k])
    return torch.tensor([r for r, g in enumerate(group_id.tolist()) if g in mine], dtype=torch.long)


def _scores(values, N: int):
    """(scores as a float tensor, None) or (None, (what is wrong, the first bad row or None))."""
    if hasattr(values, "tolist") and not isinstance(values, (list, tuple)):  # numpy arrays, tensors
        values = values.tolist()
    if not isinstance(values, (list, tuple)):
        return None, (f"returned a {type(values).__name__}, not a list of {N} scores", None)
    if len(values) != N:
        return None, (f"returned {len(values)} scores for {N} completions", None)
    out = []
    for row, v in enumerate(values):
        if v is None:
            out.append(float("nan"))  # not applicable: excluded from the weighted sum
            continue
        if hasattr(v, "item") and getattr(v, "ndim", 0) == 0:  # numpy / torch scalars
            v = v.item()
        if not isinstance(v, (int, float)):  # bools count as 0 / 1
            return None, (f"returned {type(v).__name__} {str(v)[:40]!r} as a score; scores are numbers or None", row)
        f = float(v)
        if not math.isfinite(f):
            return None, (f"returned {f} as a score; scores must be finite (None marks 'not applicable')", row)
        out.append(f)
    return torch.tensor(out), None


def _describe(e: BaseException) -> str:
    tb = traceback.extract_tb(e.__traceback__)
    where = f" at {tb[-1].filename}:{tb[-1].lineno}" if tb else ""
    return f"{type(e).__name__}: {e}{where}"
