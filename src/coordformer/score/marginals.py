"""Masked marginals: the model's distribution over the 20 amino acids at a position, with that
position replaced by ``<mask>`` and the rest of the native sequence and the structure as input.

``exact`` mode masks one position per forward pass. ``fast`` mode masks several positions per pass
when they are far apart, by a greedy rule (:func:`masking_plan`): positions are taken in sequence
order, and each joins the first pass in which it is at least ``min_sep`` residues and ``min_dist``
Angstrom (CA-CA) away from every position already there; when no pass admits it, it opens a new one.
A residue without a CA is judged by sequence separation alone. With ``min_sep`` at least the chain
length every pass holds one position, and fast mode gives exactly the exact mode's numbers.

Passes of all chains are batched together (length-sorted token-budget batches, padding masked in
attention), so a chain's numbers do not depend on which other chains are scored with it (to float32
rounding, ~1e-6). Chains longer than the window go through the overlapping windows of
``coordformer.data.windows``: each position is scored in the window it is most central in, which
holds the model's context around it. Each pass's residues go in the canonical frame of their CAs
(``geometry.canonical_frame``), so scores do not depend on the frame of the input file.

Log-probabilities are normalised over the 20 standard amino acids (the special tokens' share is
dropped), so that ``exp`` of a row sums to 1 and entropies are over amino acids. ``evaluate``'s
perplexity is over the whole output vocabulary and masks 15% of residues at once; the pseudo-
perplexity here (one position masked at a time, 20-letter normalisation) is therefore not the same
number, though close for a trained model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..batch import Batch
from ..config import SCORE_MODES, SCORE_ROTATION_SEED, ScoreConfig  # noqa: F401 - SCORE_MODES re-exported
from ..constants import AA_OFFSET, AMINO_ACIDS, CA_INDEX, MASK, PAD
from ..data.batching import ASCII_TO_TOKEN
from ..data.windows import plan_windows
from ..errors import OptionError, UsageError
from ..geometry import canonical_frame, random_rotation
from ..model.encode import eval_mode

if TYPE_CHECKING:
    from ..io import Chain
    from ..model.core import CoordFormer

_AA = slice(AA_OFFSET, AA_OFFSET + len(AMINO_ACIDS))


def masking_plan(
    positions, ca: np.ndarray | None, mode: str = "exact", min_sep: int = 8, min_dist: float = 12.0
) -> list[np.ndarray]:
    """Group ``positions`` (0-based residue indices) into passes, each an ascending int64 array of
    the positions masked together.

    ``exact``: one position per pass. ``fast``: the greedy rule of the module docstring (sequence
    order; join the first pass whose every position is >= ``min_sep`` residues and >= ``min_dist``
    Angstrom away, CA-CA; residues without a CA judged by separation alone). ``ca``: [L, 3] (NaN
    missing) or None (separation only).
    """
    pos = np.unique(np.asarray(positions, dtype=np.int64))
    if mode == "exact":
        return [pos[i : i + 1] for i in range(len(pos))]
    if mode != "fast":
        raise OptionError("mode", mode, f"scoring mode must be one of {', '.join(SCORE_MODES)}")
    use_dist = ca is not None and min_dist > 0
    groups: list[list[int]] = []
    for p in pos.tolist():
        for g in groups:
            members = np.asarray(g)
            if (np.abs(members - p) < min_sep).any():
                continue
            if use_dist:
                d = np.linalg.norm(
                    ca[members] - ca[p], axis=-1
                )  # NaN where either CA is missing: no conflict
                if (d < min_dist).any():
                    continue
            g.append(p)
            break
        else:
            groups.append([p])
    return [np.asarray(g, dtype=np.int64) for g in groups]


@dataclass(frozen=True)
class Pass:
    """One forward pass: residues ``start:start+span`` of chain ``chain`` (an index into the chain
    list) with the residues ``masked`` (0-based chain indices, inside that range) replaced by
    <mask>."""

    chain: int
    start: int
    span: int
    masked: np.ndarray


def chain_tokens(sequence: str) -> np.ndarray:
    """int64 [L] token ids of a one-letter sequence (anything but the 20 amino acids -> X)."""
    return ASCII_TO_TOKEN[np.frombuffer(sequence.encode("ascii", errors="replace"), dtype=np.uint8)]


def aa_index(sequence: str) -> np.ndarray:
    """int64 [L]: each residue's column in AMINO_ACIDS (0..19), -1 for X and other letters."""
    return chain_tokens(sequence) - AA_OFFSET if sequence else np.zeros(0, dtype=np.int64)


