"""LLM judges: a reward that asks a frozen LLM to grade each completion (``{name: llm_judge, kwargs: {model,
template, ...}}``).

The judge model is served by a rollout-engine pool of its own (``cluster.judge``: ``RolloutWorker`` actors with
the judge's weights, never synced, ``hf`` or ``vllm``). The reward actor fills ``template`` for every completion
(``{completion}``, ``{prompt}`` and any dataset column by name), sends the texts to the judge pool (split over its
replicas, each distinct text once), and parses each answer:

- ``pattern`` (a regex; default: the first number) finds the verdict in the judge's answer; its first group, or
  the whole match when it has none, is the verdict text;
- ``labels`` maps verdict texts to scores (compared lower-case, stripped), e.g. ``{"yes": 1, "no": 0}``; without
  ``labels`` the verdict text must be a number, which is the score;
- ``score_range`` [lo, hi] bounds a numeric score.

An answer with no match, a verdict that is neither a label nor a number, or a score outside ``score_range`` is
None: "not applicable" for that completion (excluded from the weighted sum, never 0). The share that was
unparseable goes to the run's metrics (``rewards/llm_judge/unparseable``), the judge's answers beside the
completions (``log_extra`` column ``judge_answer``).

``pairwise_judge`` (online DPO, XPO; TRL's pairwise judges) asks the same judge pool which of a prompt's two
completions is better: ``template`` with ``{completion_0}``, ``{completion_1}`` (both required), ``{prompt}`` and
dataset columns; ``pattern`` finds the verdict and ``labels`` maps it to the index of the better completion
(default: the first "0" or "1" of the answer). The better completion scores 1.0, the other 0.0; two equal
completions 0.5 each (the judge is not asked); an unparseable answer None for both. ``shuffle_order`` (TRL's
default) shows each pair in an order drawn from its texts, so a judge's bias for a position does not become a bias
for the policy's first sample; the order shown is logged (``judge_swapped``).
"""

from __future__ import annotations

import inspect
import json
import os
import re
import string
import zlib
from typing import Any, Optional

from relay_rl.batch import group_rows

from .registry import builtin

JUDGE = "llm_judge"
PAIRWISE_JUDGE = "pairwise_judge"
JUDGES = (JUDGE, PAIRWISE_JUDGE)
"""The built-ins served by the judge pool: a ``reward_funcs`` entry with one makes the controller start it."""
DEFAULT_PAIR_TEMPLATE = (
    "Which answer to the question is better?\nQuestion: {prompt}\nAnswer 0: {completion_0}\n"
    "Answer 1: {completion_1}\nReply with 0 or 1 only."
)

DEFAULT_PATTERN = r"-?\d+(?:\.\d+)?"


def template_fields(template: str) -> list[str]:
    """The ``{field}`` names of a ``str.format`` template, in order, each once."""
    try:
        names = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as e:
        raise ValueError(
            f"llm_judge template {template[:80]!r} is not a valid format string ({e}): fields are "
            "{completion}, {prompt} and dataset columns; write a literal brace as {{ or }}"
        ) from None
    bad = [f for f in names if not f.isidentifier()]
    if bad:
        raise ValueError(
            f"llm_judge template: field {{{bad[0]}}} is not a plain name: use {{completion}}, {{prompt}} "
            "or a dataset column"
        )
    return list(dict.fromkeys(names))


def parse_verdict(
    answer: str,
    pattern: re.Pattern,
    labels: Optional[dict[str, float]] = None,
    score_range: Optional[tuple[float, float]] = None,
) -> Optional[float]:
    """The score in a judge's ``answer``, or None when it holds none (see the module docstring)."""
    m = pattern.search(answer)
    if m is None:
        return None
    text = (m.group(1) if pattern.groups else m.group(0)).strip()
    if labels is not None:
        score = labels.get(text.lower())
    else:
        try:
            score = float(text)
        except ValueError:
            score = None
    if score is None or (score_range is not None and not score_range[0] <= score <= score_range[1]):
        return None
    return float(score)


def as_text(x: Any) -> str:
    """A prompt or completion as the template sees it: a string as is; chat messages as "role: content" lines."""
    if isinstance(x, str):
        return x
    return "\n".join(f"{m['role']}: {m['content']}" for m in x)


def judge_pool_model(reward_funcs: list) -> Optional[dict]:
    """The judge pool's engine settings (``model``, ``engine``, ``dtype``, ``trust_remote_code``, ``engine_options``)
    from the ``llm_judge`` entries of ``reward_funcs`` (dicts, as ``cluster.kit.paths.resolve_reward_funcs`` gives
    them), or None when there is none. Every judge entry must name the same model and engine: the run has one judge
    pool."""
    specs = [s for s in reward_funcs if not isinstance(s, str) and s["name"] in JUDGES]
    if not specs:
        return None
    keys = ("model", "engine", "dtype", "trust_remote_code", "engine_options")
    settings = []
    for s in specs:
        params = inspect.signature(make_llm_judge if s["name"] == JUDGE else make_pairwise_judge).parameters
        settings.append({k: s["kwargs"].get(k, params[k].default) for k in keys})
    if any(s != settings[0] for s in settings[1:]):
        raise ValueError(
            f"the judge reward functions (llm_judge, pairwise_judge) name different judge models or "
            f"engines ({settings}): a run has one judge pool (cluster.judge); give every judge entry the "
            "same model, engine, dtype and engine_options"
        )
    return settings[0]


