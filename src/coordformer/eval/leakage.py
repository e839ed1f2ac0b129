"""Were the chains scored in a model's training data? A check by chain id and by sequence.

A model's figures on chains it was trained on are not held-out figures. A shipped model lists the
chains it saw (its dataset's ``train`` and ``valid`` splits: the first trained it, the second chose
its best checkpoint) in a small table shipped beside its card (``training_chains`` there), one row
per chain: ``id  split  sequence_sha256``, the last the first 16 hex digits of the SHA-256 of the
chain's one-letter sequence as a prepared dataset stores it. Sequences themselves are not shipped.
A ``pretrain`` run folder lists its chains through the dataset folder its config.json records, as
long as that folder still holds the same data (same fingerprint).

A chain counts as seen when its id matches a listed id with case and the separators ``_ - . :``
ignored (``1abc_A`` and ``1ABC.A``), or when its sequence is identical to a listed one (the same
protein in another entry). Homologues are not detected: for that, cluster your chains against the
model's training data (``prepare --split identity`` does this within one dataset).
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from ..data.splits import loose_id
from ..data.store import DatasetFormatError, PreparedDataset
from ..errors import UsageError
from ..model.weights import pretraining_data, shipped_models_dir

#: The splits a model saw: ``train`` trained it, ``valid`` chose its best checkpoint.
SEEN_SPLITS = ("train", "valid")
HEADER = ("id", "split", "sequence_sha256")
#: What "seen" means, written beside every count of it.
METHOD = (
    "chain id (case and the separators _ - . : ignored) or identical sequence; homologues are "
    "not detected"
)


def sequence_digest(sequence: str) -> str:
    """First 16 hex digits of the SHA-256 of a one-letter sequence (upper case, X for unknown)."""
    return hashlib.sha256(sequence.encode("ascii")).hexdigest()[:16]


@dataclass(frozen=True)
class TrainingChains:
    """The chains a model saw: ``rows`` (id, split, sequence digest); ``sources``: the files or
    dataset folders they were read from (a run's datasets, and what its ``--init`` weights saw);
    ``unknown``: what it also saw that its files do not list (say, ``--init`` weights that are no
    longer there), empty when the list is complete."""

    sources: tuple[Path, ...]
    rows: tuple[tuple[str, str, str], ...]
    unknown: tuple[str, ...] = ()

    @property
    def complete(self) -> bool:
        return not self.unknown

    @cached_property
    def by_id(self) -> dict[str, str]:
        """loose id -> split (``train`` where one is in both)."""
        return _by(self.rows, lambda r: loose_id(r[0]))

    @cached_property
    def by_sequence(self) -> dict[str, str]:
        """sequence digest -> split (``train`` where one is in both)."""
        return _by(self.rows, lambda r: r[2])

    @property
    def counts(self) -> dict[str, int]:
        """split -> number of distinct chain ids (case and separators ignored)."""
        out: dict[str, int] = {}
        for split in self.by_id.values():
            out[split] = out.get(split, 0) + 1
        return out

    @classmethod
    def from_rows(cls, source: Path, rows: Iterable[tuple[str, str, str]]) -> TrainingChains:
        return cls((source,), tuple(tuple(r) for r in rows))  # type: ignore[misc]

    def merged(self, other: TrainingChains) -> TrainingChains:
        """The chains either saw (rows in both listed once)."""
        have = set(self.rows)
        rows = self.rows + tuple(r for r in other.rows if r not in have)
        return TrainingChains(
            (*self.sources, *other.sources), rows, (*self.unknown, *other.unknown)
        )

    def missing(self, what: str) -> TrainingChains:
        """The same list, known to lack ``what``."""
        return dataclasses.replace(self, unknown=(*self.unknown, what))


def _by(rows, key) -> dict[str, str]:
    table: dict[str, str] = {}
    for r in rows:
        k = key(r)
        if table.get(k) != SEEN_SPLITS[0]:  # train stands over valid
            table[k] = r[1]
    return table


def dataset_rows(data: PreparedDataset, splits: Sequence[str] = SEEN_SPLITS) -> list[tuple]:
    """(id, split, sequence digest) of each chain of ``splits`` in ``data``, in dataset order
    within each split; a split the dataset lacks (no validation) gives no rows."""
    rows = []
    for split in splits:
        if split not in data.split_names:
            continue
        rows += [
            (data.ids[i], split, sequence_digest(data.sequence(i)))
            for i in data.split_indices(split)
        ]
    return rows


def write_training_chains(rows: Sequence[tuple[str, str, str]], folder: str | Path) -> dict:
    """Write (id, split, sequence digest) rows (:func:`dataset_rows`) into ``folder`` as
    ``chains-<digest>.tsv.gz``, named by its content (models trained on one dataset share one
    file; the same bytes on every run: no time stamp in the gzip header). Returns the card's
    ``training_chains`` record: {"file", "splits": {split: n}, "sha256", "matched_by"}."""
    text = "\t".join(HEADER) + "\n" + "".join("\t".join(r) + "\n" for r in rows)
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0) as f:
        f.write(text.encode("ascii"))
    blob = buf.getvalue()
    sha = hashlib.sha256(text.encode("ascii")).hexdigest()
    name = f"chains-{sha[:12]}.tsv.gz"
    path = Path(folder) / name
    if not path.exists() or path.read_bytes() != blob:
        path.write_bytes(blob)
    counts: dict[str, int] = {}
    for _, split, _ in rows:
        counts[split] = counts.get(split, 0) + 1
    return {"file": name, "splits": counts, "sha256": sha, "matched_by": METHOD}


def read_rows(
    path: str | Path, remedy: str = "reinstall coordformer"
) -> list[tuple[str, str, str]]:
    """The rows of a table written by :func:`write_training_chains`. UsageError for a file that is
    not one, ending with ``remedy``."""
    p = Path(path)
    try:
        lines = gzip.decompress(p.read_bytes()).decode("ascii").splitlines()
        if not lines or tuple(lines[0].split("\t")) != HEADER:
            raise ValueError(f"first line is not {' '.join(HEADER)}")
        rows = [tuple(ln.split("\t")) for ln in lines[1:] if ln]
        if any(len(r) != len(HEADER) for r in rows):
            raise ValueError(f"a row without {len(HEADER)} fields")
    except (OSError, ValueError, EOFError) as e:
        raise UsageError(
            f"{p}: not a training-chains table ({type(e).__name__}: {e}); {remedy}"
        ) from None
    return rows  # type: ignore[return-value]


def training_chains(
    name_or_path: str | Path, datasets: Sequence[PreparedDataset] = ()
) -> TrainingChains | None:
    """The chains a shipped model (by name) or a ``pretrain`` run (folder or checkpoint in it) saw:
    a run's dataset, the datasets it trained on before (``--allow-new-data``) and what the weights
    it started from saw (``--init``). None when its files do not say (:func:`chain_listing` says
    why). A run's earlier dataset or ``--init`` weights that cannot be read leave the list
    incomplete (``unknown`` says what is missing). ``datasets``: prepared datasets that stand in for
    a recorded one that moved, when their fingerprint is the one recorded."""
    return chain_listing(name_or_path, datasets)[0]


def chain_listing(
    name_or_path: str | Path, datasets: Sequence[PreparedDataset] = (), _depth: int = 0
) -> tuple[TrainingChains | None, str | None]:
    """(:func:`training_chains`, why there is no list where the model's files promise one: a run
    whose dataset folder is gone or now holds other data, an exported folder whose table is
    missing or does not read). The reason is None when there is a list, or when the files never
    promised one (an exported file outside its run folder, a shipped model whose card lists
    none)."""
    record = pretraining_data(name_or_path)
    if record is None or record.get("chains") is None:
        return None, None
    source = record["chains"]
    if record.get("table"):  # a shipped or exported table: it covers what the model continued from
        if source.parent == shipped_models_dir():
            return TrainingChains.from_rows(source, read_rows(source)), None
        # a downloaded or copied folder (perhaps without its table, or cut short): not the
        # package's fault, and the model still runs; its list is unknown
        if not source.is_file():
            return None, (
                f"{source.name}, named in its config.json, is not in the folder; download or "
                "export the folder again"
            )
        try:
            rows = read_rows(source, "download or export the folder again")
        except UsageError as e:
            return None, str(e)
        return TrainingChains.from_rows(source, rows), None
    out, why = _dataset_chains(source, record.get("fingerprint"), datasets)
    if out is None:
        return None, why
    for p in record.get("previous") or ():
        earlier, _ = _dataset_chains(p.get("path"), p.get("fingerprint"), datasets)
        what = f"an earlier dataset ({p.get('path') or 'not recorded'})"
        out = out.missing(what) if earlier is None else out.merged(earlier)
    init = record.get("init")
    if init:
        # a chain of --init runs ends at a shipped model or a random start; the depth bounds a
        # cycle of run folders that name each other
        earlier = chain_listing(init, datasets, _depth + 1)[0] if _depth < 16 else None
        what = f"its --init weights ({init})"
        out = out.missing(what) if earlier is None else out.merged(earlier)
    return out, None


def _dataset_chains(
    folder, fingerprint: str | None, datasets: Sequence[PreparedDataset] = ()
) -> tuple[TrainingChains | None, str | None]:
    """(The train and valid chains of a dataset folder that still holds the data recorded (same
    fingerprint), or of one of ``datasets`` with that fingerprint; None and why when neither.)"""
    if not isinstance(folder, (str, Path)):
        return None, "its dataset is not recorded"
    # what could bring the list back: only the same data, found by its fingerprint
    again = "prepare it again as it was (same inputs and settings) to check against it"
    why = ""
    try:
        data = PreparedDataset(folder)
    except DatasetFormatError:  # moved, deleted or rewritten since
        data = None
        why = f"the dataset it trained on ({folder}) is gone; " + (
            "put it back, or score that dataset where it lies now"
            if fingerprint
            else f"its fingerprint was not recorded, so no copy can stand in: {again}"
        )
    if data is not None and fingerprint and data.fingerprint != fingerprint:
        why = (
            f"the dataset it trained on ({folder}) holds other data since (fingerprint "
            f"{data.fingerprint}, not {fingerprint}); {again}"
        )
        data = None
    if data is None:
        data = next((d for d in datasets if fingerprint and d.fingerprint == fingerprint), None)
        if data is None:
            return None, why
    return TrainingChains.from_rows(data.path, dataset_rows(data)), None


def seen_in_training(
    chains: TrainingChains, data: PreparedDataset, indices: Sequence[int] | np.ndarray
) -> dict:
    """Which of ``data``'s chains ``indices`` the model saw. Returns a JSON-ready dict:
    {"n_chains", "seen" (chains seen either way), "same_id" / "same_sequence": {split: n},
    "seen_ids" (dataset order), "seen_indices", "source", "matched_by"}."""
    same_id: dict[str, int] = {}
    same_sequence: dict[str, int] = {}
    seen: list[int] = []
    for i in (int(i) for i in indices):
        by_id = chains.by_id.get(loose_id(data.ids[i]))
        by_seq = chains.by_sequence.get(sequence_digest(data.sequence(i)))
        if by_id:
            same_id[by_id] = same_id.get(by_id, 0) + 1
        if by_seq:
            same_sequence[by_seq] = same_sequence.get(by_seq, 0) + 1
        if by_id or by_seq:
            seen.append(i)
    return {
        "n_chains": len(indices),
        "seen": len(seen),
        "same_id": same_id,
        "same_sequence": same_sequence,
        "seen_ids": [data.ids[i] for i in seen],
        "seen_indices": seen,
        "source": " + ".join(str(p) for p in chains.sources),
        "matched_by": METHOD,
        # what the model also saw that is not listed: a count that is a lower bound
        **({"unknown": list(chains.unknown)} if chains.unknown else {}),
    }


def seen_summary(label: str, seen: dict, split: str) -> str:
    """One line for a user: how many chains of ``split`` the model ``label`` saw, and how."""
    how = [
        f"{sum(seen[k].values())} by {what}"
        for k, what in (("same_id", "chain id"), ("same_sequence", "identical sequence"))
        if seen[k]
    ]
    unknown = seen.get("unknown")
    line = (
        f"{'at least ' if unknown else ''}{seen['seen']} of the {seen['n_chains']} chains of "
        f"split {split!r} were in {label}'s training data"
        + (f" ({', '.join(how)}): its figures on them are not held out" if how else "")
    )
    if unknown:
        line += f"; its chains are listed only in part (not listed: {'; '.join(unknown)})"
    return line
