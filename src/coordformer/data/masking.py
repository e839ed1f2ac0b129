"""BERT-style masking with an explicit generator (reproducible, worker-independent)."""

from __future__ import annotations

import torch

from ..constants import AA_OFFSET, AMINO_ACIDS, MASK, PAD, UNK


def bert_mask(
    tokens: torch.Tensor,
    generator: torch.Generator,
    mask_prob: float = 0.15,
    mask_token_frac: float = 0.8,
    random_token_frac: float = 0.1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Select ``mask_prob`` of the residues of each sequence and corrupt them BERT-style.

    Exactly round(mask_prob * n) residues per sequence are selected (at least one), where n counts
    the standard amino acids: padding and unknown residues are never targets. Of the selected
    residues, ``mask_token_frac`` become <mask>, ``random_token_frac`` a uniformly random amino
    acid, and the rest stay unchanged.

    Args:
        tokens: [B, L] long token ids.
    Returns:
        (inputs [B, L] long, targets [B, L] long with -100 where no loss is taken).
    """
    b, l = tokens.shape
    scores = torch.rand(b, l, generator=generator)
    action = torch.rand(b, l, generator=generator)
    random_aa = torch.randint(AA_OFFSET, AA_OFFSET + len(AMINO_ACIDS), (b, l), generator=generator)
    return bert_mask_from_draws(
        tokens, scores, action, random_aa, mask_prob, mask_token_frac, random_token_frac
    )


def bert_mask_from_draws(
    tokens: torch.Tensor,
    scores: torch.Tensor,
    action: torch.Tensor,
    random_aa: torch.Tensor,
    mask_prob: float = 0.15,
    mask_token_frac: float = 0.8,
    random_token_frac: float = 0.1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``bert_mask`` given its random draws, all [B, L]: ``scores`` and ``action`` uniform in
    [0, 1), ``random_aa`` replacement token ids. Lets a batch whose rows were drawn from per-chain
    generators be masked in one vectorised call (padding is never selected)."""
    eligible = (tokens != PAD) & (tokens != UNK) & (tokens >= AA_OFFSET)
    scores = scores.masked_fill(~eligible, 2.0)  # ineligible sort last
    n_eligible = eligible.sum(1)
    n_select = torch.clamp((n_eligible.float() * mask_prob).round().long(), min=1)
    n_select = torch.minimum(n_select, n_eligible)
    rank = scores.argsort(dim=1).argsort(dim=1)
    selected = rank < n_select.unsqueeze(1)
    targets = torch.where(selected, tokens, torch.full_like(tokens, -100))
    to_mask = selected & (action < mask_token_frac)
    to_random = (
        selected & (action >= mask_token_frac) & (action < mask_token_frac + random_token_frac)
    )
    inputs = torch.where(to_mask, torch.full_like(tokens, MASK), tokens)
    inputs = torch.where(to_random, random_aa, inputs)
    return inputs, targets
