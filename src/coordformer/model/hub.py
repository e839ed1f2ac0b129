"""Hugging Face Hub-style model folders: ``config.json`` + ``model.safetensors`` + ``README.md``.

The layout follows the Hub convention, so a folder can be uploaded as a model repository and a
downloaded snapshot loads offline from disk. This module only reads and writes the files (a
config and a state dict); it never imports the model's class: ``weights.read_pretrained`` turns a
folder into a buildable record, and ``CoordFormer.from_pretrained`` builds it. It loads with
coordformer (``CoordFormer.from_pretrained(folder)``, or ``-c FOLDER`` on any command) and, where
transformers is installed, with ``transformers.AutoModel`` / ``AutoModelForMaskedLM`` after
``import coordformer.model.hf_model`` (see there). Folders that transformers saves (weights under a
``coordformer.`` prefix, its own config keys) load back here.

``config.json`` holds the ModelConfig fields at top level, as Hugging Face configs do, plus::

    {"model_type": "coordformer", "architectures": ["CoordFormer"], "format": "coordformer-hf",
     "format_version": 1, "coordformer_version": "...", "torch_dtype": "float32",
     "coordformer_meta": {...}}

``torch_dtype`` is the dtype to compute in, always float32, whatever ``model.safetensors`` stores
(float16 for a half-precision export): transformers 5.x builds the model in the config's dtype when
``from_pretrained`` gets no ``dtype``, and a float16 model would give outputs 1e-2 away from the
native model's. A float16 file loads upcast, exactly. Older exports say "float16" there; they
still load here (always float32), and in transformers with ``dtype=torch.float32``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import __version__
from ..config import ModelConfig
from ..errors import UsageError

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"
MODEL_TYPE = "coordformer"
HF_FORMAT = "coordformer-hf"
HF_FORMAT_VERSION = 1

# Keys of config.json that are not ModelConfig fields. Hub tooling adds the generic ones
# (transformers_version, _name_or_path) when a folder passes through it; anything else unknown is
# handed to ModelConfig.from_dict so that a field added by a newer coordformer fails loudly.
_WRAPPER_KEYS = {
    "model_type",
    "architectures",
    "format",
    "format_version",
    "coordformer_version",
    "torch_dtype",
    "coordformer_meta",
    "transformers_version",
    "_name_or_path",
    # generic PretrainedConfig settings transformers writes when they differ from its defaults
    "dtype",
    "output_attentions",
    "output_hidden_states",
    "return_dict",
    "use_cache",
    "id2label",
    "label2id",
    "problem_type",
    "pad_token_id",
    "bos_token_id",
    "eos_token_id",
    "tie_word_embeddings",
    "is_encoder_decoder",
    "chunk_size_feed_forward",
    "tokenizer_class",
    "auto_map",
}
#: Prefix of the weights in folders saved by the transformers wrapper (``hf_model``).
HF_WRAPPER_PREFIX = "coordformer."
# Local to the machine that exported the folder: meaningless (and leaky) once shared.
_LOCAL_META_KEYS = {"path"}


#: transformers' index of a model saved in several files (``save_pretrained(max_shard_size=...)``)
WEIGHTS_INDEX_NAME = "model.safetensors.index.json"


def weight_files(folder: Path) -> list[Path] | None:
    """The safetensors files that hold a folder's weights: model.safetensors, or the shards that
    transformers' model.safetensors.index.json lists; None when there is neither. UsageError for
    an index that cannot be read or names a file that is not there."""
    if (folder / WEIGHTS_NAME).exists():
        return [folder / WEIGHTS_NAME]
    index = folder / WEIGHTS_INDEX_NAME
    if not index.exists():
        return None
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
        names = sorted(set(weight_map.values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise UsageError(f"{index}: not a safetensors index ({type(e).__name__}: {e})") from None
    missing = [n for n in names if not (folder / n).is_file()]
    if missing or not names:
        raise UsageError(
            f"{index} lists {', '.join(missing) or 'no file'}, which {folder} lacks: copy the "
            "whole folder"
        )
    return [folder / n for n in names]


def is_pretrained_folder(path: str | Path) -> bool:
    """A folder that is meant to be one of these: it has model.safetensors, or a config.json naming
    model_type (so a half-copied folder still reaches from_pretrained and its precise message)."""
    p = Path(path)
    if not p.is_dir():
        return False
    if (p / WEIGHTS_NAME).exists() or (p / WEIGHTS_INDEX_NAME).exists():
        return True
    try:
        return "model_type" in json.loads((p / CONFIG_NAME).read_text())
    except (OSError, ValueError, TypeError):
        return False


def _jsonable(meta: dict) -> dict:
    # Round-trip through JSON so a Path or numpy scalar in meta cannot break writing config.json.
    return json.loads(
        json.dumps({k: v for k, v in meta.items() if k not in _LOCAL_META_KEYS}, default=str)
    )


def _untied_state(model: nn.Module, half: bool) -> dict[str, torch.Tensor]:
    """State dict safe for safetensors, which refuses tensors sharing storage.

    CoordFormer ties no weights today (the token embedding and the LM head's output layer are
    separate parameters; the position table is a non-persistent buffer), but a tie would make
    ``save_file`` fail. Later aliases of a storage are cloned: the file then holds one copy per
    name, and loading copies equal values into every name, which preserves a tie in the model
    being loaded into.
    """
    seen: set[tuple[str, int]] = set()
    state = {}
    for name, v in model.state_dict().items():
        v = v.detach()
        if half and v.is_floating_point():
            v = v.half()
        key = (str(v.device), v.untyped_storage().data_ptr())
        if key in seen:
            v = v.clone()
        seen.add(key)
        state[name] = v.contiguous().cpu()
    return state


def _model_card(config: dict, meta: dict, weights_dtype: str) -> str:
    title = (
        Path(str(meta["name"])).name if meta.get("name") else "CoordFormer model"
    )  # a run folder's name, not its path
    lines = [
        "---",
        "library_name: coordformer",
        "tags: [protein, masked-language-model, structure, coordformer]",
        "---",
        "",
        f"# {title}",
        "",
    ]
    if meta.get("description"):
        lines += [str(meta["description"]), ""]
    dims = ", ".join(
        f"{k}={config[k]}"
        for k in ("d_model", "n_layers", "n_heads", "d_ff", "use_coords", "coord_mode")
    )
    lines += [
        f"CoordFormer masked-language model ({dims}), weights stored as {weights_dtype} and "
        "loaded as float32.",
        "",
        "Load it from this folder with coordformer"
        + (" (and its language model, below):" if config.get("condition_on") else ", offline:"),
        "",
        "```python",
        "from coordformer.model import CoordFormer",
        'model = CoordFormer.from_pretrained("path/to/this/folder")',
        "```",
        "",
    ]
    if config.get("condition_on"):
        # its ESM-2 cannot load inside the Auto classes' from_pretrained (hf_model refuses it)
        where = (
            "its trained weights are in this folder, its config and tokenizer are read"
            if config.get("unfreeze_lm")
            else "it is loaded"
        )
        lines += [
            f"It is conditioned on the ESM-2 language model `{config['condition_on']}`: {where} "
            "from there, or from the folder in `$COORDFORMER_LM` (a Hub name needs the network "
            "or the Hugging Face cache). It does not load through the transformers Auto classes.",
            "",
        ]
    else:
        lines += [
            "or with transformers (`pip install 'coordformer[hf]'`):",
            "",
            "```python",
            "import coordformer.model.hf_model  # registers the coordformer model type",
            "from transformers import AutoModelForMaskedLM",
            'model = AutoModelForMaskedLM.from_pretrained("path/to/this/folder")',
            "```",
            "",
        ]
    lines += [
        "Every coordformer command takes the folder: `coordformer evaluate -c "
        "path/to/this/folder --data DATA`.",
        "",
    ]
    if meta.get("command"):
        lines += ["Trained with:", "", "```", str(meta["command"]), "```", ""]
    listed = (meta.get("pretraining_data") or {}).get("training_chains")
    if listed:
        lines += [
            f"`{listed}` lists the chains it was trained on (id, split, SHA-256 of the sequence); "
            "`coordformer evaluate` warns when you score one of them, and `--unseen-only` leaves "
            "them out. Keep it in the folder.",
            "",
        ]
    return "\n".join(lines)


def save_pretrained(
    model: nn.Module, folder: str | Path, meta: dict | None = None, half: bool = False
) -> Path:
    """Write ``folder/{config.json, model.safetensors, README.md}`` for ``model`` (a CoordFormer:
    its ``config`` and ``state_dict()``); ``half`` stores float16 weights.

    Files are written under temporary names and renamed, so an interrupted save never leaves a
    config beside weights it does not describe. Returns the folder.
    """
    from safetensors.torch import save_file

    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"{folder} is a file; give a folder to write the model into")
    folder.mkdir(parents=True, exist_ok=True)
    meta = _jsonable(meta or {})
    config = {
        "model_type": MODEL_TYPE,
        "architectures": ["CoordFormer"],
        "format": HF_FORMAT,
        "format_version": HF_FORMAT_VERSION,
        "coordformer_version": __version__,
        "torch_dtype": "float32",
        **model.config.to_dict(),
        "coordformer_meta": meta,
    }
    state = _untied_state(model, half)
    tmp_w, tmp_c, tmp_r = (folder / f".{n}.tmp" for n in (WEIGHTS_NAME, CONFIG_NAME, CARD_NAME))
    try:
        save_file(
            state, str(tmp_w), metadata={"format": "pt"}
        )  # "pt": what Hub tooling expects from torch writers
        tmp_c.write_text(json.dumps(config, indent=2) + "\n")
        tmp_r.write_text(_model_card(config, meta, "float16" if half else "float32"))
        # safetensors creates its file 0600; give it the
        # permissions of the files beside it (the umask's)
        tmp_w.chmod(tmp_c.stat().st_mode & 0o777)
        tmp_w.replace(folder / WEIGHTS_NAME)
        tmp_c.replace(folder / CONFIG_NAME)
        tmp_r.replace(folder / CARD_NAME)
    finally:  # after a failure (or Ctrl-C) no half-written file stays behind
        for tmp in (tmp_w, tmp_c, tmp_r):
            tmp.unlink(missing_ok=True)
    return folder


def read_config(folder: str | Path) -> tuple[ModelConfig, dict]:
    """(ModelConfig, full config.json dict) of a pretrained folder; UsageError if it is not one this
    version can read."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UsageError(
            f"{folder}: not a folder (a pretrained model is a folder with {CONFIG_NAME} and "
            f"{WEIGHTS_NAME})"
        )
    missing = [CONFIG_NAME] if not (folder / CONFIG_NAME).exists() else []
    if weight_files(folder) is None:
        missing.append(WEIGHTS_NAME)
    if missing:
        raise UsageError(
            f"{folder}: no {' or '.join(missing)} inside; a pretrained folder holds {CONFIG_NAME} "
            f"and {WEIGHTS_NAME} (write one with `coordformer export --format hf`)"
        )
    try:
        cfg = json.loads((folder / CONFIG_NAME).read_text())
    except (OSError, ValueError) as e:
        raise UsageError(f"{folder / CONFIG_NAME}: not readable JSON ({e})") from None
    if not isinstance(cfg, dict):
        raise UsageError(f"{folder / CONFIG_NAME}: not a model config (a JSON object is expected)")
    if cfg.get("model_type") != MODEL_TYPE:
        raise UsageError(
            f"{folder}: model_type is {cfg.get('model_type')!r}, not {MODEL_TYPE!r}; "
            "this folder holds another library's model"
        )
    version = cfg.get("format_version", HF_FORMAT_VERSION)
    if not isinstance(version, int) or version > HF_FORMAT_VERSION:
        raise UsageError(
            f"{folder}: model format v{version} is newer than this coordformer "
            f"({__version__}, reads v{HF_FORMAT_VERSION}); upgrade"
        )
    fields = {k: v for k, v in cfg.items() if k not in _WRAPPER_KEYS}
    return ModelConfig.from_dict(fields), cfg