def windowed_passes(
    chain_index: int, length: int, groups: list[np.ndarray], window: int, overlap: int
) -> list[Pass]:
    """Passes for ``groups`` of positions of one chain: whole-chain passes when it fits in
    ``window``, else each group split by owner window (the window each position is most central
    in)."""
    plan = plan_windows(length, window, overlap)
    if len(plan.starts) == 1:
        return [Pass(chain_index, 0, length, g) for g in groups]
    owner = plan.owner()
    out = []
    for g in groups:
        for k in np.unique(owner[g]).tolist():
            out.append(Pass(chain_index, int(plan.starts[k]), plan.span, g[owner[g] == k]))
    return out


def joint_window(length: int, positions: np.ndarray, window: int, overlap: int) -> int | None:
    """First residue of the window in which ``positions`` (masked together) are scored: 0 when the
    chain fits; else the window containing all of them whose centre is nearest their mean; None when
    no window holds them all."""
    plan = plan_windows(length, window, overlap)
    if len(plan.starts) == 1:
        return 0
    lo, hi = int(positions.min()), int(positions.max())
    fits = [int(s) for s in plan.starts if s <= lo and hi < s + plan.span]
    if not fits:
        return None
    mid = float(np.mean(positions))
    return min(fits, key=lambda s: abs(s + plan.span / 2 - mid))


@torch.no_grad()
def run_passes(
    model: CoordFormer,
    tokens: list[np.ndarray],
    coords: list[np.ndarray | None],
    plddt: list[np.ndarray | None],
    passes: list[Pass],
    tokens_per_batch: int = 8192,
    device: str | torch.device = "cpu",
    progress=None,
    rotations: int = 1,
) -> list[np.ndarray]:
    """Run ``passes`` through ``model`` and return, per pass, float32 [len(masked), 20]: the
    log-probabilities over the 20 amino acids (normalised over them) at its masked positions, in
    the order of ``masked``.

    ``tokens[c]``: int64 [L] token ids of chain c; ``coords[c]``: float32 [L, 4, 3] Angstrom (NaN
    missing) or None (no coordinates given); ``plddt[c]``: [L] or None (read only by models with
    ``plddt_feature``). Passes are length-sorted into batches of at most ``tokens_per_batch``
    padded tokens (at least one pass each). ``progress``: called with the number of passes done
    (each pass counts once per frame). ``rotations`` > 1 runs every pass in that many frames
    (:func:`score_frames`) and returns the log of the mean probability over them.
    The model runs in eval mode (no dropout: scores are deterministic) and is left in the mode it
    came in.
    """
    if not passes:
        return []
    frames = score_frames(rotations)
    with eval_mode(model):
        return _run_passes(
            model, tokens, coords, plddt, passes, tokens_per_batch, device, progress, frames
        )


def frames_run(rotations: int, coords: list[np.ndarray | None]) -> int:
    """How many frames ``run_passes(rotations=...)`` is worth running: ``rotations`` where any
    chain is fed coordinates, else 1 (rotating nothing changes nothing)."""
    return rotations if any(c is not None for c in coords) else 1


def score_frames(rotations: int = 1) -> list[torch.Tensor | None]:
    """The frames of ``ScoreConfig.rotations``: None (the canonical frame itself), then
    ``rotations - 1`` fixed rotations of it ([3, 3], seeded by ``SCORE_ROTATION_SEED``)."""
    if rotations < 1:
        raise OptionError("rotations", rotations, "must be at least 1")
    extra = random_rotation(rotations - 1, torch.Generator().manual_seed(SCORE_ROTATION_SEED))
    return [None, *extra]


