"""Substitution scoring with masked marginals (the ProteinGym zero-shot convention).

A mutant is written ``A23G`` (wild type, position, new residue), several joined by ``:``
(``A23G:K45R``), optionally chain-qualified: ``A:A23G`` (a chain prefix applies to the substitutions
after it until the next prefix, so ``A:A23G:B:K45R`` mutates two chains and ``A:A23G:K45R`` two
residues of chain A). A chain is named by its author chain id (``A``) or its full id (``1ORC.A``).
``WT`` (or ``_wt``, any case) is the wild type itself and scores 0.

**Numbering.** ``numbering="index"``: positions are 1-based indices into the chain's sequence as
read (the first residue read is 1; ProteinGym's convention, whose mutant positions count from the
first residue of its target sequence). ``"author"``: positions are the structure file's author
residue numbers (``_atom_site.auth_seq_id`` / PDB columns 23-26), with an insertion code after the
number where there is one (``G100AK`` mutates the G at author number 100A to K). Only structure-file
chains carry author numbers. ``"auto"`` (default): author numbers where the chain has them, else
1-based indices. With index numbering, ``offset`` K makes mutant position p name residue p - K:
for a structure that covers the mutants' sequence from position K + 1 on (ProteinGym's
``pdb_range``). A wild-type letter that does not match is reported per mutant, which catches a
wrong numbering; :func:`index_numbering_note` catches the shift past residues a structure omits,
which a row whose letters happen to agree would not show.

**Score.** The wild-type structure and sequence are the input. For one substitution at position i,
score = log p(mut | x with i masked) - log p(wt | x with i masked): the masked marginal. For a
multi-mutant, ``multi="additive"`` (default) sums the single-substitution scores, each its
position's masked marginal (exact mode: a pass with only that position masked; fast mode: its pass
of the whole chain's plan, the same whatever else is scored); ``multi="joint"`` masks all mutated
positions of a chain together in one pass and sums log p(mut_i) - log p(wt_i) over them (the mutated
positions then do not see each other's wild type). Mutations in different chains are summed either
way (chains are scored as separate inputs).

Errors are :class:`MutationError` (a ``UsageError``), with the mutant, the reason, and where known
the chain and position. :func:`score_mutations` collects them for a batch (skipped, with the reason)
and scores the rest, or raises the first with ``strict=True``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch

from ..constants import AMINO_ACIDS
from ..errors import OptionError, UsageError
from ..io.structures import normalize_chain_id
from .marginals import (
    Pass,
    ScoreConfig,
    aa_index,
    ca_of,
    frames_run,
    joint_window,
    masked_marginals,
    model_inputs,
    run_passes,
)

if TYPE_CHECKING:
    from ..io import Chain
    from ..model.core import CoordFormer
    from .marginals import ChainScores

#: numbering= values.
NUMBERINGS = ("auto", "author", "index")
#: multi= values.
MULTI_MODES = ("additive", "joint")

_SUB_RE = re.compile(r"^([A-Za-z])(-?\d+)([A-Za-z]?)([A-Za-z])$")
#: a chain before ``:``: author chain id, ENTRY.CHAIN, or a renamed repeat's ENTRY.CHAIN#2
_CHAIN_RE = re.compile(r"^[A-Za-z0-9_.#\-]{1,40}$")
_WILD_TYPE = ("wt", "_wt", "wildtype", "wild-type", "wild_type")


class MutationError(UsageError):
    """A mutant that cannot be scored. ``mutant``: the text as given; ``reason``: why, one line;
    ``chain``: the chain id when known; ``position``: the position as written when known."""

    def __init__(
        self, mutant: str, reason: str, chain: str | None = None, position: str | None = None
    ):
        self.mutant, self.reason, self.chain, self.position = (
            str(mutant),
            str(reason),
            chain,
            position,
        )
        super().__init__(f"mutation {self.mutant!r}: {self.reason}")

    def __reduce__(self):
        return (type(self), (self.mutant, self.reason, self.chain, self.position))


@dataclass(frozen=True)
class Substitution:
    """One substitution as written: ``wt``/``mut`` one-letter codes (upper case), ``number`` the
    position as an int, ``icode`` an insertion code ("" if none), ``chain`` the qualifier or
    None."""

    wt: str
    number: int
    icode: str
    mut: str
    chain: str | None = None

    @property
    def position(self) -> str:
        return f"{self.number}{self.icode}"

    def __str__(self) -> str:
        return (f"{self.chain}:" if self.chain else "") + f"{self.wt}{self.position}{self.mut}"


def parse_mutant(text: str) -> list[Substitution]:
    """The substitutions of one mutant string (``A23G``, ``A23G:K45R``, ``A:A23G``); [] for the wild
    type (``WT``). Raises MutationError for anything else."""
    raw = str(text).strip()
    if raw.lower() in _WILD_TYPE:
        return []
    if not raw:
        raise MutationError(raw, "empty mutant")
    subs: list[Substitution] = []
    chain = None
    pending_chain = False
    for tok in raw.split(":"):
        tok = tok.strip()
        m = _SUB_RE.match(tok)
        if m:
            wt, num, icode, mut = m.groups()
            wt, mut = wt.upper(), mut.upper()
            if wt not in AMINO_ACIDS:
                raise MutationError(
                    raw,
                    f"wild type {wt!r} in {tok} is not one of the 20 amino acids",
                    chain,
                    f"{num}{icode}",
                )
            if mut not in AMINO_ACIDS:
                raise MutationError(
                    raw,
                    f"{mut!r} in {tok} is not one of the 20 amino acids ({AMINO_ACIDS})",
                    chain,
                    f"{num}{icode}",
                )
            subs.append(Substitution(wt, int(num), icode, mut, chain))
            pending_chain = False
        elif tok and _CHAIN_RE.match(tok) and not pending_chain:
            chain, pending_chain = tok, True
        else:
            raise MutationError(
                raw, f"{tok!r} is not a substitution like A23G (forms: A23G, A23G:K45R, A:A23G)"
            )
    if pending_chain:
        raise MutationError(
            raw,
            f"chain prefix {chain!r} is not followed by a substitution (forms: A23G, A23G:K45R, "
            "A:A23G)",
        )
    return subs


@dataclass(frozen=True)
class ResolvedSubstitution:
    """A substitution placed in the scored chains: ``chain`` index into the chain list, ``index``
    0-based residue index, ``wt``/``mut`` columns in AMINO_ACIDS."""

    chain: int
    index: int
    wt: int
    mut: int


def author_chain(chain_id: str) -> str:
    """The author chain part of an ``ENTRY.CHAIN`` id (``ENTRY.CHAIN#2``, a second chain under an id
    already seen, has the author chain ``CHAIN`` too)."""
    return str(chain_id).rsplit(".", 1)[-1].split("#", 1)[0]


class ChainIndex:
    """Looks up chains by qualifier and positions by numbering, for mutants against ``chains``."""

    def __init__(
        self, chains, numbering: str = "auto", default_chain: str | None = None, offset: int = 0
    ):
        if numbering not in NUMBERINGS:
            raise UsageError(f"numbering must be one of {', '.join(NUMBERINGS)}, not {numbering!r}")
        self.chains = list(chains)
        self.numbering = numbering
        self.offset = int(offset)
        self._author: list[dict[str, int] | None] = []
        # author numbers that name several residues of a chain: a mutant there is ambiguous
        self._repeated: list[dict[str, list[int]]] = []
        for c in self.chains:
            ids = getattr(c, "residue_ids", None)
            repeated: dict[str, list[int]] = {}
            self._repeated.append(repeated)
            if ids is None:
                self._author.append(None)
                continue
            table: dict[str, int] = {}
            for i, rid in enumerate(ids):
                if not rid:  # "" = put back from SEQRES: no author number
                    continue
                if rid in table:
                    repeated.setdefault(rid, [table[rid]]).append(i)
                else:
                    table[rid] = i
            self._author.append(table)
        self.default = None
        if default_chain is not None:
            k = self.find(default_chain)
            if k is None:
                raise OptionError(
                    "chain", default_chain, f"is not among the scored chains ({self.names()})"
                )
            if k == -1:  # as an index, -1 would quietly pick the last chain
                raise OptionError(
                    "chain",
                    default_chain,
                    f"is ambiguous: several scored chains have it ({self.names()}); use the full "
                    "id (ENTRY.CHAIN)",
                )
            self.default = k

    def names(self, n: int = 8) -> str:
        ids = [c.id for c in self.chains]
        return ", ".join(ids[:n]) + (f", ... ({len(ids)} chains)" if len(ids) > n else "")

    def find(self, q: str) -> int | None:
        """Index of the chain named ``q`` (full id, normalised id, or author chain id); None if
        there is none, -1 if several chains have that author chain id (several input files)."""
        for k, c in enumerate(self.chains):
            if c.id == q:
                return k
        norm = normalize_chain_id(q)
        for k, c in enumerate(self.chains):
            if c.id == norm:
                return k
        hits = [k for k, c in enumerate(self.chains) if author_chain(c.id) == q]
        return hits[0] if len(hits) == 1 else (-1 if hits else None)

    def chain_for(self, mutant: str, sub: Substitution) -> int:
        if sub.chain is None:
            if self.default is not None:
                return self.default
            if len(self.chains) == 1:
                return 0
            raise MutationError(
                mutant,
                f"{sub} names no chain and {len(self.chains)} chains are scored ({self.names()}); "
                "qualify it (A:A23G) or give a default chain (`chain`)",
                None,
                sub.position,
            )
        k = self.find(sub.chain)
        if k is None:
            raise MutationError(
                mutant,
                f"chain {sub.chain!r} is not among the scored chains ({self.names()})",
                sub.chain,
                sub.position,
            )
        if k == -1:
            raise MutationError(
                mutant,
                f"chain {sub.chain!r} is ambiguous: several inputs have it; use the full id "
                "(ENTRY.CHAIN)",
                sub.chain,
                sub.position,
            )
        return k

    def uses_author(self, k: int) -> bool:
        return self.numbering == "author" or (
            self.numbering == "auto" and self._author[k] is not None
        )

    def describe(self, k: int) -> str:
        c = self.chains[k]
        if self.uses_author(k):
            ids = [r for r in c.residue_ids if r]
            return f"author numbers {ids[0]}-{ids[-1]}" if ids else "no author numbers"
        if self.offset:
            return (
                f"1-based index 1-{len(c.sequence)}, so mutant positions "
                f"{1 + self.offset}-{len(c.sequence) + self.offset} with offset {self.offset}"
            )
        return f"1-based index 1-{len(c.sequence)}"

    def index_of(self, mutant: str, k: int, sub: Substitution) -> int:
        c = self.chains[k]
        if self.uses_author(k):
            table = self._author[k]
            if table is None:
                raise MutationError(
                    mutant,
                    f"chain {c.id} has no author residue numbers (FASTA, chain_set without "
                    "residue_ids, or prepared input); use 1-based indices (`numbering=index`)",
                    c.id,
                    sub.position,
                )
            rid = sub.position
            if rid not in table and sub.icode:  # insertion codes are upper case in PDB files
                rid = f"{sub.number}{sub.icode.swapcase()}"
            i = table.get(rid)
            if i is not None and rid in self._repeated[k]:
                at = ", ".join(str(j + 1) for j in self._repeated[k][rid])
                raise MutationError(
                    mutant,
                    f"author number {rid} names several residues of chain {c.id} (indices {at}); "
                    "use 1-based indices (`numbering=index`)",
                    c.id,
                    sub.position,
                )
            if i is None:
                unnumbered = sum(not r for r in c.residue_ids)
                # residues put back from the deposited sequence (seqres gaps/all) have no author
                # number, so a position inside the numbered range can still be missing here
                hint = (
                    f"; its {unnumbered} residues put back from the deposited sequence have no "
                    "author number: use 1-based indices (`numbering=index`) to reach them"
                    if unnumbered
                    else ""
                )
                raise MutationError(
                    mutant,
                    f"position {sub.position} is not in chain {c.id} ({self.describe(k)}){hint}",
                    c.id,
                    sub.position,
                )
            return i
        if sub.icode:
            raise MutationError(
                mutant,
                f"position {sub.position} has an insertion code, which 1-based indices do not "
                "have; use `numbering=author`",
                c.id,
                sub.position,
            )
        i = sub.number - self.offset
        if not 1 <= i <= len(c.sequence):
            raise MutationError(
                mutant,
                f"position {sub.number} is outside chain {c.id} ({self.describe(k)})",
                c.id,
                sub.position,
            )
        return i - 1

    def resolve(self, mutant: str) -> list[ResolvedSubstitution]:
        """Parse and place ``mutant``; raises MutationError (wrong wild type, position outside the
        chain, unknown chain, a position mutated twice, bad syntax)."""
        out = []
        seen: set[tuple[int, int]] = set()
        for sub in parse_mutant(mutant):
            k = self.chain_for(mutant, sub)
            i = self.index_of(mutant, k, sub)
            c = self.chains[k]
            have = c.sequence[i]
            if have != sub.wt:
                where = (
                    f"author number {sub.position} (index {i + 1})"
                    if self.uses_author(k)
                    else f"index {i + 1}"
                    + (f" (position {sub.number} - offset {self.offset})" if self.offset else "")
                )
                raise MutationError(
                    mutant,
                    f"wild type mismatch: chain {c.id} has {have} at {where}, not {sub.wt}",
                    c.id,
                    sub.position,
                )
            if (k, i) in seen:
                raise MutationError(
                    mutant,
                    f"position {sub.position} of chain {c.id} is mutated twice",
                    c.id,
                    sub.position,
                )
            seen.add((k, i))
            out.append(
                ResolvedSubstitution(k, i, AMINO_ACIDS.index(sub.wt), AMINO_ACIDS.index(sub.mut))
            )
        return out


@dataclass
class MutationScore:
    """Score of one mutant: ``row`` its index in the input list; ``substitutions`` as placed;
    ``terms`` log p(mut) - log p(wt) per substitution (same order); ``score`` their sum."""

    row: int
    mutant: str
    substitutions: list[ResolvedSubstitution]
    terms: list[float]
    score: float


@dataclass
class MutationResults:
    """``scored`` in input order; ``skipped``: (row, mutant, reason) for mutants that could not be
    scored; ``n_passes``: forward passes run."""

    scored: list[MutationScore] = field(default_factory=list)
    skipped: list[tuple[int, str, str]] = field(default_factory=list)
    n_passes: int = 0


def score_mutations(
    model: CoordFormer,
    chains: Sequence[Chain],
    mutants: Sequence[str],
    cfg: ScoreConfig = ScoreConfig(),
    multi: str = "additive",
    numbering: str = "auto",
    default_chain: str | None = None,
    strict: bool = False,
    device: str | torch.device = "cpu",
    progress: bool = False,
    offset: int = 0,
) -> MutationResults:
    """Score ``mutants`` (strings, see the module docstring) against the wild-type ``chains``
    (``Chain`` objects: sequence, structure, author numbers). Bad mutants are skipped with their
    reason (or, with ``strict``, the first raises MutationError); the others are scored.

    Additive single-position marginals are computed once per distinct (chain, position), with
    ``cfg.mode`` ("fast" groups far-apart positions, see ``masking_plan``); joint passes once per
    distinct set of positions masked together. ``offset`` (index numbering only): a mutant position
    p names residue p - offset of the chain (1-based), for a structure that starts at position
    offset + 1 of the sequence the mutants are numbered on (ProteinGym's ``pdb_range``).
    """
    if multi not in MULTI_MODES:
        raise UsageError(f"multi must be one of {', '.join(MULTI_MODES)}, not {multi!r}")
    if isinstance(mutants, str):  # one mutant, not its letters
        mutants = [mutants]
    index = ChainIndex(chains, numbering, default_chain, offset)
    res = MutationResults()
    placed: list[tuple[int, str, list[ResolvedSubstitution]]] = []
    for row, m in enumerate(mutants):
        try:
            placed.append((row, str(m), index.resolve(str(m))))
        except MutationError as e:
            if strict:
                raise
            res.skipped.append((row, str(m), e.reason))

    def groups_of(subs: list[ResolvedSubstitution]) -> dict[int, list[ResolvedSubstitution]]:
        by: dict[int, list[ResolvedSubstitution]] = {}
        for s in subs:
            by.setdefault(s.chain, []).append(s)
        return by

    # which positions need a single-position marginal, which sets a joint pass
    single: list[set[int]] = [set() for _ in chains]
    joint: dict[tuple[int, tuple[int, ...]], int | None] = {}
    window = cfg.window_for(model.config.max_len)
    for row, m, subs in placed:
        for k, ss in groups_of(subs).items():
            if multi == "joint" and len(ss) > 1:
                key = (k, tuple(sorted(s.index for s in ss)))
                joint[key] = None
            else:
                single[k].update(s.index for s in ss)
    # joint passes that fit no window: those mutants are skipped
    joint_passes: list[Pass] = []
    bad_joint: set[tuple[int, tuple[int, ...]]] = set()
    for key in joint:
        k, pos = key
        arr = np.asarray(pos, dtype=np.int64)
        start = joint_window(len(chains[k].sequence), arr, window, cfg.overlap)
        if start is None:
            bad_joint.add(key)
            continue
        joint[key] = len(joint_passes)
        joint_passes.append(Pass(k, start, min(window, len(chains[k].sequence)), arr))
    marg = None
    if any(single):
        need = [sorted(s) if s else [] for s in single]
        marg = masked_marginals(
            model, chains, cfg, positions=need, device=device, progress=progress
        )
        res.n_passes += sum(m.n_passes for m in marg)
    joint_lp: list[np.ndarray] = []
    if joint_passes:
        toks, cos, pls = model_inputs(model, chains, cfg.use_coords)
        n_frames = frames_run(cfg.rotations, cos)
        joint_lp = run_passes(
            model, toks, cos, pls, joint_passes, cfg.tokens_per_batch, device, None, n_frames
        )
        res.n_passes += len(joint_passes) * n_frames
    for row, m, subs in placed:
        terms: dict[tuple[int, int], float] = {}
        failed = None
        for k, ss in groups_of(subs).items():
            if multi == "joint" and len(ss) > 1:
                key = (k, tuple(sorted(s.index for s in ss)))
                if key in bad_joint:
                    failed = (
                        f"positions {', '.join(str(i + 1) for i in key[1])} of chain "
                        f"{chains[k].id} do not fit in one window of {window} residues; score "
                        "them with multi='additive'"
                    )
                    break
                lp = joint_lp[joint[key]]
                where = {i: r for r, i in enumerate(key[1])}
                for s in ss:
                    terms[(k, s.index)] = float(lp[where[s.index], s.mut]) - float(
                        lp[where[s.index], s.wt]
                    )
            else:
                for s in ss:
                    lp = marg[k].log_probs[s.index]
                    terms[(k, s.index)] = float(lp[s.mut]) - float(lp[s.wt])
        if failed:
            if strict:
                raise MutationError(m, failed)
            res.skipped.append((row, m, failed))
            continue
        t = [terms[(s.chain, s.index)] for s in subs]
        res.scored.append(MutationScore(row, m, subs, t, float(sum(t))))
    res.scored.sort(key=lambda r: r.row)
    res.skipped.sort(key=lambda r: r[0])
    return res


#: Consecutive CAs farther apart than this (Angstrom) are a chain break: residues the file omits.
BREAK_DISTANCE = 4.2


def chain_breaks(chain) -> np.ndarray:
    """0-based indices i where residues i and i + 1 of ``chain`` both have a CA more than
    :data:`BREAK_DISTANCE` apart: the file omits residues there, so 1-based indices past i count
    fewer residues than the full sequence does."""
    ca = ca_of(chain).astype(np.float64)
    if len(ca) < 2:
        return np.zeros(0, dtype=np.int64)
    with np.errstate(invalid="ignore"):
        d = np.linalg.norm(ca[1:] - ca[:-1], axis=-1)
    return np.flatnonzero(d > BREAK_DISTANCE)  # NaN (a missing CA) is no break


def wild_type_target(mutant: str, mutated_sequence: str) -> str | None:
    """The wild-type sequence a ``mutated_sequence`` (ProteinGym's column: the whole mutated target
    sequence, positions 1-based) was made from, by reverting ``mutant``'s substitutions; None when
    the two do not agree."""
    try:
        subs = parse_mutant(mutant)
    except MutationError:
        return None
    seq = list(str(mutated_sequence).strip().upper())
    for sub in subs:
        if sub.icode or not 1 <= sub.number <= len(seq) or seq[sub.number - 1] != sub.mut:
            return None
        seq[sub.number - 1] = sub.wt
    return "".join(seq)


def index_numbering_note(chain, offset: int = 0, target: str | None = None) -> str | None:
    """A warning for mutants numbered by 1-based index on ``chain`` (mutant position p = residue
    p - ``offset``), or None. With ``target`` (the DMS target's wild-type sequence, from
    :func:`wild_type_target`): the chain must match it at that offset, which a structure that omits
    residues does not (only from its first gap on). Without: the chain's breaks
    (:func:`chain_breaks`), after which indices count fewer residues than the full sequence."""
    seq = chain.sequence
    if target is not None:
        j = np.arange(len(seq))
        ok = (j + offset >= 0) & (j + offset < len(target))
        if not ok.any():
            return (
                f"chain {chain.id} lies outside the table's mutated_sequence with offset {offset}"
            )
        same = np.array([seq[a] == target[a + offset] for a in j[ok]])
        if same.mean() >= 0.9:
            return None
        first = int(j[ok][np.flatnonzero(~same)[0]])
        return (
            f"chain {chain.id} matches the table's mutated_sequence (offset {offset}) at only "
            f"{same.mean():.0%} of its residues, the first mismatch at index {first + 1}: if the "
            "structure omits residues there, indices past the gap name the wrong residues; score "
            "with `seqres='gaps'` (--seqres gaps) or a structure of the whole sequence"
        )
    breaks = chain_breaks(chain)
    if not len(breaks):
        return None
    return (
        f"chain {chain.id} has {len(breaks)} chain break(s) (first after index {breaks[0] + 1}: "
        f"consecutive CAs more than {BREAK_DISTANCE} A apart), so 1-based indices past a break "
        "count fewer residues than the full sequence; if the mutants are numbered on the full "
        "sequence, score with `seqres='gaps'` (--seqres gaps) or use author numbers"
    )


def substitution_matrix(scores: ChainScores) -> np.ndarray:
    """[L, 20] float64 single-substitution scores log p(aa) - log p(wt) from one chain's
    ``ChainScores`` (a full deep-mutational scan from L passes; NaN rows where the native residue is
    X)."""
    lp = scores.log_probs.astype(np.float64)
    wt = aa_index(scores.sequence)
    out = np.full(lp.shape, np.nan)
    ok = wt >= 0
    out[ok] = lp[ok] - lp[np.flatnonzero(ok), wt[ok]][:, None]
    return out
