"""The quickstart kit, built locally with no hub: a character tokenizer, a tiny Qwen3 model, the ``a+b=`` task with
a held-out split, and a short SFT warm start (the R1 recipe's cold start) so that RL starts from a model that
sometimes succeeds. Built once per settings and reused (``~/.cache/relay-rl/kits/<hash>``).

Layout of a kit folder::

    tokenizer + base/      the untrained model (tokenizer saved with it)
    warm_start/            the SFT warm start (HF format), trained by a relay-rl SFT run (``algorithm.name: sft``)
                           whose run folder is kept as warm_start_run/ (metrics, curve)
    train.jsonl test.jsonl dev.jsonl   {"prompt": "12+34=", "answer": "46", "solution": "46"}
                           (variant r1: also "privileged_context": "46", "r1_completion": "<think>6</think>46")
    warm_start.jsonl       what the warm start trains on (variant r1: every train row, and again behind its hint)
    kit.json               what was built and the warm start's accuracies
    teacher/ teacher_pairs/ reward_model/   optional parts (``KIT_PARTS``), built only when asked for: strong SFT
                           teachers for distillation and a trained reward model (a sequence classifier), each an HF
                           folder with a part.json (accuracies, steps, settings)
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Union

from .config import KitConfig

VOCAB = ["<pad>", "<eos>", *"0123456789", "+", "="]
R1_TOKENS = ["|", "<think>", "</think>"]  # the r1 variant's: a hint's separator, a reasoning block
HINT = "{privileged_context}|{prompt}"  # how the r1 variant shows a hint: "46|12+34="
KIT_FORMAT = 3  # bump when what a kit holds changes, so cached kits are rebuilt


def kit_dir(cfg: KitConfig) -> Path:
    if cfg.dir:
        return Path(cfg.dir).expanduser().resolve()
    key = json.dumps({"format": KIT_FORMAT, **cfg.model_dump(exclude={"dir"})}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    root = Path(os.environ.get("RELAY_RL_CACHE", "~/.cache/relay-rl")).expanduser()
    variant = "" if cfg.variant == "plain" else f"{cfg.variant}-"
    return (root / "kits" / f"arithmetic-{variant}{digest}").resolve()


def resolve_kit_path(value: str, cfg: KitConfig | None) -> str:
    """``kit:warm_start`` -> <kit>/warm_start, ``kit:train`` -> <kit>/train.jsonl, ``kit:teacher`` -> <kit>/teacher,
    ``kit:reward_model`` -> <kit>/reward_model (any other name -> <kit>/<name>); other values pass through. Parts are
    not built here: see ``kit_parts_needed``."""
    if not value or not value.startswith("kit:"):
        return value
    name = value[len("kit:"):]
    root = kit_dir(cfg)
    files = {"train": "train.jsonl", "test": "test.jsonl", "dev": "dev.jsonl"}
    return str(root / files.get(name, name))


def build_tokenizer(variant: str = "plain"):
    """The kit's character tokenizer: one token per character of ``VOCAB`` (variant r1: and ``R1_TOKENS``, the think
    tags as whole tokens that decode as text, so ``think_format`` sees them)."""
    if variant == "r1":
        return _word_level_tokenizer(VOCAB + R1_TOKENS, split=r"</?think>|.")
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
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>",
                                   padding_side="left", model_max_length=64)


TOKENIZERS = {"char": build_tokenizer, "pairs": build_pair_tokenizer}


def build_model(cfg, tokenizer, seed: int | None = None):
    """A fresh tiny Qwen3 sized by ``cfg`` (a ``KitConfig`` or ``TeacherSettings``: same field names), seeded by
    ``seed`` (default ``cfg.seed``)."""
    import torch
    from transformers import GenerationConfig, Qwen3ForCausalLM

    config = _qwen3_config(cfg, tokenizer, tie_word_embeddings=True)
    torch.manual_seed(cfg.seed if seed is None else seed)
    model = Qwen3ForCausalLM(config)
    model.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id,
                                               pad_token_id=tokenizer.pad_token_id, bos_token_id=None)
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
        vocab_size=len(tokenizer), hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers, num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads, head_dim=cfg.head_dim,
        max_position_embeddings=cfg.max_position_embeddings,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.eos_token_id,
        **extra,
    )


def make_task(cfg: KitConfig) -> dict[str, list[dict]]:
    pairs = [(a, b) for a in range(cfg.operand_min, cfg.operand_max + 1) for b in range(cfg.operand_min, cfg.operand_max + 1)]
    random.Random(cfg.seed).shuffle(pairs)
    # ``solution`` repeats the answer for rewards that read that column (math equivalence, cosine length)
    rows = [{"prompt": f"{a}+{b}=", "answer": str(a + b), "solution": str(a + b)} for a, b in pairs]
    if cfg.variant == "r1":  # the hint is the answer; the reasoning, the ones digits' sum (the carry shows in it)
        for (a, b), r in zip(pairs, rows):
            r.update(privileged_context=r["answer"], r1_completion=f"<think>{a % 10 + b % 10}</think>{r['answer']}")
    test, train = rows[:cfg.test_size], rows[cfg.test_size:]
    return {"train": train, "test": test, "dev": train[:cfg.dev_size]}


def warm_start_rows(cfg: KitConfig, train: list[dict]) -> list[dict]:
    """What the warm start trains on: the train rows (prompt -> answer); variant r1 also every row behind its hint
    ("46|12+34=" -> "46"), so the model learns to use a hint (SDPO's and SDFT's re-prompted teacher is this model)."""
    if cfg.variant != "r1":
        return train
    hinted = [{"prompt": HINT.format(**r), "answer": r["answer"]} for r in train]
    return [x for pair in zip(train, hinted) for x in pair]


@dataclass(frozen=True)
class TeacherSettings:
    """A distillation teacher: a tiny Qwen3 larger than the student, trained by SFT from scratch on the kit's train
    split until it is good (the warm start is deliberately weak; a teacher must not be). The SFT fields are the ones
    ``learner.sft.train_sft`` reads. Tuned for wall time on 2 CPU cores: a high peak lr with warmup and a cosine
    decay to ``max_steps``, stopping at the first evaluation whose held-out dev accuracy reaches the target."""

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
        from learner.sft import train_sft

        t0 = time.time()
        seed = cfg.seed + self.seed_offset
        tokenizer = TOKENIZERS[self.tokenizer]()
        model = build_model(self, tokenizer, seed=seed)
        n_params = sum(p.numel() for p in model.parameters())
        log(f"[kit] {name}: Qwen3 ({n_params:,} parameters), {self.tokenizer} tokenizer ({len(tokenizer)} tokens); "
            "SFT ...")
        splits = teacher_splits(read_splits(root))
        summary = train_sft(model, tokenizer, splits, self, seed=seed, log=log, name=name)
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        summary.update(parameters=n_params, build_s=round(time.time() - t0, 1), settings=asdict(self))
        _write_part(out, summary)
        log(f"[kit] {name} ready in {summary['build_s']:.0f}s: held-out greedy accuracy "
            f"{summary['test_accuracy']:.3f} (dev {summary['dev_accuracy']:.3f}, {summary['steps']} SFT steps)")
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
            w = answer[:i] + rng.choice([d for d in "0123456789" if d != answer[i]]) + answer[i + 1:]
        elif k == "swapped":
            i = rng.randrange(len(answer) - 1) if len(answer) > 1 else 0
            w = answer[:i] + answer[i + 1:i + 2] + answer[i:i + 1] + answer[i + 2:]
        elif k == "other_sum":
            w = str(rng.randint(10, 99) + rng.randint(10, 99))
        elif k == "truncated":
            w = answer[:rng.randrange(len(answer))]
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


def policy_mistakes(model_dir: Path, rows: list[dict], samples: int, seed: int, max_new_tokens: int = 5,
                    batch_size: int = 256) -> dict[str, list[str]]:
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
        chunk = rows[i:i + batch_size]
        enc = tok([r["prompt"] for r in chunk], return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            ids = model.generate(**enc, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                                 num_return_sequences=samples, max_new_tokens=max_new_tokens,
                                 pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        texts = tok.batch_decode(ids[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        for k, r in enumerate(chunk):
            wrong = [t for t in texts[k * samples:(k + 1) * samples] if t != r["answer"]]
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
    the completion is the answer than when it is wrong (``NEGATIVE_KINDS``), by ``learner.reward_training``.

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
    """Weight of the auxiliary next-token loss on the answers (``learner.reward_training``): in trials it raised
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
        from learner.reward_training import pairwise_accuracy, train_reward_model

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
            mistakes = policy_mistakes(root / "warm_start", splits["train"] + splits["test"], self.policy_samples,
                                       seed + 4)
            log(f"[kit] {name}: {sum(map(len, mistakes.values())):,} distinct wrong warm-start samples as negatives")

            def negative(row: dict, rng: random.Random) -> str:
                own = mistakes.get(row["prompt"])
                return rng.choice(own) if own and rng.random() < self.policy_share else \
                    wrong_completion(row["answer"], rng)

            summary = train_reward_model(model, tokenizer, splits["train"], pairs, self, negative,
                                         seed=seed, log=log, name=name)
            policy_pairs = [(r["prompt"], r["answer"], random.Random(seed + 5 + i).choice(mistakes[r["prompt"]]))
                            for i, r in enumerate(splits["test"]) if mistakes.get(r["prompt"])]
            summary["test_accuracy_policy"] = pairwise_accuracy(model, tokenizer, policy_pairs)
            summary["test_pairs_policy"] = len(policy_pairs)
        finally:
            torch.set_num_threads(threads)
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        summary.update(parameters=n_params, build_s=round(time.time() - t0, 1), settings=asdict(self),
                       text_example=pairs["test"][0][0] + pairs["test"][0][1])
        _write_part(out, summary)
        log(f"[kit] {name} ready in {summary['build_s']:.0f}s: held-out pairwise accuracy "
            f"{summary['test_accuracy']:.3f}, {summary['test_accuracy_policy']:.3f} against the warm start's own "
            f"mistakes (dev {summary['dev_accuracy']:.3f}, {summary['steps']} steps)")
        return summary


