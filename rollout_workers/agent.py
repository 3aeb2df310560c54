"""Multi-turn rollouts: the policy calls tools and environments between its turns (TRL's ``tools`` and
``environment_factory`` contract), token-exact.

Every trajectory of a generation call advances together, one turn at a time: the engine samples the next turn of
every open trajectory in one batch, the turns are parsed with the tokenizer's response template, and the tool calls of
all trajectories run at once (threads; an environment's on its actors), so one trajectory's tool latency overlaps the
others'. A trajectory's completion is the engine's sampled ids of each turn, then the chat template's ids of the tool
messages and the next turn's header, then the next sampled turn, ...: never a re-tokenisation of decoded text. The
tool-message ids are in the context but out of the loss (``Batch.tool_mask`` 0, TRL's name); they have no behaviour
log-prob (NaN). The whole trajectory is sampled by one policy version: a weight sync waits until the call returns.

What ends a trajectory: a turn without tool calls (its answer), ``max_tool_calling_iterations`` tool rounds (TRL: the
model's next turn is its last), the completion budget ``max_completion_length`` (sampled and tool tokens together; a
tool result that does not fit is dropped and the trajectory flagged truncated, ``overflow``), a malformed turn (the
parser fails: kept as text), or a tool that raises or outruns ``tool_timeout_s`` (its error is the tool message the
reward functions see; no tokens follow it). An environment actor that dies mid-trajectory is restarted by Ray and the
trajectory is redone from its start.
"""

from __future__ import annotations

import concurrent.futures
import math
import time
from dataclasses import dataclass, field, replace
from typing import Optional

from relay_rl.sampling import SamplingParams

from .engine import Completion
from .tools import (
    check_chat_template,
    environment_methods,
    load_environment,
    load_tools,
    parse_turn,
    set_response_template,
    tool_suffix_ids,
)

REDO_TRIES = 3  # times a trajectory is redone after its environment actor died


@dataclass
class Trajectory:
    prompt: list  # chat messages (an environment's first observation appended to the last one)
    prompt_ids: list[int]
    slot: Optional[tuple] = None  # (environment actor index, slot key)
    ids: list[int] = field(default_factory=list)  # the completion as the engine saw it: sampled and tool tokens
    logprobs: list[float] = field(default_factory=list)
    tool_mask: list[int] = field(default_factory=list)  # 1: sampled by the policy; 0: a tool message's tokens
    messages: list = field(default_factory=list)  # the completion as chat messages (assistant, tool, assistant, ...)
    finish: str = "stop"
    done: bool = False
    calls: list = field(default_factory=list)  # the last turn's tool calls, not yet run
    turns: int = 0
    tool_calls: int = 0
    tool_failures: int = 0
    tool_s: float = 0.0
    reset_s: float = 0.0  # seconds its environment's reset took (the call's resets run at once)
    malformed: int = 0
    non_string: int = 0
    overflow: bool = False
    error: Optional[str] = None
    env_died: bool = False
    environment: object = None  # the environment instance as the trajectory ended (for the reward functions)

    def summary(self) -> dict:
        """What the batch keeps of the trajectory (``Batch.trajectories``)."""
        return {
            "messages": self.messages,
            "turns": self.turns,
            "tool_calls": self.tool_calls,
            "tool_failures": self.tool_failures,
            "tool_s": self.tool_s,
            "reset_s": self.reset_s,
            "malformed": self.malformed,
            "non_string_results": self.non_string,
            "overflow": self.overflow,
            "error": self.error,
            "environment": self.environment,
        }


