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

import gzip
import hashlib
import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data.splits import loose_id
from ..data.store import DatasetFormatError, PreparedDataset
from ..errors import UsageError
from ..model.weights import pretraining_data

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
    """The chains a model saw. ``by_id``: loose id -> split; ``by_sequence``: sequence digest ->
    split (``train`` where one is in both); ``sources``: the files or dataset folders they were
    read from (a run's datasets, and what its ``--init`` weights saw)."""

    sources: tuple[Path, ...]
    by_id: dict[str, str]
    by_sequence: dict[str, str]

    @property
    def counts(self) -> dict[str, int]:
        """split -> number of distinct chain ids (case and separators ignored)."""
        out: dict[str, int] = {}
        for split in self.by_id.values():
            out[split] = out.get(split, 0) + 1
        return out

    @classmethod
    def from_rows(cls, source: Path, rows: Iterable[tuple[str, str, str]]) -> TrainingChains:
        by_id: dict[str, str] = {}
        by_sequence: dict[str, str] = {}
        for chain_id, split, digest in rows:
            _note(by_id, loose_id(chain_id), split)
            _note(by_sequence, digest, split)
        return cls((source,), by_id, by_sequence)

    def merged(self, other: TrainingChains) -> TrainingChains:
        """The chains either saw (a chain in train in one and valid in the other counts as
        train)."""
        by_id, by_sequence = dict(self.by_id), dict(self.by_sequence)
        for key, split in other.by_id.items():
            _note(by_id, key, split)
        for key, split in other.by_sequence.items():
            _note(by_sequence, key, split)
        return TrainingChains((*self.sources, *other.sources), by_id, by_sequence)


def _note(table: dict[str, str], key: str, split: str) -> None:
    if table.get(key) != SEEN_SPLITS[0]:  # train stands over valid
        table[key] = split


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


def read_rows(path: str | Path) -> list[tuple[str, str, str]]:
    """The rows of a table written by :func:`write_training_chains`. UsageError for a file that is
    not one."""
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
            f"{p}: not a training-chains table ({type(e).__name__}: {e}); reinstall coordformer"
        ) from None
    return rows  # type: ignore[return-value]


def training_chains(name_or_path: str | Path, _depth: int = 0) -> TrainingChains | None:
    """The chains a shipped model (by name) or a ``pretrain`` run (folder or checkpoint in it) saw:
    a run's dataset, the datasets it trained on before (``--allow-new-data``) and what the weights
    it started from saw (``--init``). None when its files do not say, or not for all of these: an
    exported file or Hugging Face folder outside a run folder, a shipped model whose card lists
    none, a run one of whose dataset folders is gone or now holds other data."""
    record = pretraining_data(name_or_path)
    if record is None or record.get("chains") is None:
        return None
    source = record["chains"]
    if source.is_file():  # a shipped model's table: it covers what the model continued from
        return TrainingChains.from_rows(source, read_rows(source))
    out = None
    folders = [(source, record.get("fingerprint"))]
    folders += [(p.get("path"), p.get("fingerprint")) for p in record.get("previous") or ()]
    for folder, fingerprint in folders:
        if not isinstance(folder, (str, Path)):
            return None
        try:
            data = PreparedDataset(folder)
        except (
            DatasetFormatError
        ):  # moved, deleted or rewritten since: the run's chains are unknown
            return None
        if fingerprint and data.fingerprint != fingerprint:
            return None
        part = TrainingChains.from_rows(Path(folder), dataset_rows(data))
        out = part if out is None else out.merged(part)
    if record.get("init"):
        # a chain of --init runs ends at a shipped model or a random start; the depth bounds a
        # cycle of run folders that name each other
        earlier = training_chains(record["init"], _depth + 1) if _depth < 16 else None
        if earlier is None:
            return None
        out = out.merged(earlier)
    return out


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
    }


def seen_summary(label: str, seen: dict, split: str) -> str:
    """One line for a user: how many chains of ``split`` the model ``label`` saw, and how."""
    how = [
        f"{sum(seen[k].values())} by {what}"
        for k, what in (("same_id", "chain id"), ("same_sequence", "identical sequence"))
        if seen[k]
    ]
    return (
        f"{seen['seen']} of the {seen['n_chains']} chains of split {split!r} were in {label}'s "
        f"training data ({', '.join(how)}): its figures on them are not held out"
    )