@builtin(JUDGE)
def make_llm_judge(
    tokenizer,
    model: str,
    template: str,
    pattern: str = DEFAULT_PATTERN,
    labels: Optional[dict[str, float]] = None,
    score_range: Optional[list[float]] = None,
    chat: bool = True,
    max_tokens: int = 32,
    temperature: float = 0.0,
    engine: str = "hf",
    dtype: str = "float32",
    trust_remote_code: bool = False,
    engine_options: Optional[dict] = None,
    judge_actors: Optional[list[str]] = None,
    namespace: Optional[str] = None,
):
    """``model``: any HF causal LM (local path or hub id), frozen. ``template``: the judge's prompt, with
    ``{completion}`` (required), ``{prompt}`` and dataset columns. ``chat``: send the filled template as a user
    message through the judge's chat template (False: as raw text). ``max_tokens``/``temperature``: the judge's
    sampling (0: greedy). ``engine``/``dtype``/``trust_remote_code``/``engine_options``: its engine (as ``rollout``).
    ``judge_actors``/``namespace`` are set by the controller (the judge pool's actor names); without them (the
    pre-flight) the function is built and checked but cannot be called.

    Checked here, so before any actor starts: the template names ``{completion}`` and parses; ``pattern`` compiles;
    ``labels`` are numbers; a local ``model`` folder has a config.json and, with ``chat``, a chat template."""
    fields = template_fields(template)
    if "completion" not in fields:
        raise ValueError(
            f"llm_judge template {template[:120]!r} has no {{completion}} field: the judge would never see "
            "the completion it grades; put {completion} (and usually {prompt}) in the template"
        )
    regex = _compile(pattern, JUDGE)
    if labels is not None:
        if not isinstance(labels, dict) or not all(isinstance(v, (int, float)) for v in labels.values()):
            raise ValueError(
                f"llm_judge labels {labels!r}: give a mapping from verdict text to score, e.g. {{yes: 1.0, no: 0.0}}"
            )
        labels = {str(k).strip().lower(): float(v) for k, v in labels.items()}
    bounds = None
    if score_range is not None:
        if len(score_range) != 2 or not score_range[0] <= score_range[1]:
            raise ValueError(f"llm_judge score_range {score_range!r}: give [lowest, highest]")
        bounds = (float(score_range[0]), float(score_range[1]))
    _check_judge_model(model, chat)
    columns = tuple(f for f in fields if f not in ("completion", "prompt"))
    state: dict = {}

    def llm_judge(prompts, completions, log_extra=None, log_metric=None, **kwargs):
        if not judge_actors:
            raise RuntimeError(
                "llm_judge has no judge pool: the controller starts cluster.judge and passes its "
                "actors (judge_actors); this function was built outside a run"
            )
        texts = [
            template.format(prompt=as_text(p), completion=as_text(c), **{k: kwargs[k][i] for k in columns})
            for i, (p, c) in enumerate(zip(prompts, completions))
        ]
        answers = ask_judges(state, judge_actors, namespace, texts, chat, max_tokens, temperature)
        scores = [parse_verdict(answers[t], regex, labels, bounds) for t in texts]
        if log_metric is not None:
            log_metric(f"{JUDGE}/unparseable", sum(s is None for s in scores) / max(1, len(scores)))
        if log_extra is not None:
            log_extra("judge_answer", [answers[t] for t in texts])
        return scores

    llm_judge.columns = columns
    return llm_judge


def _compile(pattern: str, judge: str) -> re.Pattern:
    try:
        return re.compile(pattern)
    except re.error as e:
        raise ValueError(f"{judge} pattern {pattern!r} is not a valid regular expression ({e})") from None


def ask_judges(
    state: dict,
    judge_actors: list[str],
    namespace: Optional[str],
    texts: list[str],
    chat: bool,
    max_tokens: int,
    temperature: float,
) -> dict[str, str]:
    """The judge pool's answer to every distinct text (each asked once, the texts split over the replicas)."""
    import ray

    from relay_rl.sampling import SamplingParams

    if "actors" not in state:
        state["actors"] = [ray.get_actor(name, namespace=namespace) for name in judge_actors]
    unique = list(dict.fromkeys(texts))
    records = [{"prompt": [{"role": "user", "content": t}] if chat else t} for t in unique]
    params = SamplingParams(n=1, temperature=temperature, max_tokens=max_tokens)
    actors = state["actors"]
    shards = [list(range(i, len(unique), len(actors))) for i in range(len(actors))]  # text indices per replica
    batches = ray.get(
        [a.generate.remote([records[j] for j in shard], params) for a, shard in zip(actors, shards) if shard]
    )
    return {unique[j]: answer for shard, batch in zip(shards, batches) for j, answer in zip(shard, batch.completions)}


