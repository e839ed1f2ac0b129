"""The one typed seam between data and model: a frozen :class:`Batch` of padded tensors.

Every batcher (``data.batching``, ``data.complexes``, ``data.windows``, the scorers) builds one, and
every forward call site feeds it to the model with ``model(**batch.inputs(use_coords))``. Neutral on
purpose: it imports torch and ``coordformer.constants`` only, so ``data`` and ``model`` can both use
it while ``model`` never imports ``data``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import NamedTuple

import torch

from .constants import PAD

#: Optional model inputs: passed to ``CoordFormer.forward`` only when the batch holds them, so a
#: stand-in model without these keywords (attention analysis accepts any) still takes the batch.
_OPTIONAL_INPUTS = (
    "positions",
    "plddt",
    "segments",
    "pieces",
    "lm_context",
    "lm_columns",
    "padded",
)

#: Fields read on the host by :meth:`Batch.indexed`; they describe the other fields as they were.
HOST_FIELDS = ("target_index", "chain_lengths", "padded", "token_index", "cu_seqlens")


class Varlen(NamedTuple):
    """Where the chains of a batch lie once its padding is dropped (``Batch.varlen``): the model
    then runs its layers on the T real residues only, each chain attending to itself.

    - ``token_index`` [T] long: flat positions (row * L + column) of the real residues, row-major.
    - ``cu_seqlens`` [N + 1] int32: where each of the N chains starts in those T, then T.
    - ``max_seqlen``: residues of the longest chain (a host int: kernels size their grid by it).
    """

    token_index: torch.Tensor
    cu_seqlens: torch.Tensor
    max_seqlen: int


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
    - ``pieces`` [B, L] long or None: the runs of each row that a model conditioned on a language
      model reads as sequences of their own, numbered 0, 1, ... along the row, -1 at padding: each
      chain of a complex (``data.complexes``). A model input, read by conditioned models only;
      None: one per row, or one per segment of a packed row.
    - ``lm_context`` [B, W] long and ``lm_columns`` [B, L] long, or None: what a model conditioned
      on a language model reads for spatial crops (``BatchSettings.lm_window``): each row's chain,
      or its window of W residues around the crop, as token ids (``PAD`` after it) with the
      crop's (corrupted) inputs in their places, and the column of that row where each residue
      of the crop sits (-1 at padding). The LM reads the context and each residue takes its
      representation from its column. Read by conditioned models only.

    Read on the host before the batch moves to an accelerator (:meth:`indexed` fills them from the
    CPU tensors), so that a training step never waits for the device to learn a shape or a count:

    - ``target_index`` [N] long or None: flat positions (row * L + column) of the N targets, in
      row-major order; moves with the batch (the model gathers the LM head's inputs with it).
    - ``chain_lengths`` tuple of int or None: residues of each chain (one per row, or one per
      segment of a packed row). Stays on the host.
    - ``padded`` bool or None: whether any row has padding. Stays on the host; a model input (False
      lets attention run without a mask, and the model need not ask the device).
    - ``token_index`` [T] long and ``cu_seqlens`` [N + 1] int32 or None: the real residues' flat
      positions, row-major, and where each chain starts among them (``varlen``); they move with
      the batch.
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
    pieces: torch.Tensor | None = None
    lm_context: torch.Tensor | None = None
    lm_columns: torch.Tensor | None = None
    target_index: torch.Tensor | None = None
    chain_lengths: tuple[int, ...] | None = None
    padded: bool | None = None
    token_index: torch.Tensor | None = None
    cu_seqlens: torch.Tensor | None = None

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
        """A copy with ``changes`` (field name -> tensor or None). The host fields describe the
        tensors :meth:`indexed` read them from, so the copy drops those not given in ``changes``
        (a stale ``padded=False`` would unmask padding)."""
        stale = {name: None for name in HOST_FIELDS if name not in changes}
        return dataclasses.replace(self, **{**stale, **changes})

    def residues_per_chain(self) -> tuple[int, ...]:
        """Residues of each chain: one per row, or one per segment of a packed row (reads the
        tensors: on an accelerator, a host sync)."""
        if self.segments is None:
            return tuple(self.lengths.tolist())
        real = self.segments >= 0
        seg = self.segments[real]
        rows = torch.arange(self.segments.shape[0], device=seg.device)
        rows = rows.unsqueeze(1).expand_as(self.segments)
        key = rows[real] * (int(seg.max()) + 1 if seg.numel() else 1) + seg
        return tuple(torch.unique(key, return_counts=True)[1].tolist())

    def indexed(self) -> Batch:
        """A copy with ``target_index``, ``chain_lengths``, ``padded``, ``token_index`` and
        ``cu_seqlens`` computed from this batch's tensors. Call it while they are on the CPU
        (``MaskedBatches`` items are indexed as they are built, in the loader worker): there it
        costs no device synchronisation."""
        chains = self.residues_per_chain()
        index = None
        if self.targets is not None:
            index = torch.nonzero(self.targets.reshape(-1) != -100).squeeze(1)
        # real residues in row-major order: row by row, and within a packed row segment by segment
        # (pack_batch lays them out in order), the order of ``chains``
        tokens = torch.nonzero(self.padding_mask.reshape(-1)).squeeze(1)
        cu = torch.zeros(len(chains) + 1, dtype=torch.int32)
        cu[1:] = torch.tensor(chains, dtype=torch.int64).cumsum(0).to(torch.int32)
        return self.replace(
            target_index=index,
            chain_lengths=chains,
            padded=not bool(self.padding_mask.all()),
            token_index=tokens,
            cu_seqlens=cu,
        )

    def varlen(self) -> Varlen | None:
        """The batch without its padding (:class:`Varlen`), from the fields :meth:`indexed` filled;
        None for a batch that was not indexed."""
        if self.token_index is None or self.cu_seqlens is None or not self.chain_lengths:
            return None
        return Varlen(self.token_index, self.cu_seqlens, max(self.chain_lengths))

    def _map(self, fn) -> Batch:
        """A copy with ``fn`` applied to every tensor field (host fields are left as they are)."""
        return dataclasses.replace(
            self,
            **{
                f.name: fn(v)
                for f in dataclasses.fields(self)
                if isinstance(v := getattr(self, f.name), torch.Tensor)
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
        ``use_coords``), padding_mask, and positions / plddt / segments / pieces / lm_context /
        lm_columns / padded where the batch holds them."""
        out = {
            "tokens": self.tokens,
            "coords": self.coords if use_coords else None,
            "padding_mask": self.padding_mask,
        }
        for name in _OPTIONAL_INPUTS:
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        return out
