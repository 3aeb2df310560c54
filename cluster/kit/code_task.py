"""The kit's code task: the ``a+b=`` prompts as a program to write, scored by running it (``code_tests``).

The kit's model writes only digits, ``+`` and ``=``, so its "code" is a Python expression: the completion becomes
the body of ``def f(): return <completion>``, run in the sandbox, and the row's tests call ``f()``. A completion
is right when its value is: "46" and "40+6" both pass ``assert f() == 46``; "46=" does not compile and passes
nothing. Besides the value, three tests give partial credit (the ones digit, the tens digit, the number of digits),
so ``code_tests``' ``mode: fraction`` is a shaped reward and ``eval/accuracy`` (every test passed, the default
``rollout.eval_success_threshold`` of 1.0) is the pass rate.

Rows (``code_train.jsonl`` from the kit's train split, ``code_test.jsonl`` from its held-out test split)::

    {"prompt": "12+34=", "answer": "46", "solution": "46", "template": "def f():\\n    return {code}\\n",
     "tests": ["assert f() == 46", "assert f() % 10 == 6", "assert f() // 10 % 10 == 4", "assert len(str(f())) == 2"]}

A data part: ``kit:code_train`` / ``kit:code_test`` in ``data:`` build the files from the kit's splits on first use
(milliseconds; ``ensure_kit_data``, called by ``cluster.data``) and rewrite them whenever what they would hold
changes; nothing is trained for them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .paths import kit_dir

TEMPLATE = "def f():\n    return {code}\n"
"""The program a completion runs as (``code_tests``' ``template_column`` reads it from each row)."""

DATA_FILES = {"code_train": "code_train.jsonl", "code_test": "code_test.jsonl"}
"""``kit:<name>`` data paths of the code task -> their files in the kit folder."""
SOURCES = {"code_train": "train.jsonl", "code_test": "test.jsonl"}
"""The kit split each code file is made from."""


def code_tests_for(total: int) -> list[str]:
    """The tests of one row: the value, then partial credit for its ones digit, tens digit and digit count."""
    return [
        f"assert f() == {total}",
        f"assert f() % 10 == {total % 10}",
        f"assert f() // 10 % 10 == {total // 10 % 10}",
        f"assert len(str(f())) == {len(str(total))}",
    ]


def code_row(row: dict) -> dict:
    """A kit row (``{"prompt": "12+34=", "answer": "46", ...}``) as a code-task row: its columns plus the template
    and the tests."""
    return {**row, "template": TEMPLATE, "tests": code_tests_for(int(row["answer"]))}


def build_code_task(root: Path) -> dict[str, Path]:
    """Write (or refresh) the code task's files in the kit folder ``root`` from its split files; a file that already
    holds what it would is left alone. Returns name -> file."""
    out = {}
    for name, source in SOURCES.items():
        src = root / source
        if not src.is_file():
            raise FileNotFoundError(
                f"the quickstart kit at {root} has no {source}: the kit is not built yet "
                "(`relay-rl train` or `relay-rl kit` builds it)"
            )
        text = "".join(json.dumps(code_row(json.loads(line))) + "\n" for line in src.read_text().splitlines() if line)
        dest = root / DATA_FILES[name]
        try:
            current = dest.read_text()
        except OSError:
            current = None
        if current != text:
            tmp = dest.with_name(f".{dest.name}.tmp{os.getpid()}")
            tmp.write_text(text)
            os.replace(tmp, dest)  # atomic: a reader sees the old file or the new one, and racing writers agree
        out[name] = dest
    return out


def ensure_kit_data(spec, cfg) -> str | None:
    """``kit:code_train`` / ``kit:code_test``: build (or refresh) the code task in the kit ``cfg`` names and return the
    file's path. Any other value: None (``resolve_kit_path`` handles it)."""
    if not isinstance(spec, str) or not spec.startswith("kit:") or spec[len("kit:") :] not in DATA_FILES:
        return None
    if cfg is None:
        raise ValueError(f"{spec} names the quickstart kit's code task, but there is no kit section: add `kit: {{}}`")
    return str(build_code_task(kit_dir(cfg))[spec[len("kit:") :]])
