"""Statistics as every role reports them: ``{name: (kind, value, count)}``, merged across micro-batches and ranks
by the driver into one number each."""

from __future__ import annotations

from collections import Counter


def merge_stats(into: dict, new: dict) -> dict:
    """Combine (kind, value, count) statistics: mean -> sums and counts, sum, min, max, hist (concatenated)."""
    for k, (kind, v, c) in new.items():
        if k not in into:
            into[k] = (kind, list(v) if kind == "hist" else v, c)
            continue
        _, v0, c0 = into[k]
        if kind in ("mean", "sum"):
            into[k] = (kind, v0 + v, c0 + c)
        elif kind == "min":
            into[k] = (kind, min(v0, v), 1.0)
        elif kind == "max":
            into[k] = (kind, max(v0, v), 1.0)
        elif kind == "hist":
            into[k] = (kind, v0 + list(v), 1.0)
    return into


def reduce_stats(per_rank: list[dict]) -> dict:
    """(kind, value, count) statistics from every rank -> one number each (histograms -> {value: count})."""
    merged: dict = {}
    for stats in per_rank:
        merge_stats(merged, stats)
    out = {}
    for k, (kind, v, c) in merged.items():
        if kind == "mean":
            out[k] = v / c if c else float("nan")
        elif kind == "hist":
            out[k] = {str(key): n for key, n in sorted(Counter(v).items())}
        else:
            out[k] = v
    return out
