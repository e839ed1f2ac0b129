"""Loading and exporting models: Lightning checkpoints, exported model files, shipped models by
name.

Reading the files is ``weights``' job (:func:`weights.read_checkpoint`, which also resolves names
and documents the exported file's layout); this module builds the ``CoordFormer`` from what it
reads (:func:`load_model`), writes exported files (:func:`export_model`) and warns about inputs a
model never learnt (:func:`missing_coords_warning`). A Hugging Face-style folder (config.json +
model.safetensors, see ``hub``) is accepted wherever a checkpoint is.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..config import ModelConfig
from ..errors import OptionError
from .core import CoordFormer
from .weights import (  # noqa: F401 - read here before the weights module existed
    MODEL_FORMAT,
    MODEL_FORMAT_VERSION,
    ModelWeights,
    dequantize_int8,
    missing_flag_learnt,
    model_card,
    read_checkpoint,
    resolve_checkpoint,
    shipped_models,
    shipped_models_dir,
)

#: Matrices with at least this many entries are stored as int8 by ``export_model(int8=True)``;
#: smaller tensors (biases, LayerNorms, the coordinate embedding, the 25-token output layer) stay
#: float16.
INT8_MIN_NUMEL = 65_536


def quantize_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int8: w [R, C] float -> (q [R, C] int8, scale [R] float32), w ~ q *
    scale[:, None]. Each output row keeps its own range, so one large row does not cost the others
    their precision."""
    w = w.detach().float()
    scale = w.abs().amax(dim=1).clamp_min(1e-12) / 127.0
    q = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, scale


def model_from_state(config: ModelConfig, state: dict, source) -> CoordFormer:
    """A float32 CoordFormer in eval mode from its config and weights (any float dtype); a one-line
    UsageError naming ``source`` when the weights do not fit the config."""
    return ModelWeights(config, state, source=source).build(CoordFormer)


