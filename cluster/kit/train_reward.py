"""Reward model training, single process: a sequence classifier (``num_labels=1``) learns to score a correct
completion above wrong ones for the same prompt (the quickstart kit's ``reward_model`` part).

Each step draws ``batch_size`` prompts and, for each, the correct completion and ``negatives`` wrong ones (from a
task-specific ``negative(row, rng)``), and minimises the Bradley-Terry loss −log σ(r_correct − r_wrong) (what
TRL's RewardTrainer minimises). An optional auxiliary next-token loss on the correct completions
(``lm_loss_weight``), read through the input embedding (tied: no parameter is added and nothing of it is saved),
teaches the backbone the task itself: one scalar per sequence is too little signal to learn addition from scratch in
a few hundred steps. Stops at the first evaluation whose dev pairwise accuracy (the correct completion scored above
the wrong one) reaches the target; the held-out test pairs decide nothing.

Scores are read as ``AutoModelForSequenceClassification`` reads them at inference (the score head at the rightmost
non-pad token), on texts tokenised as the ``reward_model`` reward function tokenises them (the tokenizer's own
padding side, no special tokens added by a tokenizer without a post-processor), so what is trained is what is served.
"""

from __future__ import annotations

import random
import time

import torch
import torch.nn.functional as F

from .train_sft import train_until


def _last_token(model, input_ids: torch.Tensor) -> torch.Tensor:
    """The rightmost non-pad position of each row (N,): where ``GenericForSequenceClassification`` pools (left or
    right padding alike)."""
    pad = model.config.get_text_config().pad_token_id
    return (torch.arange(input_ids.shape[-1], device=input_ids.device) * (input_ids != pad)).argmax(-1)


def _encode(tokenizer, texts: list[str]) -> dict:
    return tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)


@torch.no_grad()
def score_texts(model, tokenizer, texts: list[str], batch_size: int = 512) -> list[float]:
    """The first logit of a plain forward, as the ``reward_model`` reward function computes it."""
    was_training = model.training
    model.eval()
    out: list[float] = []
    for i in range(0, len(texts), batch_size):
        out += model(**_encode(tokenizer, texts[i : i + batch_size])).logits[:, 0].float().tolist()
    model.train(was_training)
    return out


def pair_scores(model, tokenizer, pairs: list[tuple]) -> tuple[list[float], list[float]]:
    """The scores of ``(prompt, correct, wrong[, kind])`` pairs: (correct texts, wrong texts)."""
    return (
        score_texts(model, tokenizer, [p[0] + p[1] for p in pairs]),
        score_texts(model, tokenizer, [p[0] + p[2] for p in pairs]),
    )


def pairwise_accuracy(model, tokenizer, pairs: list[tuple], by_kind: bool = False, scores=None):
    """Fraction of ``(prompt, correct, wrong[, kind])`` pairs whose correct completion scores higher; with
    ``by_kind``, also that fraction per kind (pairs without a kind count as "any"). ``scores``: ``pair_scores``
    already taken."""
    right, wrong = scores or pair_scores(model, tokenizer, pairs)
    wins = [r > w for r, w in zip(right, wrong)]
    acc = sum(wins) / max(1, len(wins))
    if not by_kind:
        return acc
    kinds: dict[str, list[bool]] = {}
    for p, win in zip(pairs, wins):
        kinds.setdefault(p[3] if len(p) > 3 else "any", []).append(win)
    return acc, {k: round(sum(v) / len(v), 4) for k, v in kinds.items()}


def train_reward_model(
    model,
    tokenizer,
    rows: list[dict],
    eval_pairs: dict[str, list[tuple]],
    cfg,
    negative,
    seed: int = 0,
    log=print,
    name: str = "reward model",
) -> dict:
    """Train ``model`` (a sequence classifier) in place on ``rows`` ({"prompt", "answer"}) until the pairwise accuracy
    on ``eval_pairs["dev"]`` reaches ``cfg.target_dev_accuracy`` (not before ``cfg.min_steps``) or ``cfg.max_steps``;
    then measure it on ``eval_pairs["test"]``.

    ``cfg`` needs ``learning_rate``, ``batch_size``, ``negatives``, ``warmup_steps``, ``max_steps``, ``eval_every``,
    ``target_dev_accuracy``; optional ``min_lr_ratio`` (cosine decay, as ``cluster.kit.train_sft``), ``min_steps`` and
    ``lm_loss_weight``. ``negative(row, rng)`` returns a wrong completion for a row. Batches and negatives
    are drawn by a ``random.Random(seed)``: a run is reproducible from ``seed`` and the model's initial weights.
    """
    t0 = time.time()
    lm_weight = getattr(cfg, "lm_loss_weight", 0.0)
    B, K = cfg.batch_size, cfg.negatives

    def batch_loss(rng: random.Random):
        batch = rng.sample(rows, B)
        right = [r["prompt"] + r["answer"] for r in batch]
        wrong = [r["prompt"] + negative(r, rng) for r in batch for _ in range(K)]
        enc = _encode(tokenizer, right + wrong)
        hidden = model.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
        last = _last_token(model, enc["input_ids"])  # (B + B*K,)
        scores = model.score(hidden[torch.arange(len(last)), last]).squeeze(-1)  # (B + B*K,)
        margin = scores[:B, None] - scores[B:].view(B, K)  # (B, K)
        rm_loss = -F.logsigmoid(margin).mean()  # Bradley-Terry
        loss = rm_loss
        if lm_weight:
            loss = loss + lm_weight * _answer_lm_loss(
                model, tokenizer, hidden[:B], enc["input_ids"][:B], last[:B], batch
            )
        return loss, f"loss {loss.item():.3f} (pairwise {rm_loss.item():.3f})"

    step, dev_acc = train_until(
        model,
        cfg,
        batch_loss,
        lambda: pairwise_accuracy(model, tokenizer, eval_pairs["dev"]),
        seed=seed,
        log=log,
        what=f"{name} step {{step}}: {{loss}}, dev pairwise accuracy",
    )
    right, wrong = pair_scores(model, tokenizer, eval_pairs["test"])
    test_acc, by_kind = pairwise_accuracy(model, tokenizer, eval_pairs["test"], by_kind=True, scores=(right, wrong))
    model.eval()
    return {
        "steps": step,
        "dev_accuracy": dev_acc,
        "test_accuracy": test_acc,
        "test_accuracy_by_kind": by_kind,
        "test_pairs": len(eval_pairs["test"]),
        "test_score_correct_mean": round(sum(right) / len(right), 4),
        "test_score_wrong_mean": round(sum(wrong) / len(wrong), 4),
        "train_s": round(time.time() - t0, 1),
    }


def _answer_lm_loss(
    model, tokenizer, hidden: torch.Tensor, input_ids: torch.Tensor, last: torch.Tensor, batch: list[dict]
):
    """Next-token cross-entropy on the answer tokens of the correct texts (each row's tokens up to ``last``, its
    last non-pad position), with the input embedding as the output projection."""
    last = last.tolist()
    labels = torch.full_like(input_ids, -100)
    for i, r in enumerate(batch):
        n = len(tokenizer(r["answer"], add_special_tokens=False)["input_ids"])
        labels[i, last[i] + 1 - n : last[i] + 1] = input_ids[i, last[i] + 1 - n : last[i] + 1]
    logits = hidden[:, :-1] @ model.get_input_embeddings().weight.T  # (B, T-1, V)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100)
