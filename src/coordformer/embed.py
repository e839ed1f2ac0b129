"""Per-chain (mean-pooled) and per-residue embeddings from any layer, written to HDF5 or .npz.

Inputs are anything ``coordformer prepare`` reads (structure files, folders, chain_set JSONL, FASTA:
sequence-only chains, every residue flagged missing) or a prepared dataset folder. Raw inputs are
read in memory by ``data.prepare.read_in_memory``: the same chain policy, chain ids and order as
``prepare``, so unreadable files and filtered chains are skipped and logged exactly as there (in
``<out>.skipped.tsv``), without writing a dataset.

Output (readable with h5py / numpy alone):

* HDF5 (``.h5``/``.hdf5``): ``ids`` [N] strings, ``lengths`` [N], ``mean`` [N, D] float32,
  ``sequences`` [N] strings (the residues embedded, one letter per row) and, with ``per_residue``,
  ``residues/<key>`` [L, D] float16 plus ``residue_has_ca/<key>`` [L] bool (False: embedded
  without coordinates), where ``<key>`` is the chain id with ``%`` written ``%25`` and ``/`` written
  ``%2F`` (:func:`residue_key`; a ``/`` would make nested groups) and ``residue_keys`` [N] gives
  each row's key beside ``ids``; the settings in the file's attributes. Rows are appended batch by
  batch, so memory stays bounded by one batch.
* ``.npz``: ``ids``, ``lengths``, ``mean``, ``sequences`` (mean-pooled only; the whole array is kept
  in memory), and ``provenance``: the HDF5 file's attributes as one JSON object (a 0-d string
  array; ``json.loads(str(z["provenance"]))``, no pickle needed).

The attributes (HDF5) and ``provenance`` (npz) hold the same record of what produced the file:
``checkpoint``, ``inputs`` (JSON list, as given), ``config`` (the EmbedConfig) and ``model_config``
(JSON objects), ``layer``, ``use_coords``, ``command`` (the command line, "" from Python) and
``coordformer_version``.

With ``complexes`` the chains of each input file go through the model together
(``coordformer.data.complexes``: one shared frame, a ``chain_gap`` jump in residue positions between
chains). The per-chain rows above then hold each chain embedded in its complex, and a second table
holds one row per complex, pooled over all its residues: HDF5 ``complexes/{ids, chains, lengths,
mean}`` (``chains`` = the member chain ids joined by ",", in pass order), ``.npz`` ``complex_ids``,
``complex_chains``, ``complex_lengths``, ``complex_mean``. Complexes longer than the window are
skipped and listed in ``<out>.skipped.tsv`` (select fewer chains with ``chains``).

Each chain (each window, each complex) goes in the canonical frame of its CAs
(``model.encode.in_canonical_frame``), so an embedding is a deterministic function of the structure,
whatever frame its file uses.
Chains longer than the window are embedded in overlapping windows stitched back to full length
(``coordformer.data.windows``: each residue from the window it is most central in).
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence, Union

import numpy as np
import torch

from . import __version__
from .config import EmbedConfig, check_overlap, default_of
from .constants import CA_INDEX
from .data.batching import check_fits, token_budget_batches, unmasked_batches
from .data.complexes import complex_batch, complex_span, group_complexes
from .data.memory import MemoryDataset
from .data.prepare.policy import NOT_SELECTED, not_selected_reason, selected_chain
from .data.store import PreparedDataset, is_finished_dataset, refuse_unfinished_datasets
from .errors import OptionError, UsageError
from .model.encode import encode, eval_mode, in_canonical_frame, masked_mean, model_device

if TYPE_CHECKING:
    from .io import Chain
    from .model.core import CoordFormer

#: What embed batches from: a prepared dataset folder, or raw inputs read in memory.
ChainData = Union[PreparedDataset, MemoryDataset]


def _is_prepared(inputs: list[str]) -> bool:
    """Whether ``inputs`` is one prepared dataset folder; UsageError for a dataset folder among
    other inputs, whose array and table files would otherwise be read as unreadable inputs."""
    refuse_unfinished_datasets(inputs)
    datasets = [p for p in inputs if Path(p).is_dir() and is_finished_dataset(p)]
    if datasets and len(inputs) > 1:
        raise UsageError(
            f"{datasets[0]} is a prepared dataset: give it on its own (one prepared dataset "
            "folder), or give the files it was prepared from together with the other inputs"
        )
    return bool(datasets)


def open_inputs(
    inputs: list[str],
    cfg: EmbedConfig,
    workers: int = 1,
    progress: bool = True,
    echo=print,
    store_plddt: bool = False,
    skipped_path: str | Path | None = None,
) -> tuple[ChainData, dict]:
    """The chains to embed and where they came from: one prepared dataset folder as it is
    (``{"prepared": folder}``), else every readable chain of the inputs read in memory with
    ``cfg``'s chain selection, ``seqres`` and ``plddt_min`` (``{"prepare": summary of the read}``;
    unreadable inputs and filtered chains listed in ``skipped_path``). ``store_plddt``: keep the
    per-residue pLDDT (for models that read it)."""
    if _is_prepared(inputs):
        if cfg.plddt_min is not None:  # a prepared dataset keeps no B-factors to apply it to
            raise OptionError(
                "plddt_min",
                cfg.plddt_min,
                "applies to structure inputs; pass it to "
                "`coordformer prepare` for a prepared dataset",
            )
        if cfg.seqres != "off":  # the dataset holds the chains as they were prepared
            raise OptionError(
                "seqres",
                cfg.seqres,
                "applies to structure inputs; pass it to "
                "`coordformer prepare` for a prepared dataset",
            )
        if skipped_path is not None:  # a skip log from an earlier run must not stay behind
            from .data import store

            store.write_tsv(skipped_path, store.SKIPPED_HEADER, [])
        return PreparedDataset(inputs[0]), {"prepared": inputs[0]}
    if cfg.split is not None:  # raw inputs have no splits
        raise OptionError(
            "split", cfg.split, "applies to a prepared dataset folder, not to structure inputs"
        )
    from .config import PrepareConfig
    from .data.prepare import read_in_memory

    # No length or missing-coordinate filter: embedding wants every readable chain.
    prep = PrepareConfig(
        min_length=1,
        valid_fraction=0.0,
        test_fraction=0.0,
        max_missing_ca=1.0,
        plddt_min=cfg.plddt_min,
        chains=tuple(cfg.chains),
        store_plddt=store_plddt,
        seqres=cfg.seqres,
    )
    data, summary = read_in_memory(
        inputs, prep, workers=workers, progress=progress, skipped_path=skipped_path
    )
    # quiet: the caller's one line names the unreadable inputs
    # (summary["prepare"]["inputs_skipped"])
    if progress:
        echo(summary.format())
    return data, {"prepare": summary.to_dict()}


@torch.no_grad()
def embed(
    checkpoint: str,
    inputs: list[str],
    out: str | Path,
    cfg: EmbedConfig = EmbedConfig(),
    device: str = "cpu",
    workers: int = 1,
    progress: bool = True,
    echo=print,
    command: str = "",
    warn=None,
) -> dict:
    """Embed every chain of ``inputs`` with ``checkpoint``; returns a summary dict. ``warn``
    (default: print to stderr) gets a one-line warning when the model never learnt inputs without
    coordinates and most residues have none."""
    from .model.checkpoints import load_model, missing_coords_warning

    warn = warn or (lambda msg: print(msg, file=sys.stderr))
    out = Path(out)
    fmt = "npz" if out.suffix == ".npz" else "h5" if out.suffix in (".h5", ".hdf5") else None
    if fmt is None:
        raise OptionError("out", out, "use a .h5/.hdf5 (HDF5) or .npz file name")
    if fmt == "npz" and cfg.per_residue:
        raise UsageError(
            "per-residue embeddings need an HDF5 output (.h5); .npz holds mean-pooled ones only"
        )
    model, meta = load_model(checkpoint, map_location=device)
    model = model.float().eval()
    window, use_coords = _model_settings(model, cfg)
    out.parent.mkdir(parents=True, exist_ok=True)
    skipped_path = out.with_name(out.name + ".skipped.tsv")
    try:
        data, provenance = open_inputs(
            inputs,
            cfg,
            workers,
            progress,
            echo,
            store_plddt=model.config.plddt_feature,
            skipped_path=skipped_path,
        )
        idx = data.split_indices(cfg.split) if cfg.split else np.arange(len(data))
        not_selected = (
            provenance["prepare"]["chains_filtered"].get(NOT_SELECTED, 0)
            if "prepare" in provenance
            else 0
        )
        if cfg.chains and "prepared" in provenance:  # raw inputs were filtered as they were read
            idx, not_selected = _select_prepared_chains(data, idx, cfg.chains, skipped_path)
        if len(idx) == 0:
            raise UsageError(
                (
                    f"no chains to embed in {provenance['prepared']}"
                    + (f" (split {cfg.split})" if cfg.split else "")
                    + (f"; none is one of --chains {','.join(cfg.chains)}" if cfg.chains else "")
                )
                if "prepared" in provenance
                else f"no readable chains in the inputs (see {skipped_path})"
            )
        warning = missing_coords_warning(
            model, meta, data, idx, fraction=None if use_coords else 1.0
        )
        if warning:  # a model that never learnt the missing flag, on mostly coordinate-less inputs
            warn(warning)
        attrs = {
            "checkpoint": str(checkpoint),
            "inputs": json.dumps([str(p) for p in inputs]),
            "config": json.dumps(cfg.to_dict()),
            "model_config": json.dumps(model.config.to_dict()),
            "layer": "final (after final LayerNorm)"
            if cfg.layer is None
            else f"residual stream after layer {cfg.layer}",
            "use_coords": use_coords,
            "command": command,
            "coordformer_version": __version__,
        }
        tmp_out = out.with_name(out.name + ".tmp")
        writer = (
            _H5Writer(tmp_out, model.config.d_model, attrs, cfg.per_residue)
            if fmt == "h5"
            else _NpzWriter(attrs)
        )
        try:
            cropped, windowed, complex_summary = _write_embeddings(
                model, data, idx, cfg, window, use_coords, device, writer, skipped_path, progress
            )
            writer.close(tmp_out)
            os.replace(tmp_out, out)
        except BaseException:  # a failure or Ctrl-C leaves no half-written OUT.tmp behind
            writer.abort()
            tmp_out.unlink(missing_ok=True)
            raise
        n_chains = complex_summary.get("chains", int(len(idx)))
        summary = {
            "out": str(out),
            "chains": n_chains,
            "cropped": cropped,
            "windowed": windowed,
            "window": window,
            "dim": model.config.d_model,
            "not_selected": not_selected,
            **complex_summary,
            **provenance,
        }
        return summary
    finally:
        # a skip log that lists nothing (a clean run, or one refused before reading anything)
        # is no log: no file, as `score` leaves none
        _drop_empty_log(skipped_path)


def _write_embeddings(
    model, data, idx, cfg, window, use_coords, device, writer, skipped_path, progress
) -> tuple[int, int, dict]:
    """Embed chains ``idx`` of ``data`` (with their complexes under ``cfg.complexes``) into
    ``writer``: (chains cropped by max_length, chains longer than ``window``, complex summary)."""
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn

    from .progress import Progress  # rich's bar on a terminal, plain periodic lines in a log file

    cropped = windowed = 0
    complex_summary = {}
    if cfg.complexes:
        complex_summary = _embed_complexes(
            model, data, idx, cfg, window, use_coords, device, writer, skipped_path, progress
        )
        idx = np.array([], dtype=np.int64)  # every chain was written with its complex
    with Progress(
        TextColumn("embedding"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        disable=not progress or len(idx) == 0,  # --complexes wrote every chain already
    ) as bar:
        task = bar.add_task("embed", total=len(idx))
        for chain_idx, lengths, mean, hidden in iter_windowed(
            model,
            data,
            idx,
            cfg.layer,
            use_coords,
            window,
            cfg.overlap,
            cfg.tokens_per_batch,
            device,
            cfg.max_length,
        ):
            for r, ci in enumerate(chain_idx):
                n = int(lengths[r])
                cropped += int(data.lengths[ci] > n)
                windowed += int(n > window)
                writer.add(
                    data.ids[ci],
                    n,
                    mean[r],
                    hidden[r, :n].numpy() if cfg.per_residue else None,
                    *_residue_info(data, ci, n, cfg.per_residue, use_coords),
                )
            bar.advance(task, len(chain_idx))
    return cropped, windowed, complex_summary


def _drop_empty_log(path: Path) -> None:
    """Remove the TSV at ``path`` when it holds no row below its header."""
    from .data import store

    if path.exists() and not store.read_tsv(path)[1]:
        path.unlink()


def _model_settings(model, cfg: EmbedConfig) -> tuple[int, bool]:
    """(window, use_coords) of ``cfg`` for ``model``; OptionError for a layer, window or overlap
    the model cannot take."""
    n_layers = model.config.n_layers
    if cfg.layer is not None and not 0 <= cfg.layer <= n_layers:
        raise OptionError(
            "layer", cfg.layer, f"this model has layers 0..{n_layers} (0 = embeddings)"
        )
    window = cfg.window or min(1024, model.config.max_len)
    if window > model.config.max_len:
        raise OptionError("window", window, f"exceeds the model's max_len {model.config.max_len}")
    # complexes are embedded whole, never in windows: only a negative overlap is refused there
    check_overlap(cfg.overlap, window if not cfg.complexes else max(window, cfg.overlap + 1))
    return window, model.config.use_coords if cfg.use_coords is None else cfg.use_coords


@dataclass(frozen=True)
class ChainEmbedding:
    """One chain's embedding from :func:`embed_chains`: ``mean`` [D] float32 (over the residues
    embedded), ``residues`` [L, D] float32 with ``per_residue`` (else None), ``has_ca`` [L] bool
    (False: that residue went in without coordinates), ``sequence`` the L residues embedded (the
    first ``max_length`` when set)."""

    id: str
    sequence: str
    mean: np.ndarray
    residues: np.ndarray | None
    has_ca: np.ndarray


def embed_chains(
    model: CoordFormer,
    chains: Sequence[Chain],
    cfg: EmbedConfig = EmbedConfig(),
    device: str | torch.device | None = None,
) -> list[ChainEmbedding]:
    """Embeddings of ``chains`` (``io.Chain`` objects: ``read_structure``, ``iter_chain_set``,
    ``iter_fasta``) in memory, one per chain in the order given, computed as ``embed`` computes
    them for a file: batched by length, chains longer than the window in overlapping windows,
    coordinates in the canonical frame of their CAs, ``cfg``'s ``layer``, ``window``,
    ``overlap``, ``max_length``, ``tokens_per_batch``, ``use_coords`` and ``per_residue``, and
    pLDDT from the B-factors for a model that reads it. Coordinates are [L, 4, 3] Angstrom, NaN
    where missing; they pass ``prepare``'s coordinate rule (a non-finite value makes its atom
    missing; a chain beyond +/-10,000 Angstrom is refused). The model runs in eval mode on
    ``device`` (None: where its weights are) and is left in the mode it came in. A reader's error
    record (an unreadable entry) or an empty chain is a UsageError naming it."""
    from .data.prepare import chains_in_memory

    # settings of `embed`'s reading step, which in-memory chains skip: refused, not ignored
    for name in ("complexes", "chains", "seqres", "plddt_min", "split"):
        if getattr(cfg, name) != default_of(EmbedConfig, name):
            raise OptionError(
                name,
                getattr(cfg, name),
                "applies to `embed` reading files; embed_chains takes "
                "the chains as given (select or edit them first)",
            )
    chains = list(chains)
    # the coordinate rule before the batcher centres a chain: an infinite mean would make every
    # atom of it missing
    data = chains_in_memory(chains, store_plddt=model.config.plddt_feature)
    window, use_coords = _model_settings(model, cfg)
    if device is None:
        device = model_device(model)
    out: list[ChainEmbedding | None] = [None] * len(chains)
    with eval_mode(model):
        for chain_idx, lengths, mean, hidden in iter_windowed(
            model,
            data,
            np.arange(len(chains)),
            cfg.layer,
            use_coords,
            window,
            cfg.overlap,
            cfg.tokens_per_batch,
            device,
            cfg.max_length,
        ):
            for r, ci in enumerate(chain_idx.tolist()):
                n = int(lengths[r])
                sequence, has_ca = _residue_info(data, ci, n, True, use_coords)
                out[ci] = ChainEmbedding(
                    id=chains[ci].id,
                    sequence=sequence,
                    mean=mean[r],
                    residues=hidden[r, :n].float().numpy() if cfg.per_residue else None,
                    has_ca=has_ca,
                )
    return out  # type: ignore[return-value]


def _select_prepared_chains(
    data: ChainData, idx: np.ndarray, chains: tuple[str, ...], skipped_path: Path
) -> tuple[np.ndarray, int]:
    """The chains of ``idx`` that ``--chains`` keeps, and how many it left out, each listed in
    ``skipped_path`` as ``prepare`` lists them."""
    from .data import store

    keep = np.array([selected_chain(data.ids[i], chains) for i in idx], dtype=bool)
    store.write_tsv(
        skipped_path,
        store.SKIPPED_HEADER,
        (
            (f"{data.ids[i]} [{data.path}]", not_selected_reason(data.ids[i], chains))
            for i in idx[~keep]
        ),
    )
    return idx[keep].astype(np.int64), int((~keep).sum())


def _embed_complexes(
    model,
    data: ChainData,
    idx: np.ndarray,
    cfg: EmbedConfig,
    window: int,
    use_coords: bool,
    device: str,
    writer,
    skipped_path: Path,
    progress: bool,
) -> dict:
    """Embed the chains of ``idx`` grouped into complexes (token-budget batches of whole complexes);
    writes per-chain and per-complex rows; complexes whose position span exceeds ``window`` are
    skipped and appended to ``skipped_path``. Returns counts."""
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn

    from .progress import Progress  # rich's bar on a terminal, plain periodic lines in a log file

    if cfg.max_length is not None:
        raise OptionError(
            "max_length",
            cfg.max_length,
            "crops single chains; with `complexes` select chains with `chains` instead",
        )
    groups = group_complexes(data, idx)
    # A model conditioned on a language model reads no positions (the gap is laid out in them but
    # takes no room in its rows) and its LM reads each chain alone, up to the LM's residue limit.
    lm_limit = model.lm.max_residues if getattr(model, "lm", None) is not None else None
    gap = 0 if lm_limit is not None else cfg.chain_gap
    spans = np.array([complex_span(data.lengths[m], gap) for _, m in groups])
    longest = np.array([int(data.lengths[m].max()) for _, m in groups])
    reasons = [
        f"complex spans {span} residue positions ({len(members)} chains, gap {gap}) > window "
        f"{window}: select fewer chains with --chains or raise --window"
        if span > window
        else f"a chain of {top} residues exceeds the {lm_limit} residues the conditioning "
        "language model reads: select chains with --chains"
        if lm_limit is not None and top > lm_limit
        else None
        for (_, members), span, top in zip(groups, spans, longest)
    ]
    fits = np.array([r is None for r in reasons], dtype=bool)
    if (~fits).any():
        new = not skipped_path.exists()
        with open(skipped_path, "a", encoding="utf-8") as f:
            if new:
                f.write("input\treason\n")
            for (name, _), reason in zip(groups, reasons):
                if reason is not None:
                    f.write(f"{name}\t{reason}\n")
    if not fits.any():  # an output holding no row would pass for a finished run
        raise UsageError(
            f"none of the {len(groups)} complexes fits; the first: {reasons[0]} (every reason is "
            f"in {skipped_path})"
        )
    kept = [g for g, ok in zip(groups, fits) if ok]
    sizes = np.array([int(data.lengths[m].sum()) for _, m in kept], dtype=np.int64)
    n_chains = 0
    with Progress(
        TextColumn("embedding complexes"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        disable=not progress,
    ) as bar:
        task = bar.add_task("embed", total=len(kept))
        for batch_rows in token_budget_batches(sizes, max(cfg.tokens_per_batch, window), None):
            b = complex_batch(data, [kept[r][1] for r in batch_rows], cfg.chain_gap)
            h, pooled = encode(model, in_canonical_frame(b.to(device)), cfg.layer, use_coords)
            h, pooled = h.float().cpu(), pooled.float().cpu()
            for r, row in enumerate(batch_rows):
                name, members = kept[row]
                chain_of = b.chain[r]
                for k, ci in enumerate(members):
                    hk = h[r][chain_of == k]
                    mean = masked_mean(h[r : r + 1], (chain_of == k)[None])[
                        0
                    ]  # over chain k's residues only
                    writer.add(
                        data.ids[ci],
                        len(hk),
                        mean.numpy(),
                        hk.numpy() if cfg.per_residue else None,
                        *_residue_info(data, ci, len(hk), cfg.per_residue, use_coords),
                    )
                writer.add_complex(
                    name,
                    ",".join(data.ids[ci] for ci in members),
                    int(b.lengths[r]),
                    pooled[r].numpy(),
                )
                n_chains += len(members)
            bar.advance(task, len(batch_rows))
    return {
        "chains": n_chains,
        "complexes": len(kept),
        "complexes_skipped": int((~fits).sum()),
        "chain_gap": gap,  # 0 for a conditioned model, which reads no positions
    }


def iter_pooled(
    model: CoordFormer,
    data: ChainData,
    idx: np.ndarray,
    layer: int | None,
    use_coords: bool,
    max_length: int,
    tokens_per_batch: int,
    device: str = "cpu",
):
    """Yield (chain indices [B], lengths [B], mean-pooled [B, D] float32 numpy, hidden [B, L, D] cpu
    tensor) for the chains ``idx`` of ``data`` in length-sorted token-budget batches (first
    ``max_length`` residues of each chain; clean inputs in their canonical frames)."""
    check_fits(data, idx, max_length, model.config.max_len, "max_length")
    for b in unmasked_batches(data, idx, max_length, tokens_per_batch):
        with torch.no_grad():
            h, mean = encode(model, in_canonical_frame(b.to(device)), layer, use_coords)
        yield b.index.numpy(), b.lengths.numpy(), mean.cpu().numpy().astype(np.float32), h.cpu()


def iter_windowed(
    model: CoordFormer,
    data: ChainData,
    idx: np.ndarray,
    layer: int | None,
    use_coords: bool,
    window: int,
    overlap: int,
    tokens_per_batch: int,
    device: str = "cpu",
    max_length: int | None = None,
):
    """As :func:`iter_pooled` (same tuples, same order: by length), over whole chains (or their
    first ``max_length`` residues): chains of at most ``window`` residues go through
    :func:`iter_pooled` unchanged; longer ones through overlapping windows
    (``coordformer.data.windows``), each residue's hidden state from the window it is most central
    in, and the mean over all their residues."""
    from .data.windows import windowed_forward

    lengths = data.lengths[idx] if max_length is None else np.minimum(data.lengths[idx], max_length)
    fits = lengths <= window
    if (
        fits.any()
    ):  # cropped to max_length where that is shorter than the window (not to the window)
        crop = window if max_length is None else min(window, max_length)
        yield from iter_pooled(
            model, data, idx[fits], layer, use_coords, crop, tokens_per_batch, device
        )
    if fits.all():
        return
    for b in unmasked_batches(data, idx[~fits], int(lengths[~fits].max()), tokens_per_batch):
        on = b.to(device)
        with torch.no_grad():
            h = windowed_forward(
                lambda w: encode(model, in_canonical_frame(w), layer, use_coords)[0],
                on,
                window,
                overlap,
                max(tokens_per_batch, window),
            )
        mean = masked_mean(h, on.padding_mask)
        yield b.index.numpy(), b.lengths.numpy(), mean.cpu().numpy().astype(np.float32), h.cpu()


def _residue_info(
    data: ChainData, ci: int, n: int, per_residue: bool, use_coords: bool = True
) -> tuple[str, np.ndarray | None]:
    """The sequence embedded for chain ``ci`` (its first ``n`` residues) and, for per-residue output
    only (else None: no coordinate read for mean-only runs), which of them were given a CA ([n]
    bool): rows without one were embedded from sequence alone (unresolved, put back by --seqres,
    below --plddt-min, FASTA; every row when ``use_coords`` is False)."""
    if not per_residue:
        return data.sequence(ci)[:n], None
    if not use_coords:
        return data.sequence(ci)[:n], np.zeros(n, dtype=bool)
    has_ca = ~np.isnan(np.asarray(data.coords(ci)[:n, CA_INDEX])).any(-1)
    return data.sequence(ci)[:n], has_ca


def residue_key(chain_id: str) -> str:
    """The name of a chain's per-residue datasets in an HDF5 ``embed`` output: the id with ``%`` and
    ``/`` percent-encoded (``%25``, ``%2F``), and ``.`` too for the ids ``.`` and ``..``, which HDF5
    reads as paths. ``urllib.parse.unquote`` gives the id back."""
    key = chain_id.replace("%", "%25").replace("/", "%2F")
    return key.replace(".", "%2E") if key in (".", "..") else key


class _H5Writer:
    def __init__(self, path: Path, dim: int, attrs: dict, per_residue: bool):
        import h5py

        self.f = h5py.File(path, "w")
        for k, v in attrs.items():
            self.f.attrs[k] = v
        self.ids = self.f.create_dataset(
            "ids", (0,), maxshape=(None,), dtype=h5py.string_dtype(), chunks=True
        )
        self.lengths = self.f.create_dataset(
            "lengths", (0,), maxshape=(None,), dtype="int64", chunks=True
        )
        self.mean = self.f.create_dataset(
            "mean", (0, dim), maxshape=(None, dim), dtype="float32", chunks=(256, dim)
        )
        self.seqs = self.f.create_dataset(
            "sequences", (0,), maxshape=(None,), dtype=h5py.string_dtype(), chunks=True
        )
        self.res = self.f.create_group("residues") if per_residue else None
        self.has_ca = self.f.create_group("residue_has_ca") if per_residue else None
        self.keys = (
            self.f.create_dataset(
                "residue_keys", (0,), maxshape=(None,), dtype=h5py.string_dtype(), chunks=True
            )
            if per_residue
            else None
        )
        self.n = 0
        self.cx = None

    def add(
        self,
        chain_id: str,
        length: int,
        mean: np.ndarray,
        residues: np.ndarray | None,
        sequence: str = "",
        has_ca: np.ndarray | None = None,
    ) -> None:
        k = self.n
        for ds in (self.ids, self.lengths, self.mean, self.seqs):
            ds.resize(k + 1, axis=0)
        self.ids[k], self.lengths[k], self.mean[k], self.seqs[k] = chain_id, length, mean, sequence
        if self.res is not None and residues is not None:
            key = residue_key(chain_id)
            self.keys.resize(k + 1, axis=0)
            self.keys[k] = key
            self.res.create_dataset(key, data=residues.astype(np.float16), compression="gzip")
            if has_ca is not None:
                self.has_ca.create_dataset(
                    key, data=np.asarray(has_ca, dtype=bool), compression="gzip"
                )
        self.n += 1

    def add_complex(self, complex_id: str, members: str, length: int, mean: np.ndarray) -> None:
        import h5py

        if self.cx is None:
            g = self.f.create_group("complexes")
            dim = self.mean.shape[1]
            self.cx = [
                g.create_dataset(
                    "ids", (0,), maxshape=(None,), dtype=h5py.string_dtype(), chunks=True
                ),
                g.create_dataset(
                    "chains", (0,), maxshape=(None,), dtype=h5py.string_dtype(), chunks=True
                ),
                g.create_dataset("lengths", (0,), maxshape=(None,), dtype="int64", chunks=True),
                g.create_dataset(
                    "mean", (0, dim), maxshape=(None, dim), dtype="float32", chunks=(256, dim)
                ),
            ]
        k = self.cx[0].shape[0]
        for ds, v in zip(self.cx, (complex_id, members, length, mean)):
            ds.resize(k + 1, axis=0)
            ds[k] = v

    def close(self, path: Path) -> None:
        self.f.close()

    def abort(self) -> None:
        """Close the file after a failure (the caller removes it)."""
        if self.f.id.valid:
            self.f.close()


class _NpzWriter:
    def __init__(self, attrs: dict):
        self.attrs = attrs  # what HDF5 keeps as file attributes
        self.ids, self.lengths, self.means, self.seqs = [], [], [], []
        self.complexes: list[tuple] = []

    def add(
        self,
        chain_id: str,
        length: int,
        mean: np.ndarray,
        residues,
        sequence: str = "",
        has_ca=None,
    ) -> None:
        self.ids.append(chain_id)
        self.lengths.append(length)
        self.means.append(mean)
        self.seqs.append(sequence)

    def add_complex(self, complex_id: str, members: str, length: int, mean: np.ndarray) -> None:
        self.complexes.append((complex_id, members, length, mean))

    def abort(self) -> None:
        """Nothing to close: the file is written only by close()."""

    def close(self, path: Path) -> None:
        extra = {}
        if self.complexes:
            ids, members, lengths, means = zip(*self.complexes)
            extra = {
                "complex_ids": np.array(ids),
                "complex_chains": np.array(members),
                "complex_lengths": np.array(lengths, dtype=np.int64),
                "complex_mean": np.stack(means),
            }
        # every chain skipped (complexes over the window): an empty table, not np.stack([])
        means = np.stack(self.means) if self.means else np.zeros((0, 0), dtype=np.float32)
        with open(
            path, "wb"
        ) as fh:  # a file object: np.savez would otherwise append ".npz" to the name
            np.savez(
                fh,
                ids=np.array(self.ids),
                lengths=np.array(self.lengths, dtype=np.int64),
                mean=means,
                sequences=np.array(self.seqs),
                # a str array, not an object one: np.load reads it without allow_pickle
                provenance=np.array(json.dumps(self.attrs)),
                **extra,
            )


def read_embeddings(path: str | Path) -> tuple[list[str], np.ndarray]:
    """(chain ids, mean-pooled embeddings [N, D] float32) from an ``embed`` output file."""
    path = Path(path)
    if path.suffix == ".npz":
        z = np.load(path)
        return [str(x) for x in z["ids"]], z["mean"].astype(np.float32)
    import h5py

    with h5py.File(path, "r") as f:
        return [x.decode() if isinstance(x, bytes) else str(x) for x in f["ids"][:]], f["mean"][
            :
        ].astype(np.float32)
