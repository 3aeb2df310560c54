"""The kit's optional parts: distillation teachers and a reward model, each trained from scratch by a small
single-process trainer (``cluster.kit.train_sft``, ``cluster.kit.train_reward``) and saved as an HF folder with a
part.json (accuracies, steps, settings)."""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Union

from relay_rl.cluster.config import KitConfig

from .paths import PART_NAMES
from .task import TOKENIZERS, build_model, build_reward_model, build_tokenizer, read_splits, teacher_splits


@dataclass(frozen=True)
class TeacherSettings:
    """A distillation teacher: a tiny Qwen3 larger than the student, trained by SFT from scratch on the kit's train
    split until it is good (the warm start is deliberately weak; a teacher must not be). The SFT fields are the ones
    ``cluster.kit.train_sft.train_sft`` reads. Tuned for wall time on 2 CPU cores: a high peak lr with warmup and a
    cosine decay to ``max_steps``, stopping at the first evaluation whose held-out dev accuracy reaches the target."""

    tokenizer: str = "char"
    """A key of ``TOKENIZERS``: "char" shares the student's vocabulary, "pairs" tokenizes the same text differently."""
    seed_offset: int = 1
    """Seed = kit seed + this: an initialisation and batch order unlike the student's."""
    hidden_size: int = 192
    """192 rather than 256: as few steps to the target in trials, at 0.6x the time per step."""
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    head_dim: int = 64
    intermediate_size: int = 768
    max_position_embeddings: int = 64
    learning_rate: float = 2e-3
    min_lr_ratio: float = 0.1
    batch_size: int = 256
    warmup_steps: int = 50
    max_steps: int = 450
    eval_every: int = 25
    target_dev_accuracy: float = 0.98
    min_steps: int = 0
    """No early stop before this step: dev accuracy (200 training pairs) can reach the target before the held-out
    accuracy does."""

    def build(self, cfg: KitConfig, root: Path, out: Path, log=print, name: str = "teacher") -> dict:
        """Train the teacher from scratch on the kit's splits; save model, tokenizer and part.json to ``out``."""
        from .train_sft import train_sft

        t0 = time.time()
        seed = cfg.seed + self.seed_offset
        tokenizer = TOKENIZERS[self.tokenizer]()
        model = build_model(self, tokenizer, seed=seed)
        n_params = sum(p.numel() for p in model.parameters())
        log(
            f"[kit] {name}: Qwen3 ({n_params:,} parameters), {self.tokenizer} tokenizer ({len(tokenizer)} tokens); "
            "SFT ..."
        )
        splits = teacher_splits(read_splits(root))
        summary = train_sft(model, tokenizer, splits, self, seed=seed, log=log, name=name)
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        summary.update(parameters=n_params, build_s=round(time.time() - t0, 1), settings=asdict(self))
        _write_part(out, summary)
        log(
            f"[kit] {name} ready in {summary['build_s']:.0f}s: held-out greedy accuracy "
            f"{summary['test_accuracy']:.3f} (dev {summary['dev_accuracy']:.3f}, {summary['steps']} SFT steps)"
        )
        return summary


NEGATIVE_KINDS = ("off_by_small", "off_by_carry", "digit", "swapped", "other_sum", "truncated", "extra_digit", "junk")
"""How the reward model's wrong completions are made from the answer (``wrong_completion``): off by 1-3; off by
9/10/11/100 (a carry gone wrong); one digit changed; two adjacent digits swapped; another pair's sum; a proper prefix
(the empty completion included); one digit inserted; 1-5 random characters of the task's alphabet."""


def wrong_completion(answer: str, rng: random.Random, kind: str | None = None) -> str:
    """A completion that is not ``answer``, made as ``kind`` says (default: a kind drawn at random). The text is as
    the rollout decodes a completion (special tokens skipped: no "<eos>"), which is what the reward model scores."""
    n = int(answer)
    for _ in range(100):
        k = kind or rng.choice(NEGATIVE_KINDS)
        if k == "off_by_small":
            w = str(n + rng.choice((-3, -2, -1, 1, 2, 3)))
        elif k == "off_by_carry":
            w = str(n + rng.choice((-100, -11, -10, -9, 9, 10, 11, 100)))
        elif k == "digit":
            i = rng.randrange(len(answer))
            w = answer[:i] + rng.choice([d for d in "0123456789" if d != answer[i]]) + answer[i + 1 :]
        elif k == "swapped":
            i = rng.randrange(len(answer) - 1) if len(answer) > 1 else 0
            w = answer[:i] + answer[i + 1 : i + 2] + answer[i : i + 1] + answer[i + 2 :]
        elif k == "other_sum":
            w = str(rng.randint(10, 99) + rng.randint(10, 99))
        elif k == "truncated":
            w = answer[: rng.randrange(len(answer))]
        elif k == "extra_digit":
            i = rng.randrange(len(answer) + 1)
            w = answer[:i] + rng.choice("0123456789") + answer[i:]
        elif k == "junk":
            w = "".join(rng.choice("0123456789+=") for _ in range(rng.randint(1, 5)))
        else:
            raise ValueError(f"unknown negative kind {k!r}; kinds: {NEGATIVE_KINDS}")
        if w != answer and not w.startswith("-"):
            return w
    return answer + "0"  # e.g. "swapped" on "11": no other swap exists


