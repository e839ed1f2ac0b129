"""``coordformer score``: files in, tables (and a plot) out. The scoring itself is in
``marginals`` (per-residue masked marginals) and ``mutations`` (substitution scores).

Per residue (no mutations given): ``OUT`` (tab-separated, or comma-separated for ``.csv``) with one
row per residue: chain, index (1-based), residue (author number, "" when the input has none), wt,
has_ca (the model was given its CA), logp_wt (log p(native) with the residue masked, natural log,
over the 20 amino acids), entropy (nats), and with ``per_aa`` logp_A ... logp_Y; plus
``OUT.chains.tsv``: per chain its length, scored residues, mean log p(native), pseudo-perplexity
and forward passes.

Mutations (a CSV/TSV with a mutant column, or mutant strings): ``OUT`` holds the input's columns
(or just ``mutant``) plus ``coordformer_score`` and ``coordformer_sites`` (the scored positions as
``CHAIN/INDEX`` with 1-based indices, ``;``-separated, to check the numbering) for every scored row;
``OUT.skipped.tsv`` lists every mutant not scored, and every unreadable input, with the reason.

Either way ``OUT.json`` (``OUT`` plus ``.json``) holds the summary ``run_score`` returns: what
produced the tables (``checkpoint``, ``inputs``, ``config`` = the ScoreConfig, ``model_config``,
``settings`` = the other options, ``command``, ``coordformer_version``) and the totals. The tables
themselves stay plain: one header row, then data.
"""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .. import __version__
from ..config import name_list
from ..constants import AMINO_ACIDS
from ..errors import OptionError, UsageError
from .inputs import missing_structure_warning, plddt_not_applied, read_chains
from .marginals import ScoreConfig, masked_marginals
from .mutations import (
    MULTI_MODES,
    NUMBERINGS,
    index_numbering_note,
    score_mutations,
    wild_type_target,
)

#: Column appended to a mutation table.
SCORE_COLUMN = "coordformer_score"
SITES_COLUMN = "coordformer_sites"


def _delimiter(path: Path) -> str:
    return "," if path.suffix.lower() == ".csv" else "\t"


def read_mutant_table(
    path: str | Path, column: str = "mutant"
) -> tuple[list[str], list[list[str]], int]:
    """(header, rows, index of ``column``) of a CSV (comma) or ``.tsv``/``.txt`` (tab) mutation
    file."""
    path = Path(path)
    if not path.is_file():
        raise OptionError("mutations", path, "no such file")
    delim = "\t" if path.suffix.lower() in (".tsv", ".txt", ".tab") else ","
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = [r for r in csv.reader(f, delimiter=delim)]
    rows = [r for r in rows if any(x.strip() for x in r)]
    if not rows:
        raise OptionError("mutations", path, "empty file")
    header, body = rows[0], rows[1:]
    if column not in header:
        raise OptionError(
            "mutations",
            path,
            f"no column {column!r} (columns: {', '.join(header[:12])}); "
            "name the mutant column with `mutant_column`",
        )
    return header, body, header.index(column)