def read_pretrained_state(
    folder: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[ModelConfig, dict[str, torch.Tensor], dict[str, Any]]:
    """(ModelConfig, state dict as stored (float32 or float16 tensors on ``map_location``), meta
    dict, whose ``weights_dtype`` is the stored dtype) of a pretrained folder; UsageError if it is
    not one this version can read."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    config, cfg = read_config(folder)
    state: dict[str, torch.Tensor] = {}
    for path in weight_files(folder) or ():  # one file, or transformers' shards
        try:
            state.update(load_file(str(path), device=str(map_location)))
        except (SafetensorError, OSError) as e:
            raise UsageError(
                f"{path}: cannot be read; the file is truncated or not safetensors ({e})"
            ) from None
    if state and all(k.startswith(HF_WRAPPER_PREFIX) for k in state):
        state = {k[len(HF_WRAPPER_PREFIX) :]: v for k, v in state.items()}
    stored = cfg.get("coordformer_meta")
    meta = {
        **(stored if isinstance(stored, dict) else {}),
        "path": str(folder),
        "format": HF_FORMAT,
        # from the file: config.json's torch_dtype is the compute dtype (float32), not the stored
        "weights_dtype": next(
            (str(v.dtype).removeprefix("torch.") for v in state.values() if v.is_floating_point()),
            "float32",
        ),
    }
    return config, state, meta


__all__ = [
    "CONFIG_NAME",
    "WEIGHTS_NAME",
    "WEIGHTS_INDEX_NAME",
    "weight_files",
    "is_pretrained_folder",
    "save_pretrained",
    "read_pretrained_state",
    "read_config",
]
