"""Reading a model's configuration and weights from any file it ships in, without building it.

:func:`read_checkpoint` takes what ``load_model`` takes (a shipped model name, a Lightning
``.ckpt``, an exported ``.pt`` file with its shards, a run folder or a Hugging Face-style folder);
:func:`read_pretrained` what ``CoordFormer.from_pretrained`` takes (a Hugging Face-style folder or a
shipped name). Both return a :class:`ModelWeights`, which builds the model given its class. This
module never imports the model's class, so the class can load itself through it
(``CoordFormer.from_pretrained``) without an import cycle; ``checkpoints.load_model`` builds a
``CoordFormer`` from the same record.

An exported model file is a ``torch.save`` dict::

    {"format": "coordformer-model", "format_version": 1, "model_config": {...},
     "state_dict": {...}, "meta": {...}}

Shipped models live in ``coordformer/resources/models/<name>.pt`` with ``<name>.json`` (command,
data, training summary) beside them and are loaded by name, offline.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from ..config import ModelConfig
from ..errors import UsageError
from . import hub

MODEL_FORMAT = "coordformer-model"
#: 1: float32 or float16 weights; 2: also int8 matrices (``"int8": {name: {"q", "scale"}}``),
#: written only by ``export_model(int8=True)`` so that float files stay readable by older versions;
#: 3: weights split over the main file and ``"shards"`` beside it
#: (``export_model(max_file_bytes=...)``).
MODEL_FORMAT_VERSION = 3

M = TypeVar("M", bound=nn.Module)


@dataclass(frozen=True)
class ModelWeights:
    """A model as read from its files: ``config``, ``state`` (parameter name -> tensor, any float
    dtype), ``meta`` (what ``load_model`` returns beside the model) and ``source`` (the file or
    folder, named in errors). ``device``: where :meth:`build` moves the model; None leaves it on
    the CPU, where it is built."""

    config: ModelConfig
    state: dict[str, torch.Tensor]
    meta: dict[str, Any] = field(default_factory=dict)
    source: str | Path = ""
    device: str | torch.device | None = None

    def build(self, cls: type[M]) -> M:
        """``cls(config)`` with these weights, float32, in eval mode; a one-line UsageError naming
        the source when the weights do not fit the config."""
        model = cls(self.config)
        # load_state_dict raises a many-line RuntimeError
        # on shape mismatches even with strict=False.
        expected = model.state_dict()
        state = self.state
        shapes = [
            f"{k} {tuple(v.shape)} vs {tuple(expected[k].shape)}"
            for k, v in state.items()
            if k in expected and v.shape != expected[k].shape
        ]
        missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
        if missing or unexpected or shapes:
            raise UsageError(
                f"{self.source}: weights do not match its config (missing {missing[:3]}, "
                f"unexpected {unexpected[:3]}, shapes {shapes[:2]})"
            )
        model.load_state_dict({k: v.float() for k, v in state.items()})
        model = model.eval()
        return model if self.device is None else model.to(self.device)


def dequantize_int8(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Inverse of ``checkpoints.quantize_int8``: [R, C] float32."""
    return q.float() * scale.float()[:, None]


def shipped_models_dir() -> Path:
    return Path(str(resources.files("coordformer") / "resources" / "models"))


def shipped_models() -> dict[str, Path]:
    d = shipped_models_dir()
    return {p.stem: p for p in sorted(d.glob("*.pt"))} if d.is_dir() else {}


def model_card(name: str) -> dict:
    """The JSON record shipped beside a named model (command, data, training log summary)."""
    p = shipped_models_dir() / f"{name}.json"
    return json.loads(p.read_text()) if p.exists() else {}