KitPart = Union[TeacherSettings, RewardModelSettings]
"""A part's settings: a frozen dataclass whose ``build(cfg, root, out, log, name) -> summary`` trains and saves it
(model, tokenizer and a part.json holding ``PART_KEYS``); ``asdict`` of it is what a cached build must match."""

KIT_PARTS: dict[str, KitPart] = {
    # hidden 128 at batch 128: half the wall time of hidden 192 at batch 256 (194 s against 391 s on 2 cores), held-out
    # 0.970 at step 550 in the trial; one earlier build hit the dev target at step 250 with 0.93 held-out, hence a
    # floor of 300 steps
    "teacher": TeacherSettings(hidden_size=128, intermediate_size=512, batch_size=128, learning_rate=3e-3,
                               max_steps=900, eval_every=50, min_steps=300),
    # Pair tokens turn the task into a lookup over 90 operand embeddings learned from scratch, far slower to learn
    # than shared digits. What helped in trials was more, cheaper steps: 2 layers (half the step cost), batch 128,
    # 3000 steps (~0.95 held-out; 4 layers reached 0.89 in the same time).
    "teacher_pairs": TeacherSettings(tokenizer="pairs", seed_offset=2, num_hidden_layers=2, learning_rate=3e-3,
                                     batch_size=128, max_steps=3000, eval_every=100),
    # a reward model for ``{name: reward_model, kwargs: {model: kit:reward_model}}``
    "reward_model": RewardModelSettings(),
}
"""Optional kit folders, built only when named (``ensure_kit(parts=...)``, or a ``kit:<part>`` path in a recipe)."""

