"""The run-file reference (docs/run-file.md), generated from the config models' fields and docstrings, so it cannot
drift from the code: ``python -m relay_rl.cluster.config.reference > docs/run-file.md`` writes it, and the test suite
fails when the file is not what this prints."""

from __future__ import annotations

import enum
import sys
import typing

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from .run import CONFIG_MODELS, RunConfig

HEADER = """# The run file

Every field of a relay-rl run file, its type, its default and what it does. Generated from the config models
(`cluster/config/`) by `python -m relay_rl.cluster.config.reference > docs/run-file.md`; the test suite checks that this
page is current. Unknown keys are errors. A field of a section is set as `section.field` on the command line
(`train.max_steps=20`) or nested in YAML. `algorithm:` takes one family's section, chosen by `algorithm.name`; a staged
run file (`stages:`) repeats these sections per stage ([methods/sft.md](methods/sft.md#stages)).
"""


def type_name(annotation) -> str:
    """A field's type as a reader writes it: ``int``, ``Optional[float]``, ``'hf' | 'vllm'``, ``list[str]``."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is type(None):
        return "None"
    if origin is typing.Literal:
        return " \\| ".join(repr(a) for a in args)
    if origin is typing.Annotated:
        return type_name(args[0])
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        names = [type_name(a) for a in args if a is not type(None)]
        joined = " \\| ".join(names)
        return f"Optional[{joined}]" if type(None) in args else joined
    if origin is not None:
        base = getattr(origin, "__name__", str(origin))
        return f"{base}[{', '.join(type_name(a) for a in args)}]"
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def default_value(field):
    if field.default is not PydanticUndefined:
        return field.default
    if field.default_factory is not None:
        return field.default_factory()
    return PydanticUndefined


def default_of(field, instance=None, name: str = "") -> str:
    """The field's default as its section has it (``instance``: the section's default, whose factory may set other
    values than the model's own defaults, e.g. each pool's ``num_cpus``)."""
    value = getattr(instance, name) if instance is not None else default_value(field)
    if value is PydanticUndefined:
        return "required"
    if isinstance(value, BaseModel):
        return "(section)"
    if isinstance(value, enum.Enum):
        value = value.value
    return f"`{value!r}`".replace("|", "\\|")


def nested_model(annotation):
    """The section model a field holds (through Optional), or None."""
    for cand in (annotation, *typing.get_args(annotation)):
        if isinstance(cand, type) and issubclass(cand, BaseModel):
            return cand
    return None


def table(model: type[BaseModel], skip: tuple[str, ...] = (), instance=None) -> list[str]:
    rows = ["| field | type | default | description |", "|---|---|---|---|"]
    for name, field in model.model_fields.items():
        if name in skip:
            continue
        doc = " ".join((field.description or "").split()).replace("|", "\\|")
        rows.append(f"| `{name}` | {type_name(field.annotation)} | {default_of(field, instance, name)} | {doc} |")
    return rows


def sections(model: type[BaseModel], prefix: str, out: list[str], seen: set, instance=None) -> None:
    """``model``'s table under ``prefix``, then each nested section's."""
    out += ["", f"## `{prefix}`" if prefix else "## Top level", ""]
    doc = " ".join((model.__doc__ or "").split())
    if doc and model is not RunConfig and not doc.startswith(("!!!", "Usage docs")):
        out += [doc, ""]
    out += table(model, skip=("algorithm",) if model is RunConfig else (), instance=instance)
    for name, field in model.model_fields.items():
        sub = nested_model(field.annotation)
        if sub is None or name == "algorithm" or (prefix, name) in seen:
            continue
        seen.add((prefix, name))
        child = getattr(instance, name) if instance is not None else default_value(field)
        child = child if isinstance(child, BaseModel) else None  # an optional section (None) shows the model's defaults
        sections(sub, f"{prefix}.{name}" if prefix else name, out, seen, child)


def render() -> str:
    out = [HEADER.rstrip()]
    sections(RunConfig, "", out, set())
    out += [
        "",
        "## `algorithm`",
        "",
        "One family's knobs, chosen by `name` (default `grpo`); every family shares the batch schedule and "
        "staleness knobs ([staleness.md](staleness.md)). Each family's page in [methods/](methods/README.md) "
        "explains them.",
    ]
    for cfg in CONFIG_MODELS:
        name = cfg.model_fields["name"].default
        out += ["", f"### `algorithm.name: {name}`", ""]
        doc = " ".join((cfg.__doc__ or "").split())
        if doc:
            out += [doc, ""]
        out += table(cfg, skip=("name",))
        for field_name, field in cfg.model_fields.items():
            sub = nested_model(field.annotation)
            if sub is not None:
                out += ["", f"#### `algorithm.{field_name}` ({name})", ""] + table(sub)
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
