"""Text predicates over completions: DeepSeek-R1's rejection-sampling filters (2501.12948 §2.3.3: "we have filtered out
chain-of-thought with mixed languages, long paragraphs, and code blocks") and the language share behind its
language-consistency reward (``verifiers.language_consistency``).

A filter is ``f(completion: str, **row) -> bool``, True when the sample is to be dropped; ``row`` holds the prompt and
the dataset columns. Built-ins are factories registered by name (their kwargs are the knobs); a user filter is an
import path ``package.module:function`` (a factory when kwargs are given, as for reward functions).

Language: a word (a run of non-space characters) is in the target language when every letter in it belongs to the
target script (Unicode character names: LATIN, CJK/HIRAGANA/KATAKANA/HANGUL, CYRILLIC, ...), or, with ``alphabet``,
when every character is in it. Words without letters (numbers, symbols) count for no language unless ``alphabet``
is given. The chain of thought is the text inside the first ``<think>...</think>`` (the whole text without one).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from typing import Optional

THINK = re.compile(r"<think>(.*?)(?:</think>|$)", re.DOTALL)
SCRIPTS = {
    "latin": ("LATIN",),
    "cjk": ("CJK", "HIRAGANA", "KATAKANA", "HANGUL"),
    "cyrillic": ("CYRILLIC",),
    "greek": ("GREEK",),
    "arabic": ("ARABIC",),
    "hebrew": ("HEBREW",),
    "devanagari": ("DEVANAGARI",),
}
FILTERS: dict[str, Callable[..., Callable[..., bool]]] = {}


def rejection_filter(name: str):
    def register(factory):
        FILTERS[name] = factory
        return factory

    return register


def chain_of_thought(text: str) -> str:
    m = THINK.search(text)
    return m.group(1) if m else text


def in_language(word: str, script: str = "latin", alphabet: Optional[str] = None) -> Optional[bool]:
    """Whether ``word`` is in the target language; None when it has no letters (and no ``alphabet`` is given)."""
    if alphabet is not None:
        return all(c in alphabet for c in word)
    letters = [c for c in word if c.isalpha()]
    if not letters:
        return None
    prefixes = SCRIPTS[script]
    return all(unicodedata.name(c, "").startswith(prefixes) for c in letters)


def language_share(text: str, script: str = "latin", alphabet: Optional[str] = None) -> Optional[float]:
    """The share of the chain of thought's words in the target language; None when no word counts."""
    if script not in SCRIPTS:
        raise ValueError(f"unknown script {script!r}; known: {', '.join(SCRIPTS)} (or give alphabet)")
    verdicts = [v for v in (in_language(w, script, alphabet) for w in chain_of_thought(text).split()) if v is not None]
    return sum(verdicts) / len(verdicts) if verdicts else None


@rejection_filter("language_mixing")
def make_language_mixing(script: str = "latin", alphabet: Optional[str] = None, min_share: float = 1.0):
    """Drop a chain of thought whose share of target-language words is below ``min_share`` (1.0: any foreign word)."""
    language_share("", script, alphabet)  # an unknown script fails when the filter is built

    def language_mixing(completion: str, **row) -> bool:
        share = language_share(completion, script, alphabet)
        return share is not None and share < min_share

    return language_mixing


@rejection_filter("long_paragraphs")
def make_long_paragraphs(max_chars: int = 2000):
    """Drop a completion with a paragraph (text between blank lines) longer than ``max_chars`` characters."""
    if max_chars < 1:
        raise ValueError(f"long_paragraphs: max_chars must be >= 1, got {max_chars}")

    def long_paragraphs(completion: str, **row) -> bool:
        return any(len(p.strip()) > max_chars for p in re.split(r"\n\s*\n", completion))

    return long_paragraphs


@rejection_filter("code_blocks")
def make_code_blocks():
    """Drop a completion holding a fenced code block (a line starting with three backticks or tildes)."""
    fence = re.compile(r"^\s*(```|~~~)", re.MULTILINE)

    def code_blocks(completion: str, **row) -> bool:
        return bool(fence.search(completion))

    return code_blocks


def resolve_filter(spec) -> tuple[str, Callable[..., bool]]:
    """A filter entry (a name, an import path, or ``{name, kwargs}``) -> (name, predicate)."""
    from .registry import imported

    name, kwargs = (spec, {}) if isinstance(spec, str) else (spec["name"], dict(spec.get("kwargs") or {}))
    if name in FILTERS:
        return name, FILTERS[name](**kwargs)
    return imported(name, kwargs, FILTERS, "filter")
