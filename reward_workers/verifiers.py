"""Rule-based verifiers (built-in reward functions). Each is registered under its config name.

Conventions shared by the built-ins below (docs/rewards.md):

- A completion is a string, or for conversational data a list of messages: the last assistant message is scored.
- The token length is |y| = ``len(completion_ids)``, which includes the final EOS when the completion stopped (as in
  TRL, whose ``completion_ids`` keep it). A stopped completion is therefore one token longer than its text, and with
  ``max_completion_len`` = the generation limit a truncated completion has |y| = L exactly.
- math-verify's timeouts (parse 10 s, verify 5 s) use ``signal.alarm``, which works only in the main thread; the reward
  actor calls functions from a worker thread, where they are off and the actor's ``reward.timeout_s`` contains a
  call that hangs (as TRL does).
"""

from __future__ import annotations

import logging
import math
import re
import threading

from .registry import builtin

PARSE_TIMEOUT_S = 10
VERIFY_TIMEOUT_S = 5
THINK_FORMAT = re.compile(r"^<think>(?!.*<think>)(.*?)</think>.*$", re.DOTALL)
THINK_END = "</think>"


@builtin("arithmetic_exact")
def make_arithmetic_exact(tokenizer, answer_column: str = "answer", after_think: bool = False):
    """1.0 only when the completion's token ids are exactly the answer's tokens followed by EOS; missing EOS or any
    trailing token gives 0.0. Needs an ``answer`` column. ``after_think``: the ids after the last ``</think>`` token
    are checked (R1-style completions, the kit's r1 variant); without one the reward is 0.0."""
    eos = tokenizer.eos_token_id
    end = tokenizer.convert_tokens_to_ids(THINK_END) if after_think else None
    if after_think and end in (None, tokenizer.unk_token_id):
        raise ValueError(f"arithmetic_exact after_think: the tokenizer has no {THINK_END!r} token")

    def arithmetic_exact(completion_ids, **kwargs):
        answers = kwargs[answer_column]
        out = []
        for ids, ans in zip(completion_ids, answers):
            ids = list(ids)
            if after_think:
                if end not in ids:
                    out.append(0.0)
                    continue
                ids = ids[len(ids) - ids[::-1].index(end) :]
            want = tokenizer(str(ans), add_special_tokens=False)["input_ids"] + [eos]
            out.append(1.0 if ids == want else 0.0)
        return out

    arithmetic_exact.columns = (answer_column,)  # the dataset columns it reads (checked before the run)
    return arithmetic_exact


@builtin("final_answer_exact")
def make_final_answer_exact(tokenizer, answer_column: str = "answer"):
    """1.0 when the completion's final answer, the content of its last assistant message (a multi-turn trajectory's
    last turn; a string completion itself), is the answer column's text exactly (surrounding whitespace aside), else
    0.0. For tool-using trajectories, whose answer follows the tool calls."""

    def final_answer_exact(completions, **kwargs):
        return [1.0 if _text(c).strip() == str(a).strip() else 0.0 for c, a in zip(completions, kwargs[answer_column])]

    final_answer_exact.columns = (answer_column,)
    return final_answer_exact


@builtin("agent_reward")
def make_agent_reward(tokenizer):
    """What an agent program (``rollout.agent_program``) returned for its trajectory; None where it returned None,
    failed, or there is no program."""

    def agent_reward(agent_rewards=None, completions=(), **kwargs):
        return list(agent_rewards) if agent_rewards is not None else [None] * len(completions)

    return agent_reward


@builtin("environment_reward")
def make_environment_reward(tokenizer):
    """An environment's own reward (TRL's ``get_reward`` of an ``environment_factory`` class): the instance each
    trajectory ended with is asked; None where a row has no environment (or the class has no ``get_reward``)."""

    def environment_reward(environments=None, completions=(), **kwargs):
        envs = environments or [None] * len(completions)
        return [e.get_reward() if callable(getattr(e, "get_reward", None)) else None for e in envs]

    return environment_reward


def _text(completion) -> str:
    """The text to score: the string itself, or the content of the last assistant message."""
    if isinstance(completion, str):
        return completion
    messages = [m for m in completion if m.get("role", "assistant") == "assistant"] or list(completion)
    return (messages[-1].get("content") or "") if messages else ""


# ---------------------------------------------------------------------------------------------------------------
# Math answer equivalence (math-verify)
# ---------------------------------------------------------------------------------------------------------------


def _timeouts() -> tuple[int | None, int | None]:
    """math-verify's timeouts use ``signal.alarm``, which works only in the main thread. Off it (the reward actor
    calls functions from a worker thread) they are off, and ``reward.timeout_s`` contains a call that hangs."""
    if threading.current_thread() is threading.main_thread():
        return PARSE_TIMEOUT_S, VERIFY_TIMEOUT_S
    return None, None