PART_KEYS = ("test_accuracy", "dev_accuracy", "steps", "parameters", "build_s", "settings")


def kit_parts_needed(*paths: str | None) -> tuple[str, ...]:
    """The parts that ``kit:`` paths refer to, in first-seen order, so a caller builds only those:
    ("kit:teacher", "kit:train", "/x") -> ("teacher",)."""
    names = (p[len("kit:"):] for p in paths if isinstance(p, str) and p.startswith("kit:"))
    return tuple(dict.fromkeys(n for n in names if n in KIT_PARTS))


def _spec_fields(spec) -> tuple[str, dict]:
    """(name, kwargs) of a reward_funcs entry: a string, a ``RewardFuncSpec`` or its dict."""
    if isinstance(spec, str):
        return spec, {}
    if isinstance(spec, dict):
        return spec["name"], dict(spec.get("kwargs") or {})
    return spec.name, dict(spec.kwargs or {})


def reward_kit_paths(reward) -> tuple[str, ...]:
    """The ``kit:`` values among the reward functions' kwargs (``reward`` is a ``RewardConfig`` or None), e.g.
    ``{name: reward_model, kwargs: {model: kit:reward_model}}`` -> ("kit:reward_model",): what
    ``kit_parts_needed`` must also see, so the part is built before the run."""
    funcs = getattr(reward, "reward_funcs", None) or ()
    return tuple(v for spec in funcs for v in _spec_fields(spec)[1].values()
                 if isinstance(v, str) and v.startswith("kit:"))