def _run_passes(model, tokens, coords, plddt, passes, tokens_per_batch, device, progress, frames):
    from ..data.batching import token_budget_batches

    results: list[np.ndarray | None] = [None] * len(passes)
    spans = np.array([p.span for p in passes], dtype=np.int64)
    read_plddt = bool(getattr(model.config, "plddt_feature", False))
    for members in token_budget_batches(spans, max(tokens_per_batch, int(spans.max())), None):
        b, w = len(members), int(spans[members].max())
        tok = torch.full((b, w), PAD, dtype=torch.long)
        any_coords = any(coords[passes[i].chain] is not None for i in members)
        co = torch.full((b, w, 4, 3), float("nan")) if any_coords else None
        pl = torch.full((b, w), float("nan")) if read_plddt else None
        for r, i in enumerate(members):
            p = passes[i]
            s, n = p.start, p.span
            row = torch.from_numpy(tokens[p.chain][s : s + n].copy())
            row[torch.from_numpy(p.masked - s)] = MASK
            tok[r, :n] = row
            if co is not None and coords[p.chain] is not None:
                co[r, :n] = torch.from_numpy(
                    np.ascontiguousarray(coords[p.chain][s : s + n], dtype=np.float32)
                )
            if pl is not None and plddt[p.chain] is not None:
                pl[r, :n] = torch.from_numpy(
                    np.asarray(plddt[p.chain][s : s + n], dtype=np.float32)
                )
        if co is not None:  # scores must not depend on the frame the file came in
            co = canonical_frame(co)
        per_frame = []  # the batch is built once and run in each frame
        for frame in frames:
            x = co if co is None or frame is None else torch.einsum("blac,dc->blad", co, frame)
            logits = model(**Batch.from_tokens(tok, x, plddt=pl).to(device).inputs()).logits
            logits = logits.float()
            per_frame.append(
                [
                    torch.log_softmax(
                        logits[
                            r,
                            torch.from_numpy(passes[i].masked - passes[i].start).to(logits.device),
                        ][:, _AA],
                        dim=-1,
                    ).cpu()
                    for r, i in enumerate(members)
                ]
            )
            if progress is not None:
                progress(len(members))
        for r, i in enumerate(members):
            lps = torch.stack([f[r] for f in per_frame])
            # the mixture over frames: log of the mean probability (one frame: itself)
            results[i] = (torch.logsumexp(lps, 0) - math.log(len(per_frame))).numpy()
    return results  # type: ignore[return-value]


@dataclass
class ChainScores:
    """Masked marginals of one chain.

    ``log_probs`` [L, 20] float32: row i holds log p(aa | the native sequence with residue i masked,
    the structure), over AMINO_ACIDS in order, normalised over them; NaN rows for positions not
    scored. ``residue_ids``: author residue numbers (with insertion code) for structure-file chains,
    else None. ``has_ca`` [L]: whether the residue's CA was given to the model.
    """

    chain_id: str
    sequence: str
    log_probs: np.ndarray
    has_ca: np.ndarray
    residue_ids: list[str] | None = None
    source: str = ""
    n_passes: int = 0

    @property
    def wt_index(self) -> np.ndarray:
        """[L] column of each native residue in AMINO_ACIDS, -1 for X."""
        return aa_index(self.sequence)

    @property
    def log_p_wt(self) -> np.ndarray:
        """[L] float64 log p(native residue), NaN for X or unscored positions."""
        wt = self.wt_index
        out = np.full(len(wt), np.nan)
        ok = wt >= 0
        out[ok] = self.log_probs[np.flatnonzero(ok), wt[ok]]
        return out

    @property
    def entropy(self) -> np.ndarray:
        """[L] float64 entropy (nats) of each masked marginal over the 20 amino acids."""
        lp = self.log_probs.astype(np.float64)
        return -(np.exp(lp) * lp).sum(-1)

    @property
    def scored(self) -> np.ndarray:
        """[L] bool: positions with a finite log p(native)."""
        return np.isfinite(self.log_p_wt)

    @property
    def mean_log_p(self) -> float:
        lp = self.log_p_wt
        ok = np.isfinite(lp)
        return float(lp[ok].mean()) if ok.any() else float("nan")

    @property
    def pseudo_perplexity(self) -> float:
        """exp(-mean log p(native)) over the scored positions (standard amino acids)."""
        m = self.mean_log_p
        return math.exp(-m) if m == m else float("nan")


def model_inputs(model, chains, use_coords: bool | None = None):
    """Per chain: (tokens int64 [L], coords float32 [L, 4, 3] or None, pLDDT [L] or None) as
    :func:`run_passes` takes them, from ``Chain`` objects (``io`` readers)."""
    from ..data.prepare import plddt_values

    feed = (
        model.config.use_coords if use_coords is None else (use_coords and model.config.use_coords)
    )
    read_plddt = bool(model.config.plddt_feature)
    toks, cos, pls = [], [], []
    for c in chains:
        toks.append(chain_tokens(c.sequence))
        cos.append(np.asarray(c.coords, dtype=np.float32) if feed else None)
        pls.append(plddt_values(c) if read_plddt else None)
    return toks, cos, pls


