"""Chains to score: read straight from structure / chain_set / FASTA files (keeping author residue
numbers, which a prepared dataset does not store) or taken from a prepared dataset.

Every chain passes the same coordinate rule as ``prepare`` (``data.prepare.ChainPolicy`` with no
length or missing-CA filter: non-finite atoms become missing, a chain beyond +/-10,000 A is
skipped), and ``plddt_min`` makes low-confidence residues of predicted models missing, as in
``prepare`` and ``embed``. Unreadable inputs and rejected chains are returned as (source, reason)
rows.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from ..config import name_list
from ..constants import CA_INDEX
from ..errors import OptionError, UsageError

log = logging.getLogger(__name__)


def read_chains(
    inputs: Sequence[str | Path],
    chains: Sequence[str] = (),
    plddt_min: float | None = None,
    seqres: str = "off",
    split: str | None = None,
    left_out: list[str] | None = None,
) -> tuple[list, list[tuple[str, str]]]:
    """(``Chain`` objects, skipped (source, reason) rows) from ``inputs``: structure files, folders,
    chain_set JSONL and FASTA files, or one prepared dataset folder (``split`` picks one split).
    ``chains``: author chain ids to keep (empty = all). Chain ids are made unique (``#2``, ``#3``
    appended to repeats, logged). The ids of chains that ``chains`` leaves out are appended to
    ``left_out`` (if given), so that callers can account for them."""
    from ..data.prepare import ChainPolicy, Rejected, selected_chain
    from ..data.store import PreparedDataset, is_finished_dataset, refuse_unfinished_datasets
    from ..io import (
        Chain,
        StructureReadError,
        find_sources,
        is_chain_set,
        is_fasta,
        iter_chain_set,
        iter_fasta,
        read_structure,
    )

    if not inputs:
        raise UsageError("no inputs given")
    refuse_unfinished_datasets(inputs)
    chains = name_list(chains)
    unselected: list[str] = [] if left_out is None else left_out
    skipped: list[tuple[str, str]] = []
    raw: list = []
    if len(inputs) == 1 and Path(inputs[0]).is_dir() and is_finished_dataset(inputs[0]):
        if plddt_min is not None:
            raise OptionError(
                "plddt_min",
                plddt_min,
                "applies to structure inputs; pass it to "
                "`coordformer prepare` for a prepared dataset",
            )
        if seqres != "off":
            raise OptionError(
                "seqres",
                seqres,
                "applies to structure inputs; pass it to "
                "`coordformer prepare` for a prepared dataset",
            )
        data = PreparedDataset(inputs[0])
        idx = data.split_indices(split) if split else np.arange(len(data))
        for i in idx.tolist():
            if chains and not selected_chain(data.ids[i], chains):
                unselected.append(data.ids[i])
                continue
            pl = data.plddt(i)
            raw.append(
                Chain(
                    id=data.ids[i],
                    sequence=data.sequence(i),
                    coords=np.array(data.coords(i)),
                    source=str(data.path),
                    b_factors=None if pl is None else np.array(pl),
                )
            )
        return _unique(raw, skipped), skipped
    if split:
        raise OptionError("split", split, "applies to a prepared dataset folder")
    sources, problems = find_sources([str(p) for p in inputs])
    skipped.extend(problems)
    for src in sources:
        try:
            if is_fasta(src):
                items = list(iter_fasta(src))
            elif is_chain_set(src):
                items = list(iter_chain_set(src))
            else:
                items = read_structure(
                    src, chains=list(chains) or None, seqres=seqres, left_out=unselected
                )
        except StructureReadError as e:
            skipped.append((str(e.source), e.reason))
            continue
        for it in items:
            if isinstance(it, BaseException):
                skipped.append((str(getattr(it, "source", src)), str(getattr(it, "reason", it))))
            elif not chains or selected_chain(it.id, chains):
                raw.append(it)
            else:
                unselected.append(it.id)
    # the coordinate rule alone (no length or missing-CA filter), plus pLDDT masking if asked
    policy = ChainPolicy(plddt_min=plddt_min)
    kept = []
    for c in raw:
        verdict = policy.check(c)
        if isinstance(verdict, Rejected):
            skipped.append((c.id, f"{verdict.reason}: {verdict.detail}"))
            continue
        kept.append(
            Chain(
                id=c.id,
                sequence=verdict.seq.tobytes().decode("ascii"),
                coords=verdict.coords,
                source=c.source,
                b_factors=c.b_factors,
                residue_ids=c.residue_ids,
                observed=c.observed,
                experimental_method=c.experimental_method,
            )
        )
    return _unique(kept, skipped), skipped


def plddt_not_applied(chains: Sequence, plddt_min: float | None) -> str | None:
    """With ``plddt_min``: a note naming the chains of experimental structures, which it left whole
    (their B-factors are not pLDDT); None when there are none or no ``plddt_min``."""
    from ..data.prepare import has_plddt

    if plddt_min is None:
        return None
    left = [c.id for c in chains if not has_plddt(c)]
    if not left:
        return None
    more = f" and {len(left) - 3} more" if len(left) > 3 else ""
    return (
        f"--plddt-min {plddt_min:g} left {len(left)} chain{'s' if len(left) > 1 else ''} of "
        f"experimental structures whole ({', '.join(left[:3])}{more}): their B-factors are "
        "atomic displacement, not pLDDT"
    )


def _unique(chains: list, skipped: list[tuple[str, str]]) -> list:
    """``chains`` with unique ids: a chain identical to an earlier one of the same id (same
    sequence and coordinates: a PDB and an mmCIF copy of one entry) is dropped and listed in
    ``skipped``, as ``prepare`` does; a different chain that repeats an id is renamed ``#2``,
    ``#3`` (logged)."""
    first: dict[str, list] = {}
    out = []
    for c in chains:
        same_id = first.setdefault(c.id, [])
        twin = next(
            (
                o
                for o in same_id
                if o.sequence == c.sequence
                and np.array_equal(np.asarray(o.coords), np.asarray(c.coords), equal_nan=True)
            ),
            None,
        )
        if twin is not None:
            skipped.append(
                (str(c.source), f"duplicate of {twin.id} in {twin.source} (same sequence and "
                 "coordinates): scored once")
            )  # fmt: skip
            continue
        same_id.append(c)
        if len(same_id) > 1:
            new = f"{c.id}#{len(same_id)}"
            log.warning("chain id %s appears again in %s; scored as %s", c.id, c.source, new)
            c.id = new
        out.append(c)
    return out


