"""Loading a run file: YAML + overlays + ``key.path=value`` overrides -> ``RunConfig`` (or, for a file with
``stages:``, a ``cluster.stages.StagedConfig``), with errors that name the file, the field, its line and what is
allowed. The models themselves are in ``cluster/config.py``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from .config import CONFIG_MODELS, FAMILY_NAMES, GRPOConfig, RunConfig
from .schema import ConfigError


def load_config(path: str | os.PathLike, overrides: list[str] = ()) -> RunConfig:
    """The run file, then each override in order: ``key.path=value``, or an overlay file (``*.yaml`` merged into the
    run file section by section, e.g. ``deploy/overlays/kit.yaml`` to try a paper recipe on the quickstart kit).

    Relative paths resolve from the folder of the file that names them (the run file's, an overlay's; the current
    directory for command-line overrides); ``~`` and ``$VARS`` are expanded."""
    path = Path(os.path.expandvars(os.path.expanduser(str(path))))
    raw, lines = _read_yaml(path)
    resolve_paths(raw, path.parent)
    for item in overrides:
        if "=" not in item and item.endswith((".yaml", ".yml")):
            layer_path = Path(os.path.expandvars(os.path.expanduser(item)))
            layer, layer_lines = _read_yaml(layer_path, what="overlay file")
            resolve_paths(layer, layer_path.parent)
            _merge(raw, layer)
            lines.update(layer_lines)
        else:
            apply_override(raw, item, path)
    raw.setdefault("run_dir", str(path.parent.resolve()))
    if "stages" in raw:  # several families in sequence (cluster/stages.py)
        from .stages import validate_stages
        return validate_stages(raw, source=str(path), lines=lines, overrides=overrides)
    return validate_dict(raw, source=str(path), lines=lines, overrides=overrides)


# fields that hold a local path (or a hub id, or ``kit:...``)
PATH_FIELDS = (("model", "name_or_path"), ("teacher", "name_or_path"), ("data", "train"), ("data", "eval"),
               ("output_dir",), ("kit", "dir"))
_DATA_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")


def resolve_path(value: str, base: Path, field: tuple) -> str:
    """A path field's value, made absolute from ``base`` when it names a local path. Hub ids (``org/name`` that is
    not a local folder) and ``kit:...`` stay as they are."""
    if not isinstance(value, str) or value.startswith("kit:"):
        return value
    expanded = os.path.expandvars(os.path.expanduser(value))
    p = Path(expanded)
    local = (p.is_absolute() or expanded != value or value.startswith(("./", "../", ".\\")) or (base / p).exists()
             or field in (("output_dir",), ("kit", "dir"))
             or (field[0] == "data" and p.suffix in _DATA_SUFFIXES))
    return str((base / p).resolve()) if local else value


def resolve_paths(raw: dict, base: Path) -> None:
    for stage in raw.get("stages") or ():  # a staged run file: each stage's own sections too
        if isinstance(stage, dict):
            resolve_paths(stage, base)
    for field in PATH_FIELDS:
        node = raw
        for part in field[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and isinstance(node.get(field[-1]), str):
            node[field[-1]] = resolve_path(node[field[-1]], base, field)


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML that refuses a key given twice in one mapping (PyYAML keeps the last one silently)."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise ConfigError(f"{self.name}:{key_node.start_mark.line + 1}: '{key}' is given twice in one section "
                                  f"(first at line {seen[key]}); YAML would keep only the last: merge them into one")
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)


def _read_yaml(path: Path, what: str = "run file") -> tuple[dict, dict[tuple, str]]:
    """A YAML mapping and, for every key path in it, ``file:line``."""
    if not path.is_file():
        raise ConfigError(f"{path}: no such {what}" + (" (it is a folder)" if path.is_dir() else ""))
    data = path.read_bytes()
    try:
        if b"\0" in data:
            raise UnicodeDecodeError("utf-8", data, 0, 1, "NUL byte")
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file (it holds binary data): give a YAML {what}, e.g. "
                          "deploy/recipes/quickstart.yaml") from None
    try:
        loader = _UniqueKeyLoader(text)
        loader.name = str(path)
        try:
            raw = loader.get_single_data() or {}
        finally:
            loader.dispose()
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the {what} must be a mapping of sections (cluster, model, data, ...), not a "
                          f"{type(raw).__name__}")
    return raw, {k: f"{path}:{line}" for k, line in _yaml_lines(text).items()}


def _merge(base: dict, layer: dict) -> None:
    """Mappings merge key by key; lists of named mappings (``stages:``) merge item by item by ``name``; anything else
    (values, other lists) replaces."""
    for k, v in layer.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _merge(base[k], v)
        elif _named_items(v) and _named_items(base.get(k)):
            by_name = {item["name"]: item for item in base[k]}
            for item in v:
                if item["name"] in by_name:
                    _merge(by_name[item["name"]], item)
                else:
                    base[k].append(item)
        else:
            base[k] = v


def _named_items(v) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(i, dict) and "name" in i for i in v)


def validate_dict(raw: dict, source: str = "<dict>", lines: dict | None = None, overrides=()) -> RunConfig:
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_format_errors(e, source, lines or {}, overrides)) from None


def apply_override(raw: dict, item: str, path: Path | str = "<command line>") -> None:
    """``key.sub=value``: the value is parsed as YAML (numbers, booleans, lists, null)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r}: expected key.path=value")
    key, value = item.split("=", 1)
    node = raw
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"override {item!r}: expected key.path=value (e.g. train.max_steps=20)")
    for p in parts[:-1]:
        if isinstance(node, list):  # ``stages.<name or index>.``
            found = [x for i, x in enumerate(node) if str(i) == p or (isinstance(x, dict) and x.get("name") == p)]
            if not found:
                raise ConfigError(f"override {item!r}: no item {p!r} in that list of {path} (names: "
                                  f"{', '.join(str(x.get('name')) for x in node if isinstance(x, dict))})")
            node = found[0]
            continue
        nxt = node.setdefault(p, {})
        if not isinstance(nxt, (dict, list)):
            raise ConfigError(f"override {item!r}: {p} is not a section in {path}")
        node = nxt
    try:
        parsed = yaml.safe_load(value) if value != "" else None
    except yaml.YAMLError as e:
        raise ConfigError(f"override {item!r}: the value is not valid YAML ({str(e).splitlines()[0]}); quote it") from None
    field = tuple(parts[2:] if parts[0] == "stages" else parts)
    node[parts[-1]] = resolve_path(parsed, Path.cwd(), field) if field in PATH_FIELDS else parsed


