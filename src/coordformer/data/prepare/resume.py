"""Whether an interrupted run in the output folder can be resumed.

``DIR/.work/state.json`` records the run's fingerprint: the PrepareConfig fields that work units
depend on (:meth:`PrepareConfig.unit_fingerprint`, under ``"filters"``, the name state files have
always used), the chain_set chunk size, the sources (path, size, mtime) and the unusable paths. A
re-run resumes only with an equal fingerprint; splits and exclusions are applied when the dataset
is assembled, which is always redone, so they may change in between.
"""

from __future__ import annotations

import json
from typing import Any, Sequence

from ...config import PrepareConfig
from ...constants import DATASET_FORMAT_VERSION


def run_fingerprint(
    config: PrepareConfig,
    chunk_lines: int,
    fp_sources: Sequence[Sequence[Any]],
    bad_paths: Sequence[tuple[str, str]],
) -> dict[str, Any]:
    """The state.json content of a run (as JSON reads it back, so that it compares equal)."""
    fingerprint = {
        "format_version": DATASET_FORMAT_VERSION,
        "filters": config.unit_fingerprint(),
        "chunk_lines": chunk_lines,
        "sources": [list(s) for s in fp_sources],
        "bad_paths": sorted(map(list, bad_paths)),
    }
    return json.loads(json.dumps(fingerprint))


def resume_mismatch(old: Any, new: dict[str, Any]) -> str | None:
    """None when a run with fingerprint ``old`` (what state.json holds; None when it is unreadable)
    can be resumed by one with ``new``; otherwise what differs, for the error message."""
    if old == new:
        return None
    return describe_mismatch(old, new) if old and isinstance(old, dict) else "unreadable state.json"


def describe_mismatch(old: dict[str, Any], new: dict[str, Any]) -> str:
    diffs = []
    for k in sorted(set(old) | set(new)):
        if old.get(k) == new.get(k):
            continue
        if k == "sources":
            o = {s[0]: s[1:] for s in old.get(k) or []}
            n = {s[0]: s[1:] for s in new.get(k) or []}
            added, removed = set(n) - set(o), set(o) - set(n)
            changed = {p for p in set(o) & set(n) if o[p] != n[p]}
            parts = []
            if added:
                parts.append(f"{len(added)} added (e.g. {sorted(added)[0]})")
            if removed:
                parts.append(f"{len(removed)} removed (e.g. {sorted(removed)[0]})")
            if changed:
                parts.append(f"{len(changed)} modified since (e.g. {sorted(changed)[0]})")
            diffs.append("sources: " + ", ".join(parts))
        elif k == "filters":
            o, n = old.get(k) or {}, new.get(k) or {}
            diffs.extend(
                f"{f}: {o.get(f)!r} -> {n.get(f)!r}"
                for f in sorted(set(o) | set(n))
                if o.get(f) != n.get(f)
            )
        else:
            diffs.append(f"{k}: {old.get(k)!r} -> {new.get(k)!r}")
    return "; ".join(diffs)