def policy_mistakes(
    model_dir: Path, rows: list[dict], samples: int, seed: int, max_new_tokens: int = 5, batch_size: int = 256
) -> dict[str, list[str]]:
    """The wrong completions the model at ``model_dir`` samples (temperature 1, ``samples`` per prompt), decoded as a
    run decodes them (special tokens skipped): prompt -> its distinct wrong completions (a prompt the model always
    gets right has none). What a policy starting from that model gets wrong is what its reward model must rank."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    torch.manual_seed(seed)
    out: dict[str, list[str]] = {}
    for i in range(0, len(rows), batch_size):
        chunk = rows[i : i + batch_size]
        enc = tok([r["prompt"] for r in chunk], return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            ids = model.generate(
                **enc,
                do_sample=True,
                temperature=1.0,
                top_k=0,
                top_p=1.0,
                num_return_sequences=samples,
                max_new_tokens=max_new_tokens,
                pad_token_id=tok.pad_token_id,
                eos_token_id=tok.eos_token_id,
            )
        texts = tok.batch_decode(ids[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
        for k, r in enumerate(chunk):
            wrong = [t for t in texts[k * samples : (k + 1) * samples] if t != r["answer"]]
            out[r["prompt"]] = list(dict.fromkeys(wrong))
    return out


def reward_pairs(rows: list[dict], seed: int) -> list[tuple[str, str, str, str]]:
    """(prompt, correct completion, wrong completion, kind): one pair per row and kind of ``NEGATIVE_KINDS``, seeded
    (the reward model's fixed dev and held-out test pairs)."""
    rng = random.Random(seed)
    return [(r["prompt"], r["answer"], wrong_completion(r["answer"], rng, k), k) for r in rows for k in NEGATIVE_KINDS]


@dataclass(frozen=True)
class RewardModelSettings:
    """A reward model: a tiny ``Qwen3ForSequenceClassification`` (one label) on the kit's character tokenizer, trained
    from scratch on the train split (dev rows held out, as the teachers) to score ``prompt + completion`` higher when
    the completion is the answer than when it is wrong (``NEGATIVE_KINDS``), by ``cluster.kit.train_reward``.

    It scores text as the ``reward_model`` reward function gets it: the completion decoded without special tokens,
    so "12+34=46" for the completion "46<eos>". A completion cut at ``max_completion_length`` without EOS decodes the
    same way, so the reward model cannot tell "46<eos>" from "46" that ran out of tokens (or "46<pad>..."); with the
    quickstart's 5-token budget and answers of at most 3 digits, a truncated completion always shows extra
    characters, which it scores as wrong."""

    seed_offset: int = 3
    hidden_size: int = 128
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    head_dim: int = 32
    intermediate_size: int = 512
    max_position_embeddings: int = 64
    learning_rate: float = 3e-3
    min_lr_ratio: float = 0.1
    batch_size: int = 64
    """Prompts per step; each is scored with its answer and ``negatives`` wrong completions."""
    negatives: int = 1
    policy_samples: int = 8
    """Completions sampled per train prompt from the warm start (``policy_mistakes``); its wrong ones are negatives."""
    policy_share: float = 0.5
    """Share of negatives drawn from the warm start's own mistakes (where the prompt has any); the rest are made
    (``NEGATIVE_KINDS``). With made negatives alone the model ranked the warm start's near misses poorly: PPO on it
    raised its score while held-out accuracy fell."""
    lm_loss_weight: float = 1.0
    """Weight of the auxiliary next-token loss on the answers (``cluster.kit.train_reward``): in trials it raised
    held-out pairwise accuracy after 400 steps from 0.85 to 0.92."""
    warmup_steps: int = 30
    max_steps: int = 800
    eval_every: int = 50
    target_dev_accuracy: float = 0.97
    min_steps: int = 0
    threads: int = 1
    """torch threads while it trains (restored after): on 2 busy cores, 2 threads ran 10x slower per step than 1
    (2.5 s against 0.2-0.5 s) in trials."""

    def build(self, cfg: KitConfig, root: Path, out: Path, log=print, name: str = "reward_model") -> dict:
        """Train the reward model; save it (``AutoModelForSequenceClassification``/``AutoTokenizer`` load the folder)
        with a part.json: held-out pairwise accuracy (``test_accuracy``: correct above wrong for the same prompt,
        one pair per test prompt and kind), dev pairwise accuracy, steps, parameters, build seconds, settings."""
        import torch

        from .train_reward import pairwise_accuracy, train_reward_model

        t0 = time.time()
        seed = cfg.seed + self.seed_offset
        tokenizer = build_tokenizer()
        model = build_reward_model(self, tokenizer, seed=seed)
        n_params = sum(p.numel() for p in model.parameters())
        log(f"[kit] {name}: Qwen3 sequence classifier ({n_params:,} parameters); pairwise training ...")
        splits = teacher_splits(read_splits(root))
        pairs = {"dev": reward_pairs(splits["dev"], seed + 1), "test": reward_pairs(splits["test"], seed + 2)}
        threads = torch.get_num_threads()
        torch.set_num_threads(max(1, min(threads, self.threads)))
        try:
            mistakes = policy_mistakes(
                root / "warm_start", splits["train"] + splits["test"], self.policy_samples, seed + 4
            )
            log(f"[kit] {name}: {sum(map(len, mistakes.values())):,} distinct wrong warm-start samples as negatives")

            def negative(row: dict, rng: random.Random) -> str:
                own = mistakes.get(row["prompt"])
                return (
                    rng.choice(own)
                    if own and rng.random() < self.policy_share
                    else wrong_completion(row["answer"], rng)
                )

            summary = train_reward_model(
                model, tokenizer, splits["train"], pairs, self, negative, seed=seed, log=log, name=name
            )
            policy_pairs = [
                (r["prompt"], r["answer"], random.Random(seed + 5 + i).choice(mistakes[r["prompt"]]))
                for i, r in enumerate(splits["test"])
                if mistakes.get(r["prompt"])
            ]
            summary["test_accuracy_policy"] = pairwise_accuracy(model, tokenizer, policy_pairs)
            summary["test_pairs_policy"] = len(policy_pairs)
        finally:
            torch.set_num_threads(threads)
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        summary.update(
            parameters=n_params,
            build_s=round(time.time() - t0, 1),
            settings=asdict(self),
            text_example=pairs["test"][0][0] + pairs["test"][0][1],
        )
        _write_part(out, summary)
        log(
            f"[kit] {name} ready in {summary['build_s']:.0f}s: held-out pairwise accuracy "
            f"{summary['test_accuracy']:.3f}, {summary['test_accuracy_policy']:.3f} against the warm start's own "
            f"mistakes (dev {summary['dev_accuracy']:.3f}, {summary['steps']} steps)"
        )
        return summary


KitPart = Union[TeacherSettings, RewardModelSettings]
"""A part's settings: a frozen dataclass whose ``build(cfg, root, out, log, name) -> summary`` trains and saves it
(model, tokenizer and a part.json holding ``PART_KEYS``); ``asdict`` of it is what a cached build must match."""

KIT_PARTS: dict[str, KitPart] = {
    # hidden 128 at batch 128: half the wall time of hidden 192 at batch 256 (194 s against 391 s on 2 cores), held-out
    # 0.970 at step 550 in the trial; one earlier build hit the dev target at step 250 with 0.93 held-out, hence a
    # floor of 300 steps
    "teacher": TeacherSettings(
        hidden_size=128,
        intermediate_size=512,
        batch_size=128,
        learning_rate=3e-3,
        max_steps=900,
        eval_every=50,
        min_steps=300,
    ),
    # Pair tokens turn the task into a lookup over 90 operand embeddings learned from scratch, far slower to learn
    # than shared digits. What helped in trials was more, cheaper steps: 2 layers (half the step cost), batch 128,
    # 3000 steps (~0.95 held-out; 4 layers reached 0.89 in the same time).
    "teacher_pairs": TeacherSettings(
        tokenizer="pairs",
        seed_offset=2,
        num_hidden_layers=2,
        learning_rate=3e-3,
        batch_size=128,
        max_steps=3000,
        eval_every=100,
    ),
    # a reward model for ``{name: reward_model, kwargs: {model: kit:reward_model}}``
    "reward_model": RewardModelSettings(),
}
"""Optional kit folders, built only when named (``ensure_kit(parts=...)``, or a ``kit:<part>`` path in a recipe)."""

PART_KEYS = ("test_accuracy", "dev_accuracy", "steps", "parameters", "build_s", "settings")

assert tuple(KIT_PARTS) == PART_NAMES, "cluster.kit.paths.PART_NAMES lists the parts"


def _write_part(out: Path, summary: dict) -> None:
    (out / "part.json").write_text(json.dumps(summary, indent=2))  # written last: its presence marks a full build
