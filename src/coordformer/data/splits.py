"""Train/valid/test split assignment.

* ``random``: each chain goes to a split by a seeded hash of its id (sha256 of ``f"{seed}:{id}"``),
  so the assignment of an id never depends on which other chains are in the dataset.
* ``identity``: sequences are clustered with MMseqs2 at ``split_identity``; whole clusters are
  assigned by the seeded hash of the cluster representative's id, so a cluster never crosses splits.

Chains named in exclusion lists are forced into ``test`` (they must never reach train). Ids are
matched exactly first (after ``normalize_chain_id``: chain ids are case-sensitive, as in the PDB); a
listed id that matches no chain exactly but exactly one chain when case and the separators
``_ - . :`` are ignored (``1zfd_n`` vs ``1ZFD.N``) excludes that chain too: missing a leak is worse
than sending one chain too many to test. The caller logs such near misses by name.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from ..config import PrepareConfig
from ..errors import CoordformerError, OptionError
from .store import SPLIT_NAMES  # noqa: F401 - re-exported for prepare

TRAIN, VALID, TEST = 0, 1, 2
#: The strict hold-out's code for train homologues of --exclude chains: out of train and out of the
#: held-out splits (written to splits/aside.txt), so that moving them breaks no other pair.
ASIDE, ASIDE_NAME = 3, "aside"
SPLIT_METHODS = ("random", "identity")
HOLDOUT_MODES = ("clusters", "strict")
#: Coverage of the shorter sequence above which a hit counts as a homologue for the strict
#: hold-out (a domain or fragment of a train chain counts).
STRICT_COVERAGE = 0.5
#: Search-and-move rounds of the strict hold-out before it reports the leaks left.
STRICT_ROUNDS = 4


class SplitError(CoordformerError, RuntimeError):
    """Split assignment failed (e.g. MMseqs2 missing or failing); the message says what to do."""


def hash_unit(seed: int, key: str) -> float:
    """Stable pseudo-random number in [0, 1) from sha256 of ``f"{seed}:{key}"``."""
    h = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2.0**64


def split_of_key(seed: int, key: str, valid_fraction: float, test_fraction: float) -> int:
    u = hash_unit(seed, key)
    if u < test_fraction:
        return TEST
    if u < test_fraction + valid_fraction:
        return VALID
    return TRAIN


def check_split_config(config: PrepareConfig) -> None:
    if config.split not in SPLIT_METHODS:
        raise OptionError("split", config.split, f"must be one of {', '.join(SPLIT_METHODS)}")
    v, t = config.valid_fraction, config.test_fraction
    for name, value in (("valid_fraction", v), ("test_fraction", t)):
        if not 0 <= value <= 1:
            raise OptionError(name, value, "must be in [0, 1]")
    if v + t > 1:
        raise OptionError(
            "valid_fraction",
            v,
            f"with `test_fraction` {t} the two sum to {v + t:g}, but at most 1 can be held out "
            "(the rest is the train split); lower one of them",
        )
    if config.split == "identity" and not 0 < config.split_identity <= 1:
        raise OptionError("split_identity", config.split_identity, "must be in (0, 1]")
    if config.holdout not in HOLDOUT_MODES:
        raise OptionError("holdout", config.holdout, f"must be one of {', '.join(HOLDOUT_MODES)}")
    if config.holdout == "strict" and config.split != "identity":
        raise OptionError(
            "holdout", config.holdout, "needs split='identity' (its identity sets the homology)"
        )


def random_split(ids: Sequence[str], config: PrepareConfig) -> np.ndarray:
    """int8 split code (0 train, 1 valid, 2 test) per chain, by seeded hash of the chain id."""
    return np.fromiter(
        (split_of_key(config.seed, i, config.valid_fraction, config.test_fraction) for i in ids),
        dtype=np.int8,
        count=len(ids),
    )


def mmseqs_available(executable: str = "mmseqs") -> bool:
    return shutil.which(executable) is not None


_MMSEQS_INSTALL = "(e.g. `apt-get install mmseqs2` or `conda install -c bioconda mmseqs2`)"


def _mmseqs(executable: str, needed_for: str, alternative: str = "") -> str:
    """The path of the MMseqs2 executable; SplitError saying how to install it when missing."""
    exe = shutil.which(executable)
    if exe is None:
        raise SplitError(
            f"{needed_for} needs MMseqs2, but `{executable}` is not on PATH; install it "
            f"{_MMSEQS_INSTALL}{alternative}"
        )
    return exe


def _write_fasta(path: Path, sequences: Sequence[str]) -> None:
    """Sequences named by their index (an empty one as X, which MMseqs2 needs)."""
    with open(path, "w") as f:
        for i, s in enumerate(sequences):
            f.write(f">{i}\n{s or 'X'}\n")


def _run_mmseqs(cmd: list[str]) -> None:
    """Run an MMseqs2 workflow (``cmd[1]``); SplitError with the end of its output on failure."""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True)
    except OSError as e:
        raise SplitError(f"could not run {cmd[0]}: {e}") from e
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout or "").strip()[-2000:]
        raise SplitError(f"mmseqs {cmd[1]} failed (exit {proc.returncode}): {tail}")


def mmseqs_cluster(
    sequences: Sequence[str],
    min_seq_id: float,
    coverage: float = 0.8,
    cov_mode: int = 0,
    threads: int = 1,
    executable: str = "mmseqs",
    tmp_root: str | Path | None = None,
    log: Callable[[str], None] | None = None,
) -> np.ndarray:
    """Cluster sequences with ``mmseqs easy-cluster``; returns, per sequence, the index of its
    cluster representative (int64)."""
    n = len(sequences)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    exe = _mmseqs(executable, "split='identity'", " or use `--split random`")
    with tempfile.TemporaryDirectory(prefix="coordformer-mmseqs-", dir=tmp_root) as tmp:
        tmp = Path(tmp)
        fasta = tmp / "in.fasta"
        _write_fasta(fasta, sequences)
        cmd = [
            exe,
            "easy-cluster",
            str(fasta),
            str(tmp / "res"),
            str(tmp / "work"),
            "--min-seq-id",
            str(min_seq_id),
            "-c",
            str(coverage),
            "--cov-mode",
            str(cov_mode),
            "--threads",
            str(max(1, int(threads))),
            "-v",
            "1",
        ]
        if log:
            log(
                "running "
                + " ".join(cmd[1:2])
                + f" on {n} sequences (--min-seq-id {min_seq_id}, -c {coverage}, --cov-mode "
                f"{cov_mode}: a pair clusters when the alignment covers {coverage:.0%} of "
                + ("both sequences" if cov_mode == 0 else "one of them")
                + ")"
            )
        _run_mmseqs(cmd)
        rep = np.arange(n, dtype=np.int64)  # unlisted sequences are their own cluster
        with open(tmp / "res_cluster.tsv") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 2:
                    rep[int(parts[1])] = int(parts[0])
    return rep


@dataclass(frozen=True)
class Homologue:
    """A query's best hit among the targets of :func:`find_homologues` (identity and coverages are
    fractions of 1)."""

    target: int  # index into the targets
    identity: float
    query_coverage: float
    target_coverage: float

    @property
    def shorter_coverage(self) -> float:
        """Coverage of the shorter of the two sequences (the larger of the two coverages)."""
        return max(self.query_coverage, self.target_coverage)


def find_homologues(
    queries: Sequence[str],
    targets: Sequence[str],
    min_seq_id: float,
    min_coverage: float = 0.5,
    threads: int = 1,
    sensitivity: float = 7.5,
    executable: str = "mmseqs",
    tmp_root: str | Path | None = None,
    every_hit: bool = False,
) -> dict[int, Homologue] | dict[int, list[Homologue]]:
    """Queries with a homologue among the targets: ``mmseqs easy-search`` (E-value <= 1e-3 at
    ``sensitivity``), a hit counting when its sequence identity (over the alignment) is at least
    ``min_seq_id`` and it covers at least ``min_coverage`` of the shorter of the two sequences (so
    a fragment or single domain of a target counts, unlike under easy-cluster's default coverage of
    80% of both). Returns {query index: best hit (highest identity, then coverage)}, or with
    ``every_hit`` {query index: every such hit}."""
    if not len(queries) or not len(targets):
        return {}
    exe = _mmseqs(executable, "finding homologues")
    with tempfile.TemporaryDirectory(prefix="coordformer-mmseqs-", dir=tmp_root) as tmp:
        tmp = Path(tmp)
        for name, seqs in (("q", queries), ("t", targets)):
            _write_fasta(tmp / f"{name}.fasta", seqs)
        cmd = [
            exe, "easy-search", str(tmp / "q.fasta"), str(tmp / "t.fasta"), str(tmp / "hits.m8"),
            str(tmp / "work"), "--min-seq-id", str(min_seq_id), "-c", "0", "-s", str(sensitivity),
            "--format-output", "query,target,fident,qcov,tcov", "--threads",
            str(max(1, int(threads))), "-v", "1",
        ]  # fmt: skip
        _run_mmseqs(cmd)
        best: dict[int, Homologue] = {}
        every: dict[int, list[Homologue]] = {}
        with open(tmp / "hits.m8") as f:
            for line in f:
                q, tg, fid, qc, tc = line.split()
                h = Homologue(int(tg), float(fid), float(qc), float(tc))
                if h.identity < min_seq_id or h.shorter_coverage < min_coverage:
                    continue
                every.setdefault(int(q), []).append(h)
                old = best.get(int(q))
                if old is None or (h.identity, h.shorter_coverage) > (
                    old.identity,
                    old.shorter_coverage,
                ):
                    best[int(q)] = h
    return every if every_hit else best


def identity_split(
    ids: Sequence[str],
    sequences: Sequence[str],
    config: PrepareConfig,
    threads: int = 1,
    log: Callable[[str], None] | None = None,
    tmp_root: str | Path | None = None,
) -> tuple[np.ndarray, int]:
    """Split codes per chain with whole MMseqs2 clusters per split.

    Returns (codes, n_clusters, representative index per chain)."""
    rep = mmseqs_cluster(
        sequences, config.split_identity, threads=threads, log=log, tmp_root=tmp_root
    )
    codes = np.empty(len(ids), dtype=np.int8)
    cache: dict[int, int] = {}
    for i, r in enumerate(rep.tolist()):
        if r not in cache:
            cache[r] = split_of_key(
                config.seed, ids[r], config.valid_fraction, config.test_fraction
            )
        codes[i] = cache[r]
    return codes, len(cache), rep


@dataclass
class StrictHoldout:
    """What :func:`strict_holdout` moved: held-out chains into train, and train homologues of the
    chains that must stay out of train set aside (``ASIDE``); the rounds it took, and the held-out
    chains that still have a train homologue when it stopped (0 unless ``STRICT_ROUNDS`` ran
    out)."""

    to_train: list[int] = field(default_factory=list)
    aside: list[int] = field(default_factory=list)
    rounds: int = 0
    leaks_left: int = 0


def set_aside_homologues(
    sequences: Sequence[str],
    codes: np.ndarray,
    listed: Sequence[str],
    min_seq_id: float,
    threads: int = 1,
    tmp_root: str | Path | None = None,
) -> np.ndarray:
    """Set aside (``ASIDE``), in place, the train chains with a homologue among the ``listed``
    sequences (:func:`homologues_of_listed`); returns their indices."""
    aside = homologues_of_listed(
        sequences, np.flatnonzero(codes == TRAIN), listed, min_seq_id, threads, tmp_root
    )
    codes[aside] = ASIDE
    return aside


def homologues_of_listed(
    sequences: Sequence[str],
    among: np.ndarray,
    listed: Sequence[str],
    min_seq_id: float,
    threads: int = 1,
    tmp_root: str | Path | None = None,
) -> np.ndarray:
    """The chains of ``among`` (indices into ``sequences``) with a homologue among the ``listed``
    sequences: :func:`find_homologues` at ``min_seq_id`` over ``STRICT_COVERAGE`` of the shorter
    sequence. Sorted indices into ``sequences``."""
    if len(among) == 0 or not listed:
        return np.array([], dtype=np.int64)
    hits = find_homologues(
        [sequences[i] for i in among],
        listed,
        min_seq_id,
        STRICT_COVERAGE,
        threads=threads,
        tmp_root=tmp_root,
    )
    return np.asarray(among, dtype=np.int64)[sorted(hits)]


def _held_out_hits(sequences, codes, min_seq_id, threads, tmp_root) -> dict[int, list[int]]:
    """{held-out chain: its train homologues} (chain indices)."""
    held = np.flatnonzero((codes == VALID) | (codes == TEST))
    train = np.flatnonzero(codes == TRAIN)
    hits = find_homologues(
        [sequences[i] for i in held],
        [sequences[i] for i in train],
        min_seq_id,
        STRICT_COVERAGE,
        threads=threads,
        tmp_root=tmp_root,
        every_hit=True,
    )
    return {int(held[q]): [int(train[h.target]) for h in hs] for q, hs in hits.items()}


def strict_holdout(
    sequences: Sequence[str],
    codes: np.ndarray,
    clusters: np.ndarray,
    forced: np.ndarray,
    min_seq_id: float,
    threads: int = 1,
    log: Callable[[str], None] | None = None,
    tmp_root: str | Path | None = None,
) -> StrictHoldout:
    """Make the held-out splits free of train homologues, in place: a held-out chain with a train
    homologue (:func:`find_homologues` at ``min_seq_id`` over ``STRICT_COVERAGE`` of the shorter
    sequence, more sensitive than the clustering) moves into train with its whole cluster; a chain
    that must stay out of train (``forced`` [N] bool: the --exclude chains and their clusters)
    stays, and its train homologues are set aside (``ASIDE``: in no split, so that no further
    pair is made). Repeated while chains move into train (each can be a new homologue), for at
    most ``STRICT_ROUNDS`` rounds. ``codes`` [N] int8, ``clusters`` [N] representative index per
    chain."""
    out = StrictHoldout()
    for _ in range(STRICT_ROUNDS):
        hits = _held_out_hits(sequences, codes, min_seq_id, threads, tmp_root)
        if not hits:
            return out
        out.rounds += 1
        free = np.array([q for q in hits if not forced[q]], dtype=np.int64)
        aside = np.array(
            sorted({t for q, ts in hits.items() if forced[q] for t in ts}), dtype=np.int64
        )
        to_train = np.isin(clusters, clusters[free]) & ~forced & (codes != ASIDE)
        codes[to_train] = TRAIN
        codes[aside] = ASIDE
        out.to_train += np.flatnonzero(to_train).tolist()
        out.aside += aside.tolist()
        if log:
            log(
                f"strict hold-out, round {out.rounds}: {len(hits)} held-out chains had a train "
                f"homologue; {int(to_train.sum())} chains moved into train, {len(aside)} "
                "(homologues of excluded chains) set aside"
            )
    out.leaks_left = len(_held_out_hits(sequences, codes, min_seq_id, threads, tmp_root))
    return out


_SEPARATORS = re.compile(r"[-_.:]")


def loose_id(chain_id: str) -> str:
    """A chain id with case and the separators ``_ - . :`` ignored (for near-miss matching only)."""
    return _SEPARATORS.sub(".", chain_id.strip().casefold())


def _difference(listed: str, chain_id: str) -> str:
    if listed.casefold() == chain_id.casefold():
        return "differs in case"
    if _SEPARATORS.sub(".", listed) == _SEPARATORS.sub(".", chain_id):
        return "differs in separator"
    return "differs in case and separator"


@dataclass
class ExclusionMatch:
    """How the ids of exclusion lists matched a dataset's chains (see :func:`apply_exclusions`)."""

    #: [N] bool: chains forced into test by the lists (exact and near matches; not their clusters)
    hit: np.ndarray
    #: listed ids matching no chain exactly but exactly one loosely: (listed, chain id excluded,
    #: how)
    near: list[tuple[str, str, str]] = field(default_factory=list)
    #: listed ids matching no chain exactly and several loosely: (listed, [chain ids]); none
    #: excluded
    ambiguous: list[tuple[str, list[str]]] = field(default_factory=list)
    #: listed ids matching no chain at all
    missing: list[str] = field(default_factory=list)
    #: listed ids matching no chain exactly (near misses, ambiguous and missing ones), in list order
    unmatched: list[str] = field(default_factory=list)

    @property
    def n_found(self) -> int:
        """Chains forced into test by the lists (before whole clusters follow them)."""
        return int(self.hit.sum())