class MultiTurn:
    """The tool loop of one rollout actor: its tools, its environment actors, its limits."""

    def __init__(
        self,
        tokenizer,
        tools: list[str],
        environment_factory: Optional[str],
        environment_actors,
        max_tool_calling_iterations: Optional[int],
        max_completion_length: int,
        tool_timeout_s: float,
        response_template: Optional[str] = None,
        max_prompt_length: Optional[int] = None,
    ):
        self.tokenizer = tokenizer
        set_response_template(tokenizer, response_template)
        check_chat_template(tokenizer)
        self.tools = {fn.__name__: fn for fn in load_tools(tools)}
        self.env_tools: list[str] = []
        schema_fns = list(self.tools.values())
        if environment_factory:  # a local probe instance: its bound methods give the schemas rendered in prompts
            probe = load_environment(environment_factory)()
            self.env_tools = environment_methods(type(probe))
            schema_fns += [getattr(probe, n) for n in self.env_tools]
        self.schemas = schema_fns
        self.environment_actors = environment_actors  # () -> the environment pool's actors now
        self.max_iterations = max_tool_calling_iterations or math.inf
        self.L = max_completion_length
        self.timeout_s = tool_timeout_s
        self.max_prompt_length = max_prompt_length
        self.threads = concurrent.futures.ThreadPoolExecutor(max_workers=64, thread_name_prefix="tool")
        self.calls = concurrent.futures.ThreadPoolExecutor(max_workers=64, thread_name_prefix="tool-call")
        self.redone = 0

    # ------------------------------------------------------------------------------------------------------------
    def run(self, engine, records: list[dict], prompts: list, params: SamplingParams, worker: int) -> list:
        """``params.n`` trajectories per record -> per record, its n (Completion, Trajectory)."""
        bad = [i for i, p in enumerate(prompts) if not isinstance(p, list)]
        if bad:
            raise ValueError(
                f"multi-turn rollouts (rollout.tools / rollout.environment_factory) need chat-message prompts; row "
                f"{bad[0]}'s prompt is a {type(prompts[bad[0]]).__name__}: give data.prompt_column as a list of "
                '{"role", "content"} messages'
            )
        rows = [(i, k) for i in range(len(records)) for k in range(params.n)]
        trajs = self._start([(records[i], prompts[i], (worker, r)) for r, (i, _) in enumerate(rows)])
        self._advance(engine, trajs, params)
        for _ in range(REDO_TRIES):  # environment actors that died: Ray restarts them; their trajectories run again
            lost = [j for j, t in enumerate(trajs) if t.env_died]
            if not lost:
                break
            self.redone += len(lost)
            self._await_environments()
            again = self._start([(records[rows[j][0]], prompts[rows[j][0]], trajs[j].slot[1]) for j in lost])
            self._advance(engine, again, params)
            for j, t in zip(lost, again):
                trajs[j] = t
        for t in trajs:
            if t.env_died:
                raise RuntimeError(f"environment actor of slot {t.slot} died {REDO_TRIES + 1} times: {t.error}")
        self._finish(trajs)
        out = [
            (Completion(t.ids, t.logprobs, "length" if t.finish == "length" else "stop", tool_mask=t.tool_mask), t)
            for t in trajs
        ]
        return [out[j * params.n : (j + 1) * params.n] for j in range(len(records))]

    def prompt_ids(self, prompt: list) -> list[int]:
        ids = list(
            self.tokenizer.apply_chat_template(
                prompt, tools=self.schemas or None, add_generation_prompt=True, tokenize=True, return_dict=False
            )
        )
        if self.max_prompt_length and len(ids) > self.max_prompt_length:
            ids = ids[-self.max_prompt_length :]
        return ids

    # ------------------------------------------------------------------------------------------------------------
    def _start(self, starts: list[tuple]) -> list[Trajectory]:
        """A trajectory per (record, prompt, slot key): the environment reset (its observation joins the prompt)."""
        actors = self.environment_actors() if self.env_tools else []
        if self.env_tools and not actors:
            raise RuntimeError("rollout.environment_factory is set but the environment pool has no actors")
        trajs = []
        for _, prompt, key in starts:
            slot = (hash(key) % len(actors), key) if actors else None
            trajs.append(Trajectory(prompt=list(prompt), prompt_ids=[], slot=slot))
        if actors:
            import ray

            t0 = time.time()
            refs = [actors[t.slot[0]].reset.remote(t.slot[1], dict(rec)) for t, (rec, _, _) in zip(trajs, starts)]
            for t, ref in zip(trajs, refs):
                try:
                    obs = ray.get(ref, timeout=self.timeout_s)
                except Exception as e:  # noqa: BLE001
                    if _actor_died(e):
                        t.env_died, t.done, t.error = True, True, f"environment actor died in reset: {e}"
                    else:
                        t.done, t.error = True, f"reset failed: {_short(e)}"
                    continue
                if obs is not None:  # TRL: the observation is appended to the last prompt message
                    last = t.prompt[-1]
                    t.prompt[-1] = {**last, "content": (last.get("content") or "") + str(obs)}
            for t in trajs:  # the resets ran at once: each trajectory waited this long
                t.reset_s = time.time() - t0
        for t in trajs:
            t.prompt_ids = self.prompt_ids(t.prompt)
        return trajs

    def _advance(self, engine, trajs: list[Trajectory], params: SamplingParams) -> None:
        """Turns until every trajectory is done."""
        open_ = [t for t in trajs if not t.done]
        while open_:
            budget = max(self.L - len(t.ids) for t in open_)
            turn = replace(params, n=1, max_tokens=budget)
            outs = engine.generate([t.prompt_ids + t.ids for t in open_], turn)
            for t, (c,) in zip(open_, outs):
                self._take_turn(t, c)
            calling = [t for t in open_ if t.calls]
            self._run_calls(calling)
            open_ = [t for t in calling if not t.done]

    def _take_turn(self, t: Trajectory, c: Completion) -> None:
        room = self.L - len(t.ids)
        ids, lps = c.token_ids[:room], c.logprobs[:room]
        cut = len(c.token_ids) > room or c.finish_reason == "length"
        prefix = t.prompt_ids + t.ids
        t.ids += ids
        t.logprobs += lps
        t.tool_mask += [1] * len(ids)
        t.turns += 1
        msg, malformed = parse_turn(self.tokenizer, ids, prefix, self.schemas)
        t.messages.append(msg)
        t.malformed += malformed
        calls = msg.get("tool_calls") or []
        if cut:
            t.finish, t.done = "length", True
        elif not calls or t.turns > self.max_iterations or malformed:
            t.done = True  # its answer (or the last turn it may take)
        else:
            t.calls = calls

    def _run_calls(self, trajs: list[Trajectory]) -> None:
        """Every trajectory's calls at once (each trajectory's in order); then the tool messages' ids appended."""
        futures = [self.threads.submit(self._call_all, t) for t in trajs]
        for t, fut in zip(trajs, futures):
            results = fut.result()
            t.calls = []
            msgs = [{"role": "tool", "name": name, "content": content} for name, content, _ in results]
            t.messages += msgs
            failed = [err for _, _, err in results if err]
            if t.env_died:
                t.done = True
                continue
            if failed:  # the trajectory ends; the error is the tool message the reward functions see
                t.done, t.error = True, failed[0]
                continue
            suffix = tool_suffix_ids(self.tokenizer, msgs)
            if len(t.ids) + len(suffix) >= self.L:  # no room for the result and a turn after it
                del t.messages[-len(msgs) :]
                t.done, t.overflow, t.finish = True, True, "length"
                continue
            t.ids += suffix
            t.logprobs += [float("nan")] * len(suffix)
            t.tool_mask += [0] * len(suffix)

    def _call_all(self, t: Trajectory) -> list[tuple[str, str, Optional[str]]]:
        """(tool name, the tool message's content, error or None) of each of the trajectory's calls, in order."""
        out = []
        for call in t.calls:
            f = call.get("function") or call
            name, args = f.get("name"), f.get("arguments") or {}
            t.tool_calls += 1
            t0 = time.time()
            result, err = self._call(t, name, args)
            t.tool_s += time.time() - t0
            if err is None and not isinstance(result, str):
                t.non_string += 1
            if err:
                t.tool_failures += 1
            out.append((name, str({"error": err}) if err else str(result), err))
            if err or t.env_died:
                break
        return out

    def _call(self, t: Trajectory, name: str, args) -> tuple[object, Optional[str]]:
        if not isinstance(args, dict):
            return None, f"arguments of {name} are not a mapping: {args!r}"
        if name in self.tools:
            fut = self.calls.submit(self.tools[name], **args)
            try:
                return fut.result(timeout=self.timeout_s), None
            except concurrent.futures.TimeoutError:
                return None, f"{name} gave no result within {self.timeout_s:g}s (rollout.tool_timeout_s)"
            except Exception as e:  # noqa: BLE001  (contained: the trajectory ends with the error)
                return None, _short(e)
        if name in self.env_tools and t.slot is not None:
            import ray

            actor = self.environment_actors()[t.slot[0]]
            try:
                result, _ = ray.get(actor.call.remote(t.slot[1], name, args), timeout=self.timeout_s)
            except ray.exceptions.GetTimeoutError:
                return None, f"{name} gave no result within {self.timeout_s:g}s (rollout.tool_timeout_s)"
            except Exception as e:  # noqa: BLE001
                if _actor_died(e):
                    t.env_died, t.error = True, f"environment actor died during {name}: {_short(e)}"
                    return None, t.error
                return None, _short(e)
            return (None, _short(result)) if isinstance(result, BaseException) else (result, None)
        known = sorted(self.tools) + self.env_tools
        return None, f"unknown tool {name!r} (tools: {', '.join(known)})"

    def _await_environments(self, timeout_s: float = 120.0) -> None:
        """Until every environment actor answers again (Ray restarts a dead one; its name stays)."""
        import ray

        deadline = time.time() + timeout_s
        for actor in self.environment_actors():
            while True:
                try:
                    ray.get(actor.ping.remote(), timeout=10)
                    break
                except Exception:  # noqa: BLE001  (restarting, or gone for good: the redo reports it)
                    if time.time() > deadline:
                        return
                    time.sleep(0.5)

    def _finish(self, trajs: list[Trajectory]) -> None:
        """Each environment instance as its trajectory ended (a copy, for the reward functions)."""
        if not self.env_tools:
            return
        import ray

        actors = self.environment_actors()
        refs = [(t, actors[t.slot[0]].finish.remote(t.slot[1])) for t in trajs if t.slot is not None]
        for t, ref in refs:
            try:
                t.environment = ray.get(ref, timeout=self.timeout_s)
            except Exception as e:  # noqa: BLE001  (an environment that cannot be read back: its reward is None)
                t.error = t.error or f"environment state not read back: {_short(e)}"


def _short(e) -> str:
    return f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}".rstrip(": ")


def _actor_died(e: BaseException) -> bool:
    import ray

    return isinstance(e, (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError))
