"""Prompt datasets: local files (jsonl/json/parquet/csv), Hugging Face datasets by name, or the quickstart kit."""

from __future__ import annotations

from pathlib import Path

from relay_rl.errors import ConfigError

from .config import DataConfig, KitConfig
from .kit.code_task import ensure_kit_data
from .kit.paths import resolve_kit_path

_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


def load_prompts(spec: str, split: str, kit: KitConfig | None, prompt_column: str, limit: int | None = None):
    """A ``datasets.Dataset`` with at least ``prompt_column``."""
    import datasets

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)  # its loader errors reach the user through ours
    path = ensure_kit_data(spec, kit) or resolve_kit_path(spec, kit)  # kit:code_* are built on first use
    p = Path(path).expanduser()
    if p.suffix in _FORMATS:
        if not p.is_file():
            raise FileNotFoundError(f"dataset file {p} does not exist")
        ds = datasets.load_dataset(_FORMATS[p.suffix], data_files=str(p), split="train")
    elif p.is_dir():
        ds = datasets.load_from_disk(str(p))
        ds = ds[split] if isinstance(ds, datasets.DatasetDict) else ds
    else:  # a dataset name on the hub
        ds = datasets.load_dataset(path, split=split)
    if prompt_column not in ds.column_names:
        raise ValueError(
            f"dataset {spec} has no column {prompt_column!r} (columns: {', '.join(ds.column_names)}); "
            "set data.prompt_column"
        )
    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))
    return ds


def load_data(cfg: DataConfig, kit: KitConfig | None):
    train = _load("data.train", cfg.train, cfg.train_split, kit, cfg.prompt_column)
    evals = _load("data.eval", cfg.eval, cfg.eval_split, kit, cfg.prompt_column, cfg.eval_limit) if cfg.eval else None
    return train, evals


def _load(field: str, spec: str, *args):
    try:
        return load_prompts(spec, *args)
    except Exception as e:  # noqa: BLE001  (any loader failure: name the field and what was tried)
        while e.__cause__ is not None or e.__context__ is not None:  # the loader's own cause (a JSON parse error)
            e = e.__cause__ or e.__context__
        first = (str(e).strip().splitlines() or [""])[0][:300]
        raise ConfigError(
            f"{field}: cannot load {spec!r}: {type(e).__name__}: {first}. Give a local .jsonl/.json/"
            ".parquet/.csv file, a folder saved with datasets' save_to_disk, a dataset name the "
            "machine can reach, or kit:train / kit:test"
        ) from e
