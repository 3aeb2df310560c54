"""The reward actor: scores a rollout ``Batch`` with every reward function, one column per function.

A function that raises, returns the wrong number of scores, or outruns ``timeout_s`` is reported (name, error) and
contained: its column is None (NaN) for that batch, never silently 0. A timed-out sync function may still hold a
thread, so the actor then asks to be restarted.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import time
import traceback

import torch

from cluster.batch import Batch
from .registry import resolve


class RewardWorker:
    def __init__(self, reward_funcs: list, tokenizer_path: str, timeout_s: float = 60.0, index: int = 0):
        from cluster.runtime import configure_worker
        from transformers import AutoTokenizer
        configure_worker()
        self.index = index
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
        self.funcs = [resolve(spec, self.tokenizer) for spec in reward_funcs]
        self.timeout_s = timeout_s
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=max(2, len(self.funcs)))

    def names(self) -> list[str]:
        return [n for n, _ in self.funcs]

    def score(self, batch: Batch, trainer_state: dict | None = None) -> Batch:
        t0 = time.time()
        conversational = bool(batch.prompts) and isinstance(batch.prompts[0], list)
        completions = ([[{"role": "assistant", "content": c}] for c in batch.completions] if conversational
                       else list(batch.completions))
        mask = batch.completion_mask.bool()
        extra_logs: dict[str, list] = {}
        metrics: dict[str, float] = {}
        kwargs = dict(batch.columns)
        kwargs.update(
            prompts=list(batch.prompts), completions=completions,
            completion_ids=[row[m].tolist() for row, m in zip(batch.completion_ids, mask)],
            trainer_state=trainer_state or {},
            log_extra=lambda column, values: extra_logs.__setitem__(column, list(values)),
            log_metric=lambda name, value: metrics.__setitem__(name, float(value)),
        )
        N = len(batch)
        columns, errors, stuck = [], {}, False
        async_funcs = [(i, n, f) for i, (n, f) in enumerate(self.funcs) if inspect.iscoroutinefunction(f)]
        results: dict[int, object] = {}
        if async_funcs:  # awaited concurrently, on an event loop of their own (the actor's thread may run one)
            results.update(self.pool.submit(asyncio.run, self._run_async(async_funcs, kwargs)).result())
        for i, (name, fn) in enumerate(self.funcs):  # sync functions, in order
            if i in results:
                continue
            fut = self.pool.submit(fn, **kwargs)
            try:
                results[i] = fut.result(timeout=self.timeout_s)
            except concurrent.futures.TimeoutError:
                results[i] = TimeoutError(f"no result after {self.timeout_s:.0f}s (reward.timeout_s)")
                stuck = True
            except Exception as e:  # noqa: BLE001  (contained and reported)
                results[i] = e
        for i, (name, _) in enumerate(self.funcs):
            values, col = results[i], torch.full((N,), float("nan"))
            if isinstance(values, BaseException):
                errors[name] = _describe(values)
            elif not isinstance(values, (list, tuple)) or len(values) != N:
                got = len(values) if isinstance(values, (list, tuple)) else type(values).__name__
                errors[name] = f"returned {got} scores for {N} completions"
            else:
                col = torch.tensor([float("nan") if v is None else float(v) for v in values])
            columns.append(col)
        rewards = torch.stack(columns, dim=1)  # (N, K)
        info = {**batch.info, "reward_s": time.time() - t0, "reward_errors": errors, "reward_stuck": stuck,
                "reward_names": self.names(), "reward_worker": self.index,
                "reward_metrics": metrics, "reward_extra": extra_logs}
        return batch.replace(rewards=rewards, info=info)

    async def _run_async(self, funcs, kwargs):
        async def one(i, name, fn):
            try:
                return i, await asyncio.wait_for(fn(**kwargs), timeout=self.timeout_s)
            except asyncio.TimeoutError:
                return i, TimeoutError(f"no result after {self.timeout_s:.0f}s (reward.timeout_s)")
            except Exception as e:  # noqa: BLE001
                return i, e
        return dict(await asyncio.gather(*(one(*f) for f in funcs)))

    def ping(self) -> bool:
        return True


def _describe(e: BaseException) -> str:
    tb = traceback.extract_tb(e.__traceback__)
    where = f" at {tb[-1].filename}:{tb[-1].lineno}" if tb else ""
    return f"{type(e).__name__}: {e}{where}"
