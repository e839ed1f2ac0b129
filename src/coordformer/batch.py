"""The one typed seam between data and model: a frozen :class:`Batch` of padded tensors.

Every batcher (``data.batching``, ``data.complexes``, ``data.windows``, the scorers) builds one, and
every forward call site feeds it to the model with ``model(**batch.inputs(use_coords))``. Neutral on
purpose: it imports torch and ``coordformer.constants`` only, so ``data`` and ``model`` can both use
it while ``model`` never imports ``data``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from .constants import PAD

#: Optional model inputs: passed to ``CoordFormer.forward`` only when the batch holds them, so a
#: stand-in model without these keywords (attention analysis accepts any) still takes the batch.
_OPTIONAL_INPUTS = ("positions", "plddt", "segments")


@dataclass(frozen=True)
class Batch:
    """B chains padded to L residues (each a left-aligned prefix of its row).

    Model inputs:

    - ``tokens`` [B, L] long: token ids (``constants.VOCAB``), ``PAD`` after each chain. In a
      masked-LM batch these are the corrupted inputs (``clean`` holds the originals).
    - ``coords`` [B, L, 4, 3] float32, Angstrom, backbone N, CA, C, O; NaN where an atom is missing
      or withheld, and at padding. Centred (and rotated when training) by the batchers; the model
      re-centres on present CAs anyway. None: no structure at all.
    - ``padding_mask`` [B, L] bool: True = real residue.
    - ``positions`` [B, L] long or None: residue indices for the position table (default 0..L-1);
      jumps mark chain breaks (spatial crops, the gap between the chains of a complex), 0 at
      padding.
    - ``plddt`` [B, L] float32 or None: pLDDT 0-100, NaN where unknown and at padding (read only by
      models with ``plddt_feature``).

    Targets and bookkeeping (never model inputs):

    - ``targets`` [B, L] long or None: the token to predict, -100 where no loss is taken.
    - ``clean`` [B, L] long or None: uncorrupted tokens of a masked batch (``PAD`` at padding).
    - ``index`` [B] long or None: each row's chain index into its dataset.
    - ``withheld`` [B, L] bool or None: residues that had coordinates in the data and were withheld
      by this batch (structure dropout or an evaluation condition).
    - ``stretch`` [B, L] bool or None: the stretch (or whole chain) drawn for withholding, whether
      or not its coordinates were given (evaluation condition ``none`` only reports it).
    - ``chain`` [B, L] long or None: member number of each residue within its complex (0, 1, ...),
      -1 at padding (``data.complexes``).
    - ``segments`` [B, L] long or None: packed rows (``data.batching.pack_batch``): which chain of
      the row (0, 1, ...) each position belongs to, -1 at padding. A model input: attention stays
      within a chain and each chain is centred on its own CAs.
    """

    tokens: torch.Tensor
    coords: torch.Tensor | None
    padding_mask: torch.Tensor
    positions: torch.Tensor | None = None
    plddt: torch.Tensor | None = None
    targets: torch.Tensor | None = None
    clean: torch.Tensor | None = None
    index: torch.Tensor | None = None
    withheld: torch.Tensor | None = None
    stretch: torch.Tensor | None = None
    chain: torch.Tensor | None = None
    segments: torch.Tensor | None = None

    @classmethod
    def from_tokens(
        cls, tokens: torch.Tensor, coords: torch.Tensor | None = None, **optional
    ) -> Batch:
        """A batch whose padding mask is ``tokens != PAD``."""
        return cls(tokens=tokens, coords=coords, padding_mask=tokens != PAD, **optional)

    def __len__(self) -> int:
        """B, the number of rows."""
        return int(self.tokens.shape[0])

    @property
    def lengths(self) -> torch.Tensor:
        """[B] long: residues per row."""
        return self.padding_mask.sum(1)

    def replace(self, **changes) -> Batch:
        """A copy with ``changes`` (field name -> tensor or None)."""
        return dataclasses.replace(self, **changes)

    def _map(self, fn) -> Batch:
        return dataclasses.replace(
            self,
            **{
                f.name: fn(v)
                for f in dataclasses.fields(self)
                if (v := getattr(self, f.name)) is not None
            },
        )

    def to(self, device: str | torch.device, non_blocking: bool = False) -> Batch:
        """Every tensor moved to ``device`` (Lightning's ``move_data_to_device`` calls this)."""
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> Batch:
        """Every tensor in page-locked memory (the
        DataLoader calls this with ``pin_memory=True``)."""
        return self._map(lambda t: t.pin_memory())

    def inputs(self, use_coords: bool = True) -> dict[str, torch.Tensor | None]:
        """Keyword arguments of ``CoordFormer.forward``: tokens, coords (None unless
        ``use_coords``), padding_mask, and positions / plddt where the batch holds them."""
        out = {
            "tokens": self.tokens,
            "coords": self.coords if use_coords else None,
            "padding_mask": self.padding_mask,
        }
        for name in _OPTIONAL_INPUTS:
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        return out