def _quiet_timeout_notice(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("Timeout is disabled")  # reward.timeout_s covers it


for _name in ("math_verify.parser", "math_verify.grader"):
    logging.getLogger(_name).addFilter(_quiet_timeout_notice)


def _make_judge():
    """judge(text, gold, gold_cache) -> 1.0 / 0.0 when text's answer is / is not equivalent to gold, None when the gold
    answer cannot be parsed. The answer is LaTeX: ``\\boxed{}`` first, no anchor-free extraction, units normalised."""
    from math_verify import LatexExtractionConfig, LatexNormalizationConfig, parse, verify

    answer_config = [
        LatexExtractionConfig(
            normalization_config=LatexNormalizationConfig(units=True),
            boxed_match_priority=0,
            try_extract_without_anchor=False,
        )
    ]

    def judge(text: str, gold, gold_cache: dict) -> float | None:
        parse_s, verify_s = _timeouts()
        gold = str(gold)
        if gold not in gold_cache:  # each solution repeats G times in a batch: parse it once
            gold_cache[gold] = parse(gold, parsing_timeout=parse_s)
        gold_parsed = gold_cache[gold]
        if not gold_parsed:
            return None
        answer = parse(text, extraction_config=answer_config, extraction_mode="first_match", parsing_timeout=parse_s)
        return float(verify(gold_parsed, answer, timeout_seconds=verify_s))

    return judge


@builtin("accuracy")
def make_accuracy(tokenizer):
    """R = 1[answer(y) ≡ solution] (math-verify), None when the solution cannot be parsed. Needs ``solution``."""
    judge = _make_judge()

    def accuracy(completions, solution, **kwargs):
        cache: dict = {}
        return [judge(_text(c), sol, cache) for c, sol in zip(completions, solution, strict=True)]

    return accuracy


@builtin("reasoning_accuracy")
def make_reasoning_accuracy(tokenizer):
    """R = accuracy of the text after the last ``</think>``; 0.0 without ``</think>``. Needs ``solution``."""
    judge = _make_judge()

    def reasoning_accuracy(completions, solution, **kwargs):
        cache: dict = {}
        out = []
        for c, sol in zip(completions, solution, strict=True):
            text = _text(c)
            out.append(judge(text.rsplit(THINK_END, 1)[1], sol, cache) if THINK_END in text else 0.0)
        return out

    return reasoning_accuracy


@builtin("cosine_scaled")
def make_cosine_scaled(
    tokenizer,
    max_len: int,
    min_value_wrong: float = -1.0,
    max_value_wrong: float = -0.5,
    min_value_correct: float = 0.5,
    max_value_correct: float = 1.0,
):
    """R = v_min + ½(v_max − v_min)(1 + cos(π·min(|y|/max_len, 1))), bounds by accuracy; None if it is None."""
    if max_len <= 0:
        raise ValueError(f"cosine_scaled: max_len must be a positive token count, got {max_len}")
    judge = _make_judge()
    bounds = {1.0: (min_value_correct, max_value_correct), 0.0: (max_value_wrong, min_value_wrong)}

    def cosine_scaled(completions, solution, completion_ids, **kwargs):
        cache: dict = {}
        out = []
        for c, sol, ids in zip(completions, solution, completion_ids, strict=True):
            correct = judge(_text(c), sol, cache)
            if correct is None:
                out.append(None)
                continue
            v_min, v_max = bounds[correct]
            progress = min(len(ids) / max_len, 1.0)  # clamped: cos would climb back up past max_len
            out.append(float(v_min + 0.5 * (v_max - v_min) * (1.0 + math.cos(math.pi * progress))))
        return out

    return cosine_scaled


# ---------------------------------------------------------------------------------------------------------------
# Format and length
# ---------------------------------------------------------------------------------------------------------------


@builtin("think_format")
def make_think_format(tokenizer):
    """R = 1[y matches ``^<think>(?!.*<think>)(.*?)</think>.*$`` (DOTALL)]: one leading think block, then anything."""

    def think_format(completions, **kwargs):
        return [1.0 if THINK_FORMAT.match(_text(c)) else 0.0 for c in completions]

    return think_format


@builtin("language_consistency")
def make_language_consistency(tokenizer, script: str = "latin", alphabet: str | None = None):
    """R = the share of the chain of thought's words in the target language (DeepSeek-R1's language-consistency
    reward): the text inside ``<think>...</think>``, else the whole completion; a word counts when every letter is in
    ``script`` (or every character in ``alphabet``); None when no word counts (``reward_workers.filters``)."""
    from .filters import language_share

    language_share("", script, alphabet)  # an unknown script fails when the reward is built

    def language_consistency(completions, **kwargs):
        return [language_share(_text(c), script, alphabet) for c in completions]

    return language_consistency


@builtin("soft_overlong_punishment")
def make_soft_overlong_punishment(tokenizer, max_completion_len: int, soft_punish_cache: int):
    """R = 0 if |y| ≤ L − C; (L − C − |y|)/C if L − C < |y| ≤ L; −1 if |y| > L (DAPO; |y| counts a final EOS)."""
    if not 0 <= soft_punish_cache <= max_completion_len:
        raise ValueError(
            "soft_overlong_punishment: need 0 <= soft_punish_cache <= max_completion_len, got "
            f"soft_punish_cache={soft_punish_cache}, max_completion_len={max_completion_len}"
        )
    L, C = max_completion_len, soft_punish_cache

    def soft_overlong_punishment(completion_ids, **kwargs):
        out = []
        for ids in completion_ids:
            n = len(ids)
            out.append(0.0 if n <= L - C else (L - C - n) / C if n <= L else -1.0)
        return out

    return soft_overlong_punishment


@builtin("repetition_penalty")
def make_repetition_penalty(tokenizer, ngram_size: int, max_penalty: float):
    """R = (1 − #unique n-grams / #n-grams)·max_penalty over token ids; 0 with fewer than n tokens."""
    if max_penalty > 0:
        raise ValueError(
            f"repetition_penalty: max_penalty must be <= 0 (it is the most negative reward), got {max_penalty}"
        )
    if ngram_size < 1:
        raise ValueError(f"repetition_penalty: ngram_size must be >= 1, got {ngram_size}")

    def repetition_penalty(completion_ids, **kwargs):
        out = []
        for ids in completion_ids:
            ids = list(ids)
            if len(ids) < ngram_size:
                out.append(0.0)
                continue
            ngrams = [tuple(ids[i : i + ngram_size]) for i in range(len(ids) - ngram_size + 1)]
            repeated = 1.0 - len(set(ngrams)) / len(ngrams)
            out.append(repeated * max_penalty if repeated else 0.0)
        return out

    return repetition_penalty


# ---------------------------------------------------------------------------------------------------------------
# Code execution against test cases (reward_workers/sandbox.py)
# ---------------------------------------------------------------------------------------------------------------


@builtin("code_tests")
def make_code_tests(
    tokenizer,
    tests_column: str = "tests",
    mode: str = "fraction",
    parallel: int = 4,
    cpu_s: int = 2,
    wall_s: float = 5.0,
    memory_mb: int = 512,
    file_mb: int = 16,
    processes: int = 16,
    isolate_network: str = "auto",
    template: str = "{code}",
    template_column: str | None = None,
    dedupe: bool = True,
):
    """Runs the completion's code (its last fenced block, else the whole text) in a sandbox, then each of the row's
    tests (Python statements such as ``assert f(2) == 4``: a list in the ``tests`` column, or one string holding a
    whole test script). Score: the fraction of tests passed (``mode="fraction"``) or 1.0 only if all pass
    (``"all"``). ``parallel`` sandboxes at once.

    The program run is ``template`` with ``{code}`` replaced by the completion's code (default: the code alone), or
    the row's own template from ``template_column``: e.g. ``"def f():\\n    return {code}\\n"`` runs an expression
    as a function's body (the kit's code task), ``"<the prompt's signature>{code}"`` a completion that continues a
    function. ``dedupe``: identical programs with identical tests in one batch run once and share the score (GRPO's
    groups repeat completions); set it false for code whose result is random."""
    from concurrent.futures import ThreadPoolExecutor

    from .sandbox import Limits, extract_code, run_tests

    if mode not in ("fraction", "all"):
        raise ValueError(f"code_tests: mode must be 'fraction' or 'all', got {mode!r}")
    if isolate_network not in ("auto", "require", "off"):
        raise ValueError(f"code_tests: isolate_network must be 'auto', 'require' or 'off', got {isolate_network!r}")
    if "{code}" not in template:
        raise ValueError(
            f"code_tests: template must contain {{code}} (where the completion's code goes), got {template!r}"
        )
    limits = Limits(cpu_s=cpu_s, wall_s=wall_s, memory_mb=memory_mb, file_mb=file_mb, processes=processes)
    pool = ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="sandbox")

    def program(completion, row_template) -> str:
        if not isinstance(row_template, str) or "{code}" not in row_template:
            raise ValueError(
                f"code_tests: the {template_column!r} column holds {row_template!r}: a template is a "
                "string containing {code}"
            )
        return row_template.replace("{code}", extract_code(_text(completion)))

    def one(job):
        code, tests = job
        score = run_tests(code, list(tests), limits, isolate_network)
        return score if score is None or mode == "fraction" else float(score == 1.0)

    def code_tests(completions, **kwargs):
        templates = kwargs[template_column] if template_column else [template] * len(completions)
        jobs = [
            (program(c, t), tuple([tests] if isinstance(tests, str) else tests or ()))
            for c, t, tests in zip(completions, templates, kwargs[tests_column], strict=True)
        ]
        if not dedupe:
            return list(pool.map(one, jobs))
        unique = list(dict.fromkeys(jobs))
        scores = dict(zip(unique, pool.map(one, unique)))
        return [scores[job] for job in jobs]

    code_tests.columns = (tests_column,) + ((template_column,) if template_column else ())
    return code_tests
