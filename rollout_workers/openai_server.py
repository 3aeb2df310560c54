"""An OpenAI-compatible ``/v1/chat/completions`` endpoint on a rollout actor, so that an agent program written against
the OpenAI client trains by pointing its ``base_url`` at relay-rl (``rollout.agent_program``).

Each trajectory has its own base URL, ``http://<host>:<port>/t/<trajectory id>/v1``: the program's calls under it are
one trajectory. The server keeps the trajectory's token ids as the engine sampled them; a call whose messages extend
the conversation so far gets, after those ids, only the chat template's ids of the new messages (tool results, user
turns) and the next assistant header: never a re-tokenisation of what the model wrote. A call whose messages do not
extend the conversation (the program rewrote its history) starts the trajectory again from that call (counted). The
calls of all open trajectories are batched: each generation step takes every request waiting at that moment.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Optional

from relay_rl.sampling import SamplingParams

from .tools import parse_turn

GATHER_S = 0.005  # how long a generation step waits for more requests to batch


@dataclass
class Call:
    messages: list  # the request's messages, normalised (tool-call arguments as dicts)
    context: list[int]  # the ids the engine read
    ids: list[int] = field(default_factory=list)  # what it sampled
    logprobs: list[float] = field(default_factory=list)
    finish: str = "stop"
    reply: dict = field(default_factory=dict)  # the assistant message returned


@dataclass
class Recording:
    """One trajectory as the server saw it."""

    calls: list[Call] = field(default_factory=list)
    restarts: int = 0
    truncated: bool = False
    tool_names: dict = field(default_factory=dict)  # tool_call id -> function name (tool messages name their call)

    def last_conversation(self) -> list:
        return self.calls[-1].messages + [self.calls[-1].reply] if self.calls else []


class ChatServer:
    """The endpoint, in a thread of its own (an aiohttp app on its own event loop) beside the rollout actor's engine.
    ``generate`` is the engine's, called from the server's batching thread while the actor waits for its programs."""

    def __init__(self, tokenizer, generate, max_completion_length: int, host: str = "127.0.0.1", port: int = 0):
        self.tokenizer, self.generate, self.L = tokenizer, generate, max_completion_length
        self.recordings: dict[str, Recording] = {}
        self.params: SamplingParams | None = None  # the sampling knobs of the current generation call
        self.queue: list = []
        self.cv = threading.Condition()
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        self.thread = threading.Thread(target=self._serve, args=(host, port, ready), daemon=True, name="openai-server")
        self.thread.start()
        ready.wait(30)
        threading.Thread(target=self._batcher, daemon=True, name="openai-batcher").start()

    def base_url(self, trajectory: str) -> str:
        return f"http://{self.host}:{self.port}/t/{trajectory}/v1"

    def open(self, params: SamplingParams) -> str:
        """A new trajectory: its id (its base URL is ``base_url(id)``)."""
        self.params = params
        tid = uuid.uuid4().hex
        self.recordings[tid] = Recording()
        return tid

    def close(self, tid: str) -> Recording:
        return self.recordings.pop(tid)

    # ------------------------------------------------------------------------------------------------------------
    def _serve(self, host, port, ready):
        from aiohttp import web

        asyncio.set_event_loop(self.loop)
        app = web.Application(client_max_size=64 * 2**20)
        app.router.add_post("/t/{tid}/v1/chat/completions", self._chat)
        app.router.add_get("/t/{tid}/v1/models", self._models)
        runner = web.AppRunner(app, access_log=None)
        self.loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, host, port)
        self.loop.run_until_complete(site.start())
        self.host, self.port = host, site._server.sockets[0].getsockname()[1]
        ready.set()
        self.loop.run_forever()

    async def _models(self, request):
        from aiohttp import web

        return web.json_response({"object": "list", "data": [{"id": "policy", "object": "model"}]})

    async def _chat(self, request):
        from aiohttp import web

        tid = request.match_info["tid"]
        rec = self.recordings.get(tid)
        if rec is None:
            return web.json_response({"error": {"message": f"unknown or closed trajectory {tid}"}}, status=404)
        body = await request.json()
        try:
            call, budget = self._prepare(rec, body)
        except ValueError as e:
            return web.json_response({"error": {"message": str(e), "type": "invalid_request_error"}}, status=400)
        if budget > 0:
            fut = self.loop.create_future()
            with self.cv:
                self.queue.append((call, budget, fut, _sampling(self.params, body)))
                self.cv.notify()
            await fut
        else:  # the trajectory's budget is spent
            call.finish, rec.truncated = "length", True
        self._reply(rec, call, body.get("tools"))
        rec.calls.append(call)
        return web.json_response(self._response(call, body.get("model", "policy")))

    def _prepare(self, rec: Recording, body: dict) -> tuple[Call, int]:
        """The call's context ids: the trajectory's ids so far and the template's ids of the new messages, or (first
        call, or history rewritten) the template's rendering of all of them. Returns (call, tokens it may sample)."""
        messages = [_normalise(m, rec.tool_names) for m in body.get("messages") or []]
        if not messages:
            raise ValueError("messages: at least one message is required")
        tools = body.get("tools") or None
        render = lambda msgs, gen: list(  # noqa: E731
            self.tokenizer.apply_chat_template(
                msgs, tools=tools, add_generation_prompt=gen, tokenize=True, return_dict=False
            )
        )
        full = render(messages, True)
        if rec.calls:
            before = rec.last_conversation()
            last = rec.calls[-1]
            if messages[: len(before)] == before and len(messages) > len(before):
                head = render(before, False)
                eos = [i for i, t in enumerate(head) if t == self.tokenizer.eos_token_id]
                head = head[: eos[-1] + 1] if eos else head
                if full[: len(head)] == head:
                    context = last.context + last.ids + full[len(head) :]
                    start = len(rec.calls[0].context)
                    return Call(messages, context), self.L - (len(context) - start)
            rec.restarts += 1  # not an extension: the trajectory starts again here
            rec.calls.clear()
        return Call(messages, full), self.L

    def _batcher(self):
        """Generate for every waiting request at once, one step after another."""
        while True:
            with self.cv:
                while not self.queue:
                    self.cv.wait()
            time.sleep(GATHER_S)
            with self.cv:
                batch, self.queue = self.queue, []
            by_params: dict = {}
            for item in batch:
                by_params.setdefault(item[3], []).append(item)
            for params, items in by_params.items():
                budget = max(b for _, b, _, _ in items)
                try:
                    outs = self.generate([c.context for c, _, _, _ in items], _with(params, budget))
                    error = None
                except Exception as e:  # noqa: BLE001  (answered to each waiting request)
                    outs, error = None, e
                for j, (call, b, fut, _) in enumerate(items):
                    if error is None:
                        c = outs[j][0]
                        call.ids, call.logprobs = c.token_ids[:b], c.logprobs[:b]
                        call.finish = "length" if (c.finish_reason == "length" or len(c.token_ids) > b) else "stop"
                    self.loop.call_soon_threadsafe(_resolve, fut, error)

    def _reply(self, rec: Recording, call: Call, tools) -> None:
        prefix = call.context
        msg, _ = parse_turn(self.tokenizer, call.ids, prefix, tools or [])
        calls = []
        for k, c in enumerate(msg.get("tool_calls") or []):
            f = c.get("function") or c
            cid = f"call_{uuid.uuid4().hex[:12]}_{k}"
            rec.tool_names[cid] = f.get("name")
            calls.append(
                {"id": cid, "type": "function", "function": {"name": f.get("name"), "arguments": f["arguments"]}}
            )
        reply = {"role": "assistant", "content": msg.get("content") or ""}
        if calls:
            reply["tool_calls"] = calls
        call.reply = reply
        if call.finish == "length":
            rec.truncated = True

    def _response(self, call: Call, model: str) -> dict:
        message = {"role": "assistant", "content": call.reply.get("content") or None}
        if call.reply.get("tool_calls"):
            message["tool_calls"] = [
                {**c, "function": {**c["function"], "arguments": json.dumps(c["function"]["arguments"])}}
                for c in call.reply["tool_calls"]
            ]
        finish = "length" if call.finish == "length" else ("tool_calls" if message.get("tool_calls") else "stop")
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
            "usage": {
                "prompt_tokens": len(call.context),
                "completion_tokens": len(call.ids),
                "total_tokens": len(call.context) + len(call.ids),
            },
        }


