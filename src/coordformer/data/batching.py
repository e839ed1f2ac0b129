"""From a prepared dataset to model batches.

A batch plan (which chains go together) is a pure function of (seed, epoch); every random choice
made for a chain (crop window, rotation, masking) comes from a generator seeded by (seed, epoch,
chain index). Batches are therefore identical whatever the number of DataLoader workers or
processes, training can resume mid-epoch at exactly the batch it stopped at, and evaluation masks
do not depend on batch composition.

Batching is a plan (``token_budget_batches``, ``inference_plan``: which chains go together under a
token budget) plus a builder (``collate_chains``) that crops, centres, rotates and, for the
masked-LM loss only, masks them into a :class:`coordformer.batch.Batch`. Inference passes
(``unmasked_batches``) skip the masking step.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..batch import HOST_FIELDS, Batch
from ..config import CROP_MODES, SEED, BatchConfig  # noqa: F401 - CROP_MODES re-exported
from ..constants import AA_OFFSET, AMINO_ACIDS, CA_INDEX, PAD, ascii_to_token_table
from ..errors import ConfigError, OptionError, SequenceTooLong, UsageError
from ..geometry import centre, rotation_from_gaussian
from .masking import bert_mask_from_draws

if TYPE_CHECKING:
    from ..io import Chain

#: Token id of each ASCII byte ([256] int64, ``coordformer.alphabet.ascii_to_token_table``): a
#: chain's sequence bytes index it to give its tokens.
ASCII_TO_TOKEN = np.asarray(ascii_to_token_table(), dtype=np.int64)


def seed_for(*parts: int | str) -> int:
    """A 63-bit seed derived from any tuple of ints/strings (stable across runs and platforms)."""
    h = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


def cropped_lengths(dataset, indices: np.ndarray, crop_length: int) -> np.ndarray:
    """[len(indices)] residues each chain of ``indices`` brings to a batch: its length, cropped
    to ``crop_length``."""
    return np.minimum(dataset.lengths[indices], crop_length)


def token_budget_batches(
    lengths: np.ndarray,
    tokens_per_batch: int,
    rng: np.random.Generator | None,
    pool_batches: int = 50,
) -> list[np.ndarray]:
    """Group chain indices into batches whose padded size (n * max length) fits a token budget.

    With ``rng``, chains are shuffled, then sorted by length inside pools of ~``pool_batches``
    batches (length bucketing: little padding, still random), and the batch order is shuffled.
    Without ``rng`` the order is by length (deterministic evaluation).

    Args:
        lengths: [N] effective (cropped) lengths of the chains, in residues.
    Returns: list of index arrays into ``lengths``.
    """
    n = len(lengths)
    order = rng.permutation(n) if rng is not None else np.arange(n)
    if rng is not None:
        mean_len = max(float(np.mean(lengths)), 1.0)
        pool = max(int(pool_batches * tokens_per_batch / mean_len), 1)
        chunks = [order[i : i + pool] for i in range(0, n, pool)]
        order = (
            np.concatenate([c[np.argsort(lengths[c], kind="stable")] for c in chunks])
            if chunks
            else order
        )
    else:
        order = order[np.argsort(lengths[order], kind="stable")]
    batches, cur, cur_max = [], [], 0
    for i in order:
        m = max(cur_max, int(lengths[i]))
        if cur and m * (len(cur) + 1) > tokens_per_batch:
            batches.append(np.asarray(cur))
            cur, m = [], int(lengths[i])
        cur.append(i)
        cur_max = m
    if cur:
        batches.append(np.asarray(cur))
    if rng is not None:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


@dataclass(frozen=True)
class BatchSettings(BatchConfig):
    """A :class:`coordformer.config.BatchConfig` (crop, rotation, masking, structure dropout) plus
    how this pass uses it: ``random_crop`` (training) or the first residues, the model's
    ``max_position``, and an evaluation condition (``withhold``). ``BatchSettings.of(config, ...)``
    builds one from a config record."""

    random_crop: bool = True
    # training batches packed several chains per row (``pack_batch``; TrainConfig.pack_sequences)
    pack: bool = False
    max_position: int = 4096  # the model's max_len: spatial-crop positions must stay below it
    # A spatial crop for a model conditioned on a language model that reads at most this many
    # residues: the LM reads the crop's chain (the window of this many residues around the crop's
    # centre, for a longer chain, inside which the crop is taken) with the crop's residues as
    # masked, and each residue of the crop takes its representation there (Batch.lm_context /
    # lm_columns). None: no such model, or a sequence crop.
    lm_window: int | None = None
    # Structure dropout (BatchConfig.drop_*_coords) feeds a training chain without coordinates, as a
    # FASTA input is, or one SPAN_DROP_FRACTION stretch of it, as an unresolved loop is: without it
    # the missing flag never occurs in fully resolved training data, and its embedding is never
    # learnt.
    #: Evaluation condition (None when training: structure dropout by drop_*_coords).
    #: Every chain gets one stretch drawn exactly as structure dropout draws it, so each condition
    #: sees the same stretch and the same masks: "none" only reports it (``Batch.stretch``, the
    #: coordinates given); "span" withholds its coordinates (an unresolved loop put back); "cut"
    #: removes its residues after masking (a loop the file omits, positions closing up); "chain"
    #: withholds the coordinates of the whole chain (a FASTA input).
    withhold: str | None = None

    def __post_init__(self):
        super().__post_init__()
        if self.withhold is not None and self.withhold not in WITHHOLD:
            raise ConfigError(
                f"withhold must be one of {', '.join(WITHHOLD)}, not {self.withhold!r}"
            )
        if self.withhold is not None and (self.drop_chain_coords or self.drop_span_coords):
            raise ConfigError(
                "an evaluation condition (withhold) replaces structure dropout: "
                "leave drop_*_coords at 0"
            )
        if (
            self.withhold == "cut" and self.crop_mode == "spatial"
        ):  # explicit positions would not close up
            raise ConfigError("withhold 'cut' works with sequence crops only")
        if self.lm_window is not None and (self.crop_mode != "spatial" or self.pack):
            raise ConfigError(
                "lm_window is for unpacked spatial crops (a sequence crop is read as it is)"
            )
        if self.lm_window is not None and self.lm_window < self.crop_length:
            raise ConfigError(
                f"the crop ({self.crop_length} residues) must fit the language model's "
                f"{self.lm_window}: lower crop_length"
            )

    @classmethod
    def of(cls, config: BatchConfig, **use) -> BatchSettings:
        """The settings of ``config`` (a BatchConfig, or a record extending it such as TrainConfig)
        with ``use`` (this class's own fields, or BatchConfig fields to override) on top."""
        return cls(**{**config.batch.to_dict(), **use})

    @property
    def draws_stretch(self) -> bool:
        """Whether each chain draws a stretch to withhold (structure dropout or an evaluation
        condition)."""
        return bool(self.drop_chain_coords or self.drop_span_coords) or self.withhold is not None


#: Length of a dropped stretch (drop_span_coords), as a fraction of the chain: uniform in this
#: range.
SPAN_DROP_FRACTION = (0.05, 0.3)
#: BatchSettings.withhold values (evaluation conditions; ``coordformer evaluate --hide-coords``
#: calls "chain" "all").
WITHHOLD = ("none", "chain", "span", "cut")

#: How chains longer than the crop length are cut (defined with BatchConfig, re-exported here).
CROP_MODES = CROP_MODES
#: Longest jump in positions between consecutive residues of a spatial crop. Far-apart segments
#: are far apart either way; the cap keeps a crop of a very long chain inside the position table.
MAX_CROP_JUMP = 64


def crop_positions(kept: np.ndarray, max_position: int) -> np.ndarray:
    """Positions [k] for the ascending residue indices ``kept`` of a crop: 0 for the first, then the
    true sequence steps, each jump capped at MAX_CROP_JUMP; consecutive 0..k-1 if even that would
    reach ``max_position``."""
    if len(kept) == 0:
        return kept
    steps = np.minimum(np.diff(kept), MAX_CROP_JUMP)
    pos = np.concatenate([[0], np.cumsum(steps)]).astype(np.int64)
    return pos if pos[-1] < max_position else np.arange(len(kept), dtype=np.int64)


def spatial_crop(ca: np.ndarray, k: int, centre: int) -> np.ndarray:
    """Indices [k] (ascending) of the ``k`` residues whose CA lies nearest the CA of residue
    ``centre`` (AlphaFold-style spatial crop). ca: [L, 3] Angstrom, NaN where missing; residues
    without a CA come last (by sequence distance to the centre), so they fill a crop only when
    fewer than ``k`` residues have one. Ties keep sequence order."""
    d = np.linalg.norm(ca - ca[centre], axis=-1)
    missing = np.isnan(d)
    key = np.where(missing, np.inf, d)
    order = np.lexsort(
        (np.abs(np.arange(len(ca)) - centre), key)
    )  # distance first, then sequence distance
    return np.sort(order[:k])


class MaskedBatches(torch.utils.data.Dataset):
    """A map-style dataset whose items are whole collated masked-LM batches (:class:`Batch`).

    Item k is batch (k mod B) of epoch (start_epoch + k div B), B batches per epoch, sharded over
    ``world_size`` ranks. Use with ``DataLoader(batch_size=None)``. ``epochs`` passes, or more
    where that is fewer than ``min_batches`` batches per rank; the first ``start_batch`` are
    skipped (a resumed run).

    Each item (see :func:`collate_chains`) holds tokens (corrupted input), targets, clean, coords
    (centred, rotated), padding_mask and index; plddt when the dataset stores pLDDT; positions with
    ``crop_mode="spatial"``; withheld and stretch with structure dropout or an evaluation condition;
    and the host fields of :meth:`Batch.indexed`.
    """

    def __init__(
        self,
        dataset,
        indices: np.ndarray,
        settings: BatchSettings,
        seed: int,
        train: bool = True,
        epochs: int = 1,
        start_batch: int = 0,
        rank: int = 0,
        world_size: int = 1,
        min_batches: int = 0,
    ):
        self.ds = dataset
        self.indices = np.asarray(indices, dtype=np.int64)
        self.s = settings
        self.seed = seed
        self.train = train
        self.rank, self.world = rank, world_size
        self.lengths = cropped_lengths(dataset, self.indices, settings.crop_length)
        self._plans: dict[int, list[np.ndarray]] = {}
        n0 = len(self._plan(0))
        self.batches_per_epoch = n0 // world_size if world_size > 1 else n0
        if self.batches_per_epoch == 0:
            raise OptionError(
                "tokens_per_batch",
                settings.tokens_per_batch,
                f"the {len(self.indices)} chains make {n0} batches, fewer than one for each of "
                f"the {world_size} processes: use fewer processes (`devices`, `num_nodes`), or, "
                "for a new run, lower `tokens_per_batch`",
            )
        # at least min_batches items per rank from item 0 (whole epochs), whatever `epochs` says
        self.epochs = max(epochs, -(-min_batches // self.batches_per_epoch))
        self.start_batch = start_batch

    def _plan(self, epoch: int) -> list[np.ndarray]:
        if epoch not in self._plans:
            rng = np.random.default_rng(seed_for(self.seed, "plan", epoch)) if self.train else None
            self._plans = {epoch: token_budget_batches(self.lengths, self.s.tokens_per_batch, rng)}
        return self._plans[epoch]

    def __len__(self) -> int:
        return self.epochs * self.batches_per_epoch - self.start_batch

    def __getitem__(self, k: int) -> Batch:
        k = k + self.start_batch
        epoch, b = divmod(k, self.batches_per_epoch)
        plan = self._plan(epoch)
        # Every epoch has exactly batches_per_epoch batches per rank, so item k always maps to the
        # same batch. A reshuffled epoch may pack into a batch or two more or fewer than epoch 0:
        # surplus batches are skipped and a short plan wraps around (a fraction of a percent of an
        # epoch).
        members = plan[(b * self.world + self.rank) % len(plan)]
        batch = self.collate(self.indices[members], epoch)
        # indexed here, on the CPU (in a loader worker when there are workers): the training step
        # then reads its counts and the LM head's positions without asking the device
        return (pack_batch(batch) if self.s.pack else batch).indexed()

    def collate(self, chain_indices: np.ndarray, epoch: int = 0) -> Batch:
        """The masked batch of ``chain_indices`` (see :func:`collate_chains`)."""
        return collate_chains(self.ds, chain_indices, self.s, self.seed, epoch, masked=True)


def collate_chains(
    dataset,
    chain_indices: np.ndarray,
    settings: BatchSettings,
    seed: int,
    epoch: int = 0,
    masked: bool = True,
) -> Batch:
    """Crop, centre and rotate the chains ``chain_indices`` of ``dataset`` into one :class:`Batch`;
    with ``masked``, corrupt them for the masked-LM loss; withhold coordinates as ``settings`` say.

    Each chain has its own generator, seeded by (seed, epoch, chain index), which draws in this
    order: its crop, its rotation, its masking, its stretch to withhold. A chain's crop, rotation
    and mask therefore do not depend on which chains share its batch (evaluations with the same seed
    and crop see identical masks whatever the batching), and an unmasked batch (``masked`` False:
    tokens are the clean ones, no targets) crops and rotates exactly as the masked one.

    Returns tokens [b, l] long (corrupted when ``masked``), targets [b, l] long (-100 = no loss;
    None unless ``masked``), clean [b, l] long (None unless ``masked``), coords [b, l, 4, 3] float32
    Angstrom (centred on the present CAs, rotated with ``settings.rotate``; NaN missing, withheld or
    padding), padding_mask [b, l] bool, index [b] long (the chain indices); plddt [b, l] float32
    (0-100, NaN unknown or padding) when the dataset stores pLDDT; positions [b, l] long with
    ``crop_mode="spatial"`` (each kept residue's index in its chain minus the first kept one's, see
    ``crop_positions``); withheld and stretch [b, l] bool when ``settings.draws_stretch``.
    """
    s = settings
    b = len(chain_indices)
    gens = [
        torch.Generator().manual_seed(seed_for(seed, "chain", epoch, int(ci)))
        for ci in chain_indices
    ]
    seqs, xyzs, crop_pos, plddts, contexts, columns = [], [], [], [], [], []
    spatial = s.crop_mode == "spatial"
    with_plddt = getattr(dataset, "has_plddt", False)
    for ci, gen in zip(chain_indices, gens):  # draw 1: the crop
        seq = dataset.seq_bytes(int(ci))
        xyz = dataset.coords(int(ci))
        n = len(seq)
        at = np.arange(n)
        context = None  # (the LM's window of the chain, the crop's columns in it)
        with_ca = (
            np.flatnonzero(~np.isnan(xyz[:, CA_INDEX, 0]))
            if spatial and n > s.crop_length
            else None
        )
        if with_ca is not None and len(with_ca):
            pick = (
                int(torch.randint(0, len(with_ca), (1,), generator=gen))
                if s.random_crop
                else len(with_ca) // 2
            )
            mid = int(with_ca[pick])
            # the language model's window: the crop is taken inside it, so that the LM reads
            # every residue of the crop in the context of its chain
            w0 = 0
            if s.lm_window is not None and n > s.lm_window:
                w0 = min(max(mid - s.lm_window // 2, 0), n - s.lm_window)
            window = slice(w0, w0 + (s.lm_window or n))
            at = spatial_crop(xyz[window, CA_INDEX], s.crop_length, mid - w0) + w0
            context = (seq[window], at - w0)
            seq, xyz = seq[at], xyz[at]
        elif n > s.crop_length:
            start = (
                int(torch.randint(0, n - s.crop_length + 1, (1,), generator=gen))
                if s.random_crop
                else 0
            )
            window = slice(start, start + s.crop_length)
            seq, xyz, at = seq[window], xyz[window], at[window]
        if s.lm_window is not None:  # a chain not cropped in space is read as it is
            c, col = context if context is not None else (seq, np.arange(len(seq)))
            contexts.append(np.asarray(c))
            columns.append(col)
        seqs.append(np.asarray(seq))
        xyzs.append(np.array(xyz, dtype=np.float32))  # copy: memory-mapped views are read-only
        if with_plddt:
            plddts.append(np.array(dataset.plddt(int(ci))[at], dtype=np.float32))
        if spatial:
            crop_pos.append(crop_positions(at, s.max_position))
    l = max(len(q) for q in seqs)
    tokens = torch.full((b, l), PAD, dtype=torch.long)
    coords = torch.full((b, l, 4, 3), float("nan"))
    for i, (q, x) in enumerate(zip(seqs, xyzs)):
        tokens[i, : len(q)] = torch.from_numpy(ASCII_TO_TOKEN[q])
        coords[i, : len(q)] = torch.from_numpy(x)
    lengths = [len(q) for q in seqs]
    # Each chain's generator draws its rotation's Gaussian and its masking randoms (the stream of
    # random_rotation + bert_mask on that chain alone); the QR and the masking then run once,
    # batched, instead of once per chain (short chains made that the hot spot).
    gauss = torch.zeros(b, 3, 3, dtype=torch.float64)
    if s.rotate:  # draw 2: the rotation
        for i, gen in enumerate(gens):
            gauss[i] = torch.randn(3, 3, generator=gen, dtype=torch.float64)
    inputs, targets = tokens, None
    if masked:  # draw 3: the masking
        scores, action = torch.ones(b, l), torch.ones(b, l)
        random_aa = torch.zeros(b, l, dtype=torch.long)
        for i, (n, gen) in enumerate(zip(lengths, gens)):
            scores[i, :n] = torch.rand(n, generator=gen)
            action[i, :n] = torch.rand(n, generator=gen)
            random_aa[i, :n] = torch.randint(
                AA_OFFSET, AA_OFFSET + len(AMINO_ACIDS), (n,), generator=gen
            )
        inputs, targets = bert_mask_from_draws(
            tokens, scores, action, random_aa, s.mask_prob, s.mask_token_frac, s.random_token_frac
        )
    lm_context = lm_columns = None
    if s.lm_window is not None:
        # the LM's rows: each chain's window, clean, with the crop's (corrupted) inputs in place
        lm_context = torch.full((b, max(len(c) for c in contexts)), PAD, dtype=torch.long)
        lm_columns = torch.full((b, l), -1, dtype=torch.long)
        for i, (c, col) in enumerate(zip(contexts, columns)):
            lm_context[i, : len(c)] = torch.from_numpy(ASCII_TO_TOKEN[c])
            col = torch.from_numpy(np.asarray(col, dtype=np.int64))
            lm_context[i, col] = inputs[i, : len(col)]
            lm_columns[i, : len(col)] = col
    withheld = stretch = None
    if s.draws_stretch:  # draw 4, last, so every other draw is as without it
        withheld, stretch = _withhold(coords, lengths, gens, s)
    pad = tokens != PAD
    present = ~torch.isnan(coords[:, :, 1]).any(-1) & pad
    coords = centre(coords, present)
    if s.rotate:
        coords = torch.einsum("blac,bdc->blad", coords, rotation_from_gaussian(gauss))
    out = Batch(
        tokens=inputs,
        coords=coords,
        padding_mask=pad,
        positions=_pad_rows(crop_pos, l, 0, torch.long) if spatial else None,
        plddt=_pad_rows(plddts, l, float("nan"), torch.float32) if with_plddt else None,
        targets=targets,
        clean=tokens if masked else None,
        index=torch.from_numpy(np.asarray(chain_indices, dtype=np.int64)),
        withheld=withheld,
        stretch=stretch,
        lm_context=lm_context,
        lm_columns=lm_columns,
    )
    if s.withhold == "cut":
        out = _cut(out, stretch)
    return out


def _withhold(
    coords: torch.Tensor, lengths: list[int], gens: list[torch.Generator], s: BatchSettings
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw each chain's stretch (or whole chain) and set the coordinates withheld there to NaN in
    ``coords`` [b, l, 4, 3] (in place). Returns (withheld, stretch), [b, l] bool each: the residues
    that had coordinates and lost them here, and the drawn stretch."""
    b, l = coords.shape[:2]
    withheld = torch.zeros(b, l, dtype=torch.bool)
    stretch = torch.zeros(b, l, dtype=torch.bool)
    training = s.withhold is None
    for i, (n, gen) in enumerate(zip(lengths, gens)):
        drop_all, drop_span, frac, where = torch.rand(4, generator=gen).tolist()
        span = None
        if s.withhold == "chain" or (training and drop_all < s.drop_chain_coords):
            span = slice(0, n)
        elif (not training or drop_span < s.drop_span_coords) and n > 1:
            lo, hi = SPAN_DROP_FRACTION
            k = max(1, round(n * (lo + (hi - lo) * frac)))
            start = min(int(where * (n - k + 1)), n - k)
            span = slice(start, start + k)
        if span is not None:
            stretch[i, span] = True
            if s.withhold != "none":  # "cut" hides too, so the centre is that of the residues kept
                withheld[i, span] = ~torch.isnan(coords[i, span, CA_INDEX]).any(-1)
                coords[i, span] = float("nan")
    return withheld, stretch


#: What a row is padded with, per Batch field (others: 0 / False).
_FILL = {
    "tokens": PAD,
    "clean": PAD,
    "targets": -100,
    "coords": float("nan"),
    "plddt": float("nan"),
    "chain": -1,
    "segments": -1,
    "pieces": -1,
}


def _cut(batch: Batch, drop: torch.Tensor) -> Batch:
    """``batch`` with the residues ``drop`` [B, L] removed from each row (the rest closing up, left-
    aligned, re-padded to the new longest row; ``stretch`` and ``withheld`` end all False). The kept
    coordinates are unchanged: the dropped ones were hidden before centring, so the frame is already
    that of the residues kept, as for a file that omits them."""
    keep = batch.padding_mask & ~drop
    n = keep.sum(1)
    width = max(int(n.max()), 1) if len(n) else 1
    dest = torch.arange(width)[None, :] < n[:, None]  # [B, width] where the kept residues land
    changes = {}
    for f in dataclasses.fields(batch):
        v = getattr(batch, f.name)
        if v is None or f.name == "index" or f.name in HOST_FIELDS:
            continue  # replace() below drops the host fields: they described the uncut batch
        new = torch.full((v.shape[0], width, *v.shape[2:]), _FILL.get(f.name, 0), dtype=v.dtype)
        new[dest] = v[keep]
        changes[f.name] = new
    return batch.replace(**changes)


def _pad_rows(rows: list[np.ndarray], length: int, fill, dtype) -> torch.Tensor:
    """[len(rows), length] tensor holding each 1-D array left-aligned, ``fill`` after it."""
    out = torch.full((len(rows), length), fill, dtype=dtype)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.from_numpy(r)
    return out


def check_fits(
    data,
    idx: np.ndarray,
    crop_length: int,
    max_len: int,
    option: str | None = "crop_length",
    alternative: str | None = None,
) -> None:
    """Raise :class:`SequenceTooLong` before any model call if a chain of ``idx``, cropped to
    ``crop_length`` residues, is still longer than the model's ``max_len`` (the model would fail
    mid-run on that batch). The error names the longest such chain, ``option`` (the parameter that
    bounds the length, by its Python name; a leading ``--`` is dropped) and ``alternative``."""
    eff = cropped_lengths(data, idx, crop_length)
    if len(idx) == 0 or int(eff.max()) <= max_len:
        return
    ci = int(idx[int(np.argmax(eff))])
    if option is not None:
        option = option.lstrip("-").replace("-", "_")  # callers that still pass the flag
    raise SequenceTooLong(int(data.lengths[ci]), max_len, data.ids[ci], option, alternative)


def chains_to_batch(chains: Sequence[Chain]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pad ``Chain`` objects (as the readers return them) into one model input, as stored: no crop,
    centring or rotation (the model centres on present CAs itself).

    Returns tokens [B, L] long (PAD after each chain), coords [B, L, 4, 3] float32 Angstrom (NaN
    missing or padding) and padding_mask [B, L] bool (True = residue), L = the longest chain.
    ``Batch(*chains_to_batch(chains))`` makes it a :class:`Batch`.
    """
    if not chains:
        raise UsageError("chains_to_batch got no chains")
    length = max(len(c.sequence) for c in chains)
    tokens = torch.full((len(chains), length), PAD, dtype=torch.long)
    coords = torch.full((len(chains), length, 4, 3), float("nan"))
    for i, c in enumerate(chains):
        n = len(c.sequence)
        tokens[i, :n] = torch.from_numpy(
            ASCII_TO_TOKEN[np.frombuffer(c.sequence.encode("ascii"), dtype=np.uint8)]
        )
        coords[i, :n] = torch.from_numpy(np.asarray(c.coords, dtype=np.float32))
    return tokens, coords, tokens != PAD


def inference_plan(
    lengths: np.ndarray, crop_length: int, tokens_per_batch: int
) -> list[np.ndarray]:
    """Which chains go together for an inference pass: index arrays into ``lengths`` [N] (residues),
    length-sorted token-budget batches of the chains cropped to ``crop_length``; the budget is at
    least one crop, so every chain fits a batch."""
    return token_budget_batches(
        np.minimum(lengths, crop_length), max(tokens_per_batch, crop_length), None
    )


def unmasked_batches(
    data,
    idx: np.ndarray,
    crop_length: int,
    tokens_per_batch: int,
    rotate: bool = False,
    seed: int = SEED,
) -> Iterator[Batch]:
    """Every chain of ``idx`` exactly once, in the batches of :func:`inference_plan`: clean
    (unmasked) tokens, centred coordinates, each chain cropped to its first ``crop_length``
    residues; rotated with per-chain seeded generators when ``rotate``. ``Batch.index`` gives each
    row's chain index. For inference passes (embedding, attention analysis)."""
    idx = np.asarray(idx, dtype=np.int64)
    settings = BatchSettings(
        crop_length=crop_length,
        tokens_per_batch=max(tokens_per_batch, crop_length),
        rotate=rotate,
        random_crop=False,
    )
    for members in inference_plan(data.lengths[idx], crop_length, tokens_per_batch):
        yield collate_chains(data, idx[members], settings, seed, masked=False)


def pack_rows(lengths: list[int], row_length: int) -> list[list[int]]:
    """First-fit decreasing: the items (by index into ``lengths``) of each row, no row longer than
    ``row_length`` residues. Deterministic: ties go by index."""
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        if lengths[i] > row_length:
            raise ValueError(f"item {i} has {lengths[i]} residues, more than a row of {row_length}")
        for r, free in enumerate(room):
            if lengths[i] <= free:
                rows[r].append(i)
                room[r] -= lengths[i]
                break
        else:
            rows.append([i])
            room.append(row_length - lengths[i])
    return [sorted(r) for r in rows]


def pack_batch(batch: Batch, row_length: int | None = None) -> Batch:
    """The chains of a padded batch (one per row) packed several per row (``pack_rows``; rows of
    ``row_length`` residues, default the longest chain), so that fewer positions are padding.

    Each chain keeps what the batcher gave it alone: its crop, centring, rotation, masks and
    positions (0..n-1 unless the batch has ``positions``); ``segments`` [B', L'] says which chain of
    the row each position is (-1 at padding; a conditioning language model reads each chain as a
    sequence of its own), and the model keeps attention within a chain and
    centres each chain on its own CAs, so per-chain logits and the loss equal the padded batch's.
    ``index`` and ``chain`` are per row and are dropped (training batches do not need them)."""
    if batch.chain is not None or batch.segments is not None or batch.pieces is not None:
        raise ValueError("pack_batch takes a padded batch of single chains")
    lengths = batch.lengths.tolist()
    rows = pack_rows(lengths, row_length or max(lengths))
    width = max(sum(lengths[i] for i in r) for r in rows)
    n_rows = len(rows)
    pos = batch.positions
    if pos is None:
        pos = torch.arange(batch.tokens.shape[1]).expand_as(batch.tokens)

    # (row, first column, chain of the padded batch, its segment number in the row)
    slots = []
    for r, members in enumerate(rows):
        at = 0
        for s, i in enumerate(members):
            slots.append((r, at, i, s))
            at += lengths[i]

    def packed(t: torch.Tensor | None, fill) -> torch.Tensor | None:
        if t is None:
            return None
        out = torch.full((n_rows, width, *t.shape[2:]), fill, dtype=t.dtype)
        for r, at, i, _ in slots:
            out[r, at : at + lengths[i]] = t[i, : lengths[i]]
        return out

    segments = torch.full((n_rows, width), -1, dtype=torch.long)
    for r, at, i, s in slots:
        segments[r, at : at + lengths[i]] = s
    return Batch(
        tokens=packed(batch.tokens, PAD),
        coords=packed(batch.coords, float("nan")),
        padding_mask=packed(batch.padding_mask, False),
        positions=packed(pos, 0),
        plddt=packed(batch.plddt, float("nan")),
        targets=packed(batch.targets, -100),
        clean=packed(batch.clean, PAD),
        withheld=packed(batch.withheld, False),
        stretch=packed(batch.stretch, False),
        segments=segments,
    )