def pretraining_data(name_or_path: str | Path) -> dict | None:
    """What a model was pretrained on, as far as its files say: {"config": the PrepareConfig dict
    of the dataset (``exclude_files`` among it), "fingerprint": the dataset's (when recorded),
    "chains": where its training chains are listed (a shipped model's ``training_chains`` file,
    or the run's dataset folder as recorded; None when neither), "table": whether "chains" is a
    table file (a shipped model's, or one beside an exported folder), "previous": the datasets a run
    trained on before (``--allow-new-data``), each {"path", "fingerprint"}, "init": the weights a
    run started from (``--init``, as given), None}; from a shipped model's card (whose table
    covers what it continued from), or from the config.json of the ``pretrain`` run folder a
    checkpoint lies in. None when neither records it (an exported file, a Hugging Face folder)."""
    p = Path(name_or_path)
    if not p.exists() and str(name_or_path) in shipped_models():
        card = model_card(str(name_or_path))
        data = card.get("data") or {}
        listed = (card.get("training_chains") or {}).get("file")
        chains = shipped_models_dir() / listed if listed else None
        return (
            {
                "config": data.get("config") or {},
                "fingerprint": None,
                "chains": chains,
                "table": True,
                "previous": [],
                "init": None,
            }
            if data
            else None
        )
    # a checkpoint, or an export `gpu_session.sh collect` and `export` write in the run folder
    in_run = p.parent.name in ("checkpoints", "export")
    run = p if p.is_dir() else p.parent.parent if in_run else p.parent
    try:
        saved = json.loads((run / "config.json").read_text())
        data = saved.get("data") or {}
        init = (saved.get("train_config") or {}).get("init")
        # an `export --format hf` folder: what its source recorded, and the table beside it
        exported = (saved.get("coordformer_meta") or {}).get("pretraining_data")
    except (OSError, ValueError, AttributeError):
        return None
    if p.is_file() and p.parent.name != "checkpoints" and not _saw_what_run_saw(p, saved):
        return None  # another model's weights put in the folder: its record is not theirs
    if isinstance(exported, dict) and isinstance(exported.get("training_chains"), str):
        if not p.is_dir():  # a .pt put in a Hugging Face folder is not the folder's model
            return None
        return {
            "config": exported.get("config") or {},
            "fingerprint": None,
            "chains": run / exported["training_chains"],
            "table": True,
            "previous": [],
            "init": None,
        }
    manifest = data.get("manifest") if isinstance(data, dict) else None
    if not isinstance(manifest, dict):
        return None
    previous = data.get("previous")
    return {
        "config": manifest.get("config") or {},
        "fingerprint": data.get("fingerprint"),
        "chains": Path(data["path"]) if isinstance(data.get("path"), str) else None,
        "table": False,
        "previous": [p for p in previous if isinstance(p, dict)]
        if isinstance(previous, list)
        else [],
        "init": init if isinstance(init, str) else None,
    }


def trained_on(checkpoint: dict) -> dict | None:
    """What the chains a ``pretrain`` checkpoint's weights saw depend on: {"fingerprint" (of its
    dataset), "previous" (fingerprints of the datasets before it, ``--allow-new-data``; None where
    the checkpoint predates that record), "init" (``--init`` as recorded)}; None when the
    checkpoint records no dataset. Exports carry it in their meta (``meta["trained_on"]``)."""
    cf = checkpoint.get("coordformer") if isinstance(checkpoint, dict) else None
    if not isinstance(cf, dict) or not cf.get("data_fingerprint"):
        return None
    return {
        "fingerprint": cf["data_fingerprint"],
        "previous": cf.get("previous_fingerprints"),
        "init": (cf.get("train_config") or {}).get("init"),
    }


