"""The rollout actor: a thin Ray wrapper around a ``RolloutEngine``.

It turns dataset records into token ids, asks the engine for n completions per prompt, and returns a ``Batch``
tagged with the policy version of the weights it holds. Weight syncs arrive through a ``relay_rl.transport``
(object-store buckets, a broadcast, or handles to a colocated learner rank's memory) and load in place.
"""

from __future__ import annotations

import threading
import time

import torch

from relay_rl.batch import Batch, chat_token_ids, prompt_token_ids, with_chat_template_kwargs
from relay_rl.sampling import SamplingParams
from relay_rl.transport import Transport, make_transport

from .engine import Completion, RolloutEngine


def make_engine(kind: str, model_path: str, dtype: str, options: dict) -> RolloutEngine:
    """The generation backend ``rollout.engine`` names."""
    if kind == "hf":
        from .hf_engine import HFEngine

        return HFEngine(model_path, dtype=dtype, **options)
    if kind == "vllm":
        from .vllm_engine import VLLMEngine

        return VLLMEngine(model_path, dtype=dtype, **options)
    raise ValueError(f"unknown rollout engine {kind!r}: use 'hf' or 'vllm'")


class RolloutWorker:
    def __init__(
        self,
        model_path: str,
        engine: str,
        dtype: str,
        engine_options: dict,
        index: int = 0,
        max_prompt_length: int | None = None,
        prompt_column: str = "prompt",
        partial_rollout_chunk: int | None = None,
        pool: str = "rollout",
        multi_turn: dict | None = None,
        chat_template_kwargs: dict | None = None,
    ):
        from relay_rl.process import configure_worker

        configure_worker()
        self.index, self.pool = index, pool
        self.engine = make_engine(engine, model_path, dtype, engine_options)
        self.tokenizer = with_chat_template_kwargs(self.engine.tokenizer, chat_template_kwargs)
        self.agent = None  # multi-turn rollouts with tools and environments (rollout_workers/agent.py)
        self.program = None  # or the user's agent program on an OpenAI-compatible endpoint (agent_program.py)
        if multi_turn and multi_turn.get("agent_program"):
            from .agent_program import AgentProgram

            _add_search_path(multi_turn.get("search_path", ()))
            self.program = AgentProgram(
                self.tokenizer,
                self.engine.generate,
                multi_turn["agent_program"],
                multi_turn["max_completion_length"],
                multi_turn["agent_timeout_s"],
                multi_turn["agent_host"],
            )
        elif multi_turn:
            self.agent = _make_agent(self.tokenizer, max_prompt_length=max_prompt_length, **multi_turn)
        self.max_prompt_length = max_prompt_length
        self.prompt_column = prompt_column
        self.version = 0
        self.calls = 0
        # partial rollouts: weights that arrive during a generation wait here and load between its chunks
        self.partial_chunk = partial_rollout_chunk if self.engine.supports_partial_rollouts else None
        self.lock = threading.Lock()
        self.pending: tuple | None = None
        self.generating = False
        self.transports: dict[str, Transport] = {}  # by name, created on first use

    def __repr__(self) -> str:
        return f"RolloutWorker(pool={self.pool}, index={self.index}, policy_version={self.version}, calls={self.calls})"

    # ------------------------------------------------------------------------------------------------------------
    def generate(
        self,
        records: list[dict],
        params: SamplingParams,
        group_ids: list[int] | None = None,
        generation_prompts: list | None = None,
    ) -> Batch:
        """``params.n`` completions per record; the rows of record i get group id ``group_ids[i]`` (default i).
        ``generation_prompts``: sample from these prompts instead (SDFT's ``generate_from_teacher``); the batch keeps
        the records' own prompts, which the learner trains on."""
        t0 = time.time()
        self.calls += 1
        prompts = [r[self.prompt_column] for r in records]
        if self.agent is not None:
            return self._generate_multi_turn(records, prompts, params, group_ids, t0)
        if self.program is not None:
            return self._generate_by_program(records, params, group_ids, t0)
        prompt_ids, n_truncated = self._tokenize_all(prompts)
        sample_from = self._tokenize_all(generation_prompts)[0] if generation_prompts is not None else prompt_ids
        if self.partial_chunk:
            self.generating = True
            try:
                outs = self.engine.generate_partial(sample_from, params, self.partial_chunk, self._between_chunks)
            finally:
                self.generating = False
        else:
            with self.lock:
                self._apply_pending()
                outs = self.engine.generate(sample_from, params)
        return self._batch(
            records,
            prompts,
            prompt_ids,
            outs,
            group_ids or list(range(len(records))),
            info={
                "generate_s": time.time() - t0,
                "worker": self.index,
                "version": self.version,
                "n": params.n,
                "prompts_truncated": n_truncated,
            },
        )

    def _generate_multi_turn(self, records, prompts, params, group_ids, t0) -> Batch:
        """``params.n`` trajectories per record, tools called between turns; one policy version throughout (a weight
        sync that arrives meanwhile waits for the lock)."""
        with self.lock:
            self._apply_pending()
            redone = self.agent.redone
            outs = self.agent.run(self.engine, records, prompts, params, self.index)
        rows = [t for per_record in outs for _, t in per_record]
        return self._batch(
            records,
            [t.prompt for t in rows],
            [t.prompt_ids for t in rows],
            [[c] for per_record in outs for c, _ in per_record],
            [g for g in (group_ids or list(range(len(records)))) for _ in range(params.n)],
            info={
                "generate_s": time.time() - t0,
                "worker": self.index,
                "version": self.version,
                "n": params.n,
                "prompts_truncated": 0,
                "trajectories_redone": self.agent.redone - redone,
            },
            per_row=True,
            trajectories=[t.summary() for t in rows],
        )

    def _generate_by_program(self, records, params, group_ids, t0) -> Batch:
        """``params.n`` runs of the agent program per record, each one trajectory of its calls to the endpoint; one
        policy version throughout (a weight sync waits for the lock)."""
        with self.lock:
            self._apply_pending()
            rows = self.program.run(records, params)
        return self._batch(
            records,
            [p for p, _, _, _ in rows],
            [ids for _, ids, _, _ in rows],
            [[c] for _, _, c, _ in rows],
            [g for g in (group_ids or list(range(len(records)))) for _ in range(params.n)],
            info={"generate_s": time.time() - t0, "worker": self.index, "version": self.version, "n": params.n},
            per_row=True,
            trajectories=[t for _, _, _, t in rows],
        )

    def from_dataset(
        self, records: list[dict], column: str, max_tokens: int, group_ids: list[int], n: int = 1
    ) -> Batch:
        """The dataset's completions as a batch (SFT's data; GKD's and GOLD's dataset source), ``n`` rows per record
        (the batch keeps its shape). A string completion is tokenised, then EOS; an assistant turn (a list of chat
        messages, with chat-message prompts) is the chat template's text of prompt + completion after that of the
        prompt (its end-of-turn tokens included). Longer than ``max_tokens`` is cut and flagged truncated. No
        behaviour log-probs (NaN); tagged with the version this actor holds, so the data ages like a sample."""
        t0 = time.time()
        bad = [i for i, r in enumerate(records) if not isinstance(r.get(column), (str, list))]
        if bad:
            raise ValueError(
                f"data.completion_column {column!r}: row {bad[0]} has no completion (a string, or a "
                f"list of chat messages) (columns: {sorted(records[bad[0]])})"
            )
        prompts = [r[self.prompt_column] for r in records]
        prompt_ids, _ = self._tokenize_all(prompts)
        outs = []
        for r in records:
            ids, tool_mask = self._completion_ids(r[self.prompt_column], r[column])
            cut = ids[:max_tokens]
            finish = "stop" if len(ids) <= max_tokens else "length"
            mask = tool_mask[:max_tokens] if tool_mask is not None else None
            outs.append([Completion(cut, [float("nan")] * len(cut), finish, tool_mask=mask)] * n)
        return self._batch(
            records,
            prompts,
            prompt_ids,
            outs,
            group_ids,
            info={"generate_s": time.time() - t0, "worker": self.index, "version": self.version, "n": n},
        )

    def _batch(
        self, records, prompts, prompt_ids, outs, group_ids: list[int], info: dict, per_row=False, trajectories=()
    ) -> Batch:
        """``outs[i]``: the completions of prompt i (``per_row``: prompts and outs are per row, one completion each,
        and row r's record is r // n)."""
        if per_row:
            n = len(outs) // max(1, len(records))
            records = [records[r // n] for r in range(len(outs))]
        rows = [(i, c) for i, comps in enumerate(outs) for c in comps]
        N = len(rows)
        tp = max(map(len, prompt_ids))
        tc = max(1, max(len(c.token_ids) for _, c in rows))
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        p_ids = torch.full((N, tp), pad, dtype=torch.long)
        p_mask = torch.zeros((N, tp), dtype=torch.long)
        c_ids = torch.full((N, tc), pad, dtype=torch.long)
        c_mask = torch.zeros((N, tc), dtype=torch.float32)
        c_lp = torch.zeros((N, tc), dtype=torch.float32)
        first = [c.token_versions[0] if c.token_versions else self.version for _, c in rows]
        last = [c.token_versions[-1] if c.token_versions else self.version for _, c in rows]
        for r, (i, c) in enumerate(rows):
            p, L = prompt_ids[i], len(c.token_ids)
            p_ids[r, tp - len(p) :] = torch.tensor(p)
            p_mask[r, tp - len(p) :] = 1
            c_ids[r, :L] = torch.tensor(c.token_ids, dtype=torch.long)
            c_mask[r, :L] = 1.0
            c_lp[r, :L] = torch.tensor(c.logprobs, dtype=torch.float32)
        tool_mask = None
        if any(c.tool_mask is not None for _, c in rows):
            tool_mask = torch.ones((N, tc), dtype=torch.float32)
            for r, (_, c) in enumerate(rows):
                if c.tool_mask is not None:
                    tool_mask[r, : len(c.tool_mask)] = torch.tensor(c.tool_mask, dtype=torch.float32)
        other = [k for k in records[0] if k != self.prompt_column] if records else []
        return Batch(
            prompt_ids=p_ids,
            prompt_mask=p_mask,
            completion_ids=c_ids,
            completion_mask=c_mask,
            behaviour_logprobs=c_lp,
            policy_version=torch.tensor(first, dtype=torch.long),  # the oldest weights that sampled the row
            mixed_version=torch.tensor(first) != torch.tensor(last),
            frozen_sample=torch.full((N,), self.pool == "frozen_rollout", dtype=torch.bool),
            group_id=torch.tensor([group_ids[i] for i, _ in rows], dtype=torch.long),
            truncated=torch.tensor([c.finish_reason == "length" for _, c in rows]),
            tool_mask=tool_mask,
            trajectories=list(trajectories),
            prompts=[prompts[i] for i, _ in rows],
            completions=self.tokenizer.batch_decode([c.token_ids for _, c in rows], skip_special_tokens=True),
            columns={k: [records[i][k] for i, _ in rows] for k in other},
            info=info,
        )

    def _completion_ids(self, prompt, completion) -> tuple[list[int], list[int] | None]:
        """A dataset completion's token ids: text + EOS, or a chat turn as the template renders it after the prompt
        (TRL's prompt-completion convention); with the tool mask (0 on the tokens of ``tool`` messages: a tool-using
        conversation teaches the calls and the answers, not the tools' outputs) when the turn holds tool messages."""
        if isinstance(completion, str):
            eos = self.engine.eos_ids[0] if hasattr(self.engine, "eos_ids") else self.tokenizer.eos_token_id
            return self.tokenizer(completion, add_special_tokens=False)["input_ids"] + [eos], None
        if not isinstance(prompt, list):
            raise ValueError("a completion given as chat messages needs chat-message prompts (data.prompt_column)")
        head = prompt_token_ids(self.tokenizer, prompt)
        ids, tool_mask = [], []
        for j, message in enumerate(completion):  # message by message: each one's tokens, after those before it
            full = chat_token_ids(self.tokenizer, prompt + completion[: j + 1])
            if full[: len(head) + len(ids)] != head + ids:
                raise ValueError(
                    "the chat template renders the prompt differently with the completion appended, so the "
                    "completion's tokens cannot be told apart: give the completion as a string"
                )
            new = full[len(head) + len(ids) :]
            ids += new
            tool_mask += [0 if message.get("role") == "tool" else 1] * len(new)
        return ids, (tool_mask if 0 in tool_mask else None)

    def _tokenize_all(self, prompts: list) -> tuple[list[list[int]], int]:
        """Token ids of each prompt (chat messages through the chat template), cut to their last
        ``max_prompt_length`` tokens (TRL's left truncation); and how many were cut."""
        out, cut = [], 0
        for prompt in prompts:
            ids = prompt_token_ids(self.tokenizer, prompt)
            if self.max_prompt_length and len(ids) > self.max_prompt_length:
                ids, cut = ids[-self.max_prompt_length :], cut + 1
            out.append(ids)
        return out, cut

    # ------------------------------------------------------------------------------------------------------------
    def receive_weights(self, version: int, transport: str, payload) -> dict:
        """Load policy version ``version`` in place as ``transport`` delivers it (``payload``: what the driver routed
        to this replica), one bucket in memory at a time; each bucket loads as soon as the learner has sent it."""
        t0, nbytes = time.time(), 0
        t = self._transport(transport)

        def stream():  # the engine sees one (name, tensor) iterator
            nonlocal nbytes
            for name, tensor in t.receive(payload):
                nbytes += tensor.numel() * tensor.element_size()
                yield name, tensor

        if self.partial_chunk and self.generating:  # a generation is in flight: it loads these between chunks
            tensors = list(stream())
            with self.lock:
                self.pending = (version, tensors)
            return {"load_s": time.time() - t0, "bytes": nbytes, "version": version, "deferred": True}
        with self.lock:
            self.pending = None
            self.engine.load_weights(stream(), borrowed=t.borrowed)
            self.version = version
        return {"load_s": time.time() - t0, "bytes": nbytes, "version": version}

    def connect_transport(self, transport: str, host: str, port: int, world_size: int, rank: int, backend: str) -> bool:
        """Join the learner's weight-sync group (the collective transport)."""
        self._transport(transport).connect(host, port, world_size, rank, backend)
        return True

    def _transport(self, name: str) -> Transport:
        if name not in self.transports:
            self.transports[name] = make_transport(name)
        return self.transports[name]

    def _apply_pending(self) -> None:
        if self.pending is not None:
            version, tensors = self.pending
            self.pending = None
            self.engine.load_weights(iter(tensors))
            self.version = version

    def _between_chunks(self) -> int:
        with self.lock:
            self._apply_pending()
            return self.version

    def sleep(self) -> None:
        self.engine.sleep()

    def wake(self) -> None:
        self.engine.wake()

    def get_version(self) -> int:
        return self.version

    def set_version(self, version: int) -> int:
        """The weights it was created with are this policy version (a resumed run's checkpoint)."""
        self.version = version
        return version

    def ping(self) -> bool:
        return True


def _add_search_path(search_path) -> None:
    """Where ``module:function`` tools and programs are found (the run file's folder, ...)."""
    import sys

    for p in reversed(list(search_path)):
        if p not in sys.path:
            sys.path.insert(0, p)


def _make_agent(tokenizer, max_prompt_length, namespace: str, environment_pool: str, search_path=(), **settings):
    """The tool loop; its environment actors are looked up by name on every call (the pool may have been resized)."""
    from .agent import MultiTurn

    _add_search_path(search_path)
    for k in ("agent_program", "agent_timeout_s", "agent_host"):
        settings.pop(k, None)

    def environment_actors() -> list:
        import ray

        actors = []
        while True:
            try:
                actors.append(ray.get_actor(f"{environment_pool}-{len(actors)}", namespace=namespace))
            except ValueError:
                return actors

    return MultiTurn(tokenizer, environment_actors=environment_actors, max_prompt_length=max_prompt_length, **settings)