def load_model(
    name_or_path: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[CoordFormer, dict]:
    """Load a model for inference. Returns (model in eval mode, float32; meta dict).

    ``meta["learnt_missing_flag"]``: whether the model learnt inputs without coordinates (see
    :func:`missing_flag_learnt`; None where not applicable or unknown), read from a shipped model's
    card, kept in exported files, or True for a training checkpoint run with structure dropout."""
    weights = read_checkpoint(name_or_path, map_location)
    return weights.build(CoordFormer), weights.meta


#: room left in each file of a sharded export for torch.save's own records (names, pickling)
_SHARD_OVERHEAD = 1_000_000


def export_model(
    model: CoordFormer,
    path: str | Path,
    meta: dict | None = None,
    half: bool = True,
    int8: bool = False,
    max_file_bytes: int | None = None,
) -> Path:
    """Write an inference-only model file: float32, float16 (``half``: half the size) or, with
    ``int8``, matrices of at least INT8_MIN_NUMEL entries as per-row int8 (``quantize_int8``) and
    the rest float16 (about a quarter of float32). ``load_model`` returns float32 weights for all
    three.

    ``max_file_bytes``: no file over this size; the weights that do not fit go to
    ``<path>.shard1``, ``<path>.shard2``, ... beside it (named in the main file, loaded with it), so
    a model larger than a size limit ships without quantisation. ``meta``: the record stored with
    the weights; pass the one ``load_model`` returned so that, e.g., ``learnt_missing_flag`` (which
    the missing-coordinates warnings read) travels with the copy. Returns ``path``."""
    state, packed = {}, {}
    for k, v in model.state_dict().items():
        if int8 and v.is_floating_point() and v.ndim == 2 and v.numel() >= INT8_MIN_NUMEL:
            q, scale = quantize_int8(v)
            packed[k] = {"q": q, "scale": scale}
        else:
            state[k] = v.half() if (half or int8) and v.is_floating_point() else v
    path = Path(path)
    if path.is_dir():
        raise OptionError(
            "path", path, "is a folder; give a file name (a Hub-style folder: `save_pretrained`)"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    parts = _shard(
        {
            **{("state_dict", k): v for k, v in state.items()},
            **{("int8", k): v for k, v in packed.items()},
        },
        max_file_bytes,
    )
    names = [f"{path.name}.shard{i}" for i in range(1, len(parts))]
    version = 3 if names else 2 if packed else 1
    for i, part in enumerate(parts):
        obj = {
            "format": MODEL_FORMAT,
            "format_version": version,
            "state_dict": {k: v for (kind, k), v in part.items() if kind == "state_dict"},
        }
        int8_part = {k: v for (kind, k), v in part.items() if kind == "int8"}
        if int8_part:
            obj["int8"] = int8_part
        if i == 0:
            # "trained_on" always present: a file without it is from before exports recorded what
            # their weights saw (weights.pretraining_data then trusts the folder it lies in)
            record = {"trained_on": None, **(meta or {})}
            obj.update({"model_config": model.config.to_dict(), "meta": record})
            if names:
                obj["shards"] = names
        else:
            obj["shard_of"] = path.name
        target = path if i == 0 else path.with_name(names[i - 1])
        tmp = target.with_name(target.name + ".tmp")
        try:
            torch.save(obj, tmp)
            tmp.replace(target)
        finally:  # after a failure (a full disk, Ctrl-C) no half-written file stays behind
            tmp.unlink(missing_ok=True)
    for stale in path.parent.glob(f"{path.name}.shard*"):  # from an earlier export with more shards
        if stale.name not in names:
            stale.unlink()
    return path


def _nbytes(v) -> int:
    return (
        sum(_nbytes(x) for x in v.values()) if isinstance(v, dict) else v.numel() * v.element_size()
    )


def _shard(entries: dict, max_file_bytes: int | None) -> list[dict]:
    """Split {key: tensor or {"q", "scale"}} into consecutive groups of at most ``max_file_bytes``
    (less ``_SHARD_OVERHEAD``) each; one group when no limit is given."""
    if max_file_bytes is None:
        return [entries]
    budget = max_file_bytes - _SHARD_OVERHEAD
    largest = max(entries, key=lambda k: _nbytes(entries[k]), default=None)
    if largest is not None and _nbytes(entries[largest]) > budget:
        need = _nbytes(entries[largest]) + _SHARD_OVERHEAD
        raise OptionError(
            "max_file_bytes",
            max_file_bytes,
            f"below the {need:,} bytes the largest tensor, {largest[1]}, needs in one file (its "
            f"{_nbytes(entries[largest]):,} bytes and {_SHARD_OVERHEAD:,} kept for torch.save's "
            "records)",
        )
    parts, size = [{}], 0
    for key, v in entries.items():
        n = _nbytes(v)
        if size + n > budget and parts[-1]:
            parts.append({})
            size = 0
        parts[-1][key] = v
        size += n
    return parts


#: Share of a model's input residues without coordinates above which a model that never learnt the
#: missing flag gets a warning (see :func:`missing_coords_warning`).
MISSING_WARN_FRACTION = 0.5


def missing_ca_fraction(data, idx=None, max_chains: int = 5000) -> float:
    """Fraction of the residues of dataset chains ``idx`` (default: all) without a CA coordinate;
    over at most ``max_chains`` chains spread evenly over ``idx``."""
    import numpy as np

    from ..constants import CA_INDEX

    idx = np.arange(len(data)) if idx is None else np.asarray(idx)
    if len(idx) > max_chains:
        idx = idx[np.linspace(0, len(idx) - 1, max_chains).round().astype(np.int64)]
    missing = total = 0
    for i in idx:
        ca = np.asarray(data.coords(int(i))[:, CA_INDEX, 0])
        missing += int(np.isnan(ca).sum())
        total += len(ca)
    return missing / total if total else 0.0


#: Mean share of a chain hidden by ``evaluate --hide-coords span`` (one stretch of 5-30%).
SPAN_SHARE = 0.175


#: The shipped model for inputs without coordinates, named by the warnings of models that never
#: learnt the missing flag (a card's ``without_coords_use`` overrides it).
WITHOUT_COORDS_USE = "small-coords-sd"


def unlearnt_missing_flag(model: CoordFormer, meta: dict) -> tuple[str, str] | None:
    """(the model's name, the model to use instead) when ``model`` reads coordinates but never
    learnt the missing flag (``meta["learnt_missing_flag"]`` False: its card, or an exported
    file's record); else None. The shared test of ``missing_coords_warning`` and
    ``score.inputs.missing_structure_warning``, which differ in when they speak (a majority of
    residues here, any residue there)."""
    if not model.config.use_coords or meta.get("learnt_missing_flag") is not False:
        return None
    name = Path(str(meta.get("name") or meta.get("path") or "this model")).name
    return name, meta.get("without_coords_use") or WITHOUT_COORDS_USE


def missing_coords_warning(
    model: CoordFormer,
    meta: dict,
    data=None,
    idx=None,
    fraction: float | None = None,
    hidden: float = 0.0,
) -> str | None:
    """One line when ``model`` reads coordinates but never learnt the missing flag (its card, or
    ``meta["learnt_missing_flag"]`` from :func:`load_model`, says so) and more than
    MISSING_WARN_FRACTION of its input residues come without coordinates; else None.

    ``fraction``: that share, if known (1.0 when coordinates are withheld altogether); else it is
    measured on dataset ``data`` (chains ``idx``), with a further share ``hidden`` of the residues
    that have coordinates withheld. Nothing is read for models that learnt the flag."""
    unlearnt = unlearnt_missing_flag(model, meta)
    if unlearnt is None:
        return None
    if fraction is None:
        missing = missing_ca_fraction(data, idx)
        fraction = missing + (1.0 - missing) * hidden
    if fraction <= MISSING_WARN_FRACTION:
        return None
    name, instead = unlearnt
    return (
        f"warning: {fraction:.0%} of the residues have no coordinates, and {name} never learnt "
        "inputs without them (trained without structure dropout), so its outputs there are "
        f"unreliable; use -c {instead} for such inputs"
    )