def _check_nonempty(chains) -> None:
    for c in chains:
        if len(c.sequence) == 0:
            raise UsageError(f"chain {c.id} is empty")


def ca_of(chain) -> np.ndarray:
    """[L, 3] CA coordinates of a chain (NaN missing)."""
    return np.asarray(chain.coords, dtype=np.float32)[:, CA_INDEX]


def masked_marginals(
    model: CoordFormer,
    chains: Sequence[Chain],
    cfg: ScoreConfig = ScoreConfig(),
    positions: list | None = None,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> list[ChainScores]:
    """Masked marginals for ``chains`` (``Chain`` objects as the ``io`` readers return them).

    ``positions``: per chain, the 0-based positions to score (None = every position of every chain;
    an entry None = every position of that chain). Unscored rows of ``log_probs`` are NaN. The
    masking plan (``cfg.mode``, ``min_sep``, ``min_dist``) uses each chain's own CA coordinates,
    also for a sequence-only model, so that both kinds of model are scored on the same passes. In
    fast mode the plan is made over the whole chain and only its passes holding a wanted position
    run, so a position's number is the same whichever other positions are asked for (and equals
    its row of the full table).
    The model runs in eval mode and is left in the mode it came in (:func:`run_passes`).
    """
    window = cfg.window_for(model.config.max_len)
    _check_nonempty(chains)
    toks, cos, pls = model_inputs(model, chains, cfg.use_coords)
    passes: list[Pass] = []
    per_chain_passes = []
    wanted: list[np.ndarray] = []
    for ci, c in enumerate(chains):
        n = len(c.sequence)
        want = (
            np.arange(n)
            if positions is None or positions[ci] is None
            else np.asarray(positions[ci], dtype=np.int64)
        )
        if len(want) and (want.min() < 0 or want.max() >= n):
            raise UsageError(f"chain {c.id}: positions must lie in 0..{n - 1}")
        if cfg.mode == "fast":
            # Plan the whole chain and run the passes holding a wanted position, so that a
            # position's context (what else is masked with it) does not depend on which other
            # positions were asked for: a mutant scores the same alone or in any table.
            groups = masking_plan(np.arange(n), ca_of(c), cfg.mode, cfg.min_sep, cfg.min_dist)
            mine = [
                p
                for p in windowed_passes(ci, n, groups, window, cfg.overlap)
                if np.isin(p.masked, want).any()
            ]
        else:
            mine = windowed_passes(ci, n, masking_plan(want, None), window, cfg.overlap)
        wanted.append(want)
        per_chain_passes.append(len(mine))
        passes.extend(mine)
    # frames per pass: rotating matters only where coordinates are fed
    n_frames = frames_run(cfg.rotations, cos)
    bar = _progress_bar(len(passes) * n_frames, progress)
    try:
        res = run_passes(
            model,
            toks,
            cos,
            pls,
            passes,
            cfg.tokens_per_batch,
            device,
            bar.advance if bar else None,
            n_frames,
        )
    finally:
        if bar:
            bar.close()
    out = []
    for ci, c in enumerate(chains):
        lp = np.full((len(c.sequence), len(AMINO_ACIDS)), np.nan, dtype=np.float32)
        out.append(
            ChainScores(
                chain_id=c.id,
                sequence=c.sequence,
                log_probs=lp,
                has_ca=~np.isnan(ca_of(c)).any(-1)
                if cos[ci] is not None
                else np.zeros(len(c.sequence), bool),
                residue_ids=getattr(c, "residue_ids", None),
                source=getattr(c, "source", ""),
                n_passes=per_chain_passes[ci] * n_frames,
            )
        )
    for p, r in zip(passes, res):
        keep = np.isin(p.masked, wanted[p.chain])  # fast passes also mask positions not asked for
        out[p.chain].log_probs[p.masked[keep]] = r[keep]
    return out


class _progress_bar:
    """A rich progress bar over forward passes (or nothing)."""

    def __new__(cls, total: int, enabled: bool):
        if not enabled or total == 0:
            return None
        return super().__new__(cls)

    def __init__(self, total: int, enabled: bool):
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn

        from ..progress import Progress  # plain periodic lines when the output is not a terminal

        self.p = Progress(
            TextColumn("scoring (masked passes)"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
        )
        self.p.start()
        self.task = self.p.add_task("score", total=total)

    def advance(self, n: int) -> None:
        self.p.advance(self.task, n)

    def close(self) -> None:
        self.p.stop()
