"""Masked-LM evaluation: perplexity and sequence recovery on masked positions.

Masks come from a fixed seed through the same deterministic batch plan, so two models evaluated
with the same seed, crop and token budget see exactly the same masked positions.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from ..constants import AA_OFFSET, AMINO_ACIDS
from ..data.batching import BatchSettings, MaskedBatches
from ..data.store import PreparedDataset
from ..errors import UsageError
from ..model import CoordFormer


@torch.no_grad()
def evaluate_mlm(
    model: CoordFormer,
    data: PreparedDataset,
    split: str = "test",
    seed: int = 12345,
    mask_prob: float = 0.15,
    crop_length: int = 1024,
    tokens_per_batch: int = 16384,
    max_chains: int | None = None,
    device: str | torch.device = "cpu",
    use_coords: bool | None = None,
    progress: bool = True,
) -> dict:
    """Evaluate on ``split`` with every selected residue replaced by <mask>.

    Chains longer than ``crop_length`` are evaluated on their first ``crop_length`` residues.
    Recovery is the argmax over the 20 amino acids. Returns a JSON-ready dict with
    ``perplexity``, ``recovery``, ``per_residue_recovery`` ({aa: fraction}),
    ``per_residue_count``, ``n_masked``, ``n_chains``, ``loss`` (mean nats).
    """
    idx = data.split_indices(split)
    if max_chains:
        idx = idx[:max_chains]
    if len(idx) == 0:
        raise UsageError(f"{data.path}: split {split!r} is empty")
    settings = BatchSettings(
        crop_length=crop_length, tokens_per_batch=tokens_per_batch, mask_prob=mask_prob,
        mask_token_frac=1.0, random_token_frac=0.0, rotate=True, random_crop=False,
    )
    batches = MaskedBatches(data, idx, settings, seed=seed, train=False)
    model = model.to(device).eval()
    feed_coords = model.config.use_coords if use_coords is None else use_coords
    nll, n = 0.0, 0
    correct = np.zeros(20, dtype=np.int64)
    count = np.zeros(20, dtype=np.int64)
    aa = slice(AA_OFFSET, AA_OFFSET + 20)
    with Progress(TextColumn("evaluating"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), disable=not progress) as bar:
        task = bar.add_task("eval", total=len(batches))
        for i in range(len(batches)):
            b = batches[i]
            coords = b["coords"].to(device) if feed_coords else None
            out = model(b["tokens"].to(device), coords, b["padding_mask"].to(device))
            sel = b["targets"] != -100
            logits = out.logits[sel.to(device)].float().cpu()
            tgt = b["targets"][sel]
            nll += float(torch.nn.functional.cross_entropy(logits, tgt, reduction="sum"))
            n += len(tgt)
            pred = logits[:, aa].argmax(-1) + AA_OFFSET
            t = (tgt - AA_OFFSET).numpy()
            np.add.at(count, t, 1)
            np.add.at(correct, t, (pred == tgt).numpy().astype(np.int64))
            bar.advance(task)
    per = {a: (float(correct[i] / count[i]) if count[i] else None) for i, a in enumerate(AMINO_ACIDS)}
    return {
        "split": split,
        "n_chains": int(len(idx)),
        "n_masked": int(n),
        "loss": nll / max(n, 1),
        "perplexity": math.exp(nll / max(n, 1)),
        "recovery": float(correct.sum() / max(count.sum(), 1)),
        "per_residue_recovery": per,
        "per_residue_count": {a: int(count[i]) for i, a in enumerate(AMINO_ACIDS)},
        "settings": {"seed": seed, "mask_prob": mask_prob, "crop_length": crop_length, "masking": "all <mask>",
                     "tokens_per_batch": tokens_per_batch, "max_chains": max_chains, "use_coords": feed_coords},
    }