def trajectory_of(rec: Recording):
    """(prompt ids, completion ids, behaviour log-probs, tool mask, truncated, the conversation after the prompt) of a
    recording: the last call's context and sampling, with every token the engine sampled marked 1."""
    if not rec.calls:
        return None
    first, last = rec.calls[0], rec.calls[-1]
    start = len(first.context)
    sampled = set()
    for c in rec.calls:  # positions of each call's sampled ids in the last call's sequence
        offset = len(c.context) - start
        sampled.update(range(offset, offset + len(c.ids)))
    ids = last.context[start:] + last.ids
    logprobs = [float("nan")] * len(ids)
    for c in rec.calls:
        offset = len(c.context) - start
        logprobs[offset : offset + len(c.ids)] = c.logprobs
    mask = [1 if i in sampled else 0 for i in range(len(ids))]
    after = rec.last_conversation()[len(first.messages) :]
    return first.context, ids, logprobs, mask, rec.truncated or last.finish == "length", after


def _normalise(m: dict, tool_names: dict) -> dict:
    """A message as the chat templates take it: tool-call arguments as a dict, a tool message with its tool's name."""
    out = {k: v for k, v in m.items() if v is not None}
    if out.get("tool_calls"):
        calls = []
        for c in out["tool_calls"]:
            f = dict(c.get("function") or {})
            if isinstance(f.get("arguments"), str):
                try:
                    f["arguments"] = json.loads(f["arguments"] or "{}")
                except ValueError:
                    raise ValueError(f"tool call {c.get('id')}: arguments are not JSON") from None
            calls.append({"id": c.get("id"), "type": "function", "function": f})
        out["tool_calls"] = calls
    if out.get("role") == "tool" and "name" not in out and out.get("tool_call_id") in tool_names:
        out["name"] = tool_names[out["tool_call_id"]]
    if out.get("role") == "assistant" and "content" not in out:
        out["content"] = ""
    return out


def _sampling(params: Optional[SamplingParams], body: dict) -> SamplingParams:
    """The generation call's knobs; the program may lower the token budget (``max_tokens``), not change sampling
    (the policy is trained on what it samples at the run's temperature)."""
    from dataclasses import replace

    p = params or SamplingParams()
    cap = body.get("max_completion_tokens") or body.get("max_tokens")
    return replace(p, n=1, max_tokens=min(p.max_tokens, int(cap)) if cap else p.max_tokens, seed=None)


def _with(params: SamplingParams, budget: int) -> SamplingParams:
    from dataclasses import replace

    return replace(params, max_tokens=max(1, min(params.max_tokens, budget)))


def _resolve(fut, error):
    if not fut.done():
        if error is None:
            fut.set_result(None)
        else:
            fut.set_exception(error)
