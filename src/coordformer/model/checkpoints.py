"""Loading and exporting models: Lightning checkpoints, exported model files, shipped models by name.

An exported model file is a ``torch.save`` dict::

    {"format": "coordformer-model", "format_version": 1, "model_config": {...},
     "state_dict": {...}, "meta": {...}}

A Hugging Face-style folder (config.json + model.safetensors, see ``hub``) is accepted wherever
a checkpoint is.

Shipped models live in ``coordformer/resources/models/<name>.pt`` with ``<name>.json`` (command,
data, training summary) beside them and are loaded by name, offline.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import torch

from ..config import ModelConfig
from ..errors import UsageError
from .core import CoordFormer
from .hub import is_pretrained_folder, load_pretrained, model_from_state

MODEL_FORMAT = "coordformer-model"
#: 1: float32 or float16 weights; 2: also int8 matrices (``"int8": {name: {"q", "scale"}}``), written
#: only by ``export_model(int8=True)`` so that float files stay readable by older versions; 3: weights
#: split over the main file and ``"shards"`` beside it (``export_model(max_file_bytes=...)``).
MODEL_FORMAT_VERSION = 3
#: Matrices with at least this many entries are stored as int8 by ``export_model(int8=True)``; smaller
#: tensors (biases, LayerNorms, the coordinate embedding, the 25-token output layer) stay float16.
INT8_MIN_NUMEL = 65_536


def quantize_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int8: w [R, C] float -> (q [R, C] int8, scale [R] float32), w ~ q * scale[:, None].
    Each output row keeps its own range, so one large row does not cost the others their precision."""
    w = w.detach().float()
    scale = w.abs().amax(dim=1).clamp_min(1e-12) / 127.0
    q = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, scale


