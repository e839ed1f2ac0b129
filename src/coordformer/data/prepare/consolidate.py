"""Assemble the finished units' parts into the dataset: arrays, chains.tsv, splits, skip log,
manifest.

Chain ids are made unique across inputs first (:func:`unique_structure_ids`). The arrays are
written under temporary names and ``os.replace``-d into place, ``manifest.json`` last (a folder
with a manifest is a finished dataset), and ``.work`` is removed at the end.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ... import __version__
from ...config import PrepareConfig
from ...constants import BACKBONE_ATOMS, DATASET_FORMAT_VERSION
from .. import splits as _splits
from .. import store
from .errors import PrepareError
from .policy import DUPLICATE
from .summary import PrepareSummary, RunLog
from .units import PartMeta, WorkUnit, part_path

#: Near misses of --exclude ids logged one per line (the rest: exclude_unmatched.txt).
_MAX_LOGGED = 20


@dataclass(frozen=True)
class FinishedRun:
    """A run whose units are all done: what consolidation assembles."""

    out: Path
    units: tuple[WorkUnit, ...]
    #: unit key -> its part's meta, for every unit
    metas: Mapping[str, PartMeta]
    #: (path, reason) of inputs that could not be used at all (first rows of skipped.tsv)
    bad_paths: tuple[tuple[str, str], ...]
    config: PrepareConfig
    #: --exclude ids, normalised, in list order
    excluded: tuple[str, ...]
    #: threads for MMseqs2 (split="identity")
    workers: int
    #: time.monotonic() when the run started (for the elapsed time)
    t0: float

    @property
    def parts_dir(self) -> Path:
        return self.out / store.WORK_DIR / "parts"

    def meta(self, unit: WorkUnit) -> PartMeta:
        return self.metas[unit.key]


@dataclass(frozen=True)
class Selection:
    """The chains that go into the dataset, in dataset order, and what was dropped on the way."""

    ids: list[str]
    sources: list[str]
    #: int64 [chains] residues per kept chain
    lengths: np.ndarray
    #: per unit: bool [chains in the part], which of its chains are kept
    keep_masks: list[np.ndarray]
    #: (input, reason) rows of skipped.tsv
    skipped_rows: list[tuple[str, str]]
    #: filter category -> chains dropped
    filtered: dict[str, int]
    inputs_skipped: int
    chains_read: int
    #: structure files named after the file (generic entry name), and files renamed by a clash
    n_generic: int
    n_renamed: int
    #: with --chains: chains read whose id names no chain, which --chains does not filter
    no_chain_ids: int = 0


def consolidate(run: FinishedRun, summary: PrepareSummary, log: RunLog) -> None:
    """Write the dataset of ``run`` into ``run.out`` and fill in ``summary``."""
    from ...io import normalize_chain_id as norm

    sel = select_chains(run.units, run.metas, run.bad_paths, summary, log, norm)
    _check_chains_found(run, sel, summary)
    out, config = run.out, run.config
    tmp, offsets = write_arrays(run, sel)
    n_res = int(offsets[-1])
    codes, match = assign_splits(run, sel, tmp[store.SEQ_FILE], offsets, summary, log, norm)
    names = _splits.SPLIT_NAMES + (
        (_splits.ASIDE_NAME,) if (codes == _splits.ASIDE).any() else ()
    )  # the strict hold-out's set-aside chains, in their own list when there are any
    split_counts = {name: int((codes == k).sum()) for k, name in enumerate(names)}
    fractions = (("valid", config.valid_fraction), ("test", config.test_fraction))
    summary.empty_splits = [
        name for name, frac in fractions if frac > 0 and sel.ids and not split_counts[name]
    ]

    for name in tmp:
        os.replace(tmp[name], out / name)
    store.write_tsv(
        out / store.CHAINS_FILE,
        store.CHAINS_HEADER,
        zip(sel.ids, sel.lengths.tolist(), sel.sources),
    )
    (out / store.SPLITS_DIR).mkdir(exist_ok=True)
    # an interrupted attempt with other split or exclusion settings (a resume may change them)
    # may have written lists this one does not: none may outlive it
    for old in (out / store.SPLITS_DIR).glob("*.txt"):
        if old.stem not in names:
            old.unlink()
    if not match.unmatched:
        (out / store.EXCLUDE_UNMATCHED_FILE).unlink(missing_ok=True)
    for k, name in enumerate(names):
        store.write_id_list(
            out / store.SPLITS_DIR / f"{name}.txt", (c for c, s in zip(sel.ids, codes) if s == k)
        )
    store.write_tsv(out / store.SKIPPED_FILE, store.SKIPPED_HEADER, sel.skipped_rows)
    if match.unmatched:  # an id list (read_id_list reads it back), each id with what became of it
        notes = {e: f"excluded {c} instead ({how})" for e, c, how in match.near}
        notes.update(
            {e: f"ambiguous, nothing excluded: {', '.join(cs)}" for e, cs in match.ambiguous}
        )
        store.atomic_write_text(
            out / store.EXCLUDE_UNMATCHED_FILE,
            "".join(f"{e}\t# {notes.get(e, 'not in the dataset')}\n" for e in match.unmatched),
        )

    summary.chains_read = sel.chains_read
    summary.seqres_mode = config.seqres
    summary.chains_kept = len(sel.ids)
    summary.n_residues = n_res
    summary.inputs_skipped = sel.inputs_skipped
    summary.chains_filtered = dict(sorted(sel.filtered.items()))
    summary.excluded_ids_found = match.n_found
    summary.excluded_ids_listed = len(run.excluded)
    summary.excluded_ids_unmatched = len(match.unmatched)
    summary.excluded_near_misses = [f"{e} -> {c} ({how})" for e, c, how in match.near]
    summary.files_generic_entry = sel.n_generic
    summary.files_renamed = sel.n_renamed
    summary.chains_without_chain_id = sel.no_chain_ids
    summary.splits = split_counts
    _log_exclusions(run, match, log)

    manifest = build_manifest(config, summary, match)
    manifest["content_digest"] = store.content_digest(out, sel.ids, codes)
    summary.elapsed_s = time.monotonic() - run.t0
    log(summary.format())
    store.atomic_write_text(out / store.LOG_FILE, "\n".join(log.lines) + "\n")
    _before_manifest(out)
    store.write_manifest(out, manifest)
    shutil.rmtree(out / store.WORK_DIR, ignore_errors=True)


def _before_manifest(out: Path) -> None:
    """Hook point between writing the data files and the manifest (tests simulate a kill here)."""


# ----------------------------------------------------------------------------------------------
# which chains
# ----------------------------------------------------------------------------------------------


def select_chains(
    units: Sequence[WorkUnit],
    metas: Mapping[str, PartMeta],
    bad_paths: Sequence[tuple[str, str]],
    summary: PrepareSummary,
    log: RunLog,
    norm: Callable[[str], str],
) -> Selection:
    """Every unit's kept chains in unit order, less duplicates (ids made unique first); counts the
    zero-coordinate and seqres chains into ``summary``. ``metas``: unit key -> its part's meta, for
    every unit; ``bad_paths``: (path, reason) of inputs that could not be used at all."""
    skipped_rows: list[tuple[str, str]] = [(str(p), str(r)) for p, r in bad_paths]
    filtered: dict[str, int] = {}
    inputs_skipped = len(bad_paths)
    chains_read = 0
    renamed, copies, renames = unique_structure_ids(units, metas, norm)
    generic = [
        (u.path, metas[u.key].ignored_entry)
        for u in units
        if u.kind == "file" and metas[u.key].ignored_entry and metas[u.key].ids
    ]
    if generic:
        log(
            f"ids: {len(generic)} structure files name themselves with a generic or non-archive "
            "entry name (mmCIF block name / PDB HEADER id, not a PDB or AlphaFold DB id); "
            "their chains are named after the file instead: "
            + _examples([f"{Path(p).name} ({name!r})" for p, name in generic])
        )
    if renames:
        log(
            f"ids: {len(renames)} structure files use an entry id that another input file uses "
            "for a different chain (decoys or models sharing a HEADER / block name, "
            "or files of the same name); renamed after the file: "
            + _examples([f"{Path(p).name}: {old} -> {new}" for p, old, new in renames]),
            logging.WARNING,
        )
    seen: dict[str, tuple[str, Any]] = {}
    ids: list[str] = []
    sources: list[str] = []
    lengths_list: list[np.ndarray] = []
    keep_masks: list[np.ndarray] = []
    for ui, u in enumerate(units):
        meta = metas[u.key]
        digests = meta.digests or [None] * len(meta.ids)
        chains_read += meta.chains_read
        for kind, inp, reason in meta.skipped:
            skipped_rows.append((inp, reason))
            if kind == "input":
                inputs_skipped += 1
            else:
                filtered[kind] = filtered.get(kind, 0) + 1
        keep = np.ones(len(meta.ids), dtype=bool)
        zero_coords = set(meta.zero_coords)
        experimental = set(meta.experimental)
        for j, (cid, src) in enumerate(zip(renamed.get(ui, meta.ids), meta.sources)):
            key = norm(cid)
            if (ui, j) in copies:  # the same chain as one read before (see unique_structure_ids)
                keep[j] = False
                filtered[DUPLICATE] = filtered.get(DUPLICATE, 0) + 1
                old = meta.ids[j]
                skipped_rows.append(
                    (
                        f"{old} [{src}]",
                        f"{DUPLICATE}: {old} already read from {copies[(ui, j)]} "
                        "(the same sequence and coordinates; kept the first)",
                    )
                )
                continue
            if key in seen:
                keep[j] = False
                filtered[DUPLICATE] = filtered.get(DUPLICATE, 0) + 1
                first_src, first_digest = seen[key]
                same = (
                    None
                    if first_digest is None or digests[j] is None
                    else first_digest == digests[j]
                )
                what = {
                    True: "the same sequence and coordinates",
                    False: "a different chain",
                    None: "not compared",
                }[same]
                skipped_rows.append(
                    (
                        f"{cid} [{src}]",
                        f"{DUPLICATE}: {cid} already read from {first_src} "
                        f"({what}; kept the first)",
                    )
                )
                continue
            seen[key] = (src, digests[j])
            if j in zero_coords:
                summary.chains_zero_coords += 1
                if len(summary.zero_coords_examples) < 10:
                    summary.zero_coords_examples.append(f"{cid} [{src}]")
            if j in experimental:
                summary.chains_experimental += 1
                if len(summary.experimental_examples) < 10:
                    summary.experimental_examples.append(f"{cid} [{src}]")
            ids.append(cid)
            sources.append(src)
            if meta.seqres_inserted is not None:
                n_in = meta.seqres_inserted[j]
                if n_in < 0:
                    summary.seqres_unavailable.append(f"{cid} [{src}]")
                else:
                    summary.seqres_residues_inserted += n_in
                    summary.seqres_chains_filled += n_in > 0
        keep_masks.append(keep)
        lengths_list.append(np.asarray(meta.lengths, dtype=np.int64)[keep])
    lengths = np.concatenate(lengths_list) if lengths_list else np.zeros(0, np.int64)
    assert len(lengths) == len(ids)
    return Selection(
        ids=ids,
        sources=sources,
        lengths=lengths,
        keep_masks=keep_masks,
        skipped_rows=skipped_rows,
        filtered=filtered,
        inputs_skipped=inputs_skipped,
        chains_read=chains_read,
        n_generic=len(generic),
        n_renamed=len(renames),
        no_chain_ids=sum(metas[u.key].no_chain_ids or 0 for u in units),
    )


def _check_chains_found(run: FinishedRun, sel: Selection, summary: PrepareSummary) -> None:
    """With --chains: note the requested ids no input has; when none has any, write skipped.tsv
    (it names each input's chains), leave no dataset behind and raise."""
    error = check_chains_found(run.config, run.units, run.metas, sel, summary)
    if error is not None:
        store.write_tsv(run.out / store.SKIPPED_FILE, store.SKIPPED_HEADER, sel.skipped_rows)
        shutil.rmtree(run.out / store.WORK_DIR, ignore_errors=True)
        raise error


def check_chains_found(
    config: PrepareConfig,
    units: Sequence[WorkUnit],
    metas: Mapping[str, PartMeta],
    sel: Selection,
    summary: PrepareSummary,
    outcome: str = "nothing was prepared (skipped.tsv names each input's chains)",
) -> PrepareError | None:
    """With ``config.chains``: note in ``summary`` the requested ids no input has; when no input has
    any, and no chain escaped the selection by naming no chain, the error to raise (after writing
    the skip log, which names each input's chains), ending with ``outcome``."""
    if not (config.chains and all(metas[u.key].chains_found is not None for u in units)):
        return None
    found = {c for u in units for c in metas[u.key].chains_found or ()}
    summary.chains_not_found = [c for c in config.chains if c not in found]
    if found or sel.no_chain_ids:
        return None
    have = {c for u in units for c in metas[u.key].chains_seen or ()}
    return PrepareError(
        f"--chains {','.join(config.chains)} matched no protein chain of the inputs"
        + (f" (their chains: {_examples(sorted(have), 20)})" if have else "")
        + f"; {outcome}"
    )


# ----------------------------------------------------------------------------------------------
# arrays and splits
# ----------------------------------------------------------------------------------------------


def write_arrays(run: FinishedRun, sel: Selection) -> tuple[dict[str, Path], np.ndarray]:
    """Copy the kept chains from the parts into the dataset arrays under temporary names.

    Returns ({array file name: temporary path}, offsets int64 [chains + 1]).
    """
    out, store_plddt = run.out, run.config.store_plddt
    offsets = np.zeros(len(sel.lengths) + 1, dtype=np.int64)
    np.cumsum(sel.lengths, out=offsets[1:])
    n_res = int(offsets[-1])
    tmp = {name: out / f".{name}.tmp" for name in store.ARRAY_FILES}
    seq_mm = np.lib.format.open_memmap(
        tmp[store.SEQ_FILE], mode="w+", dtype=np.uint8, shape=(n_res,)
    )
    crd_mm = np.lib.format.open_memmap(
        tmp[store.COORDS_FILE], mode="w+", dtype=np.float32, shape=(n_res, len(BACKBONE_ATOMS), 3)
    )
    pl_mm = None
    if store_plddt:
        tmp[store.PLDDT_FILE] = out / f".{store.PLDDT_FILE}.tmp"
        pl_mm = np.lib.format.open_memmap(
            tmp[store.PLDDT_FILE], mode="w+", dtype=np.float32, shape=(n_res,)
        )
    pos = 0
    for u, keep in zip(run.units, sel.keep_masks):
        if not keep.any():
            continue
        with np.load(part_path(run.parts_dir, u.key)) as z:
            res_keep = np.repeat(keep, z["lengths"])
            n = int(res_keep.sum())
            seq_mm[pos : pos + n] = z["seq"][res_keep]
            crd_mm[pos : pos + n] = z["coords"][res_keep]
            if pl_mm is not None:
                pl_mm[pos : pos + n] = z["plddt"][res_keep] if "plddt" in z.files else np.nan
        pos += n
    assert pos == n_res
    for mm in (seq_mm, crd_mm, pl_mm):
        if mm is not None:
            mm.flush()
    del seq_mm, crd_mm, pl_mm
    with open(tmp[store.OFFSETS_FILE], "wb") as f:  # a file object: np.save adds no ".npy"
        np.save(f, offsets)
    return tmp, offsets


def read_exclusion_sequences(config: PrepareConfig) -> list[str]:
    """The sequences of config.exclude_sequences (FASTA), in file order; PrepareError naming the
    file and the first bad record."""
    from ...io.fasta import read_fasta

    out: list[str] = []
    for f in config.exclude_sequences:
        if not Path(f).is_file():
            raise PrepareError(f"exclude-sequences file {f} does not exist")
        try:
            out += [c.sequence for c in read_fasta(f)]
        except Exception as e:  # noqa: BLE001 - StructureReadError
            raise PrepareError(
                f"cannot read exclude-sequences file {f}: {getattr(e, 'reason', e)}"
            ) from None
    return out


def assign_splits(
    run: FinishedRun,
    sel: Selection,
    seq_path: Path,
    offsets: np.ndarray,
    summary: PrepareSummary,
    log: RunLog,
    norm: Callable[[str], str],
) -> tuple[np.ndarray, _splits.ExclusionMatch]:
    """int8 split code per kept chain (random, or by MMseqs2 cluster), with the --exclude ids
    (and, for an identity split, their clusters) forced into test; and how those ids matched."""
    config, ids = run.config, sel.ids
    seqs: list[str] = []
    if config.split == "identity" or config.exclude_sequences:
        seq = np.load(seq_path, mmap_mode="r")
        seqs = [bytes(seq[offsets[i] : offsets[i + 1]]).decode("ascii") for i in range(len(ids))]
        del seq
    if config.split == "identity":
        codes, n_clusters, clusters = _splits.identity_split(
            ids, seqs, config, threads=run.workers, log=log, tmp_root=run.out / store.WORK_DIR
        )
        summary.n_clusters = n_clusters
        log(
            f"MMseqs2 found {n_clusters} clusters at {config.split_identity:.0%} identity "
            f"among {len(ids)} chains"
        )
    else:
        codes, clusters = _splits.random_split(ids, config), None
    match = _splits.apply_exclusions(ids, codes, list(run.excluded), norm, clusters)
    search = dict(threads=run.workers, tmp_root=run.out / store.WORK_DIR)  # every MMseqs2 search
    if config.exclude_sequences:
        listed = read_exclusion_sequences(config)
        aside = _splits.set_aside_homologues(seqs, codes, listed, config.split_identity, **search)
        summary.excluded_by_sequence = len(aside)
        log(
            f"exclude: {len(aside)} train chains have a homologue among the "
            f"{len(listed)} sequences of {', '.join(config.exclude_sequences)} "
            f"(>= {config.split_identity:.0%} identity over half the shorter chain): set aside"
        )
    if config.holdout == "strict" and clusters is not None:
        forced = np.isin(clusters, clusters[match.hit])  # the excluded chains' clusters
        if config.exclude_sequences:
            # a held-out homologue of a listed sequence must stay out of train too: the hold-out
            # would otherwise move it (with its cluster) into train, past the set-aside above
            held = np.flatnonzero((codes == _splits.VALID) | (codes == _splits.TEST))
            forced[
                _splits.homologues_of_listed(seqs, held, listed, config.split_identity, **search)
            ] = True
        res = _splits.strict_holdout(
            seqs, codes, clusters, forced, config.split_identity, log=log, **search
        )
        summary.holdout_to_train = len(res.to_train)
        summary.holdout_aside = len(res.aside)
        summary.holdout_leaks_left = res.leaks_left
        log(
            f"strict hold-out: {len(res.to_train)} chains moved into train, {len(res.aside)} set "
            f"aside in {res.rounds} rounds; {res.leaks_left} held-out chains still have a train "
            "homologue",
            logging.WARNING if res.leaks_left else logging.INFO,
        )
        if config.exclude_sequences and len(res.to_train):
            # the chains moved into train share clusters with held-out chains, not a sequence
            # with the listed ones, as far as the search above saw; check what train holds now
            late = _splits.set_aside_homologues(
                seqs, codes, listed, config.split_identity, **search
            )
            if len(late):
                summary.excluded_by_sequence += len(late)
                log(
                    f"exclude: {len(late)} chains the strict hold-out moved into train have a "
                    "homologue among the excluded sequences: set aside"
                )
    return codes, match


# ----------------------------------------------------------------------------------------------
# report and manifest
# ----------------------------------------------------------------------------------------------


def _log_exclusions(run: FinishedRun, match: _splits.ExclusionMatch, log: RunLog) -> None:
    if not match.unmatched:
        return
    log(
        f"exclude: {len(match.unmatched)} of {len(run.excluded)} listed ids match no chain "
        "exactly; all are in "
        f"{run.out / store.EXCLUDE_UNMATCHED_FILE} with what became of each",
        logging.WARNING,
    )
    for e, c, how in match.near[:_MAX_LOGGED]:
        log(
            f"exclude: {e} matches no chain exactly; "
            f"excluded {c} instead ({how}, the only near match)",
            logging.WARNING,
        )
    for e, cs in match.ambiguous[:_MAX_LOGGED]:
        log(
            f"exclude: {e} matches no chain exactly and several loosely ({', '.join(cs)}); "
            "none excluded",
            logging.WARNING,
        )
    n_more = max(0, len(match.near) - _MAX_LOGGED) + max(0, len(match.ambiguous) - _MAX_LOGGED)
    if n_more:
        log(
            f"exclude: {n_more} more near misses (see {store.EXCLUDE_UNMATCHED_FILE})",
            logging.WARNING,
        )
    if match.missing:
        log(
            f"exclude: {len(match.missing)} listed ids are not in the dataset, nothing excluded "
            f"for them (all in {run.out / store.EXCLUDE_UNMATCHED_FILE}): "
            + _examples(match.missing, 20),
            logging.WARNING,
        )


def build_manifest(
    config: PrepareConfig, summary: PrepareSummary, match: _splits.ExclusionMatch
) -> dict[str, Any]:
    """manifest.json of a dataset whose ``summary`` is filled in (all but the elapsed time)."""
    return {
        "format_version": DATASET_FORMAT_VERSION,
        "coordformer_version": __version__,
        "config": config.to_dict(),
        "n_chains": summary.chains_kept,
        "n_residues": summary.n_residues,
        "atoms": list(BACKBONE_ATOMS),
        "counts": {
            "sources": summary.n_sources,
            "units": summary.n_units,
            "chains_read": summary.chains_read,
            "chains_kept": summary.chains_kept,
            "inputs_skipped": summary.inputs_skipped,
            "chains_filtered": summary.chains_filtered,
            "excluded_ids_found": match.n_found,
            "excluded_ids_unmatched": len(match.unmatched),
            "excluded_near_misses": len(match.near),
            "files_generic_entry": summary.files_generic_entry,
            "files_renamed": summary.files_renamed,
            "chains_zero_coords": summary.chains_zero_coords,
            **(
                {"chains_experimental_no_plddt": summary.chains_experimental}
                if config.plddt_min is not None or config.store_plddt
                else {}
            ),
            **(
                {
                    "chains_not_found": summary.chains_not_found,
                    "chains_without_chain_id": summary.chains_without_chain_id,
                }
                if config.chains
                else {}
            ),
            "empty_splits": summary.empty_splits,
            **(
                {
                    "seqres_residues_inserted": summary.seqres_residues_inserted,
                    "seqres_chains_filled": summary.seqres_chains_filled,
                    "seqres_unavailable": len(summary.seqres_unavailable),
                }
                if config.seqres != "off"
                else {}
            ),
        },
        "splits": summary.splits,
        "n_clusters": summary.n_clusters,
        **(
            {"excluded_by_sequence": summary.excluded_by_sequence}
            if config.exclude_sequences
            else {}
        ),
        **(
            {
                "holdout": {
                    "moved_to_train": summary.holdout_to_train,
                    "set_aside": summary.holdout_aside,
                    "leaks_left": summary.holdout_leaks_left,
                    "min_coverage": _splits.STRICT_COVERAGE,
                }
            }
            if config.holdout == "strict"
            else {}
        ),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


# ----------------------------------------------------------------------------------------------
# unique chain ids
# ----------------------------------------------------------------------------------------------


def _entry_names(path: str) -> list[str]:
    """Entry names for the chains of structure file ``path``, tried in order when its entry id is
    not unique: the file name without endings, then FOLDER_STEM (the numbered fallback is added by
    the caller)."""
    from ...io import file_stem, normalize_entry

    p = Path(path)
    stem = normalize_entry("_".join(file_stem(p).split()))
    names = [stem]
    if p.parent.name:
        names.append("_".join(f"{p.parent.name}_{stem}".split()))
    return names


def unique_structure_ids(
    units: Sequence[WorkUnit], metas: Mapping[str, PartMeta], norm: Callable[[str], str]
) -> tuple[dict[int, list[str]], dict[tuple[int, int], str], list[tuple[str, str, str]]]:
    """Chain ids unique per input file, and the real duplicates.

    A chain with the same (normalised) id and the same ``chain_digest`` as an earlier one is a
    real duplicate (the same chain in two files): it is returned in ``copies`` with the first
    one's source, to be dropped. Where chains with one id differ, every structure file of the clash
    moves to its next entry name (:func:`_entry_names`, then NAME_2, NAME_3 ...) until no clash is
    left; chain_set / FASTA records keep their ids (the caller drops later ones as before).

    Returns ({unit index: new ids} for renamed files, copies {(unit index, chain index): first
    source}, [(path, old entry, new entry)] per renamed file).
    """
    cur: dict[int, list[str]] = {}
    dig: dict[int, list] = {}
    groups: dict[str, list[tuple[int, int]]] = {}
    first_copy: dict[tuple[str, str], str] = {}
    copies: dict[tuple[int, int], str] = {}
    for i, u in enumerate(units):
        meta = metas[u.key]
        cur[i] = list(meta.ids)
        dig[i] = list(meta.digests or [None] * len(meta.ids))  # parts of older runs: unknown
        for j, cid in enumerate(cur[i]):
            key = norm(cid)
            if dig[i][j] is not None:
                if (key, dig[i][j]) in first_copy:
                    copies[(i, j)] = first_copy[(key, dig[i][j])]
                    continue
                first_copy[(key, dig[i][j])] = meta.sources[j]
            groups.setdefault(key, []).append((i, j))
    files = {i for i, u in enumerate(units) if u.kind == "file" and cur[i]}
    tried: dict[int, int] = {}  # file -> how many of its _entry_names it has used
    final: set[int] = set()  # files on a numbered name, unique by construction
    first_entry: dict[int, str] = {}
    queue = [k for k, g in groups.items() if len(g) > 1]
    while queue:
        key = queue.pop()
        members = groups.get(key, ())
        if len(members) < 2 or len({dig[i][j] for i, j in members} - {None}) < 2:
            continue  # unique, or unknown (parts from an older version)
        owners = {i for i, _ in members}
        movers = sorted(i for i in owners if i in files and i not in final)
        stayed = False
        for n, i in enumerate(movers):
            old = cur[i][0].rpartition(".")[0]
            names = _entry_names(units[i].path)
            t = tried.get(i, 0)
            tried[i] = t + 1
            if t < len(names):
                new = names[t]
                if (
                    new == old
                ):  # already on this name (e.g. the file holding the real 1ABC): others move
                    stayed = True
                    continue
            elif n == 0 and owners <= set(movers):  # names exhausted; the first file keeps the name
                final.add(i)
                stayed = True
                continue
            else:  # names exhausted: the last one with the first free number
                chains = [cid.rpartition(".")[2] for cid in cur[i]]
                k = 2
                while any(groups.get(norm(f"{names[-1]}_{k}.{c}")) for c in chains):
                    k += 1
                new = f"{names[-1]}_{k}"
                final.add(i)
            first_entry.setdefault(i, old)
            live = [j for j in range(len(cur[i])) if (i, j) not in copies]
            for j in live:
                groups[norm(cur[i][j])].remove((i, j))
            cur[i] = [f"{new}.{cid.rpartition('.')[2]}" for cid in cur[i]]
            for j in live:
                k2 = norm(cur[i][j])
                groups.setdefault(k2, []).append((i, j))
                queue.append(k2)
        if stayed:
            queue.append(key)  # the clash may remain between files that did not move this round
    renamed = {i: cur[i] for i in first_entry if cur[i] != list(metas[units[i].key].ids)}
    log = [(units[i].path, first_entry[i], cur[i][0].rpartition(".")[0]) for i in sorted(renamed)]
    return renamed, copies, log


def _examples(items: Sequence[str], n: int = 10) -> str:
    shown = ", ".join(items[:n])
    return shown + (f" ... ({len(items) - n} more)" if len(items) > n else "")