def _saw_what_run_saw(path: Path, saved: dict) -> bool:
    """Whether the weights in ``path`` (an export, or a training checkpoint outside checkpoints/)
    were trained on what the run folder's config.json ``saved`` records: the same dataset, earlier
    datasets and ``--init``, so that the run's list of chains is theirs whatever the folder is
    called or where it was moved. An export from before exports recorded it (no ``trained_on``
    key) is taken for the run's, as it always was."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except Exception:  # noqa: BLE001 - unreadable, not a checkpoint: nothing to say it is the run's
        return False
    if not isinstance(obj, dict):
        return False
    if obj.get("format") == MODEL_FORMAT:
        meta = obj.get("meta") or {}
        if "trained_on" not in meta:
            return True
        mine = meta["trained_on"]
    else:
        mine = trained_on(obj)
    if not isinstance(mine, dict):
        return False
    data = saved.get("data") or {}
    before = [p.get("fingerprint") for p in data.get("previous") or () if isinstance(p, dict)]
    return (
        mine.get("fingerprint") == data.get("fingerprint")
        and (mine.get("previous") or []) == before
        and (mine.get("previous") is not None or not before)
        and mine.get("init") == (saved.get("train_config") or {}).get("init")
    )


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


def resolve_checkpoint(name_or_path: str | Path) -> Path:
    """A shipped model name (e.g. ``small-coords``) or a path to a .ckpt / .pt file, run folder or
    Hugging Face-style folder (returned as is)."""
    p = Path(name_or_path)
    if hub.is_pretrained_folder(p):
        return p
    if p.is_dir() and _is_finetune_run(p):
        raise UsageError(
            f"{p} is a `coordformer finetune` run (a function-prediction head), not a "
            "pretrained model; give the checkpoint it was fine-tuned from, or use "
            "`coordformer evaluate-function` on it"
        )
    if p.is_dir():
        for cand in (
            p / "checkpoints" / "best.ckpt",
            p / "checkpoints" / "last.ckpt",
            p / "model.pt",
        ):
            if cand.exists() and not (cand.name == "best.ckpt" and _best_of_other_data(p, cand)):
                return cand
        raise UsageError(f"{p}: no checkpoints/best.ckpt, checkpoints/last.ckpt or model.pt inside")
    if p.exists():
        return p
    ship = shipped_models()
    if str(name_or_path) in ship:
        return ship[str(name_or_path)]
    names = ", ".join(ship) or "none installed"
    raise UsageError(
        f"checkpoint {name_or_path!r} is neither a file nor a shipped model name ({names})"
    )


def checkpoint_data(path: Path) -> tuple[str | None, int | None]:
    """(dataset fingerprint, global step) a training checkpoint records, (None, None) where it
    cannot be read (memory-mapped: the weights are not read)."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
        return (ckpt.get("coordformer") or {}).get("data_fingerprint"), ckpt.get("global_step")
    except Exception:  # noqa: BLE001 - truncated, not a checkpoint: nothing recorded
        return None, None


def _best_of_other_data(run: Path, best: Path) -> bool:
    """Whether a run folder's best.ckpt was chosen on another dataset than the run's current one
    (resumed with ``--allow-new-data`` and not validated since): its last.ckpt is the run's
    model."""
    try:
        now = (json.loads((run / "config.json").read_text()).get("data") or {}).get("fingerprint")
    except (OSError, ValueError, AttributeError):  # nothing to compare: take best.ckpt, as always
        return False
    was = checkpoint_data(best)[0]
    return bool(now and was and now != was and (run / "checkpoints" / "last.ckpt").exists())


def _is_finetune_run(folder: Path) -> bool:
    try:
        return "finetune" in json.loads((folder / "config.json").read_text())
    except (OSError, ValueError, TypeError):
        return False


def read_pretrained(folder: str | Path, map_location: str | torch.device = "cpu") -> ModelWeights:
    """A Hugging Face-style folder (local, offline) or a shipped model by name; a folder's model is
    built on ``map_location``."""
    if not Path(folder).exists() and str(folder) in shipped_models():
        return read_checkpoint(str(folder), map_location)
    if not Path(folder).is_dir():
        names = ", ".join(shipped_models()) or "none installed"
        raise UsageError(
            f"{folder}: not a folder (from_pretrained takes a local folder with "
            f"{hub.CONFIG_NAME} and {hub.WEIGHTS_NAME}, or a shipped model name: {names})"
        )
    config, state, meta = hub.read_pretrained_state(folder, "cpu")  # build() moves the model
    return ModelWeights(config, state, meta, folder, device=map_location)


