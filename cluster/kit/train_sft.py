"""Single-process SFT of the kit's fixtures (its distillation teachers, the reward model's loop), not a relay-rl run.

Trains on prompt -> answer + EOS with the loss on the answer tokens only, evaluates greedy accuracy on a dev split
every ``eval_every`` steps and stops at the first evaluation that reaches ``target_dev_accuracy``: a fixed step
count is fragile on this task (accuracy can jump 25 points between evaluations). The kit's warm start is a relay-rl
SFT run (``learner/methods/sft.py``, ``cluster.kit.build.sft_warm_start``); the fixtures stay here because they take
hundreds to thousands of small steps, where a run's per-step overhead would double their build time.
"""

from __future__ import annotations

import math
import random
import time

import torch


def encode_examples(tokenizer, rows: list[dict]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """prompt + answer + EOS, right-padded. Returns ids (N, T), attention mask (N, T), labels (N, T) (-100 off the
    answer)."""
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
    for i, (s, target) in enumerate(zip(seqs, labels)):
        ids[i, : len(s)] = torch.tensor(s)
        attn[i, : len(s)] = 1
        lab[i, : len(target)] = torch.tensor(target)
    return ids, attn, lab


@torch.no_grad()
def greedy_accuracy(model, tokenizer, rows: list[dict], max_new_tokens: int = 5, batch_size: int = 256) -> float:
    """Fraction of rows whose greedy completion is exactly the answer followed by EOS."""
    was_training = model.training
    model.eval()
    correct = 0
    for i in range(0, len(rows), batch_size):
        chunk = rows[i : i + batch_size]
        enc = tokenizer([r["prompt"] for r in chunk], return_tensors="pt", padding=True, add_special_tokens=False)
        out = model.generate(
            **enc,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        new = out[:, enc["input_ids"].shape[1] :].tolist()
        for r, ids in zip(chunk, new):
            want = tokenizer(r["answer"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            correct += ids[: len(want)] == want
    model.train(was_training)
    return correct / max(1, len(rows))


def train_sft(model, tokenizer, splits: dict, cfg, seed: int = 0, log=print, name: str = "warm start") -> dict:
    """Train ``model`` in place until greedy dev accuracy reaches ``cfg.target_dev_accuracy`` or ``cfg.max_steps``;
    then measure held-out accuracy on ``splits["test"]`` (never used to decide anything).

    ``cfg`` needs ``learning_rate``, ``batch_size``, ``warmup_steps``, ``max_steps``, ``eval_every`` and
    ``target_dev_accuracy``; an optional ``min_lr_ratio`` < 1 adds a cosine decay to that fraction of the peak
    over ``max_steps`` (absent: constant after warmup, the warm start's schedule). Batches are drawn by a
    ``random.Random(seed)``, so a run is reproducible from ``seed`` and the model's initial weights.
    """
    ids, attn, labels = encode_examples(tokenizer, splits["train"])  # (N, T) each

    def batch_loss(rng: random.Random):
        idx = torch.tensor(rng.sample(range(len(ids)), cfg.batch_size))  # (B,)
        loss = model(input_ids=ids[idx], attention_mask=attn[idx], labels=labels[idx]).loss
        return loss, f"loss {loss.item():.3f}"

    step, dev_acc = train_until(
        model,
        cfg,
        batch_loss,
        lambda: greedy_accuracy(model, tokenizer, splits["dev"]),
        seed=seed,
        log=log,
        what=f"{name} step {{step}}: {{loss}}, dev greedy accuracy",
    )
    test_acc = greedy_accuracy(model, tokenizer, splits["test"])
    return {"steps": step, "dev_accuracy": dev_acc, "test_accuracy": test_acc}


def train_until(
    model, cfg, batch_loss, dev_accuracy, seed: int = 0, log=print, what: str = "step {step}: {loss}, dev accuracy"
) -> tuple[int, float]:
    """The kit's single-process training loop: AdamW (betas 0.9/0.98, no weight decay), ``_lr_factor``'s schedule,
    gradients clipped at 1.0; ``batch_loss(rng) -> (loss, loss text)`` draws a batch from a ``random.Random(seed)``.
    Every ``cfg.eval_every`` steps ``dev_accuracy()`` is logged and the loop stops once it reaches
    ``cfg.target_dev_accuracy`` (not before ``cfg.min_steps``), else at ``cfg.max_steps``. Returns (steps, the
    final dev accuracy)."""
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, betas=(0.9, 0.98), weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_factor(cfg))
    rng = random.Random(seed)
    t0, dev_acc, step = time.time(), 0.0, 0
    for step in range(1, cfg.max_steps + 1):
        loss, text = batch_loss(rng)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if step % cfg.eval_every == 0:
            dev_acc = dev_accuracy()
            log(f"[kit] {what.format(step=step, loss=text)} {dev_acc:.3f} ({time.time() - t0:.0f}s)")
            if dev_acc >= cfg.target_dev_accuracy and step >= getattr(cfg, "min_steps", 0):
                break
    if step % cfg.eval_every:  # stopped by max_steps between evaluations: report the final model's dev accuracy
        dev_acc = dev_accuracy()
    return step, dev_acc


def _lr_factor(cfg):
    """Linear warmup to the peak; then constant, or cosine down to ``min_lr_ratio`` of it by ``max_steps``."""
    warmup = max(1, cfg.warmup_steps)
    floor = getattr(cfg, "min_lr_ratio", 1.0)

    def factor(s: int) -> float:
        if s + 1 < warmup:
            return (s + 1) / warmup
        if floor >= 1.0:
            return 1.0
        progress = min(1.0, (s + 1 - warmup) / max(1, cfg.max_steps - warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor
