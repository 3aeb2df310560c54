"""Reward models: any HF sequence-classification checkpoint as a reward function (``{name: reward_model, kwargs:
{model: PATH}}``), batched, on the reward actor's GPU when it has one, else CPU.

The text is re-tokenised with the reward model's own tokenizer (and chat template, for conversational prompts), so
a reward model with another vocabulary than the policy's works. The score is the first logit of the last position
(what ``AutoModelForSequenceClassification`` pools): TRL's convention for reward models with ``num_labels=1``.
"""
from __future__ import annotations

import os

from .registry import builtin


def texts_for_reward_model(tokenizer, prompts, completions) -> list[str]:
    """prompt + completion as the reward model reads it: plain strings concatenated; chat messages (a list of
    ``{role, content}``) continued by the completion as the assistant's message, through the reward model's chat
    template."""
    out = []
    for prompt, completion in zip(prompts, completions):
        if isinstance(prompt, str) and isinstance(completion, str):
            out.append(prompt + completion)
            continue
        messages = list(prompt) if not isinstance(prompt, str) else [{"role": "user", "content": prompt}]
        messages += list(completion) if not isinstance(completion, str) else [{"role": "assistant",
                                                                              "content": completion}]
        out.append(tokenizer.apply_chat_template(messages, tokenize=False))
    return out


@builtin("reward_model")
def make_reward_model(tokenizer, model: str, batch_size: int = 16, max_length: int = 1024, dtype: str = "float32",
                      device: str = "auto", trust_remote_code: bool = False):
    """The checkpoint is read when the first batch comes (on the reward actor, not in the driver's pre-flight); a
    local folder without ``config.json`` is an error at once."""
    if os.path.isdir(model) and not os.path.isfile(os.path.join(model, "config.json")):
        raise ValueError(f"reward model {model!r}: the folder has no config.json (not an HF checkpoint)")
    state: dict = {}

    def load():
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer
        dev = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        tok = AutoTokenizer.from_pretrained(model, trust_remote_code=trust_remote_code)
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        rm = AutoModelForSequenceClassification.from_pretrained(model, dtype=getattr(torch, dtype),
                                                                trust_remote_code=trust_remote_code).to(dev).eval()
        if rm.config.pad_token_id is None:
            rm.config.pad_token_id = tok.pad_token_id
        state.update(tok=tok, rm=rm, dev=dev)

    def reward_model(prompts, completions, **kwargs):
        import torch
        if not state:
            load()
        tok, rm, dev = state["tok"], state["rm"], state["dev"]
        texts = texts_for_reward_model(tok, prompts, completions)
        scores: list[float] = []
        with torch.no_grad():
            for i in range(0, len(texts), batch_size):
                enc = tok(texts[i:i + batch_size], return_tensors="pt", padding=True, truncation=True,
                          max_length=max_length, add_special_tokens=not tok.chat_template).to(dev)
                scores += rm(**enc).logits[:, 0].float().tolist()
        return scores

    reward_model.columns = ()
    return reward_model
