"""Frozen scoring models: the reference policy (KL) and distillation teachers, one actor class for both.

A teacher actor scores the completion tokens of a ``Batch`` under its own weights (logits / T) and returns the batch
with what its pool serves (``learner.methods.TeacherSpec``):

    sampled   log p(o_t) of each completion token                   (N, Tc)
    topk      the k most likely tokens' log-probs and ids           (N, Tc, k) + (N, Tc, k) int32
    full      log-probs over the whole vocabulary (small vocabs)    (N, Tc, V)

A self-teacher pool (SDPO, SDFT) re-prompts each row first: the family's ``teacher_prompts`` gives the prompt the
teacher scores the row's completion under (a successful sibling, the privileged context), tokenised here, and the
batch comes back flagged with ``teacher_context`` (rows that got one).

The reference pool fills ``ref_logprobs``; a teacher pool ``teacher_logprobs`` and ``teacher_dist[_ids]``. Rows are
scored in chunks bounded by ``max_chunk_elements`` logits, so memory stays bounded for any vocabulary and length. The
batch goes back into the object store: its tensors reach the learner ranks without passing through the driver.
Weights change only when asked: ``mix_weights`` (TR-DPO's reference refresh, SDPO's EMA or live teacher).
"""

from __future__ import annotations

import time

import torch

from relay_rl.batch import Batch, left_pad, prompt_token_ids, with_chat_template_kwargs
from relay_rl.learner.logprobs import completion_logits
from relay_rl.transport.object_store import ObjectStore


class TeacherWorker:
    def __init__(
        self,
        model_path: str,
        dtype: str = "float32",
        index: int = 0,
        pool: str = "teacher",
        trust_remote_code: bool = False,
        max_chunk_elements: int = 2**26,
        student_tokenizer: str | None = None,
        run_config: dict | None = None,
        attn_implementation: str | None = None,
    ):
        from relay_rl.process import configure_worker, load_frozen_model

        configure_worker()
        self.index, self.pool, self.max_chunk_elements = index, pool, max_chunk_elements
        self.model_path = model_path
        self.model = load_frozen_model(model_path, dtype, trust_remote_code, attn_implementation)
        self.device = self.model.device
        self.vocab_size = self.model.get_output_embeddings().weight.shape[0]
        self.student_tokenizer = student_tokenizer  # cross-tokenizer scoring (GOLD's ULD) re-tokenises text
        self.run_config = run_config  # a re-prompting pool (SDPO, SDFT) asks the run's family for each row's prompt
        self.tokenizer = None

    def __repr__(self) -> str:
        return f"TeacherWorker(pool={self.pool}, index={self.index}, model={self.model_path})"

    @torch.no_grad()
    def score(self, batch: Batch, spec: dict) -> Batch:
        """Score ``batch`` as ``spec`` says (the fields of ``TeacherSpec``)."""
        t0, extra = time.time(), {}
        if spec.get("retokenize"):
            from .retokenize import score_retokenized

            out, extra = score_retokenized(self, batch, spec)
        elif spec.get("reprompt"):
            view, out = self._reprompted(batch)
            out.update(self._score_same_tokens(view, spec))
        else:
            out = self._score_same_tokens(batch, spec)
        nbytes = sum(t.numel() * t.element_size() for t in out.values())
        info = {**batch.info, **extra, f"teacher_s/{self.pool}": time.time() - t0, f"teacher_bytes/{self.pool}": nbytes}
        return batch.replace(**out, info=info)

    def _reprompted(self, batch: Batch) -> tuple[Batch, dict[str, torch.Tensor]]:
        """The batch with each row's prompt replaced by the family's teacher prompt (tokenised with the policy's
        tokenizer, cut to its last ``max_reprompt_len`` / ``rollout.max_prompt_length`` tokens), and the rows that
        got a teacher context (the others keep their own prompt: their loss is masked)."""
        from transformers import AutoTokenizer

        from relay_rl.cluster.config import RunConfig

        cfg = RunConfig.model_validate(self.run_config)
        if self.tokenizer is None:
            self.tokenizer = with_chat_template_kwargs(
                AutoTokenizer.from_pretrained(self.model_path, trust_remote_code=cfg.model.trust_remote_code),
                cfg.rollout.chat_template_kwargs,
            )
        prompts, active = cfg.family.teacher_prompts(batch, cfg)
        budget = cfg.family.reprompt_length(cfg)
        ids = [prompt_token_ids(self.tokenizer, p)[-budget if budget else 0 :] for p in prompts]
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        prompt_ids, prompt_mask = left_pad(ids, pad)
        return batch.replace(prompt_ids=prompt_ids, prompt_mask=prompt_mask), {"teacher_context": active}

    def _score_same_tokens(self, batch: Batch, spec: dict) -> dict[str, torch.Tensor]:
        kind, k, T = spec["output"], int(spec.get("top_k") or 0), float(spec.get("temperature") or 1.0)
        Tc = batch.completion_ids.shape[1]
        rows = max(1, self.max_chunk_elements // max(1, Tc * self.vocab_size))
        parts: dict[str, list] = {}
        for i in range(0, len(batch), rows):
            mb = batch.select(range(i, min(len(batch), i + rows)))
            ids_BT = mb.completion_ids.to(self.device)
            logits_BTV = completion_logits(
                self.model,
                mb.prompt_ids.to(self.device),
                mb.prompt_mask.to(self.device),
                ids_BT,
                mb.completion_mask.to(self.device),
            )
            if T != 1.0:
                logits_BTV = logits_BTV / T
            # log softmax = logits - logsumexp, applied only to what is served (no (B, T, V) log-prob copy)
            lse_BT1 = torch.logsumexp(logits_BTV, dim=-1, keepdim=True)
            tokens_BT = (logits_BTV.gather(-1, ids_BT.unsqueeze(-1)) - lse_BT1).squeeze(-1)
            parts.setdefault("tokens", []).append(tokens_BT.float().cpu())
            if kind == "topk":
                values_BTK, ids_BTK = logits_BTV.topk(k, dim=-1)
                parts.setdefault("dist", []).append((values_BTK - lse_BT1).float().cpu())
                parts.setdefault("ids", []).append(ids_BTK.to(torch.int32).cpu())
            elif kind == "full":
                parts.setdefault("dist", []).append((logits_BTV - lse_BT1).float().cpu())
        cat = {k_: torch.cat(v) for k_, v in parts.items()}
        if self.pool == "reference":
            return {"ref_logprobs": cat["tokens"]}
        out = {"teacher_logprobs": cat["tokens"]}
        if "dist" in cat:
            out["teacher_dist"] = cat["dist"]
        if "ids" in cat:
            out["teacher_dist_ids"] = cat["ids"]
        return out

    @torch.no_grad()
    def mix_weights(self, bucket_refs: list, alpha: float) -> bool:
        """theta_ref <- alpha * theta + (1 - alpha) * theta_ref (TR-DPO; alpha = 1 replaces the reference)."""
        params = dict(self.model.named_parameters())
        for name, t in ObjectStore().receive(bucket_refs):
            p = params[name]
            p.mul_(1 - alpha).add_(t.to(p.device, p.dtype), alpha=alpha)
        return True

    def save(self, path: str) -> str:
        """Write this actor's weights as an HF model (a reference that moves, TR-DPO, is saved in checkpoints)."""
        from transformers import AutoTokenizer

        self.model.save_pretrained(path, safe_serialization=True)
        AutoTokenizer.from_pretrained(self.model_path).save_pretrained(path)
        return path

    def ping(self) -> bool:
        return True