def _write_table(path: Path, header: list[str], rows) -> None:
    tmp = path.with_name(path.name + ".tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, delimiter=_delimiter(path), lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)
    os.replace(tmp, path)


def _write_json(path: Path, record: dict) -> None:
    """``record`` as strict JSON (NaN, e.g. a chain with no scored residue, as null), atomically."""

    def strict(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: strict(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [strict(x) for x in v]
        return v

    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(strict(record), indent=2, allow_nan=False))
    os.replace(tmp, path)


def _fmt(x: float) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.5f}"


def _spearman(a: list[float], b: list[float]) -> float | None:
    from scipy.stats import spearmanr

    if len(a) < 3:
        return None
    rho = spearmanr(a, b).statistic
    return None if rho != rho else float(rho)


def run_score(
    checkpoint: str,
    inputs: Sequence[str],
    out: str | Path,
    cfg: ScoreConfig = ScoreConfig(),
    mutations: str | Path | None = None,
    mutants: Sequence[str] = (),
    mutant_column: str = "mutant",
    multi: str = "additive",
    numbering: str = "auto",
    offset: int = 0,
    chain: str | None = None,
    chains: Sequence[str] = (),
    plddt_min: float | None = None,
    seqres: str = "off",
    split: str | None = None,
    per_aa: bool = False,
    plot: str | Path | None = None,
    device: str = "cpu",
    progress: bool = True,
    echo: Callable[[str], None] = print,
    warn: Callable[[str], None] | None = None,
    command: str = "",
) -> dict:
    """Score ``inputs`` with ``checkpoint`` and write the tables above; returns the summary dict
    that ``OUT.json`` holds (``command``: the command line to record there, "" from Python).

    With neither ``mutations`` (a table file) nor ``mutants`` (strings), per-residue masked
    marginals of every chain. ``mutants`` are strict: the first bad one raises MutationError (one
    line in the CLI). A ``mutations`` table is a batch: bad rows are skipped and listed; when no row
    at all can be scored the tables are still written and a UsageError names the first reason.
    """
    from ..model.checkpoints import load_model

    warn = warn or echo
    out = Path(out)
    if isinstance(mutants, str):  # one mutant, not its letters
        mutants = [mutants]
    chains = name_list(chains)
    if mutations is not None and mutants:
        raise UsageError(
            "give mutants either in a file (`mutations`) or as a list (`mutants`), not both"
        )
    if per_aa and (mutations is not None or mutants):
        # the per-amino-acid columns belong to the per-residue table, which mutants replace
        raise UsageError(
            "`per_aa` adds columns to per-residue scores, and mutants are scored instead of "
            "those: drop `per_aa`, or score the chains without mutants"
        )
    if multi not in MULTI_MODES:
        raise OptionError("multi", multi, f"must be one of {', '.join(MULTI_MODES)}")
    if numbering not in NUMBERINGS:
        raise OptionError("numbering", numbering, f"must be one of {', '.join(NUMBERINGS)}")
    if offset and numbering != "index":
        raise OptionError(
            "offset", offset, "applies to 1-based index numbering; add `numbering=index`"
        )
    table = read_mutant_table(mutations, mutant_column) if mutations is not None else None
    model, meta = load_model(checkpoint, map_location=device)
    model = model.float().eval()
    cfg.window_for(model.config.max_len)  # a bad window / overlap fails before reading anything
    left_out: list[str] = []
    chain_list, skipped_inputs = read_chains(inputs, chains, plddt_min, seqres, split, left_out)
    if not chain_list:
        why = "; ".join(f"{s}: {r}" for s, r in skipped_inputs[:3])
        raise UsageError(
            "no readable chains in the inputs"
            + (f" ({why})" if why else "")
            + (f"; none is one of `chains` {','.join(chains)}" if chains else "")
        )
    note = missing_structure_warning(meta, model, chain_list, cfg.use_coords)
    if note:
        warn(f"warning: {note}")
    note = plddt_not_applied(chain_list, plddt_min)
    if note:
        warn(f"note: {note}")
    skipped_path = out.with_name(out.name + ".skipped.tsv")
    json_path = out.with_name(out.name + ".json")
    summary: dict = {
        "out": str(out),
        "chains": len(chain_list),
        "inputs_skipped": len(skipped_inputs),
        "chains_not_selected": len(left_out),
        "mode": cfg.mode,
        "rotations": cfg.rotations,
        "checkpoint": str(checkpoint),
        # what produced the tables, saved with them: enough to score the same way again
        "inputs": [str(p) for p in inputs],
        "config": cfg.to_dict(),
        "model_config": model.config.to_dict(),
        "settings": {
            "mutations": None if mutations is None else str(mutations),
            "mutant_column": mutant_column,
            "mutants": list(mutants),
            "multi": multi,
            "numbering": numbering,
            "offset": offset,
            "chain": chain,
            "chains": list(chains),
            "plddt_min": plddt_min,
            "seqres": seqres,
            "split": split,
            "per_aa": per_aa,
        },
        "command": command,
        "coordformer_version": __version__,
    }
    if table is None and not mutants:
        scores = masked_marginals(model, chain_list, cfg, device=device, progress=progress)
        header = ["chain", "index", "residue", "wt", "has_ca", "logp_wt", "entropy"] + (
            [f"logp_{a}" for a in AMINO_ACIDS] if per_aa else []
        )
        rows = []
        for s in scores:
            lpw, ent = s.log_p_wt, s.entropy
            for i, aa in enumerate(s.sequence):
                rid = s.residue_ids[i] if s.residue_ids is not None else ""
                row = [
                    s.chain_id,
                    i + 1,
                    rid,
                    aa,
                    int(bool(s.has_ca[i])),
                    _fmt(float(lpw[i])),
                    _fmt(float(ent[i])),
                ]
                if per_aa:
                    row += [_fmt(float(x)) for x in s.log_probs[i]]
                rows.append(row)
        _write_table(out, header, rows)
        chains_path = out.with_name(out.name + ".chains.tsv")
        _write_table(
            chains_path,
            ["chain", "length", "scored", "mean_logp_wt", "pseudo_perplexity", "passes", "source"],
            [
                [
                    s.chain_id,
                    len(s.sequence),
                    int(s.scored.sum()),
                    _fmt(s.mean_log_p),
                    _fmt(s.pseudo_perplexity),
                    s.n_passes,
                    s.source,
                ]
                for s in scores
            ],
        )
        _write_skipped(skipped_path, skipped_inputs, [], left_out, chains)
        all_lp = np.concatenate([s.log_p_wt[s.scored] for s in scores]) if scores else np.zeros(0)
        summary.update(
            residues=int(len(all_lp)),
            passes=sum(s.n_passes for s in scores),
            chains_file=str(chains_path),
            mean_logp_wt=float(all_lp.mean()) if len(all_lp) else None,
            pseudo_perplexity=float(np.exp(-all_lp.mean())) if len(all_lp) else None,
            per_chain=[(s.chain_id, len(s.sequence), s.pseudo_perplexity) for s in scores],
        )
        _write_json(json_path, summary)  # with the tables, should the plot fail
        if plot:
            from ..analysis.plots import per_position_score_figure

            per_position_score_figure(
                [(s.chain_id, s.log_p_wt, s.entropy) for s in scores],
                plot,
                title=f"{checkpoint}, {cfg.mode} masked marginals",
            )
            summary["plot"] = str(plot)
        _write_json(json_path, summary)
        return summary

    if table is not None:
        header, body, col = table
        texts = [r[col] if col < len(r) else "" for r in body]
    else:
        header, body, col = ["mutant"], [[m] for m in mutants], 0
        texts = list(mutants)
    for name in (SCORE_COLUMN, SITES_COLUMN):
        if name in header:
            raise OptionError(
                "mutations",
                mutations,
                f"already has a column {name!r}; rename it or score a copy without it",
            )
    res = score_mutations(
        model,
        chain_list,
        texts,
        cfg,
        multi=multi,
        numbering=numbering,
        default_chain=chain,
        strict=table is None,
        device=device,
        progress=progress,
        offset=offset,
    )
    rows = []
    for r in res.scored:
        sites = ";".join(f"{chain_list[s.chain].id}/{s.index + 1}" for s in r.substitutions)
        rows.append(list(body[r.row]) + [_fmt(r.score) if r.substitutions else "0.00000", sites])
    _write_table(out, list(header) + [SCORE_COLUMN, SITES_COLUMN], rows)
    _write_skipped(skipped_path, skipped_inputs, res.skipped, left_out, chains)
    summary.update(
        mutants=len(texts),
        scored=len(res.scored),
        skipped=len(res.skipped),
        passes=res.n_passes,
        multi=multi,
        numbering=numbering,
        skipped_file=str(skipped_path) if res.skipped or skipped_inputs or left_out else None,
        first_skipped=res.skipped[0] if res.skipped else None,
    )
    summary["numbering_warnings"] = _index_numbering_warnings(
        chain_list, res, numbering, offset, table, warn
    )
    mismatched = sum(1 for _, _, why in res.skipped if why.startswith("wild type mismatch"))
    if texts and not res.scored:
        _write_json(json_path, summary)  # the tables are written: say what made them
        row, m, why = res.skipped[0]
        raise UsageError(
            f"none of the {len(texts)} mutants could be scored (first: row {row + 1} {m}: {why}); "
            f"check `numbering`, `offset` and `chain`; all are listed in {skipped_path}"
        )
    if mismatched > len(texts) / 2:
        warn(
            f"warning: {mismatched} of {len(texts)} mutants have a wild-type mismatch: are the "
            f"positions numbered as --numbering {numbering} assumes (author numbers vs 1-based "
            "index, --offset)?"
        )
    if table is not None and "DMS_score" in header:
        k = header.index("DMS_score")
        a, b = [], []
        for r in res.scored:
            try:
                v = float(body[r.row][k])
            except (ValueError, IndexError):
                continue
            if v == v:
                a.append(r.score)
                b.append(v)
        summary["spearman_dms"] = _spearman(a, b)
        summary["spearman_n"] = len(a)
    _write_json(json_path, summary)  # with the tables, should the plot fail
    if plot:
        from ..analysis.plots import mutation_score_figure

        points = [
            (chain_list[r.substitutions[0].chain].id, r.substitutions[0].index + 1, r.score)
            for r in res.scored
            if len(r.substitutions) == 1
        ]
        mutation_score_figure(
            points, plot, title=f"{checkpoint}: single substitutions, log p(mut) - log p(wt)"
        )
        summary["plot"] = str(plot)
    _write_json(json_path, summary)
    return summary


def _write_skipped(
    path: Path,
    inputs: list[tuple[str, str]],
    mutants: list[tuple[int, str, str]],
    left_out: Sequence[str] = (),
    chains: Sequence[str] = (),
) -> None:
    """``kind, row, item, reason`` for unreadable inputs, chains that ``chains`` left out and
    skipped mutants; no file (and a stale one removed) when nothing was skipped. ``row`` is the
    1-based data row of the mutation table, blank lines not counted (the row of OUT)."""
    from ..data.prepare.policy import not_selected_reason

    if not inputs and not mutants and not left_out:
        path.unlink(missing_ok=True)
        return
    rows = (
        [["input", "", s, r] for s, r in inputs]
        + [["chain", "", c, not_selected_reason(c, chains)] for c in left_out]
        + [["mutant", row + 1, m, why] for row, m, why in mutants]
    )
    _write_table(path, ["kind", "row", "item", "reason"], rows)


def _index_numbering_warnings(chain_list, res, numbering, offset, table, warn) -> list[str]:
    """Warn (and return the notes) for each chain whose mutants were numbered by 1-based index
    where that numbering is likely off: the chain does not match the table's ``mutated_sequence``
    (ProteinGym's column) at ``offset``, or, without that column, the chain has breaks (residues the
    file omits), past which indices count fewer residues than the full sequence. The wild-type check
    catches most such shifts, but not a row whose letters happen to agree."""
    used = sorted({s.chain for r in res.scored for s in r.substitutions})
    col = None
    if table is not None and len(used) == 1 and "mutated_sequence" in table[0]:
        col = table[0].index("mutated_sequence")
    notes = []
    for k in used:
        c = chain_list[k]
        if numbering == "author" or (
            numbering == "auto" and getattr(c, "residue_ids", None) is not None
        ):
            continue
        target = None
        if col is not None:
            body = table[1]
            target = next(
                (
                    t
                    for r in res.scored
                    if r.substitutions and col < len(body[r.row])
                    for t in [wild_type_target(r.mutant, body[r.row][col])]
                    if t is not None
                ),
                None,
            )
        note = index_numbering_note(c, offset, target)
        if note:
            warn(f"warning: {note}")
            notes.append(note)
    return notes
