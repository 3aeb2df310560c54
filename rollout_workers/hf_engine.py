"""The embedded default engine: transformers ``generate``. Fewest dependencies; runs anywhere torch runs."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from relay_rl.process import load_frozen_model
from relay_rl.sampling import SamplingParams

from .engine import Completion, RolloutEngine


class HFEngine(RolloutEngine):
    supports_partial_rollouts = True

    def __init__(
        self,
        model_path: str,
        dtype: str = "float32",
        device: str | None = None,
        trust_remote_code: bool = False,
        max_batch_size: int = 1024,
        attn_implementation: str | None = None,
    ):
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=trust_remote_code)
        self.model = load_frozen_model(model_path, dtype, trust_remote_code, attn_implementation, device)
        self.device = self.model.device
        self.max_batch_size = max_batch_size
        self.eos_ids = _eos_ids(self.model.generation_config, self.tokenizer)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eos_ids[0]

    @torch.no_grad()
    def generate(self, prompt_ids: list[list[int]], params: SamplingParams) -> list[list[Completion]]:
        gen_cfg = self._gen_config(params, params.n, params.max_tokens)
        if params.seed is not None:
            torch.manual_seed(params.seed)
        per_chunk = max(1, self.max_batch_size // params.n)
        out: list[list[Completion]] = []
        for i in range(0, len(prompt_ids), per_chunk):
            out += self._generate_chunk(prompt_ids[i : i + per_chunk], gen_cfg, params.n)
        return out

    @torch.no_grad()
    def generate_partial(self, prompt_ids, params, chunk_tokens, between_chunks) -> list[list[Completion]]:
        """Each chunk re-reads prompt + completion so far with the weights of that moment: a generation in flight
        across a weight sync finishes with the new weights (its earlier tokens keep their behaviour log-probs)."""
        rows = [p for p in prompt_ids for _ in range(params.n)]
        toks, lps, vers = [[] for _ in rows], [[] for _ in rows], [[] for _ in rows]
        done = [False] * len(rows)
        version, step = between_chunks(), 0
        while not all(done):
            active = [i for i in range(len(rows)) if not done[i]]
            budget = min(chunk_tokens, params.max_tokens - max(len(toks[i]) for i in active))
            if params.seed is not None:
                torch.manual_seed(params.seed * 1009 + step)
            outs = self._generate_chunk([rows[i] + toks[i] for i in active], self._gen_config(params, 1, budget), 1)
            for i, (c,) in zip(active, outs):
                toks[i] += c.token_ids
                lps[i] += c.logprobs
                vers[i] += [version] * len(c.token_ids)
                done[i] = c.finish_reason == "stop" or len(toks[i]) >= params.max_tokens
            version, step = between_chunks(), step + 1
        comps = [
            Completion(t, lp, "stop" if t and t[-1] in self.eos_ids else "length", v)
            for t, lp, v in zip(toks, lps, vers)
        ]
        return [comps[j * params.n : (j + 1) * params.n] for j in range(len(prompt_ids))]

    def _gen_config(self, params: SamplingParams, n: int, max_new_tokens: int):
        from transformers import GenerationConfig

        return GenerationConfig(
            do_sample=not params.greedy,
            num_return_sequences=n,
            max_new_tokens=max_new_tokens,
            temperature=None if params.greedy else params.temperature,
            top_p=None if params.greedy else params.top_p,
            top_k=None if params.greedy else params.top_k,
            min_p=None if params.greedy else params.min_p,
            repetition_penalty=params.repetition_penalty,
            eos_token_id=self.eos_ids,
            pad_token_id=self.pad_id,
            output_scores=True,
            return_dict_in_generate=True,
            stop_strings=list(params.stop) if params.stop else None,
        )

    def _generate_chunk(self, prompt_ids, gen_cfg, n) -> list[list[Completion]]:
        width = max(map(len, prompt_ids))
        ids = torch.full((len(prompt_ids), width), self.pad_id, dtype=torch.long)
        attn = torch.zeros_like(ids)
        for r, p in enumerate(prompt_ids):  # left padding
            ids[r, width - len(p) :] = torch.tensor(p)
            attn[r, width - len(p) :] = 1
        res = self.model.generate(
            input_ids=ids.to(self.device),
            attention_mask=attn.to(self.device),
            generation_config=gen_cfg,
            tokenizer=self.tokenizer if gen_cfg.stop_strings else None,
        )
        new = res.sequences[:, width:].cpu()  # (N*n, T)
        # behaviour log-probs: the processed distribution the token was sampled from
        scores = torch.stack(res.scores, dim=1).float().cpu()  # (N*n, T, V)
        logprobs = torch.log_softmax(scores, dim=-1).gather(-1, new.unsqueeze(-1)).squeeze(-1)
        eos = torch.isin(new, torch.tensor(self.eos_ids))
        completions = []
        for r in range(new.shape[0]):
            hit = eos[r].nonzero()
            length = int(hit[0]) + 1 if len(hit) else new.shape[1]
            stopped = len(hit) > 0 or (gen_cfg.stop_strings and length < gen_cfg.max_new_tokens)
            completions.append(
                Completion(new[r, :length].tolist(), logprobs[r, :length].tolist(), "stop" if stopped else "length")
            )
        return [completions[j * n : (j + 1) * n] for j in range(len(prompt_ids))]

    @torch.no_grad()
    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]], borrowed: bool = False) -> None:
        """Each parameter takes the sent tensor as its data: on a CPU engine with the learner's dtype that is the
        object store's buffer itself, read in place (zero-copy: the sync's only copy is the learner's ``ray.put``;
        generation never writes a weight, and the next sync replaces the buffer rather than writing into it); on a
        GPU, or in another dtype, a converted copy. A ``borrowed`` tensor (a learner rank's buffer, which its next
        sync rewrites) is copied into the parameter's own memory."""
        params = dict(self.model.named_parameters())
        for name, tensor in named_tensors:
            if name not in params:
                raise KeyError(f"weight sync sent {name!r}, which the rollout model does not have")
            p = params[name]
            if tensor.shape != p.shape:
                raise ValueError(
                    f"weight sync sent {name!r} with shape {tuple(tensor.shape)}, the rollout model's is "
                    f"{tuple(p.shape)}"
                )
            if borrowed:
                p.data.copy_(tensor)
            else:
                p.data = tensor.to(p.device, p.dtype)


def _eos_ids(generation_config, tokenizer) -> list[int]:
    eos = generation_config.eos_token_id if generation_config.eos_token_id is not None else tokenizer.eos_token_id
    return [eos] if isinstance(eos, int) else list(eos)
