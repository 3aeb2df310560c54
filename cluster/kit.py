"""The quickstart kit, built locally with no hub: a character tokenizer, a tiny Qwen3 model, the ``a+b=`` task with
a held-out split, and a short SFT warm start (the R1 recipe's cold start) so that RL starts from a model that
sometimes succeeds. Built once per settings and reused (``~/.cache/relay-rl/kits/<hash>``).

Layout of a kit folder::

    tokenizer + base/      the untrained model (tokenizer saved with it)
    warm_start/            the SFT warm start (HF format)
    train.jsonl test.jsonl dev.jsonl   {"prompt": "12+34=", "answer": "46", "solution": "46"}
    kit.json               what was built and the warm start's accuracies
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import time
from pathlib import Path

from .config import KitConfig

VOCAB = ["<pad>", "<eos>", *"0123456789", "+", "="]
KIT_FORMAT = 2  # bump when what a kit holds changes, so cached kits are rebuilt


def kit_dir(cfg: KitConfig) -> Path:
    if cfg.dir:
        return Path(cfg.dir).expanduser().resolve()
    key = json.dumps({"format": KIT_FORMAT, **cfg.model_dump(exclude={"dir"})}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    root = Path(os.environ.get("RELAY_RL_CACHE", "~/.cache/relay-rl")).expanduser()
    return (root / "kits" / f"arithmetic-{digest}").resolve()


def resolve_kit_path(value: str, cfg: KitConfig | None) -> str:
    """``kit:warm_start`` -> <kit>/warm_start, ``kit:train`` -> <kit>/train.jsonl; other values pass through."""
    if not value or not value.startswith("kit:"):
        return value
    name = value[len("kit:"):]
    root = kit_dir(cfg)
    files = {"train": "train.jsonl", "test": "test.jsonl", "dev": "dev.jsonl"}
    return str(root / files.get(name, name))


def build_tokenizer():
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(vocab={t: i for i, t in enumerate(VOCAB)}, unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(["<pad>", "<eos>"])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>",
                                   padding_side="left", model_max_length=64)


def build_model(cfg: KitConfig, tokenizer):
    import torch
    from transformers import GenerationConfig, Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(
        vocab_size=len(tokenizer), hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers, num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads, head_dim=cfg.head_dim,
        max_position_embeddings=cfg.max_position_embeddings, tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(cfg.seed)
    model = Qwen3ForCausalLM(config)
    model.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id,
                                               pad_token_id=tokenizer.pad_token_id, bos_token_id=None)
    return model


def make_task(cfg: KitConfig) -> dict[str, list[dict]]:
    pairs = [(a, b) for a in range(cfg.operand_min, cfg.operand_max + 1) for b in range(cfg.operand_min, cfg.operand_max + 1)]
    random.Random(cfg.seed).shuffle(pairs)
    # ``solution`` repeats the answer for rewards that read that column (math equivalence, cosine length)
    rows = [{"prompt": f"{a}+{b}=", "answer": str(a + b), "solution": str(a + b)} for a, b in pairs]
    test, train = rows[:cfg.test_size], rows[cfg.test_size:]
    return {"train": train, "test": test, "dev": train[:cfg.dev_size]}


def ensure_kit(cfg: KitConfig, log=print) -> Path:
    """Build the kit unless a complete one with the same settings exists. Returns its folder."""
    root = kit_dir(cfg)
    if (root / "kit.json").is_file():
        return root
    t0 = time.time()
    tmp = root.with_name(root.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tokenizer = build_tokenizer()
    model = build_model(cfg, tokenizer)
    for d in ("base",):
        model.save_pretrained(tmp / d)
        tokenizer.save_pretrained(tmp / d)
    splits = make_task(cfg)
    for name, rows in splits.items():
        with open(tmp / f"{name}.jsonl", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"[kit] tokenizer ({len(tokenizer)} tokens), Qwen3 model ({n_params:,} parameters), task "
        f"({len(splits['train'])} train / {len(splits['test'])} test pairs); warm start ...")

    from learner.sft import warm_start
    summary = warm_start(tmp / "base", splits, tmp / "warm_start", cfg.warm_start, seed=cfg.seed, log=log)
    summary.update(parameters=n_params, build_s=round(time.time() - t0, 1))
    (tmp / "kit.json").write_text(json.dumps(summary, indent=2))
    if root.exists():  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        root.parent.mkdir(parents=True, exist_ok=True)
        tmp.rename(root)
    log(f"[kit] ready in {time.time() - t0:.0f}s at {root}: warm start held-out greedy accuracy "
        f"{summary['test_accuracy']:.3f} (dev {summary['dev_accuracy']:.3f}, {summary['steps']} SFT steps)")
    return root


def kit_summary(cfg: KitConfig) -> dict:
    return json.loads((kit_dir(cfg) / "kit.json").read_text())