def missing_structure_warning(
    meta: dict, model, chains, use_coords: bool | None = None
) -> str | None:
    """A one-line warning when a structure model that never learnt the missing flag
    (``meta["learnt_missing_flag"]`` False, from ``load_model``: the shipped card, or an exported
    file's record) is asked to score chains with residues lacking coordinates (FASTA, unresolved
    residues, --seqres, --plddt-min) or with coordinates withheld (``use_coords`` False: every
    residue then reads as missing); else None. Any such residue counts, not only a majority (as
    for ``embed``): its own scores are the ones that suffer."""
    from ..model.checkpoints import unlearnt_missing_flag

    unlearnt = unlearnt_missing_flag(model, meta)
    if unlearnt is None:
        return None
    n_total = sum(len(c.sequence) for c in chains)
    if use_coords is False:  # withheld: every residue reads as missing, as from a FASTA file
        n_missing, why = n_total, "coordinates withheld (`use_coords` off, --no-coords)"
    else:
        n_missing = sum(
            int(np.isnan(np.asarray(c.coords)[:, CA_INDEX]).any(-1).sum()) for c in chains
        )
        why = "no coordinates (FASTA, unresolved, --seqres or --plddt-min)"
    if n_missing == 0:
        return None
    name, instead = unlearnt
    return (
        f"{n_missing} of {n_total} residues have {why}, but {name} was trained without structure "
        "dropout and never learnt the missing flag, so scores there are unreliable (small-coords "
        f"given no coordinates: perplexity 71 against 17 for small-nocoords); use -c {instead} "
        "for such inputs"
    )