def resolve_reward_funcs(reward_funcs, cfg: KitConfig | None) -> list:
    """The reward_funcs entries as the reward actor and ``registry.resolve`` take them (a name, or a
    ``{name, kwargs}`` dict), with every ``kit:`` kwarg value resolved to its kit path (``resolve_kit_path``)."""
    out = []
    for spec in reward_funcs:
        if isinstance(spec, str):
            out.append(spec)
            continue
        name, kwargs = _spec_fields(spec)
        if any(isinstance(v, str) and v.startswith("kit:") for v in kwargs.values()) and cfg is None:
            raise ValueError(f"reward function {name}: kwargs {kwargs} refer to 'kit:...' but there is no kit "
                             "section: add `kit: {}`")
        out.append({"name": name, "kwargs": {k: resolve_kit_path(v, cfg) if isinstance(v, str) else v
                                             for k, v in kwargs.items()}})
    return out


def ensure_kit(cfg: KitConfig, log=print, parts: tuple[str, ...] = ()) -> Path:
    """Build the kit unless a complete one with the same settings exists, then each part in ``parts`` that is
    missing. Returns the kit folder."""
    unknown = [p for p in parts if p not in KIT_PARTS]
    if unknown:
        raise ValueError(f"unknown kit part(s) {unknown}; valid parts: {sorted(KIT_PARTS)}")
    root = kit_dir(cfg)
    if not (root / "kit.json").is_file():
        _build_kit(cfg, root, log)
    for name in dict.fromkeys(parts):
        _ensure_part(cfg, root, name, log)
    return root


