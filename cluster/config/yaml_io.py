"""Reading run files and overlays: YAML that refuses a key given twice, the line of every key path, path fields
resolved from the file that names them, overlays merged section by section, ``key.path=value`` overrides."""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from relay_rl.errors import ConfigError

# fields that hold a local path (or a hub id, or ``kit:...``)
PATH_FIELDS = (
    ("model", "name_or_path"),
    ("teacher", "name_or_path"),
    ("data", "train"),
    ("data", "eval"),
    ("output_dir",),
    ("kit", "dir"),
)
_DATA_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")


def resolve_path(value: str, base: Path, field: tuple) -> str:
    """A path field's value, made absolute from ``base`` when it names a local path. Hub ids (``org/name`` that is
    not a local folder) and ``kit:...`` stay as they are."""
    if not isinstance(value, str) or value.startswith("kit:"):
        return value
    expanded = os.path.expandvars(os.path.expanduser(value))
    p = Path(expanded)
    local = (
        p.is_absolute()
        or expanded != value
        or value.startswith(("./", "../", ".\\"))
        or (base / p).exists()
        or field in (("output_dir",), ("kit", "dir"))
        or (field[0] == "data" and p.suffix in _DATA_SUFFIXES)
    )
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
                raise ConfigError(
                    f"{self.name}:{key_node.start_mark.line + 1}: '{key}' is given twice in one section "
                    f"(first at line {seen[key]}); YAML would keep only the last: merge them into one"
                )
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)


def read_yaml(path: Path, what: str = "run file") -> tuple[dict, dict[tuple, str]]:
    """A YAML mapping and, for every key path in it, ``file:line``."""
    if not path.is_file():
        raise ConfigError(f"{path}: no such {what}" + (" (it is a folder)" if path.is_dir() else ""))
    data = path.read_bytes()
    try:
        if b"\0" in data:
            raise UnicodeDecodeError("utf-8", data, 0, 1, "NUL byte")
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(
            f"{path}: not a text file (it holds binary data): give a YAML {what}, e.g. deploy/recipes/quickstart.yaml"
        ) from None
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
        raise ConfigError(
            f"{path}: the {what} must be a mapping of sections (cluster, model, data, ...), not a {type(raw).__name__}"
        )
    return raw, {k: f"{path}:{line}" for k, line in yaml_lines(text).items()}


def merge(base: dict, layer: dict) -> None:
    """Mappings merge key by key; lists of named mappings (``stages:``) merge item by item by ``name``; anything else
    (values, other lists) replaces."""
    for k, v in layer.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            merge(base[k], v)
        elif _named_items(v) and _named_items(base.get(k)):
            by_name = {item["name"]: item for item in base[k]}
            for item in v:
                if item["name"] in by_name:
                    merge(by_name[item["name"]], item)
                else:
                    base[k].append(item)
        else:
            base[k] = v


def _named_items(v) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(i, dict) and "name" in i for i in v)


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
                raise ConfigError(
                    f"override {item!r}: no item {p!r} in that list of {path} (names: "
                    f"{', '.join(str(x.get('name')) for x in node if isinstance(x, dict))})"
                )
            node = found[0]
            continue
        nxt = node.setdefault(p, {})
        if not isinstance(nxt, (dict, list)):
            raise ConfigError(f"override {item!r}: {p} is not a section in {path}")
        node = nxt
    try:
        parsed = yaml.safe_load(value) if value != "" else None
    except yaml.YAMLError as e:
        raise ConfigError(
            f"override {item!r}: the value is not valid YAML ({str(e).splitlines()[0]}); quote it"
        ) from None
    field = tuple(parts[2:] if parts[0] == "stages" else parts)
    node[parts[-1]] = resolve_path(parsed, Path.cwd(), field) if field in PATH_FIELDS else parsed


def yaml_lines(text: str) -> dict[tuple, int]:
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
