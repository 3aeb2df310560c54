"""Prompt datasets: local files (jsonl/json/parquet/csv), Hugging Face datasets by name, or the quickstart kit."""

from __future__ import annotations

from pathlib import Path

from relay_rl.errors import ConfigError

from .config import DataConfig, KitConfig
from .kit.code_task import ensure_kit_data
from .kit.paths import resolve_kit_path

_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


def load_prompts(
    spec: str,
    split: str,
    kit: KitConfig | None,
    prompt_column: str,
    limit: int | None = None,
    name: str | None = None,
    revision: str | None = None,
):
    """A ``datasets.Dataset`` with at least ``prompt_column``. ``name`` / ``revision``: the configuration and revision
    of a hub dataset or a local dataset folder (``datasets.load_dataset``'s)."""
    import datasets

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)  # its loader errors reach the user through ours
    path = ensure_kit_data(spec, kit) or resolve_kit_path(spec, kit)  # kit:code_* are built on first use
    p = Path(path).expanduser()
    if p.suffix in _FORMATS:
        if not p.is_file():
            raise FileNotFoundError(f"dataset file {p} does not exist")
        ds = datasets.load_dataset(_FORMATS[p.suffix], data_files=str(p), split="train")
    elif p.is_dir() and _saved(p):
        ds = datasets.load_from_disk(str(p))
        ds = ds[split] if isinstance(ds, datasets.DatasetDict) else ds
    else:  # a dataset folder (data files, configurations in its README), or a dataset name on the hub
        ds = datasets.load_dataset(str(p) if p.is_dir() else path, name=name, revision=revision, split=split)
    if prompt_column not in ds.column_names:
        raise ValueError(
            f"dataset {spec} has no column {prompt_column!r} (columns: {', '.join(ds.column_names)}); "
            "set data.prompt_column"
        )
    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))
    return ds


def _saved(folder: Path) -> bool:
    """A folder written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``."""
    return (folder / "dataset_dict.json").is_file() or (folder / "state.json").is_file()


def load_data(cfg: DataConfig, kit: KitConfig | None):
    hub = {"name": cfg.name, "revision": cfg.revision}
    train = load_split("data.train", cfg.train, cfg.train_split, kit, cfg.prompt_column, None, **hub)
    evals = (
        load_split("data.eval", cfg.eval, cfg.eval_split, kit, cfg.prompt_column, cfg.eval_limit, **hub)
        if cfg.eval
        else None
    )
    return train, evals


def load_split(field: str, spec: str, *args, **kwargs):
    """``load_prompts``; a failure is a ConfigError naming ``field`` and what was tried."""
    try:
        return load_prompts(spec, *args, **kwargs)
    except Exception as e:  # noqa: BLE001  (any loader failure: name the field and what was tried)
        while e.__cause__ is not None or e.__context__ is not None:  # the loader's own cause (a JSON parse error)
            e = e.__cause__ or e.__context__
        first = (str(e).strip().splitlines() or [""])[0][:300]
        raise ConfigError(
            f"{field}: cannot load {spec!r}: {type(e).__name__}: {first}. Give a local .jsonl/.json/"
            ".parquet/.csv file, a folder saved with datasets' save_to_disk, a dataset name the "
            "machine can reach, or kit:train / kit:test"
        ) from e