def _build_kit(cfg: KitConfig, root: Path, log) -> None:
    """Tokenizer, base model, task splits and warm start, built in a temp folder and renamed into place."""
    t0 = time.time()
    tmp = root.with_name(root.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tokenizer = build_tokenizer(cfg.variant)
    model = build_model(cfg, tokenizer)
    for d in ("base",):
        model.save_pretrained(tmp / d)
        tokenizer.save_pretrained(tmp / d)
    splits = make_task(cfg)
    splits["warm_start"] = warm_start_rows(cfg, splits["train"])
    for name, rows in splits.items():
        with open(tmp / f"{name}.jsonl", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"[kit] tokenizer ({len(tokenizer)} tokens), Qwen3 model ({n_params:,} parameters), task "
        f"({len(splits['train'])} train / {len(splits['test'])} test pairs); warm start (relay-rl SFT) ...")

    summary = sft_warm_start(cfg, tmp, log)
    summary.update(parameters=n_params, build_s=round(time.time() - t0, 1))
    (tmp / "kit.json").write_text(json.dumps(summary, indent=2))
    _move_into_place(tmp, root)
    log(f"[kit] ready in {time.time() - t0:.0f}s at {root}: warm start held-out greedy accuracy "
        f"{summary['test_accuracy']:.3f}"
        + (f" ({summary['test_accuracy_hinted']:.3f} with the hint)" if "test_accuracy_hinted" in summary else "")
        + f" (dev {summary['dev_accuracy']:.3f}, {summary['steps']} SFT steps)")


def sft_warm_start(cfg: KitConfig, root: Path, log) -> dict:
    """The warm start as a relay-rl SFT run (the R1 recipe's cold start, stopped early on purpose): from ``base`` on
    warm_start.jsonl, evaluated every ``eval_every`` steps on the dev split (greedy, ``arithmetic_exact``), stopped at
    the first evaluation that reaches ``target_dev_accuracy`` (``train.target_eval_accuracy``): a fixed step count is
    fragile here (accuracy can jump 25 points between evaluations). One learner rank, ZeRO-0. Writes warm_start/
    (and its run folder warm_start_run/); returns the summary, held-out test accuracy included."""
    from learner.sft import greedy_accuracy

    from .config import validate_dict
    from .controller import train
    w = cfg.warm_start
    run = {
        "name": "kit-warm-start",
        "model": {"name_or_path": str(root / "base")},
        "data": {"train": str(root / "warm_start.jsonl"), "eval": str(root / "dev.jsonl"),
                 "completion_column": "answer"},
        "reward": {"reward_funcs": ["arithmetic_exact"]},  # eval/accuracy on the dev split
        "algorithm": {"name": "sft", "per_device_train_batch_size": w.batch_size},
        "rollout": {"engine": "hf", "max_prompt_length": 16, "max_completion_length": 5},
        "train": {"learning_rate": w.learning_rate, "lr_scheduler_type": "constant", "warmup_steps": w.warmup_steps,
                  "adam_beta2": 0.98, "max_steps": w.max_steps, "eval_steps": w.eval_every,
                  "target_eval_accuracy": w.target_dev_accuracy, "zero_stage": 0, "seed": cfg.seed},
        "cluster": {"learner": {"replicas": 1, "num_cpus": 1}, "rollout": {"replicas": 1, "num_cpus": 0.5},
                    "reward": {"replicas": 1, "num_cpus": 0.25}},
    }
    t0 = time.time()
    result = train(validate_dict(run, source="the kit's warm start"), output_dir=str(root / "warm_start_run"),
                   log=log)
    shutil.move(root / "warm_start_run" / "final", root / "warm_start")
    from transformers import AutoModelForCausalLM, AutoTokenizer
    model, tok = AutoModelForCausalLM.from_pretrained(root / "warm_start"), AutoTokenizer.from_pretrained(root / "warm_start")
    test = read_splits(root)["test"]
    return {"steps": result["step"], "dev_accuracy": result["eval/accuracy"],
            "test_accuracy": greedy_accuracy(model, tok, test), "sft_s": round(time.time() - t0, 1),
            **({"test_accuracy_hinted": greedy_accuracy(model, tok, [{**r, "prompt": HINT.format(**r)} for r in test])}
               if cfg.variant == "r1" else {})}


def _ensure_part(cfg: KitConfig, root: Path, name: str, log) -> Path:
    """Reuse ``<kit>/<name>`` if its part.json is complete and was built with today's settings, else (re)build it."""
    out, settings = root / name, KIT_PARTS[name]
    summary = _read_part(out)
    if summary is not None and summary["settings"] == asdict(settings):
        return out
    if out.exists():  # built with other settings, or not by us: replace it
        log(f"[kit] {name}: {out} is stale or incomplete; rebuilding")
        shutil.rmtree(out)
    tmp = root / f".{name}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    build_part(cfg, root, settings, tmp, log=log, name=name)
    _move_into_place(tmp, out)
    return out


def build_part(cfg: KitConfig, root: Path, settings: KitPart, out: Path, log=print, name: str = "teacher") -> dict:
    """Build one part from its settings into ``out`` (model, tokenizer, part.json); returns its summary."""
    return settings.build(cfg, root, out, log=log, name=name)


def _write_part(out: Path, summary: dict) -> None:
    (out / "part.json").write_text(json.dumps(summary, indent=2))  # written last: its presence marks a full build


def read_splits(root: Path) -> dict[str, list[dict]]:
    """The kit's train/test/dev rows as written (the files are the truth other code reads)."""
    return {name: [json.loads(line) for line in (root / f"{name}.jsonl").read_text().splitlines()]
            for name in ("train", "test", "dev")}


def teacher_splits(splits: dict[str, list[dict]]) -> dict[str, list[dict]]:
    """The kit's splits with the dev rows taken out of train. The kit's dev split is a slice of train (the warm start
    trains on it), so its accuracy is training accuracy; a teacher stops on it, so it must be held out to say how the
    teacher does on unseen pairs (dev 1.0 on trained rows still left 0.965 held-out in trials)."""
    dev = {r["prompt"] for r in splits["dev"]}
    return {**splits, "train": [r for r in splits["train"] if r["prompt"] not in dev]}


def _read_part(folder: Path) -> dict | None:
    try:
        summary = json.loads((folder / "part.json").read_text())
    except (OSError, ValueError):
        return None
    return summary if all(k in summary for k in PART_KEYS) else None


def _move_into_place(tmp: Path, dest: Path) -> None:
    """Rename a finished build into place; if another process finished first, keep theirs."""
    if dest.exists():
        shutil.rmtree(tmp, ignore_errors=True)
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        tmp.rename(dest)
    except OSError:  # lost a race between the check and the rename
        shutil.rmtree(tmp, ignore_errors=True)


def kit_summary(cfg: KitConfig) -> dict:
    return json.loads((kit_dir(cfg) / "kit.json").read_text())


def kit_part_summary(cfg: KitConfig, name: str) -> dict:
    """A built part's part.json: test/dev accuracy, SFT steps, parameters, build seconds, settings."""
    return json.loads((kit_dir(cfg) / name / "part.json").read_text())
