"""Masked-LM evaluation: perplexity and sequence recovery on masked positions.

Each chain's mask is drawn from its own generator, seeded by the masking seed and the chain's
index, so two models evaluated with the same seed, crop (or windows) and masking protocol see
exactly the same masked positions, however the chains are batched (the token budget does not
matter).
"""

from __future__ import annotations

import math
from collections.abc import Collection

import numpy as np
import torch
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn

from ..config import EvalConfig
from ..constants import AA_OFFSET, AMINO_ACIDS, CA_INDEX
from ..data.batching import BatchSettings, MaskedBatches, check_fits
from ..data.store import PreparedDataset
from ..data.windows import windowed_forward
from ..errors import OptionError, UsageError
from ..model import CoordFormer
from ..progress import Progress  # plain periodic lines when the output is not a terminal

#: evaluate_mlm(hide_coords=...) (and ``--hide-coords``): which coordinates the model is not given,
#: as the evaluation condition ``BatchSettings.withhold`` it sets.
WITHHOLD_OF_HIDE_COORDS = {"none": "none", "all": "chain", "span": "span", "cut": "cut"}
HIDE_COORDS = tuple(WITHHOLD_OF_HIDE_COORDS)


@torch.no_grad()
def evaluate_mlm(
    model: CoordFormer,
    data: PreparedDataset,
    split: str = EvalConfig.split,
    seed: int = EvalConfig.seed,
    mask_prob: float = EvalConfig.mask_prob,
    crop_length: int = EvalConfig.crop_length,
    tokens_per_batch: int = EvalConfig.tokens_per_batch,
    max_chains: int | None = EvalConfig.max_chains,
    device: str | torch.device = "cpu",
    use_coords: bool | None = None,
    progress: bool = True,
    masking: str = EvalConfig.masking,
    windows: bool = EvalConfig.windows,
    overlap: int = EvalConfig.overlap,
    hide_coords: str = EvalConfig.hide_coords,
    skip: Collection[int] = (),
) -> dict:
    """Evaluate on ``split`` (``model`` is moved to ``device`` and put in eval mode, in place):
    15% of each chain's residues are selected and, with ``masking="mask"``
    (default), all replaced by <mask>; ``masking="bert"`` corrupts them as in training (80% <mask>,
    10% random, 10% unchanged), which gives lower perplexities because a tenth of the targets are
    visible: that is how validation during pretraining (and many published figures) are computed.

    Chains longer than ``crop_length`` are evaluated on their first ``crop_length`` residues, or
    with ``windows`` over their whole length: masks are drawn over the whole chain, the chain is run
    in windows of ``crop_length`` overlapping by at least ``overlap``
    (``coordformer.data.windows``), and each masked residue is scored in the window it is most
    central in. Chains that fit get the same masks either way.

    ``hide_coords`` tests inputs with missing structure: ``"all"`` feeds every chain without
    coordinates (as a FASTA input), ``"span"`` hides one contiguous 5-30% stretch per chain (as an
    unresolved loop put back from the deposited sequence, ``--seqres gaps``; the stretch is drawn
    per chain from the seed, the same for every model), ``"cut"`` deletes that stretch after masking
    (as a loop the file omits, read as modelled: its neighbours close up). The masked residues are
    the same as with ``"none"`` (less the cut ones), so the conditions pair up. Each result also
    scores subsets, each {n_masked, loss, perplexity, recovery} or None when empty: ``hidden``, the
    masked residues whose coordinates were withheld (residues the structure itself lacks are not
    counted there); ``stretch``, the masked residues of the stretch that have coordinates in the
    data ("none": given, "span": withheld); ``outside``, the masked residues outside the stretch
    ("none", "span", "cut"), also per chain in ``per_chain_outside`` (laid out as ``per_chain``) to
    pair the conditions. ``skip``: dataset indices of chains of the split to leave out (those the
    model was trained on, ``evaluate --unseen-only``); the others keep their masks. Returns a
    JSON-ready dict with ``perplexity``, ``recovery``,
    ``per_residue_recovery`` ({aa: fraction}), ``per_residue_count``, ``n_masked``, ``n_chains``,
    ``loss`` (mean nats), and ``per_chain`` ({chain id: [n_masked, summed nats, n_correct]}) for
    paired comparisons between models. Perplexity is over the model's whole output vocabulary
    (special tokens included, as in ESM); recovery is the argmax over the 20 amino acids.
    """
    idx = data.split_indices(split)
    if max_chains is not None:
        if max_chains < 1:
            raise OptionError("max_chains", max_chains, "must be at least 1 (None: every chain)")
        idx = idx[:max_chains]
    n_split = len(idx)
    if len(skip):
        idx = idx[~np.isin(idx, np.asarray(list(skip), dtype=np.int64))]
    if len(idx) == 0:
        raise UsageError(f"{data.path}: split {split!r} is empty")
    if masking not in ("mask", "bert"):
        raise OptionError("masking", masking, "must be 'mask' or 'bert'")
    if windows and crop_length > model.config.max_len:
        raise OptionError(
            "crop_length",
            crop_length,
            f"the window exceeds the model's max_len {model.config.max_len}",
        )
    if not windows:
        check_fits(
            data, idx, crop_length, model.config.max_len, "crop_length", alternative="windows"
        )
    if windows and not 0 <= overlap < crop_length:
        raise OptionError("overlap", overlap, f"need 0 <= overlap < `crop_length` ({crop_length})")
    if hide_coords not in HIDE_COORDS:
        raise OptionError("hide_coords", hide_coords, f"must be one of {', '.join(HIDE_COORDS)}")
    fracs = (1.0, 0.0) if masking == "mask" else (0.8, 0.1)
    settings = BatchSettings(
        # "none" draws the stretch too (after every other draw, so nothing else changes) to score it
        withhold=WITHHOLD_OF_HIDE_COORDS[hide_coords],
        # windows: no crop (masks drawn over whole chains); the windowing happens at the model call
        crop_length=int(data.lengths[idx].max()) if windows else crop_length,
        tokens_per_batch=tokens_per_batch,
        mask_prob=mask_prob,
        mask_token_frac=fracs[0],
        random_token_frac=fracs[1],
        rotate=True,
        random_crop=False,
    )
    batches = MaskedBatches(data, idx, settings, seed=seed, train=False)
    model = model.to(device).eval()
    feed_coords = model.config.use_coords if use_coords is None else use_coords
    nll, n = 0.0, 0
    subsets = {
        k: [0.0, 0, 0] for k in ("hidden", "stretch", "outside")
    }  # summed nats, n_masked, n_correct
    per_chain: dict[str, list] = {}  # id -> [n_masked, nll_sum, n_correct], for paired statistics
    per_chain_outside: dict[str, list] = {}  # the same over the masked residues outside the stretch
    correct = np.zeros(20, dtype=np.int64)
    count = np.zeros(20, dtype=np.int64)
    aa = slice(AA_OFFSET, AA_OFFSET + 20)
    with Progress(
        TextColumn("evaluating"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        disable=not progress,
    ) as bar:
        task = bar.add_task("eval batches", total=len(batches))
        for i in range(len(batches)):
            b = batches[i]
            on = b.to(device)
            if on.tokens.shape[1] > crop_length:
                full = windowed_forward(
                    lambda w: model(**w.inputs(feed_coords)).logits,
                    on,
                    crop_length,
                    overlap,
                    tokens_per_batch,
                )
            else:
                full = model(**on.inputs(feed_coords)).logits
            sel = b.targets != -100
            logits = full[sel.to(device)].float().cpu()
            tgt = b.targets[sel]
            tok_nll = torch.nn.functional.cross_entropy(logits, tgt, reduction="none")
            nll += float(tok_nll.sum())
            n += len(tgt)
            pred = logits[:, aa].argmax(-1) + AA_OFFSET
            hit = (pred == tgt).float()
            # every condition draws a stretch (settings above), so the batch always reports it;
            # withheld: had coordinates, dropped here (not those the structure itself lacks)
            has_ca = ~torch.isnan(b.coords[:, :, CA_INDEX]).any(-1)
            parts = {
                "hidden": b.withheld,
                "stretch": b.stretch & (b.withheld | has_ca),
                "outside": ~b.stretch,
            }
            for k, m in parts.items():
                m = m[sel]
                acc = subsets[k]
                acc[0] += float(tok_nll[m].sum())
                acc[1] += int(m.sum())
                acc[2] += int(hit[m].sum())
            outside = parts["outside"][sel]
            row = sel.nonzero()[:, 0]  # which chain of the batch each masked residue belongs to
            for r, ci in enumerate(b.index.tolist()):
                m = row == r
                per_chain[data.ids[ci]] = [int(m.sum()), float(tok_nll[m].sum()), int(hit[m].sum())]
                m = m & outside
                per_chain_outside[data.ids[ci]] = [
                    int(m.sum()),
                    float(tok_nll[m].sum()),
                    int(hit[m].sum()),
                ]
            t = (tgt - AA_OFFSET).numpy()
            np.add.at(count, t, 1)
            np.add.at(correct, t, (pred == tgt).numpy().astype(np.int64))
            bar.advance(task)
    per = {
        a: (float(correct[i] / count[i]) if count[i] else None) for i, a in enumerate(AMINO_ACIDS)
    }
    return {
        "split": split,
        "n_chains": int(len(idx)),
        "n_masked": int(n),
        "loss": nll / max(n, 1),
        "perplexity": math.exp(nll / max(n, 1)),
        "recovery": float(correct.sum() / max(count.sum(), 1)),
        "per_residue_recovery": per,
        "per_residue_count": {a: int(count[i]) for i, a in enumerate(AMINO_ACIDS)},
        "per_chain": per_chain,
        "per_chain_outside": per_chain_outside,
        **{
            k: (
                {"n_masked": c, "loss": s / c, "perplexity": math.exp(s / c), "recovery": r / c}
                if c
                else None
            )
            for k, (s, c, r) in subsets.items()
        },
        "settings": {
            "hide_coords": hide_coords,
            "seed": seed,
            "mask_prob": mask_prob,
            "crop_length": crop_length,
            "windows": {"overlap": overlap} if windows else None,
            "masking": "all <mask>" if masking == "mask" else "bert 80/10/10",
            "tokens_per_batch": tokens_per_batch,
            "max_chains": max_chains,
            "use_coords": feed_coords,
            # chains of the split left out (evaluate --unseen-only): other chains, not other masks
            **({"skipped_chains": n_split - len(idx)} if len(skip) else {}),
        },
    }