def _yaml_lines(text: str) -> dict[tuple, int]:
    """Map each key path of the YAML file to its 1-based line."""
    out: dict[tuple, int] = {}

    def walk(node, prefix):
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                p = prefix + (k.value,)
                out[p] = k.start_mark.line + 1
                walk(v, p)
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                out[prefix + (i,)] = v.start_mark.line + 1
                walk(v, prefix + (i,))

    try:
        walk(yaml.compose(text), ())
    except yaml.YAMLError:
        pass
    return out


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
            model = next((m for m in CONFIG_MODELS if m.model_fields["name"].default == family_name), GRPOConfig)
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


def _format_errors(e: ValidationError, source: str, lines: dict, overrides, stage: tuple | None = None) -> str:
    """One line per error: file:line, the field path, what is wrong. ``stage`` = (index, name, the stage's own
    mapping) for a stage of a staged run file: a field the stage sets is shown as ``stages.<name>.<field>``."""
    msgs = []
    for err in e.errors():
        raw_loc, family_name = err["loc"], None
        if len(raw_loc) > 1 and raw_loc[0] == "algorithm" and raw_loc[1] in FAMILY_NAMES:  # the union's tag
            family_name, raw_loc = raw_loc[1], (raw_loc[0], *raw_loc[2:])
        loc = tuple(p for p in raw_loc if not (isinstance(p, str) and ("[" in p or p in ("str", "RewardFuncSpec",
                                                                                       "function-after"))))
        field = ".".join(str(p) for p in loc) or "(top level)"
        where = next((lines[loc[:i]] for i in range(len(loc), 0, -1) if loc[:i] in lines), source)
        if stage is not None:
            index, name, own = stage
            if loc and _has_path(own, loc):  # the stage sets it: its line
                where = next((lines[("stages", index, *loc[:i])] for i in range(len(loc), 0, -1)
                              if ("stages", index, *loc[:i]) in lines), where)
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


def dump_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
