"""What a prepare run did: counts for the log, the manifest and the command's output."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import logging
import sys
from dataclasses import dataclass, field
from typing import Any, Callable

from .. import store


@dataclass
class PrepareSummary:
    out_dir: str
    n_sources: int = 0
    n_units: int = 0
    units_resumed: int = 0
    chains_read: int = 0
    chains_kept: int = 0
    n_residues: int = 0
    inputs_skipped: int = 0
    chains_filtered: dict[str, int] = field(default_factory=dict)
    excluded_ids_found: int = 0
    excluded_ids_listed: int = 0
    #: listed ids matching no chain exactly (all in exclude_unmatched.txt), and of those the near
    #: misses excluded in their place, as "LISTED -> CHAIN (how)"
    excluded_ids_unmatched: int = 0
    excluded_near_misses: list[str] = field(default_factory=list)
    #: structure files whose own entry name (mmCIF block name / HEADER id) is not an archive id, so
    #: their chains are named after the file; and files renamed because another file used their
    #: entry id for a different chain
    files_generic_entry: int = 0
    files_renamed: int = 0
    splits: dict[str, int] = field(default_factory=dict)
    n_clusters: int | None = None
    #: strict hold-out (``PrepareConfig.holdout``): chains moved into train / set aside (in
    #: splits/aside.txt), and the held-out chains still with a train homologue (None when not
    #: asked for)
    #: train chains set aside for a homologue among --exclude-sequences (None when not asked for)
    excluded_by_sequence: int | None = None
    holdout_to_train: int | None = None
    holdout_aside: int | None = None
    holdout_leaks_left: int | None = None
    #: With PrepareConfig.seqres: unobserved residues put back, chains that got any, and kept
    #: structure-file chains left as modelled for want of a usable deposited sequence.
    seqres_residues_inserted: int = 0
    seqres_chains_filled: int = 0
    seqres_unavailable: list[str] = field(default_factory=list)
    seqres_mode: str = "off"
    #: kept chains whose every present coordinate is exactly 0 (a placeholder, not a structure)
    chains_zero_coords: int = 0
    zero_coords_examples: list[str] = field(default_factory=list)
    #: with PrepareConfig.plddt_min or store_plddt: kept chains of experimental structures (the
    #: file declares X-ray, NMR, cryo-EM ...), whose B-factors were not read as pLDDT
    chains_experimental: int = 0
    experimental_examples: list[str] = field(default_factory=list)
    #: with PrepareConfig.chains: the requested author chain ids that no input has
    chains_not_found: list[str] = field(default_factory=list)
    #: with PrepareConfig.chains: chains whose id names no chain (FASTA ``>seq2``), which
    #: --chains cannot select and so does not filter
    chains_without_chain_id: int = 0
    #: splits that came out empty although their fraction is above 0
    empty_splits: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0

    @property
    def in_memory(self) -> bool:
        """A read that kept its chains in memory (``read_in_memory``): no folder, splits or
        exclusions."""
        return not self.out_dir

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def n_skipped(self) -> int:
        """Rows of skipped.tsv: skipped inputs plus filtered chains."""
        return self.inputs_skipped + sum(self.chains_filtered.values())

    def format(self) -> str:
        filt = ", ".join(f"{k}: {v}" for k, v in sorted(self.chains_filtered.items())) or "none"
        spl = ", ".join(f"{k} {v}" for k, v in self.splits.items())
        lines = [
            f"prepared dataset: {self.out_dir}"
            if not self.in_memory
            else "inputs read in memory (no dataset written)",
            f"  sources: {self.n_sources} ({self.n_units} work units, "
            f"{self.units_resumed} resumed from an interrupted run)",
            f"  chains read: {self.chains_read}; kept: {self.chains_kept} "
            f"({self.n_residues} residues)",
            f"  inputs skipped (unreadable, or no chain to keep): {self.inputs_skipped}",
            f"  chains filtered: {filt}",
        ]
        if not self.in_memory:  # splits and exclusions are made for datasets only
            lines += [
                f"  splits: {spl}"
                + (
                    f" ({self.n_clusters} sequence clusters)" if self.n_clusters is not None else ""
                ),
                *(
                    [
                        f"  excluded by sequence: {self.excluded_by_sequence} train chains with "
                        "a homologue among --exclude-sequences set aside"
                        + (" (splits/aside.txt)" if self.excluded_by_sequence else "")
                    ]
                    if self.excluded_by_sequence is not None
                    else []
                ),
                *(
                    [
                        f"  strict hold-out: {self.holdout_to_train} held-out chains with a train "
                        f"homologue moved into train, {self.holdout_aside} train homologues of "
                        "excluded chains set aside"
                        + (" (splits/aside.txt)" if self.holdout_aside else "")
                        + "; "
                        f"{self.holdout_leaks_left} leaks left"
                    ]
                    if self.holdout_to_train is not None
                    else []
                ),
                f"  excluded ids found (forced to test): {self.excluded_ids_found} "
                f"of {self.excluded_ids_listed} listed"
                + (
                    f"; {self.excluded_ids_unmatched} match no chain exactly "
                    f"(see {store.EXCLUDE_UNMATCHED_FILE}), "
                    f"{len(self.excluded_near_misses)} of them excluded as near misses"
                    if self.excluded_ids_unmatched
                    else ""
                ),
            ]
        if self.files_generic_entry or self.files_renamed:
            lines.append(
                f"  ids from file names: {self.files_generic_entry} files with a generic "
                "block name / HEADER id, "
                f"{self.files_renamed} files whose entry id another file uses for a different chain"
            )
        if self.seqres_mode != "off":
            n_un = len(self.seqres_unavailable)
            eg = f" (e.g. {', '.join(self.seqres_unavailable[:3])})" if n_un else ""
            lines.append(
                f"  seqres ({self.seqres_mode}): {self.seqres_residues_inserted} unobserved "
                f"residues put back in {self.seqres_chains_filled} chains; "
                f"{n_un} chains without a usable deposited sequence, "
                f"kept as modelled{eg}"
            )
        if self.chains_not_found:
            lines.append(
                f"  WARNING: --chains {', '.join(self.chains_not_found)}: "
                "no input has a protein chain with "
                f"{'this author id' if len(self.chains_not_found) == 1 else 'these author ids'}"
            )
        if self.chains_without_chain_id:
            lines.append(
                f"  --chains: {self.chains_without_chain_id} chains have an id that names no "
                "chain (not ENTRY.CHAIN, e.g. FASTA >seq2), so --chains did not filter them"
            )
        if not self.chains_kept:
            lines.append(
                "  WARNING: no chain passed, so the dataset is empty "
                "(skipped.tsv says why each input was dropped)"
                if not self.in_memory
                else "  WARNING: no chain passed (the skip log says why each input was dropped)"
            )
        elif self.empty_splits:
            lines.append(
                f"  WARNING: the {' and '.join(self.empty_splits)} "
                f"split{'s are' if len(self.empty_splits) > 1 else ' is'} "
                f"empty: {self.chains_kept} chains are too few for the fractions asked; "
                "commands that use "
                f"{'them' if len(self.empty_splits) > 1 else 'it'} "
                "(pretrain validation, evaluate --split) get no chains"
            )
        if self.chains_zero_coords:
            lines.append(
                f"  WARNING: {self.chains_zero_coords} kept chains have every coordinate at "
                "(0, 0, 0), a placeholder rather than a structure "
                f"(e.g. {', '.join(self.zero_coords_examples[:3])}); "
                "a coordinate model sees them as one point"
            )
        if self.chains_experimental:
            lines.append(
                f"  pLDDT: {self.chains_experimental} kept chains come from experimental "
                f"structures (e.g. {', '.join(self.experimental_examples[:3])}); their "
                "B-factors are not pLDDT, so --plddt-min left them whole and they have no pLDDT "
                "(read as certain)"
            )
        lines += [
            f"  elapsed: {self.elapsed_s:.1f} s",
        ]
        return "\n".join(lines)


class RunLog:
    """Where a run's messages go: every line, time-stamped, is kept for prepare.log and also passed
    to the caller's ``log`` (a callable, a ``logging.Logger`` or an object with info/warning);
    without one, warnings go to stderr."""

    def __init__(self, log: Callable[[str], None] | logging.Logger | Any | None):
        self.user = log
        self.lines: list[str] = []

    def __call__(self, msg: str, level: int = logging.INFO) -> None:
        stamp = _dt.datetime.now().strftime("%H:%M:%S")
        self.lines.append(f"[{stamp}] {msg}")
        if self.user is None:
            if level >= logging.WARNING:
                print(msg, file=sys.stderr)
            return
        if isinstance(self.user, logging.Logger):
            self.user.log(level, msg)
        elif hasattr(self.user, "info") and not callable(self.user):
            (self.user.warning if level >= logging.WARNING else self.user.info)(msg)
        else:
            self.user(msg)
