"""Reward models: any HF sequence-classification checkpoint as a reward function (``{name: reward_model, kwargs:
{model: PATH}}``), batched, on the reward actor's GPU when it has one, else CPU.

The text is re-tokenised with the reward model's own tokenizer (and chat template, for conversational prompts), so
a reward model with another vocabulary than the policy's works. The score is the first logit of the last position
(what ``AutoModelForSequenceClassification`` pools): TRL's convention for reward models with ``num_labels=1``.
"""

from __future__ import annotations

import json
import os

from relay_rl.batch import with_chat_template_kwargs

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
        messages += (
            list(completion) if not isinstance(completion, str) else [{"role": "assistant", "content": completion}]
        )
        out.append(tokenizer.apply_chat_template(messages, tokenize=False))
    return out


HOW_TO_GET_ONE = (
    "give a *ForSequenceClassification model (num_labels=1), e.g. from TRL's RewardTrainer "
    "(trl.RewardTrainer trains one on chosen/rejected pairs), or kit:reward_model on the quickstart kit"
)


def check_sequence_classifier(model: str) -> None:
    """A local checkpoint must be a sequence classifier, judged from its config.json alone (no weights, no torch):
    ``architectures`` naming a ``*ForSequenceClassification`` class (or remote code mapping
    ``AutoModelForSequenceClassification``); without ``architectures``, a ``model_type`` that transformers has a
    classification class for. ``AutoModelForSequenceClassification`` would load a causal LM of such a family (a
    Qwen3ForCausalLM, say) with a freshly initialised score head and only a warning: every reward would be noise.
    The error says what to do first (the pre-flight shows the first 200 characters). Hub ids (not a local folder)
    are checked when the actor loads them."""
    if not os.path.isdir(model):
        return
    path = os.path.join(model, "config.json")
    if not os.path.isfile(path):
        raise ValueError(
            f"reward model {model!r}: the folder has no config.json (not an HF checkpoint): " + HOW_TO_GET_ONE
        )
    try:
        with open(path) as f:
            config = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"reward model {model!r}: its config.json cannot be read ({e})") from None
    if not isinstance(config, dict):
        raise ValueError(f"reward model {model!r}: its config.json is not a JSON object: " + HOW_TO_GET_ONE)
    if "AutoModelForSequenceClassification" in (config.get("auto_map") or {}):
        return  # remote code that declares its own classification class
    archs = [a for a in config.get("architectures") or () if isinstance(a, str)]
    model_type = config.get("model_type")
    if any(a.endswith("ForSequenceClassification") for a in archs):
        return
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES

    loadable = model_type in MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES
    if not archs and loadable:
        return  # no architectures recorded: AutoModelForSequenceClassification decides, as it would anyway
    what = f"a {'/'.join(archs)}" if archs else f"model_type {model_type!r} with no architectures"
    why = (
        "AutoModelForSequenceClassification would load it with an untrained score head, so every reward would be noise"
        if loadable
        else f"transformers has no sequence-classification class for model_type {model_type!r}"
    )
    raise ValueError(
        f"reward model {model!r} is {what}, not a sequence classifier: {HOW_TO_GET_ONE}. ({why}; read from {path})"
    )


@builtin("reward_model")
def make_reward_model(
    tokenizer,
    model: str,
    batch_size: int = 16,
    max_length: int = 1024,
    dtype: str = "float32",
    device: str = "auto",
    trust_remote_code: bool = False,
    chat_template_kwargs: dict | None = None,
):
    """``chat_template_kwargs``: given to the reward model's chat template (relay-rl passes
    ``rollout.chat_template_kwargs`` unless set here). The checkpoint is read when the first batch comes (on the reward
    actor, not in the driver's pre-flight); a local folder that is not a sequence classifier (no config.json, or a
    config.json naming a causal LM, say) is an error at once (``check_sequence_classifier``): the pre-flight builds
    this too, so before any actor starts."""
    check_sequence_classifier(model)
    state: dict = {}

    def load():
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        dev = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        tok = with_chat_template_kwargs(
            AutoTokenizer.from_pretrained(model, trust_remote_code=trust_remote_code), chat_template_kwargs
        )
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        rm = (
            AutoModelForSequenceClassification.from_pretrained(
                model, dtype=getattr(torch, dtype), trust_remote_code=trust_remote_code
            )
            .to(dev)
            .eval()
        )
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
                enc = tok(
                    texts[i : i + batch_size],
                    return_tensors="pt",
                    padding=True,
                    truncation=True,
                    max_length=max_length,
                    add_special_tokens=not tok.chat_template,
                ).to(dev)
                scores += rm(**enc).logits[:, 0].float().tolist()
        return scores

    reward_model.columns = ()
    return reward_model
