"""``prepare()``: plan the work units, run them (resuming an interrupted run), consolidate.

The output folder is locked for the run; ``DIR/.work`` holds the run's fingerprint
(``resume`` module) and the finished units' parts until the dataset is complete.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Iterable

from ...config import ConfigError, PrepareConfig
from ...constants import SEQRES_MODES
from .. import splits as _splits
from .. import store
from .consolidate import FinishedRun, consolidate
from .errors import PrepareError
from .pool import run_parallel
from .resume import resume_mismatch, run_fingerprint
from .summary import PrepareSummary, RunLog
from .units import DEFAULT_CHUNK_LINES, PartMeta, part_path, plan_units, read_part_meta, run_unit


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
    """Prepare a dataset in ``out_dir`` from structure files, folders, chain_set JSONL and FASTA files.

    FASTA records become chains with every coordinate missing (NaN) and are exempt from
    ``config.max_missing_ca``; structure and chain_set inputs are filtered by it.

    Re-running with the same arguments after an interruption resumes; ``overwrite=True`` discards
    an existing dataset or interrupted run in ``out_dir`` and starts over. Unreadable inputs and
    filtered chains are listed in ``skipped.tsv``; they never stop the run.
    """
    from ...io import find_sources

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
    if config.split == "identity" and not _splits.mmseqs_available():
        raise PrepareError(
            "split='identity' needs MMseqs2 (`mmseqs` not found on PATH): install it "
            "(`apt-get install mmseqs2` or `conda install -c bioconda mmseqs2`) or use `--split random`"
        )

    out.mkdir(parents=True, exist_ok=True)
    with _Lock(out / ".prepare.lock"):
        if store.is_finished_dataset(out):
            if not overwrite:
                raise PrepareError(f"{out} already holds a prepared dataset; choose another folder or pass --overwrite to replace it")
            logger(f"overwrite: removing the existing dataset in {out}")
            _remove_dataset(out)
        elif overwrite:
            _remove_dataset(out)

        srcs, bad = find_sources(sources, skip=[out])
        srcs = list(srcs)
        bad_paths = [(str(p), str(r)) for p, r in bad]
        if not srcs:
            detail = "; ".join(f"{p}: {r}" for p, r in bad_paths[:5])
            raise PrepareError(f"no structure files found in {', '.join(map(str, sources))}" + (f" ({detail})" if detail else ""))
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
        summary = PrepareSummary(out_dir=str(out), n_sources=len(srcs), n_units=len(units), units_resumed=len(metas))
        n_cs = len({u.path for u in units if u.kind == "chain_set"})
        logger(
            f"prepare {out}: {len(srcs)} sources ({n_cs} chain_set files), {len(bad_paths)} bad paths, "
            f"{len(units)} work units, workers={workers}"
        )
        if metas:
            logger(f"resuming an interrupted run: {len(metas)} of {len(units)} units already done")

        bar = _Progress(progress, len(units), len(metas), sum(m.n_kept for m in metas.values()),
                        sum(len(m.skipped) for m in metas.values()))

        def on_done(meta: PartMeta) -> None:
            metas[meta.key] = meta
            bar.advance(meta)

        try:
            if workers == 1 or len(pending) <= 1:
                for u in pending:
                    on_done(run_unit(u, config, str(parts_dir)))
            else:
                run_parallel(pending, config, parts_dir, workers, on_done, logger)
        finally:
            bar.close()
        run = FinishedRun(out=out, units=tuple(units), metas=metas, bad_paths=tuple(bad_paths),
                          config=config, excluded=tuple(excluded), workers=workers, t0=t0)
        consolidate(run, summary, logger)
    return summary


def _check_config(config: PrepareConfig) -> None:
    _splits.check_split_config(config)
    if config.min_length < 0 or config.max_length < config.min_length:
        raise ConfigError(f"need 0 <= min_length <= max_length, got {config.min_length}, {config.max_length}")
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
    fingerprint matches (PrepareError when it does not); a work folder without state is discarded."""
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
                "re-run with the original sources and settings to resume it, or pass --overwrite to start over"
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
            raise PrepareError(f"another `prepare` is writing to {self.path.parent} right now (lock {self.path} is held)") from None
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
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            from ...progress import Progress  # rich's bar on a terminal, plain periodic lines in a log file

            self.bar = Progress(
                TextColumn("[bold]preparing"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("units"),
                TextColumn("kept [green]{task.fields[kept]}[/] skipped [yellow]{task.fields[skipped]}[/]"),
                TextColumn("{task.fields[rate]}"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                transient=False,
            )
            self.bar.start()
            self.task = self.bar.add_task("prepare", total=total, completed=done, kept=kept, skipped=skipped, rate="")

    def advance(self, meta: PartMeta) -> None:
        self.kept += meta.n_kept
        self.skipped += len(meta.skipped)
        if self.bar is not None:
            t = self.bar.tasks[0]
            n_new = t.completed + 1 - self.done0
            rate = n_new / max(time.monotonic() - self.t0, 1e-9)
            self.bar.update(self.task, advance=1, kept=self.kept, skipped=self.skipped, rate=f"{rate:.1f} units/s")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
