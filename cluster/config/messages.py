"""Validation errors as a person reads them: one line per problem, ``file:line: field.path: what is wrong``, with
the fields allowed where an unknown key was given and the family a misplaced knob belongs to."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ValidationError

from .run import CONFIG_MODELS, DEFAULT, FAMILIES, FAMILY_NAMES, RunConfig


def _member(model, part):
    """The model a field of ``model`` holds (through Optional, unions and the algorithm union's tag)."""
    field = model.model_fields.get(part)
    if field is None:
        return None
    ann = field.annotation
    for cand in getattr(ann, "__args__", (ann,)):
        if isinstance(cand, type) and issubclass(cand, BaseModel):
            return cand
    return None


def _allowed_fields(loc: tuple, family_name: str | None = None) -> list[str] | None:
    """Field names allowed at the parent of ``loc`` (for unknown-key errors)."""
    model: Any = RunConfig
    for part in loc[:-1]:
        if isinstance(part, int) or not (isinstance(model, type) and issubclass(model, BaseModel)):
            return None
        if model is RunConfig and part == "algorithm":
            model = next(
                (m for m in CONFIG_MODELS if m.model_fields["name"].default == family_name),
                FAMILIES[DEFAULT].configs[0],
            )
            continue
        model = _member(model, part)
        if model is None:
            return None
    if isinstance(model, type) and issubclass(model, BaseModel):
        return sorted(model.model_fields)
    return None


def _owners(field: str) -> list[str]:
    """The algorithm families that have a knob of this name (for a knob given to the wrong family)."""
    return [m.model_fields["name"].default for m in CONFIG_MODELS if field in m.model_fields]


def format_errors(e: ValidationError, source: str, lines: dict, overrides, stage: tuple | None = None) -> str:
    """One line per error: file:line, the field path, what is wrong. ``stage`` = (index, name, the stage's own
    mapping) for a stage of a staged run file: a field the stage sets is shown as ``stages.<name>.<field>``."""
    msgs = []
    for err in e.errors():
        raw_loc, family_name = err["loc"], None
        if len(raw_loc) > 1 and raw_loc[0] == "algorithm" and raw_loc[1] in FAMILY_NAMES:  # the union's tag
            family_name, raw_loc = raw_loc[1], (raw_loc[0], *raw_loc[2:])
        loc = tuple(
            p
            for p in raw_loc
            if not (isinstance(p, str) and ("[" in p or p in ("str", "RewardFuncSpec", "function-after")))
        )
        field = ".".join(str(p) for p in loc) or "(top level)"
        where = next((lines[loc[:i]] for i in range(len(loc), 0, -1) if loc[:i] in lines), source)
        if stage is not None:
            index, name, own = stage
            if loc and _has_path(own, loc):  # the stage sets it: its line
                where = next(
                    (
                        lines[("stages", index, *loc[:i])]
                        for i in range(len(loc), 0, -1)
                        if ("stages", index, *loc[:i]) in lines
                    ),
                    where,
                )
                field = f"stages.{name}.{field}"
            else:  # the top level's value (or a rule across sections), checked in this stage
                field = f"{field} (stage {name})"
        if any(o.split("=", 1)[0].strip() == field for o in overrides):
            where += " (command-line override)"
        if err["type"] == "extra_forbidden":
            allowed = _allowed_fields(loc, family_name)
            msg = f"unknown field '{loc[-1]}'" + (f"; allowed here: {', '.join(allowed)}" if allowed else "")
            owners = _owners(str(loc[-1])) if loc[:1] == ("algorithm",) else []
            if owners:
                msg += f" ('{loc[-1]}' is a knob of algorithm.name {', '.join(owners)}; this run is {family_name})"
        elif err["type"] == "missing":
            msg = "required field is missing"
        else:
            msg = err["msg"]
            if err["type"] not in ("value_error", "assertion_error") and "input" in err:
                msg += f" (got {err['input']!r})"
        msg = msg.replace("Value error, ", "")
        msgs.append(f"{where}: {field}: {msg}")
    return "invalid run file\n  " + "\n  ".join(msgs)


def _has_path(d, path: tuple) -> bool:
    for p in path:
        if not isinstance(d, dict) or p not in d:
            return False
        d = d[p]
    return True