def _torch_load(path: Path, role: str = "") -> object:
    """``torch.load`` onto the CPU (where build() makes the model before moving it: loading onto
    the device would hold the weights there twice for a moment); a truncated or foreign file is a
    one-line UsageError naming ``path`` (and its ``role``)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # corrupted / not a torch file
        # torch's own texts run to paragraphs
        first = str(e).split(". ")[0].splitlines()[0][:120] if str(e) else ""
        raise UsageError(
            f"{path}{role}: cannot be read as a coordformer checkpoint; the file is truncated or "
            f"not a checkpoint ({type(e).__name__}: {first})"
        ) from None


def read_checkpoint(
    name_or_path: str | Path, map_location: str | torch.device = "cpu"
) -> ModelWeights:
    """Whatever ``load_model`` reads, not yet built. ``meta["learnt_missing_flag"]``: whether the
    model learnt inputs without coordinates (see :func:`missing_flag_learnt`; None where not
    applicable or unknown), read from a shipped model's card, kept in exported files, or True for
    a training checkpoint run with structure dropout."""
    path = resolve_checkpoint(name_or_path)
    if path.is_dir():
        w = read_pretrained(path, map_location)
        return ModelWeights(
            w.config, w.state, {**w.meta, "name": str(name_or_path)}, w.source, w.device
        )
    obj = _torch_load(path)
    if not isinstance(obj, dict):
        raise UsageError(f"{path}: not a coordformer checkpoint")
    if obj.get("format") == MODEL_FORMAT:
        if obj.get("format_version", 0) > MODEL_FORMAT_VERSION:
            raise UsageError(
                f"{path}: model format v{obj['format_version']} is newer than this coordformer "
                "supports; upgrade"
            )
        if "shard_of" in obj:
            raise UsageError(
                f"{path}: one shard of the model file {obj['shard_of']}; load that file instead"
            )
        cfg, state, meta = obj["model_config"], dict(obj["state_dict"]), obj.get("meta", {})
        int8_state = dict(obj.get("int8", {}))
        for name in obj.get("shards", []):
            shard = path.with_name(name)
            if not shard.exists():
                raise UsageError(
                    f"{path}: its weights continue in {name}, which is not beside it; copy "
                    f"its shard files ({', '.join(obj['shards'])}) with it, under those names"
                )
            part = _torch_load(shard, f" (a shard of {path.name})")
            state.update(part["state_dict"])
            int8_state.update(part.get("int8", {}))
        for name, packed in int8_state.items():
            state[name] = dequantize_int8(packed["q"], packed["scale"])
    elif "coordformer" in obj and "state_dict" in obj:  # Lightning checkpoint from `pretrain`
        cfg = obj["coordformer"]["model_config"]
        state = {
            k.removeprefix("model.").replace("_orig_mod.", ""): v
            for k, v in obj["state_dict"].items()
            if k.startswith("model.")
        }
        meta = {
            "global_step": obj.get("global_step"),
            "train_seconds": obj["coordformer"].get("train_seconds"),
            "trained_on": trained_on(obj),
        }
        # structure dropout teaches the flag; without it,
        # whether the data had gaps is not known here
        if missing_flag_learnt(
            {"model_config": cfg, "train_config": obj["coordformer"].get("train_config")}
        ):
            meta["learnt_missing_flag"] = True
    else:
        raise UsageError(f"{path}: not a coordformer checkpoint (no model config inside)")
    if path.parent == shipped_models_dir() and path.suffix == ".pt":
        card = model_card(path.stem)
        meta = {
            **meta,
            "learnt_missing_flag": missing_flag_learnt(card),
            **(
                {"without_coords_use": card["without_coords_use"]}
                if card.get("without_coords_use")
                else {}
            ),
        }
    meta = {**meta, "path": str(path), "name": str(name_or_path)}
    # the model is built on the CPU and moved to map_location (embed and score ask for the
    # device this way)
    return ModelWeights(ModelConfig.from_dict(cfg), state, meta, path, device=map_location)