def dequantize_int8(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Inverse of ``quantize_int8``: [R, C] float32."""
    return q.float() * scale.float()[:, None]


def shipped_models_dir() -> Path:
    return Path(str(resources.files("coordformer") / "resources" / "models"))


def shipped_models() -> dict[str, Path]:
    d = shipped_models_dir()
    return {p.stem: p for p in sorted(d.glob("*.pt"))} if d.is_dir() else {}


def resolve_checkpoint(name_or_path: str | Path) -> Path:
    """A shipped model name (e.g. ``small-coords``) or a path to a .ckpt / .pt file, run folder or
    Hugging Face-style folder (returned as is)."""
    p = Path(name_or_path)
    if is_pretrained_folder(p):
        return p
    if p.is_dir() and _is_finetune_run(p):
        raise UsageError(f"{p} is a `coordformer finetune` run (a function-prediction head), not a pretrained "
                         "model; give the checkpoint it was fine-tuned from, or use `coordformer evaluate-function` on it")
    if p.is_dir():
        for cand in (p / "checkpoints" / "best.ckpt", p / "checkpoints" / "last.ckpt", p / "model.pt"):
            if cand.exists():
                return cand
        raise UsageError(f"{p}: no checkpoints/best.ckpt, checkpoints/last.ckpt or model.pt inside")
    if p.exists():
        return p
    ship = shipped_models()
    if str(name_or_path) in ship:
        return ship[str(name_or_path)]
    names = ", ".join(ship) or "none installed"
    raise UsageError(f"checkpoint {name_or_path!r} is neither a file nor a shipped model name ({names})")


def _is_finetune_run(folder: Path) -> bool:
    try:
        return "finetune" in json.loads((folder / "config.json").read_text())
    except (OSError, ValueError, TypeError):
        return False


def load_model(name_or_path: str | Path, map_location: str | torch.device = "cpu") -> tuple[CoordFormer, dict]:
    """Load a model for inference. Returns (model in eval mode, float32; meta dict).

    ``meta["learnt_missing_flag"]``: whether the model learnt inputs without coordinates (see
    :func:`missing_flag_learnt`; None where not applicable or unknown), read from a shipped model's
    card, kept in exported files, or True for a training checkpoint run with structure dropout."""
    path = resolve_checkpoint(name_or_path)
    if path.is_dir():
        model, meta = load_pretrained(path, map_location)
        return model, {**meta, "name": str(name_or_path)}
    try:
        obj = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # corrupted / not a torch file
        first = str(e).split(". ")[0].splitlines()[0][:120] if str(e) else ""  # torch's own texts run to paragraphs
        raise UsageError(f"{path}: cannot be read as a coordformer checkpoint; the file is truncated or not a "
                         f"checkpoint ({type(e).__name__}: {first})") from None
    if not isinstance(obj, dict):
        raise UsageError(f"{path}: not a coordformer checkpoint")
    if obj.get("format") == MODEL_FORMAT:
        if obj.get("format_version", 0) > MODEL_FORMAT_VERSION:
            raise UsageError(f"{path}: model format v{obj['format_version']} is newer than this coordformer supports; upgrade")
        if "shard_of" in obj:
            raise UsageError(f"{path}: one shard of the model file {obj['shard_of']}; load that file instead")
        cfg, state, meta = obj["model_config"], dict(obj["state_dict"]), obj.get("meta", {})
        int8_state = dict(obj.get("int8", {}))
        for name in obj.get("shards", []):
            shard = path.with_name(name)
            if not shard.exists():
                raise UsageError(f"{path}: its weights continue in {name}, which is not beside it; copy every "
                                 f"{path.name}.shard* file with it")
            part = torch.load(shard, map_location=map_location, weights_only=False)
            state.update(part["state_dict"])
            int8_state.update(part.get("int8", {}))
        for name, packed in int8_state.items():
            state[name] = dequantize_int8(packed["q"], packed["scale"])
    elif "coordformer" in obj and "state_dict" in obj:  # Lightning checkpoint from `pretrain`
        cfg = obj["coordformer"]["model_config"]
        state = {k.removeprefix("model.").replace("_orig_mod.", ""): v for k, v in obj["state_dict"].items() if k.startswith("model.")}
        meta = {"global_step": obj.get("global_step"), "train_seconds": obj["coordformer"].get("train_seconds")}
        # structure dropout teaches the flag; without it, whether the data had gaps is not known here
        if missing_flag_learnt({"model_config": cfg, "train_config": obj["coordformer"].get("train_config")}):
            meta["learnt_missing_flag"] = True
    else:
        raise UsageError(f"{path}: not a coordformer checkpoint (no model config inside)")
    model = model_from_state(ModelConfig.from_dict(cfg), state, path)
    if path.parent == shipped_models_dir() and path.suffix == ".pt":
        card = model_card(path.stem)
        meta = {**meta, "learnt_missing_flag": missing_flag_learnt(card),
                **({"without_coords_use": card["without_coords_use"]} if card.get("without_coords_use") else {})}
    meta = {**meta, "path": str(path), "name": str(name_or_path)}
    return model, meta


#: room left in each file of a sharded export for torch.save's own records (names, pickling)
_SHARD_OVERHEAD = 1_000_000


def export_model(model: CoordFormer, path: str | Path, meta: dict | None = None, half: bool = True,
                 int8: bool = False, max_file_bytes: int | None = None) -> Path:
    """Write an inference-only model file: float32, float16 (``half``: half the size) or, with
    ``int8``, matrices of at least INT8_MIN_NUMEL entries as per-row int8 (``quantize_int8``) and the
    rest float16 (about a quarter of float32). ``load_model`` returns float32 weights for all three.

    ``max_file_bytes``: no file over this size; the weights that do not fit go to
    ``<path>.shard1``, ``<path>.shard2``, ... beside it (named in the main file, loaded with it), so
    a model larger than a size limit ships without quantisation. Returns ``path``."""
    state, packed = {}, {}
    for k, v in model.state_dict().items():
        if int8 and v.is_floating_point() and v.ndim == 2 and v.numel() >= INT8_MIN_NUMEL:
            q, scale = quantize_int8(v)
            packed[k] = {"q": q, "scale": scale}
        else:
            state[k] = v.half() if (half or int8) and v.is_floating_point() else v
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    parts = _shard({**{("state_dict", k): v for k, v in state.items()}, **{("int8", k): v for k, v in packed.items()}},
                   max_file_bytes)
    names = [f"{path.name}.shard{i}" for i in range(1, len(parts))]
    version = 3 if names else 2 if packed else 1
    for i, part in enumerate(parts):
        obj = {"format": MODEL_FORMAT, "format_version": version,
               "state_dict": {k: v for (kind, k), v in part.items() if kind == "state_dict"}}
        int8_part = {k: v for (kind, k), v in part.items() if kind == "int8"}
        if int8_part:
            obj["int8"] = int8_part
        if i == 0:
            obj.update({"model_config": model.config.to_dict(), "meta": meta or {}})
            if names:
                obj["shards"] = names
        else:
            obj["shard_of"] = path.name
        target = path if i == 0 else path.with_name(names[i - 1])
        tmp = target.with_name(target.name + ".tmp")
        torch.save(obj, tmp)
        tmp.replace(target)
    for stale in path.parent.glob(f"{path.name}.shard*"):  # from an earlier export with more shards
        if stale.name not in names:
            stale.unlink()
    return path


def _nbytes(v) -> int:
    return sum(_nbytes(x) for x in v.values()) if isinstance(v, dict) else v.numel() * v.element_size()


def _shard(entries: dict, max_file_bytes: int | None) -> list[dict]:
    """Split {key: tensor or {"q", "scale"}} into consecutive groups of at most ``max_file_bytes``
    (less ``_SHARD_OVERHEAD``) each; one group when no limit is given."""
    if max_file_bytes is None:
        return [entries]
    budget = max_file_bytes - _SHARD_OVERHEAD
    parts, size = [{}], 0
    for key, v in entries.items():
        n = _nbytes(v)
        if n > budget:
            raise ValueError(f"tensor {key[1]} takes {n:,} bytes, more than a {max_file_bytes:,}-byte file can hold")
        if size + n > budget and parts[-1]:
            parts.append({})
            size = 0
        parts[-1][key] = v
        size += n
    return parts


def model_card(name: str) -> dict:
    """The JSON record shipped beside a named model (command, data, training log summary)."""
    p = shipped_models_dir() / f"{name}.json"
    return json.loads(p.read_text()) if p.exists() else {}


#: Share of a model's input residues without coordinates above which a model that never learnt the
#: missing flag gets a warning (see :func:`missing_coords_warning`).
MISSING_WARN_FRACTION = 0.5


def missing_flag_learnt(card: dict) -> bool | None:
    """Whether a model (its shipped card, or any dict with ``model_config`` / ``train_config``)
    learnt the missing-coordinate flag: the card's ``learnt_missing_flag`` where it has one, else
    from its training config: True when trained with structure dropout (``drop_chain_coords`` or
    ``drop_span_coords`` above 0), False when not. None for a sequence-only model (not
    applicable) or when there is no training config to tell."""
    if not isinstance(card, dict):
        return None
    if not (card.get("model_config") or {}).get("use_coords", True):
        return None
    if "learnt_missing_flag" in card:
        return card["learnt_missing_flag"]
    tc = card.get("train_config")
    if not isinstance(tc, dict):
        return None
    return bool((tc.get("drop_chain_coords") or 0) > 0 or (tc.get("drop_span_coords") or 0) > 0)


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


def missing_coords_warning(model: CoordFormer, meta: dict, data=None, idx=None, fraction: float | None = None,
                           hidden: float = 0.0) -> str | None:
    """One line when ``model`` reads coordinates but never learnt the missing flag (its card, or
    ``meta["learnt_missing_flag"]`` from :func:`load_model`, says so) and more than
    MISSING_WARN_FRACTION of its input residues come without coordinates; else None.

    ``fraction``: that share, if known (1.0 when coordinates are withheld altogether); else it is
    measured on dataset ``data`` (chains ``idx``), with a further share ``hidden`` of the residues
    that have coordinates withheld. Nothing is read for models that learnt the flag."""
    if not model.config.use_coords or meta.get("learnt_missing_flag") is not False:
        return None
    if fraction is None:
        missing = missing_ca_fraction(data, idx)
        fraction = missing + (1.0 - missing) * hidden
    if fraction <= MISSING_WARN_FRACTION:
        return None
    name = Path(str(meta.get("name") or meta.get("path") or "this model")).name
    instead = meta.get("without_coords_use") or "small-coords-sd"
    return (f"warning: {fraction:.0%} of the residues have no coordinates, and {name} never learnt inputs without "
            f"them (trained without structure dropout), so its outputs there are unreliable; use -c {instead} for such "
            "inputs")