@builtin(PAIRWISE_JUDGE)
def make_pairwise_judge(
    tokenizer,
    model: str,
    template: str = DEFAULT_PAIR_TEMPLATE,
    pattern: str = r"[01]",
    labels: Optional[dict[str, int]] = None,
    shuffle_order: bool = True,
    chat: bool = True,
    max_tokens: int = 8,
    temperature: float = 0.0,
    engine: str = "hf",
    dtype: str = "float32",
    trust_remote_code: bool = False,
    engine_options: Optional[dict] = None,
    judge_actors: Optional[list[str]] = None,
    namespace: Optional[str] = None,
):
    """Which of a prompt's two completions is better, asked of the judge pool (module docstring). ``labels``: verdict
    text -> index of the better completion as shown (default {"0": 0, "1": 1}); the rest as ``llm_judge``. Checked
    here, before any actor starts: both completion fields in the template, the pattern, the labels, the model."""
    fields = template_fields(template)
    missing = [f for f in ("completion_0", "completion_1") if f not in fields]
    if missing:
        raise ValueError(
            f"pairwise_judge template {template[:120]!r} has no {{{missing[0]}}} field: the judge must "
            "see both completions; put {completion_0} and {completion_1} (and usually {prompt}) in it"
        )
    regex = _compile(pattern, PAIRWISE_JUDGE)
    labels = {"0": 0, "1": 1} if labels is None else labels
    if not isinstance(labels, dict) or any(v not in (0, 1) for v in labels.values()):
        raise ValueError(
            f"pairwise_judge labels {labels!r}: map each verdict text to 0 (the first completion shown is "
            "better) or 1 (the second)"
        )
    labels = {str(k).strip().lower(): float(v) for k, v in labels.items()}
    _check_judge_model(model, chat)
    columns = tuple(f for f in fields if f not in ("completion_0", "completion_1", "prompt"))
    state: dict = {}

    def pairwise_judge(prompts, completions, group_ids, log_extra=None, log_metric=None, **kwargs):
        if not judge_actors:
            raise RuntimeError(
                "pairwise_judge has no judge pool: the controller starts cluster.judge and passes its "
                "actors (judge_actors); this function was built outside a run"
            )
        rows = group_rows(group_ids)
        if any(len(r) != 2 for r in rows.values()):
            sizes = sorted({len(r) for r in rows.values()})
            raise ValueError(
                f"pairwise_judge compares the two completions of a prompt; this batch has groups of "
                f"{sizes}: set algorithm.num_generations: 2"
            )
        scores: list = [None] * len(completions)
        answer_of, swapped, asks = [""] * len(completions), [False] * len(completions), []
        for i, j in rows.values():
            a, b = as_text(completions[i]), as_text(completions[j])
            if a == b:
                scores[i] = scores[j] = 0.5
                continue
            swap = shuffle_order and zlib.crc32(f"{as_text(prompts[i])}\0{a}\0{b}".encode()) % 2 == 1
            first, second = (b, a) if swap else (a, b)
            text = template.format(
                prompt=as_text(prompts[i]),
                completion_0=first,
                completion_1=second,
                **{k: kwargs[k][i] for k in columns},
            )
            asks.append((i, j, swap, text))
        answers = ask_judges(state, judge_actors, namespace, [t for *_, t in asks], chat, max_tokens, temperature)
        unparseable = 0
        for i, j, swap, text in asks:
            shown = parse_verdict(answers[text], regex, labels)
            for r in (i, j):
                answer_of[r], swapped[r] = answers[text], swap
            if shown is None:
                unparseable += 1
                continue
            better = i if (shown == 0) != swap else j  # the index shown, back in row order
            scores[better], scores[j if better == i else i] = 1.0, 0.0
        if log_metric is not None:
            log_metric(f"{PAIRWISE_JUDGE}/unparseable", unparseable / max(1, len(asks)))
        if log_extra is not None:
            log_extra("judge_answer", answer_of)
            log_extra("judge_swapped", swapped)
        return scores

    pairwise_judge.columns = columns
    return pairwise_judge


def _check_judge_model(model: str, chat: bool) -> None:
    if not os.path.isdir(model):
        return  # a hub id: the judge actor loads it
    if not os.path.isfile(os.path.join(model, "config.json")):
        raise ValueError(f"llm_judge model {model!r}: the folder has no config.json (not an HF checkpoint)")
    if chat and not _has_chat_template(model):
        raise ValueError(
            f"llm_judge model {model!r} has no chat template, so the judge prompt cannot be sent as a "
            "chat message: set chat: false (the filled template is sent as raw text) or use an "
            "instruction-tuned judge"
        )


def _has_chat_template(model: str) -> bool:
    if os.path.isfile(os.path.join(model, "chat_template.jinja")) or os.path.isfile(
        os.path.join(model, "chat_template.json")
    ):
        return True
    try:
        with open(os.path.join(model, "tokenizer_config.json")) as f:
            return bool(json.load(f).get("chat_template"))
    except (OSError, ValueError):
        return False
