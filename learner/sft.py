"""Supervised warm start (the cold-start SFT of the R1 recipe), single process.

Trains on prompt -> answer + EOS with the loss on the answer tokens only, evaluates greedy accuracy on a dev split
every ``eval_every`` steps and stops at the first evaluation that reaches ``target_dev_accuracy``: a fixed step
count is fragile on this task (accuracy can jump 25 points between evaluations).
"""
from __future__ import annotations

import random
import time
from pathlib import Path

import torch


def encode_examples(tokenizer, rows: list[dict]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """prompt + answer + EOS, right-padded. Returns ids (N, T), attention mask (N, T), labels (N, T) (-100 off-answer)."""
    seqs, labels = [], []
    for r in rows:
        p = tokenizer(r["prompt"], add_special_tokens=False)["input_ids"]
        a = tokenizer(r["answer"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        seqs.append(p + a)
        labels.append([-100] * len(p) + a)
    T = max(map(len, seqs))
    ids = torch.full((len(seqs), T), tokenizer.pad_token_id)
    attn = torch.zeros((len(seqs), T), dtype=torch.long)
    lab = torch.full((len(seqs), T), -100)
    for i, (s, l) in enumerate(zip(seqs, labels)):
        ids[i, :len(s)] = torch.tensor(s)
        attn[i, :len(s)] = 1
        lab[i, :len(l)] = torch.tensor(l)
    return ids, attn, lab


@torch.no_grad()
def greedy_accuracy(model, tokenizer, rows: list[dict], max_new_tokens: int = 5, batch_size: int = 256) -> float:
    """Fraction of rows whose greedy completion is exactly the answer followed by EOS."""
    was_training = model.training
    model.eval()
    correct = 0
    for i in range(0, len(rows), batch_size):
        chunk = rows[i:i + batch_size]
        enc = tokenizer([r["prompt"] for r in chunk], return_tensors="pt", padding=True, add_special_tokens=False)
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        new = out[:, enc["input_ids"].shape[1]:].tolist()
        for r, ids in zip(chunk, new):
            want = tokenizer(r["answer"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            correct += ids[:len(want)] == want
    model.train(was_training)
    return correct / max(1, len(rows))


def warm_start(base_dir: Path, splits: dict, out_dir: Path, cfg, seed: int = 0, log=print) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.time()
    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    model.train()
    ids, attn, labels = encode_examples(tokenizer, splits["train"])
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, betas=(0.9, 0.98), weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, cfg.warmup_steps)))
    rng = random.Random(seed)
    dev_acc, step = 0.0, 0
    for step in range(1, cfg.max_steps + 1):
        idx = torch.tensor(rng.sample(range(len(ids)), cfg.batch_size))
        loss = model(input_ids=ids[idx], attention_mask=attn[idx], labels=labels[idx]).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if step % cfg.eval_every == 0:
            dev_acc = greedy_accuracy(model, tokenizer, splits["dev"])
            log(f"[kit] warm start step {step}: loss {loss.item():.3f}, dev greedy accuracy {dev_acc:.3f}")
            if dev_acc >= cfg.target_dev_accuracy:
                break
    test_acc = greedy_accuracy(model, tokenizer, splits["test"])
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return {"steps": step, "dev_accuracy": dev_acc, "test_accuracy": test_acc, "sft_s": round(time.time() - t0, 1)}
