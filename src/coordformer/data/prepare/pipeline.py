"""``prepare()``: plan the work units, run them (resuming an interrupted run), consolidate.

The output folder is locked for the run; ``DIR/.work`` holds the run's fingerprint
(``resume`` module) and the finished units' parts until the dataset is complete.

:func:`read_in_memory` is its twin for commands that take structure files directly: the same
units, chain policy, unique ids and skip log, with the chains kept in memory and no dataset written.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from ...config import ConfigError, PrepareConfig
from ...constants import BACKBONE_ATOMS, SEQRES_MODES
from .. import splits as _splits
from .. import store
from ..memory import MemoryDataset
from .consolidate import (
    FinishedRun,
    check_chains_found,
    consolidate,
    read_exclusion_sequences,
    select_chains,
)
from .errors import PrepareError, PrepareOptionError
from .pool import map_units, run_parallel
from .resume import resume_mismatch, run_fingerprint
from .summary import PrepareSummary, RunLog
from .units import (
    DEFAULT_CHUNK_LINES,
    PartMeta,
    UnitResult,
    empty_result,
    part_path,
    plan_units,
    read_part_meta,
    run_unit,
    safe_process_unit,
)


def prepare(
    sources: Iterable[str | os.PathLike] | str | os.PathLike,
    out_dir: str | os.PathLike,
    config: PrepareConfig | None = None,
    workers: int = 1,
    progress: bool = True,
    log: Callable[[str], None] | logging.Logger | None = None,
    overwrite: bool = False,
    chunk_lines: int = DEFAULT_CHUNK_LINES,
) -> PrepareSummary:
    """Prepare a dataset in ``out_dir`` from structure files, folders, chain_set JSONL and FASTA
    files.

    FASTA records become chains with every coordinate missing (NaN) and are exempt from
    ``config.max_missing_ca``; structure and chain_set inputs are filtered by it.

    Re-running with the same arguments after an interruption resumes; ``overwrite=True`` discards
    an existing dataset or interrupted run in ``out_dir`` and starts over. Unreadable inputs and
    filtered chains are listed in ``skipped.tsv``; they never stop the run.
    """
    t0 = time.monotonic()
    config = config or PrepareConfig()
    _check_config(config)
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    sources = [Path(s) for s in sources]
    workers = max(1, int(workers or 1))
    if chunk_lines < 1:
        raise ValueError("chunk_lines must be >= 1")
    out = Path(out_dir)
    logger = RunLog(log)

    # fail fast on things that would only break at the end
    excluded = _read_exclusions(config)
    read_exclusion_sequences(config)
    if (config.split == "identity" or config.exclude_sequences) and not _splits.mmseqs_available():
        raise PrepareOptionError(
            "split",
            config.split,
            "needs MMseqs2 (`mmseqs` not found on PATH): install it "
            "(`apt-get install mmseqs2` or `conda install -c bioconda mmseqs2`) "
            "or use `split='random'`",
        )

    out.mkdir(parents=True, exist_ok=True)
    with _Lock(out / ".prepare.lock"):
        if store.is_finished_dataset(out):
            if not overwrite:
                raise PrepareError(
                    f"{out} already holds a prepared dataset; "
                    "choose another folder or pass --overwrite to replace it"
                )
            logger(f"overwrite: removing the existing dataset in {out}")
            _remove_dataset(out)
        elif overwrite:
            _remove_dataset(out)

        srcs, bad_paths = _find_sources(sources, skip=[out])
        units, fp_sources = plan_units(srcs, chunk_lines)
        parts_dir = _open_work_dir(out, run_fingerprint(config, chunk_lines, fp_sources, bad_paths))

        # resume: parts already written by an interrupted run
        metas: dict[str, PartMeta] = {}
        for u in units:
            p = part_path(parts_dir, u.key)
            if p.exists():
                try:
                    metas[u.key] = read_part_meta(p)
                except Exception:  # noqa: BLE001 - corrupt part: redo the unit
                    p.unlink(missing_ok=True)
        pending = [u for u in units if u.key not in metas]
        summary = PrepareSummary(
            out_dir=str(out), n_sources=len(srcs), n_units=len(units), units_resumed=len(metas)
        )
        n_cs = len({u.path for u in units if u.kind == "chain_set"})
        logger(
            f"prepare {out}: {len(srcs)} sources ({n_cs} chain_set files), "
            f"{len(bad_paths)} bad paths, "
            f"{len(units)} work units, workers={workers}"
        )
        if metas:
            logger(f"resuming an interrupted run: {len(metas)} of {len(units)} units already done")

        bar = _Progress(
            progress,
            len(units),
            len(metas),
            sum(m.n_kept for m in metas.values()),
            len(bad_paths) + sum(len(m.skipped) for m in metas.values()),
        )

        def on_done(meta: PartMeta) -> None:
            metas[meta.key] = meta
            bar.advance(meta)

        try:
            # with workers, even a last unit runs in one: an input that crashes its process
            # (a native library's fault, out of memory) must be skipped, not end the run
            if workers == 1 or not pending:
                for u in pending:
                    on_done(run_unit(u, config, str(parts_dir)))
            else:
                run_parallel(pending, config, parts_dir, workers, on_done, logger)
            run = FinishedRun(
                out=out,
                units=tuple(units),
                metas=metas,
                bad_paths=tuple(bad_paths),
                config=config,
                excluded=tuple(excluded),
                workers=workers,
                t0=t0,
            )
            consolidate(run, summary, logger)
            bar.finish(summary.chains_kept, summary.n_skipped)
        finally:
            bar.close()
    return summary


def chains_in_memory(chains: Iterable[Any], store_plddt: bool = False) -> MemoryDataset:
    """``Chain`` objects (the ``io`` readers' records) as a :class:`MemoryDataset`, in the order
    given, through the coordinate rule that ``prepare`` applies (``ChainPolicy``: a non-finite
    value makes its atom missing; a chain beyond +/-10,000 Angstrom is refused) and, with
    ``store_plddt``, each residue's pLDDT from its B-factors. For callers that hold chains rather
    than files; a reader's error record, an empty chain or a refused one is a UsageError naming it
    (nothing is skipped quietly)."""
    from ...errors import UsageError
    from .policy import ChainPolicy, Rejected

    chains = list(chains)
    if not chains:
        raise UsageError("no chains given")
    policy = ChainPolicy()
    verdicts = []
    for c in chains:
        if isinstance(c, BaseException):
            raise UsageError(f"an unreadable entry, not a chain: {c}")
        if not len(c.sequence):
            raise UsageError(f"chain {c.id} has no residues")
        verdict = policy.check(c)
        if isinstance(verdict, Rejected):
            raise UsageError(f"chain {c.id}: {verdict.message}")
        verdicts.append(verdict)
    return MemoryDataset.from_chains(
        [c.id for c in chains],
        [v.seq for v in verdicts],
        [v.coords for v in verdicts],
        [str(getattr(c, "source", "") or "") for c in chains],
        [v.plddt for v in verdicts] if store_plddt else None,
    )


def read_in_memory(
    sources: Iterable[str | os.PathLike] | str | os.PathLike,
    config: PrepareConfig | None = None,
    workers: int = 1,
    progress: bool = True,
    log: Callable[[str], None] | logging.Logger | None = None,
    skipped_path: str | os.PathLike | None = None,
    chunk_lines: int = DEFAULT_CHUNK_LINES,
) -> tuple[MemoryDataset, PrepareSummary]:
    """The chains :func:`prepare` would store from ``sources``, in the same order and with the same
    ids, held in memory: (dataset, summary of the read).

    ``config``'s chain policy, ``chains``, ``seqres`` and ``store_plddt`` apply; it is for reading,
    so it may not name ``exclude_files`` (splits and exclusions make training datasets; the
    dataset returned has none). Unreadable inputs and filtered chains never stop the read: they are
    counted in the summary and, with ``skipped_path``, listed there as in a dataset's skipped.tsv
    (also when PrepareError says that ``config.chains`` matched no chain).
    """
    from ...io import normalize_chain_id as norm

    t0 = time.monotonic()
    config = config or PrepareConfig()
    _check_config(config)
    if config.exclude_files:
        raise ConfigError(
            "exclude_files applies to prepared datasets, not to chains read in memory"
        )
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    workers = max(1, int(workers or 1))
    logger = RunLog(log)
    srcs, bad_paths = _find_sources([Path(s) for s in sources], skip=[])
    units, _ = plan_units(srcs, chunk_lines)
    summary = PrepareSummary(out_dir="", n_sources=len(srcs), n_units=len(units))
    logger(f"read {len(srcs)} sources in memory: {len(units)} work units, workers={workers}")
    results: dict[str, UnitResult] = {}
    bar = _Progress(progress, len(units), 0, 0, len(bad_paths))

    def on_done(result: UnitResult) -> None:
        results[result.meta.key] = result
        bar.advance(result.meta)

    try:
        if workers == 1 or len(units) <= 1:
            for u in units:
                on_done(safe_process_unit(u, config))
        else:
            map_units(
                units,
                functools.partial(safe_process_unit, config=config),
                workers,
                on_done,
                empty_result,
                logger,
            )
        metas = {key: r.meta for key, r in results.items()}
        sel = select_chains(units, metas, bad_paths, summary, logger, norm)
        bar.finish(len(sel.ids), len(sel.skipped_rows))
    finally:
        bar.close()
    error = check_chains_found(
        config,
        units,
        metas,
        sel,
        summary,
        "no chain was kept"
        + (f" ({skipped_path} names each input's chains)" if skipped_path is not None else ""),
    )
    if skipped_path is not None:
        store.write_tsv(skipped_path, store.SKIPPED_HEADER, sel.skipped_rows)
    if error is not None:
        raise error
    seqs, coords, plddts = [], [], []
    for u, keep in zip(units, sel.keep_masks):
        r = results[u.key]
        res_keep = np.repeat(keep, r.lengths)
        seqs.append(r.seq[res_keep])
        coords.append(r.coords[res_keep])
        # parts without pLDDT (no B-factors) read as unknown, as write_arrays stores them
        plddts.append(
            r.plddt[res_keep] if len(r.plddt) else np.full(int(res_keep.sum()), np.nan, np.float32)
        )
    data = MemoryDataset(
        sel.ids,
        _concat(seqs, (0,), np.uint8),
        _concat(coords, (0, len(BACKBONE_ATOMS), 3), np.float32),
        sel.lengths,
        sel.sources,
        _concat(plddts, (0,), np.float32) if config.store_plddt else None,
    )
    summary.chains_read = sel.chains_read
    summary.seqres_mode = config.seqres
    summary.chains_kept = len(sel.ids)
    summary.n_residues = data.n_residues
    summary.inputs_skipped = sel.inputs_skipped
    summary.chains_filtered = dict(sorted(sel.filtered.items()))
    summary.files_generic_entry = sel.n_generic
    summary.files_renamed = sel.n_renamed
    summary.chains_without_chain_id = sel.no_chain_ids
    summary.elapsed_s = time.monotonic() - t0
    logger(summary.format())
    return data, summary


def _concat(parts: list[np.ndarray], empty_shape: tuple[int, ...], dtype) -> np.ndarray:
    return (
        np.concatenate(parts).astype(dtype, copy=False) if parts else np.zeros(empty_shape, dtype)
    )


def _find_sources(
    sources: list[Path], skip: list[Path]
) -> tuple[list[Path], list[tuple[str, str]]]:
    """The input files under ``sources`` and the (path, reason) of those that cannot be used;
    PrepareError when there is no input file at all."""
    from ...io import find_sources

    srcs, bad = find_sources(sources, skip=skip)
    srcs = list(srcs)
    bad_paths = [(str(p), str(r)) for p, r in bad]
    if not srcs:
        detail = "; ".join(f"{p}: {r}" for p, r in bad_paths[:5])
        raise PrepareError(
            f"no structure files found in {', '.join(map(str, sources))}"
            + (f" ({detail})" if detail else "")
        )
    return srcs, bad_paths


def _check_config(config: PrepareConfig) -> None:
    _splits.check_split_config(config)
    if config.min_length < 0 or config.max_length < config.min_length:
        raise ConfigError(
            f"need 0 <= min_length <= max_length, got {config.min_length}, {config.max_length}"
        )
    if not 0 <= config.max_missing_ca <= 1:
        raise ConfigError(f"max_missing_ca must be in [0, 1], got {config.max_missing_ca}")
    if config.plddt_min is not None and not 0 <= config.plddt_min <= 100:
        raise ConfigError(f"plddt_min must be in [0, 100] (pLDDT), got {config.plddt_min}")
    if config.seqres not in SEQRES_MODES:
        raise ConfigError(f"seqres must be one of {', '.join(SEQRES_MODES)}, got {config.seqres!r}")


def _read_exclusions(config: PrepareConfig) -> list[str]:
    """The ids of config.exclude_files, in list order (a set would make the report's order vary
    between runs)."""
    from ...io import read_id_list

    excluded: dict[str, None] = {}
    for f in config.exclude_files:
        if not Path(f).is_file():
            raise PrepareError(f"exclude file {f} does not exist")
        try:
            excluded.update(dict.fromkeys(read_id_list(f)))
        except Exception as e:  # noqa: BLE001 - StructureReadError
            raise PrepareError(f"cannot read exclude file {f}: {getattr(e, 'reason', e)}") from None
    return list(excluded)


def _open_work_dir(out: Path, fingerprint: dict[str, Any]) -> Path:
    """``DIR/.work/parts``, ready for this run: an interrupted run's parts are kept when its
    fingerprint matches (PrepareError when it does not); a work folder without state is
    discarded."""
    work = out / store.WORK_DIR
    parts_dir = work / "parts"
    state_path = work / "state.json"
    if state_path.exists():
        try:
            old = json.loads(state_path.read_text())
        except ValueError:
            old = None
        why = resume_mismatch(old, fingerprint)
        if why is not None:
            raise PrepareError(
                f"{out} holds an interrupted prepare run with different inputs or filters ({why}); "
                "re-run with the original sources and settings to resume it, "
                "or pass --overwrite to start over"
            )
    elif work.exists():
        shutil.rmtree(work)
    parts_dir.mkdir(parents=True, exist_ok=True)
    if not state_path.exists():
        store.atomic_write_text(state_path, json.dumps(fingerprint))
    for p in parts_dir.glob(".*.tmp.*"):
        p.unlink(missing_ok=True)
    return parts_dir


def _remove_dataset(out: Path) -> None:
    for name in store.DATASET_ENTRIES:
        p = out / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
    shutil.rmtree(out / store.WORK_DIR, ignore_errors=True)
    for p in out.glob(".*.tmp*"):
        p.unlink(missing_ok=True)


class _Lock:
    """Exclusive, non-blocking lock on DIR/.prepare.lock (released automatically if killed)."""

    def __init__(self, path: Path):
        self.path = path
        self.fd: int | None = None

    def __enter__(self):
        import fcntl

        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self.fd)
            self.fd = None
            raise PrepareError(
                f"another `prepare` is writing to {self.path.parent} right now "
                f"(lock {self.path} is held)"
            ) from None
        return self

    def __exit__(self, *exc):
        if self.fd is not None:
            try:
                self.path.unlink(missing_ok=True)
            finally:
                os.close(self.fd)
                self.fd = None


class _Progress:
    def __init__(self, enabled: bool, total: int, done: int, kept: int, skipped: int):
        self.kept, self.skipped, self.done0 = kept, skipped, done
        self.t0 = time.monotonic()
        self.bar = None
        if enabled:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            from ...progress import (
                Progress,
            )  # rich's bar on a terminal, plain periodic lines in a log file

            self.bar = Progress(
                TextColumn("[bold]preparing"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("units"),
                TextColumn(
                    "kept [green]{task.fields[kept]}[/] skipped [yellow]{task.fields[skipped]}[/]"
                ),
                TextColumn("{task.fields[rate]}"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                transient=False,
            )
            self.bar.start()
            self.task = self.bar.add_task(
                "prepare", total=total, completed=done, kept=kept, skipped=skipped, rate=""
            )

    def advance(self, meta: PartMeta) -> None:
        self.kept += meta.n_kept
        self.skipped += len(meta.skipped)
        if self.bar is not None:
            t = self.bar.tasks[0]
            n_new = t.completed + 1 - self.done0
            rate = n_new / max(time.monotonic() - self.t0, 1e-9)
            self.bar.update(
                self.task,
                advance=1,
                kept=self.kept,
                skipped=self.skipped,
                rate=f"{rate:.1f} units/s",
            )

    def finish(self, kept: int, skipped: int) -> None:
        """Show the final counts: duplicates are only found once every unit is done."""
        self.kept, self.skipped = kept, skipped
        if self.bar is not None:
            self.bar.update(self.task, kept=kept, skipped=skipped)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
