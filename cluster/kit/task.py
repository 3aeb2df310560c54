"""The kit's pieces, built locally with no hub: character tokenizers, tiny Qwen3 models, the ``a+b=`` task and its
splits."""

from __future__ import annotations

import json
import random
from pathlib import Path

from relay_rl.cluster.config import KitConfig

VOCAB = ["<pad>", "<eos>", *"0123456789", "+", "="]
R1_TOKENS = ["|", "<think>", "</think>"]  # the r1 variant's: a hint's separator, a reasoning block
HINT = "{privileged_context}|{prompt}"  # how the r1 variant shows a hint: "46|12+34="
KIT_FORMAT = 3  # bump when what a kit holds changes, so cached kits are rebuilt


def build_tokenizer(variant: str = "plain"):
    """The kit's character tokenizer: one token per character of ``VOCAB`` (variant r1: and ``R1_TOKENS``, the think
    tags as whole tokens that decode as text, so ``think_format`` sees them)."""
    if variant == "r1":
        return _word_level_tokenizer(VOCAB + R1_TOKENS, split=r"</?think>|.")
    if variant == "tools":
        from .tool_task import build_tool_tokenizer

        return build_tool_tokenizer()
    return _word_level_tokenizer(VOCAB, split=".")


PAIR_VOCAB = ["<pad>", "<eos>", *"0123456789", "+", "=", *(f"{n:02d}" for n in range(100))]


def build_pair_tokenizer():
    """A second tokenizer over the same text, for cross-tokenizer distillation: digits are read greedily in pairs
    ("123" -> "12", "3"; "12+34=" -> "12", "+", "34", "="), so token boundaries differ from the character
    tokenizer's while every string still decodes to the same text and offsets map tokens back to characters."""
    return _word_level_tokenizer(PAIR_VOCAB, split=r"\d\d|.")


def _word_level_tokenizer(vocab: list[str], split: str):
    """A fixed vocabulary whose pieces are the regex ``split``'s matches; ``<pad>``/``<eos>`` special, left padding
    (what batched generation needs)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(vocab={t: i for i, t in enumerate(vocab)}, unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(split), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(["<pad>", "<eos>"])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", padding_side="left", model_max_length=64
    )


TOKENIZERS = {"char": build_tokenizer, "pairs": build_pair_tokenizer}


def build_model(cfg, tokenizer, seed: int | None = None):
    """A fresh tiny Qwen3 sized by ``cfg`` (a ``KitConfig`` or ``TeacherSettings``: same field names), seeded by
    ``seed`` (default ``cfg.seed``)."""
    import torch
    from transformers import GenerationConfig, Qwen3ForCausalLM

    config = _qwen3_config(cfg, tokenizer, tie_word_embeddings=True)
    torch.manual_seed(cfg.seed if seed is None else seed)
    model = Qwen3ForCausalLM(config)
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None
    )
    return model


def build_reward_model(cfg, tokenizer, seed: int):
    """A fresh tiny ``Qwen3ForSequenceClassification`` with one label (a reward model) sized by ``cfg``. Its
    ``pad_token_id`` is the tokenizer's, so the pooling finds each row's last real token under left padding."""
    import torch
    from transformers import Qwen3ForSequenceClassification

    config = _qwen3_config(cfg, tokenizer, num_labels=1)
    torch.manual_seed(seed)
    return Qwen3ForSequenceClassification(config)


def _qwen3_config(cfg, tokenizer, **extra):
    from transformers import Qwen3Config

    return Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads,
        head_dim=cfg.head_dim,
        max_position_embeddings=cfg.max_position_embeddings,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.eos_token_id,
        **extra,
    )


def make_task(cfg: KitConfig) -> dict[str, list[dict]]:
    if cfg.variant == "tools":  # a*b= as chat prompts, answered with the multiply tool (cluster/kit/tool_task.py)
        from .tool_task import shuffled_pairs, tool_rows

        rows = tool_rows(shuffled_pairs(cfg.operand_min, cfg.operand_max, cfg.seed))
        test, train = rows[: cfg.test_size], rows[cfg.test_size :]
        return {"train": train, "test": test, "dev": train[: cfg.dev_size]}
    pairs = [
        (a, b) for a in range(cfg.operand_min, cfg.operand_max + 1) for b in range(cfg.operand_min, cfg.operand_max + 1)
    ]
    random.Random(cfg.seed).shuffle(pairs)
    # ``solution`` repeats the answer for rewards that read that column (math equivalence, cosine length)
    rows = [{"prompt": f"{a}+{b}=", "answer": str(a + b), "solution": str(a + b)} for a, b in pairs]
    if cfg.variant == "r1":  # the hint is the answer; the reasoning, the ones digits' sum (the carry shows in it)
        for (a, b), r in zip(pairs, rows):
            r.update(privileged_context=r["answer"], r1_completion=f"<think>{a % 10 + b % 10}</think>{r['answer']}")
    test, train = rows[: cfg.test_size], rows[cfg.test_size :]
    return {"train": train, "test": test, "dev": train[: cfg.dev_size]}


def warm_start_rows(cfg: KitConfig, train: list[dict]) -> list[dict]:
    """What the warm start trains on: the train rows (prompt -> answer); variant r1 also every row behind its hint
    ("46|12+34=" -> "46"), so the model learns to use a hint (SDPO's and SDFT's re-prompted teacher is this model)."""
    if cfg.variant == "tools":  # conversations: a call, the tool's result, the answer (or the warm start's slips)
        from .tool_task import warm_start_tool_rows

        return warm_start_tool_rows(train)
    if cfg.variant != "r1":
        return train
    hinted = [{"prompt": HINT.format(**r), "answer": r["answer"]} for r in train]
    return [x for pair in zip(train, hinted) for x in pair]


def read_splits(root: Path) -> dict[str, list[dict]]:
    """The kit's train/test/dev rows as written (the files are the truth other code reads)."""
    return {
        name: [json.loads(line) for line in (root / f"{name}.jsonl").read_text().splitlines()]
        for name in ("train", "test", "dev")
    }


def teacher_splits(splits: dict[str, list[dict]]) -> dict[str, list[dict]]:
    """The kit's splits with the dev rows taken out of train. The kit's dev split is a slice of train (the warm start
    trains on it), so its accuracy is training accuracy; a teacher stops on it, so it must be held out to say how the
    teacher does on unseen pairs (dev 1.0 on trained rows still left 0.965 held-out in trials)."""
    dev = {r["prompt"] for r in splits["dev"]}
    return {**splits, "train": [r for r in splits["train"] if r["prompt"] not in dev]}
