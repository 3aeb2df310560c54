"""Agent programs (``rollout.agent_program``): the user's own agent, written against the OpenAI client, run for every
sample with a base URL of its own on the rollout actor's endpoint (``openai_server.ChatServer``).

A program is ``def run(base_url: str, row: dict) -> float | None`` (or ``async def``): it talks to the policy through
``openai.OpenAI(base_url=base_url, api_key="relay-rl")`` as often as it likes (calling its own tools between the calls)
and returns the trajectory's reward (``agent_reward``, a built-in reward function, passes it on; None: not scored).
Its calls are recorded as one trajectory with exact tokens: the ids the engine sampled (in the loss) and the chat
template's ids of the messages the program added (context, ``tool_mask`` 0). The programs of a generation call run at
once; the server batches their requests.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import time

from relay_rl.sampling import SamplingParams

from .engine import Completion
from .openai_server import ChatServer, trajectory_of
from .tools import load_agent_program


class AgentProgram:
    def __init__(self, tokenizer, generate, program: str, max_completion_length: int, timeout_s: float, host: str):
        self.fn, self.timeout_s = load_agent_program(program), timeout_s
        self.server = ChatServer(tokenizer, generate, max_completion_length, host=host)
        self.threads = concurrent.futures.ThreadPoolExecutor(max_workers=256, thread_name_prefix="agent")
        self.redone = 0

    def run(self, records: list[dict], params: SamplingParams) -> list[tuple]:
        """``params.n`` trajectories per record -> per row (prompt, prompt ids, Completion, summary)."""
        rows = [r for r in records for _ in range(params.n)]
        tids = [self.server.open(params) for _ in rows]
        futures = [self.threads.submit(self._call, self.server.base_url(t), dict(r)) for t, r in zip(tids, rows)]
        deadline = time.time() + self.timeout_s
        out = []
        for tid, fut in zip(tids, futures):
            reward, error = None, None
            try:
                reward = fut.result(timeout=max(0.0, deadline - time.time()))
            except concurrent.futures.TimeoutError:
                error = f"the agent program gave no result within {self.timeout_s:g}s (rollout.agent_timeout_s)"
            except Exception as e:  # noqa: BLE001  (contained: the trajectory has no reward)
                error = f"{type(e).__name__}: {e}"
            rec = self.server.close(tid)
            got = trajectory_of(rec)
            if got is None:  # the program never called the policy
                prompt, prompt_ids, comp, messages = (
                    [],
                    [self.server.tokenizer.eos_token_id],
                    Completion([], [], "stop"),
                    [],
                )
                error = error or "the agent program made no call to the policy"
            else:
                prompt_ids, ids, logprobs, mask, truncated, messages = got
                prompt = rec.calls[0].messages
                comp = Completion(ids, logprobs, "length" if truncated else "stop", tool_mask=mask)
            if reward is not None and not isinstance(reward, (int, float)):
                error, reward = f"the agent program returned a {type(reward).__name__}, not a number", None
            summary = {
                "messages": messages,
                "turns": len(rec.calls),
                "tool_calls": sum(len(c.reply.get("tool_calls") or []) for c in rec.calls),
                "tool_failures": 0,
                "tool_s": 0.0,
                "reset_s": 0.0,
                "malformed": 0,
                "non_string_results": 0,
                "overflow": rec.truncated,
                "error": error,
                "environment": None,
                "agent_reward": None if reward is None else float(reward),
                "restarts": rec.restarts,
            }
            out.append((prompt, prompt_ids, comp, summary))
        return out

    def _call(self, base_url: str, row: dict):
        if inspect.iscoroutinefunction(self.fn):
            return asyncio.run(self.fn(base_url, row))
        return self.fn(base_url, row)