def match_exclusions(
    ids: Sequence[str], excluded: Iterable[str], normalize: Callable[[str], str]
) -> ExclusionMatch:
    """Which chains the listed ids ``excluded`` (already normalised; pass them in list order, not as
    a set, for a reproducible report) name: exactly (``normalize(id)`` or the id itself is listed),
    else, for an id matching nothing exactly, the one chain whose :func:`loose_id` is the same
    (several: ambiguous, none excluded)."""
    listed = list(dict.fromkeys(excluded))
    wanted = set(listed)
    hit = np.zeros(len(ids), dtype=bool)
    matched: set[str] = set()
    for i, c in enumerate(ids):
        n = normalize(c)
        for key in (n, c):
            if key in wanted:
                hit[i] = True
                matched.add(key)
    rest = [e for e in listed if e not in matched]
    out = ExclusionMatch(hit=hit, unmatched=rest)
    if not rest:
        return out
    loose: dict[str, list[int]] = {}
    for i, c in enumerate(ids):
        loose.setdefault(loose_id(c), []).append(i)
    for e in rest:
        cands = loose.get(loose_id(e), [])
        if len(cands) == 1:
            hit[cands[0]] = True
            out.near.append((e, ids[cands[0]], _difference(e, ids[cands[0]])))
        elif cands:
            out.ambiguous.append((e, [ids[i] for i in cands]))
        else:
            out.missing.append(e)
    return out


def apply_exclusions(
    ids: Sequence[str],
    codes: np.ndarray,
    excluded: Iterable[str],
    normalize: Callable[[str], str],
    clusters: np.ndarray | None = None,
) -> ExclusionMatch:
    """Force chains named in ``excluded`` into test, in place (matching: :func:`match_exclusions`);
    returns the match (``.n_found`` chains forced, near misses, unmatched ids).

    With ``clusters`` (representative index per chain, from an identity split) the excluded
    chains' whole clusters move to test as well, so no homologue of an excluded chain (at the
    clustering identity) stays in train.
    """
    m = match_exclusions(ids, excluded, normalize)
    codes[m.hit] = TEST
    if clusters is not None and m.hit.any():
        codes[np.isin(clusters, np.unique(clusters[m.hit]))] = TEST
    return m
