"""Frozen scoring models: the reference policy for KL (and, later, distillation teachers).

The teacher actor scores the completion tokens of a ``Batch`` under its own weights (logits / T, full vocabulary)
and returns the batch with ``ref_logprobs``. Its weights change only when asked (``sync_ref_model``).
"""
from __future__ import annotations

import time

import ray
import torch

from cluster.batch import Batch
from learner.logprobs import completion_logprobs
from learner.weights import arrays_to_tensors


class TeacherWorker:
    def __init__(self, model_path: str, dtype: str = "float32", temperature: float = 1.0, index: int = 0,
                 trust_remote_code: bool = False, chunk: int = 64):
        from cluster.runtime import configure_worker
        from transformers import AutoModelForCausalLM
        configure_worker()
        self.index, self.temperature, self.chunk = index, temperature, chunk
        self.device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
        self.model = AutoModelForCausalLM.from_pretrained(
            model_path, dtype=getattr(torch, dtype), trust_remote_code=trust_remote_code).to(self.device).eval()

    @torch.no_grad()
    def score(self, batch: Batch) -> Batch:
        t0 = time.time()
        out = []
        for i in range(0, len(batch), self.chunk):
            mb = batch.select(range(i, min(len(batch), i + self.chunk)))
            lp, _ = completion_logprobs(self.model, mb.prompt_ids.to(self.device), mb.prompt_mask.to(self.device),
                                        mb.completion_ids.to(self.device), mb.completion_mask.to(self.device),
                                        temperature=self.temperature)
            out.append(lp.float().cpu())
        return batch.replace(ref_logprobs=torch.cat(out), info={**batch.info, "teacher_s": time.time() - t0})

    @torch.no_grad()
    def mix_weights(self, bucket_refs: list, alpha: float) -> bool:
        """theta_ref <- alpha * theta + (1 - alpha) * theta_ref (TR-DPO; alpha = 1 replaces the reference)."""
        params = dict(self.model.named_parameters())
        for ref in bucket_refs:
            for name, t in arrays_to_tensors(ray.get(ref)).items():
                p = params[name]
                p.mul_(1 - alpha).add_(t.to(p.device, p.dtype), alpha=alpha)
        return True

    def ping(self) -> bool:
        return True
