"""Language-model conditioning: an ESM-2 protein language model (``transformers.EsmModel``) whose
last-layer representation is the input of a CoordFormer (``ModelConfig.condition_on``; the paper's
``esm_hybrid_model.py``).

The ESM-2 model is loaded from a local folder written by ``save_pretrained`` (a Hub snapshot:
config.json, model.safetensors or pytorch_model.bin, vocab.txt) or from a Hub name such as
``facebook/esm2_t6_8M_UR50D``, which needs network access or a filled Hugging Face cache. It is
frozen (no gradients, eval mode, so no dropout) unless ``unfreeze_lm`` is set.

Its weights are not part of a CoordFormer's saved state (checkpoints, exported files and folders
hold only what coordformer trains; with ``unfreeze_lm`` they are kept, as they are trained). The
model config records where the LM came from (``condition_on``), its hidden size (``lm_dim``) and a
fingerprint (sizes and a hash of a sample of every weight tensor, ``lm_fingerprint``). Loading such
a model loads the LM again from ``condition_on``, or from the folder in the environment variable
``COORDFORMER_LM`` where set (the model moved to a machine where the LM sits elsewhere), and
refuses with a one-line error when it is missing or its fingerprint differs.

Token alignment: coordformer tokens map to ESM tokens by letter (``<pad>``, ``<mask>``,
``<cls>``, ``<eos>``, ``X`` and the 20 amino acids; a letter the ESM vocabulary lacks becomes its
``<unk>``); every chain gets ``<cls>`` in front and ``<eos>`` after its last residue, with
``<pad>`` and attention mask 0 beyond, and the representation is read back at the residues only.
A row holding several sequences (``pieces``: the chains of a packed row or a complex) is read as
that many LM rows, so that no chain's representation depends on the
others in its row. ESM-2 covers ``max_position_embeddings - 2`` residues (1024 for the released
models); a longer chain (or piece) is refused with a message naming the limit (crop it, e.g.
``--crop-length 1024``).
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from ..constants import PAD, VOCAB
from ..errors import UsageError

#: Environment variable naming the ESM-2 folder (or Hub name) to load instead of the recorded one.
LM_ENV = "COORDFORMER_LM"


def lm_source(recorded: str) -> str:
    """Where to load the LM from: ``$COORDFORMER_LM`` if set, else the recorded ``condition_on``."""
    return os.environ.get(LM_ENV) or recorded


def _looks_like_path(source: str) -> bool:
    # Hub names are "name" or "org/name"; anything else
    # with a slash, or starting like a path, is a path.
    return source.startswith((".", "/", "~")) or source.count("/") > 1


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face Hub (``$HF_ENDPOINT``) takes a TCP connection within ``timeout``
    seconds; False under ``HF_HUB_OFFLINE``."""
    import socket
    import urllib.parse

    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    url = urllib.parse.urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname or "", port), timeout=timeout).close()
        return True
    except OSError:
        return False


def load_esm(source: str):
    """(EsmModel float32 without pooler, EsmTokenizer) from a local folder or Hub name; a one-line
    UsageError when that fails."""
    try:
        from transformers import EsmModel, EsmTokenizer
    except ImportError:  # pragma: no cover - transformers is an optional dependency
        raise UsageError(
            "conditioning on a language model needs transformers: pip install 'coordformer[hf]'"
        ) from None
    p = Path(source).expanduser()
    if not p.exists() and _looks_like_path(source):
        raise UsageError(
            f"language model {source!r}: no such folder (set {LM_ENV}=FOLDER to the ESM-2 folder "
            "the model was trained with)"
        )
    if p.exists() and not p.is_dir():
        raise UsageError(
            f"language model {source!r}: a folder with config.json, the weights and vocab.txt is "
            "expected"
        )
    from transformers.utils import logging as hf_logging

    where = str(p) if p.is_dir() else source
    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # its "Loading weights" bar on every model load
    # a Hub name: the local cache first, and the network only when the Hub answers at all
    # (offline, huggingface_hub retried for minutes before failing)
    cached = {"local_files_only": not p.is_dir() and not _hub_reachable()}
    try:
        tokenizer = EsmTokenizer.from_pretrained(where, **cached)
        model = EsmModel.from_pretrained(
            where, add_pooling_layer=False, dtype=torch.float32, **cached
        )
    except Exception as e:
        hint = (
            ""
            if p.is_dir()
            else " A Hub name needs network access (or the Hugging Face cache): download it where "
            "there is network, e.g. `hf download facebook/esm2_t6_8M_UR50D --local-dir esm2_t6`, "
            "and give the folder."
        )
        first = (str(e).splitlines() or [""])[0][:160]
        why = (
            "no such folder, not in the Hugging Face cache, and the Hub cannot be reached"
            if cached["local_files_only"]
            else f"{type(e).__name__}: {first}"
        )
        raise UsageError(
            f"cannot load the ESM-2 language model {source!r} ({why}).{hint}"
        ) from None
    finally:
        if bar:
            hf_logging.enable_progress_bar()
    if getattr(model.config, "model_type", "") != "esm":
        raise UsageError(
            f"language model {source!r} is a {model.config.model_type!r} model, not ESM (esm)"
        )
    return model, tokenizer


#: marks of the fingerprint versions after the first, as recorded (:func:`fingerprint`); a record
#: with neither is version 1
FINGERPRINT_MARKS = {2: "-s2-", 3: "-s3-"}
#: the version new models record
FINGERPRINT_VERSION = 3
#: entries of each tensor a version-2 or -3 fingerprint hashes (evenly strided; all of a smaller
#: one)
FINGERPRINT_SAMPLE = 4096


def fingerprint_version(recorded: str) -> int:
    """The version of a recorded fingerprint (1 for one written before versions were marked)."""
    return next((v for v, mark in FINGERPRINT_MARKS.items() if mark in recorded), 1)


def _same_folder(a: str, b: str) -> bool:
    try:
        pa, pb = Path(a).expanduser(), Path(b).expanduser()
        return pa.is_dir() and pb.is_dir() and pa.resolve() == pb.resolve()
    except OSError:
        return False


def with_recorded_lm(config, recorded: dict):
    """``config`` (a conditioned ModelConfig) with the LM as an earlier run or model recorded it
    (``recorded``: its model config dict), where only the spelling differs, so that resuming or
    continuing it compares like with like: its ``condition_on`` when both name the same folder
    (recorded relative, or through a link, before folders were recorded absolute), and its
    ``lm_fingerprint`` when that was made by an older fingerprint version (loading then checks the
    LM against the recorded one, the way it was made). ``config`` as it is otherwise."""
    if not config.condition_on:
        return config
    was_on, was_fp = recorded.get("condition_on"), recorded.get("lm_fingerprint") or ""
    if was_on and was_on != config.condition_on and _same_folder(was_on, config.condition_on):
        config = config.replace(condition_on=was_on)
    if (
        was_fp
        and config.lm_fingerprint
        and fingerprint_version(was_fp) != fingerprint_version(config.lm_fingerprint)
    ):
        config = config.replace(lm_fingerprint=was_fp)
    return config


def _fingerprinted(model, version: int) -> list[tuple[str, torch.Tensor]]:
    """(name, tensor) pairs a fingerprint of ``version`` hashes, sorted by name."""
    if version == 1:  # the token embedding and final LayerNorm
        items = model.state_dict().items()
        items = [(n, v) for n, v in items if "word_embeddings" in n or "emb_layer_norm_after" in n]
    elif version == 2:  # every tensor of the state, buffers and the contact head included
        items = list(model.state_dict().items())
    else:
        # The weights on the path to the last hidden state only: not the buffers (the rotary
        # table is computed, and whether transformers saves it, and under which name, changes
        # between its versions) nor the contact head, which the conditioner never runs and which
        # transformers initialises at random on each load of a folder saved without it.
        items = [(n, v) for n, v in model.named_parameters() if not n.startswith("contact_head")]
    return sorted(items, key=lambda item: item[0])


def fingerprint(model, version: int = FINGERPRINT_VERSION) -> str:
    """Sizes and a SHA-256 of an EsmModel's weights: tells a different model (or different
    weights of the same size) apart without hashing gigabytes. Version 3 hashes the name, shape
    and ``FINGERPRINT_SAMPLE`` evenly strided entries of every parameter on the path to the last
    hidden state, so that a model whose transformer layers alone changed (a LoRA merge, a
    fine-tune with the embeddings frozen) is told apart too. Older records are checked the way
    they were made: version 2 hashed every tensor of the state (buffers and the unused contact
    head too, which a transformers upgrade or a folder without the head could change), version 1
    the token embedding and final LayerNorm only."""
    c = model.config
    h = hashlib.sha256()
    for name, v in _fingerprinted(model, version):
        x = v.detach().float().cpu().contiguous().flatten()
        if version != 1:
            h.update(f"{name}{tuple(v.shape)}".encode())
            x = x[:: max(1, x.numel() // FINGERPRINT_SAMPLE)]
        else:
            h.update(name.encode())
        h.update(x.numpy().tobytes())
    return (
        f"esm-h{c.hidden_size}-l{c.num_hidden_layers}-a{c.num_attention_heads}"
        f"-v{c.vocab_size}{FINGERPRINT_MARKS.get(version, '-')}{h.hexdigest()[:16]}"
    )


def token_map(tokenizer) -> list[int]:
    """ESM token id of each coordformer token id (constants.VOCAB)."""
    vocab = tokenizer.get_vocab()
    specials = {
        "<pad>": tokenizer.pad_token_id,
        "<mask>": tokenizer.mask_token_id,
        "<cls>": tokenizer.cls_token_id,
        "<eos>": tokenizer.eos_token_id,
    }
    missing = [k for k, v in specials.items() if v is None]
    if missing:
        raise UsageError(
            f"the language model's tokenizer has no {', '.join(missing)} token; an ESM-2 tokenizer "
            "is expected"
        )
    unk = tokenizer.unk_token_id
    out = []
    for tok in VOCAB:
        i = specials.get(tok, vocab.get(tok, unk))
        if i is None:
            raise UsageError(f"the language model's tokenizer has neither {tok!r} nor <unk>")
        out.append(int(i))
    return out


class EsmConditioner(nn.Module):
    """An ESM-2 model that maps coordformer tokens [B, L] to its last hidden state [B, L, H] at
    each residue. Frozen unless ``trainable``: no gradients, and it stays in eval mode whatever
    ``train()`` is called with."""

    def __init__(self, model, tokenizer, trainable: bool = False):
        super().__init__()
        self.model = model
        self.trainable = trainable
        self.register_buffer(
            "token_map", torch.tensor(token_map(tokenizer), dtype=torch.long), persistent=False
        )
        self.cls_id, self.eos_id, self.pad_id = (
            tokenizer.cls_token_id,
            tokenizer.eos_token_id,
            tokenizer.pad_token_id,
        )
        self.max_residues = int(model.config.max_position_embeddings) - 2
        self.hidden_size = int(model.config.hidden_size)
        head = getattr(model, "contact_head", None)
        if (
            head is not None
        ):  # not on the path to last_hidden_state: unused parameters would upset DDP
            head.requires_grad_(False)
        if not trainable:
            model.requires_grad_(False)
            # Lightning warns about modules in eval mode when
            # training starts; a frozen LM is meant to be.
            warnings.filterwarnings(
                "ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training"
            )
        self.train(False)

    def train(self, mode: bool = True):
        self.training = mode
        self.model.train(mode and self.trainable)
        return self

    def forward(
        self,
        tokens: torch.Tensor,
        padding_mask: torch.Tensor,
        pieces: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """tokens: [B, L] coordformer ids; padding_mask: [B, L] bool, True = residue (a prefix of
        each row). ``pieces``: [B, L] long or None: the runs of each row that the LM reads as
        sequences of their own (a piece is a run of equal values among a row's residues: a chain of
        a complex or of a packed row; -1 at padding). None: each row
        is one sequence. Returns [B, L, H] (zeros at padding)."""
        b, l = tokens.shape
        if l and bool((padding_mask[:, 1:] & ~padding_mask[:, :-1]).any()):
            raise UsageError("language-model conditioning needs the padding at the end of each row")
        dev = tokens.device
        # one LM row per piece: where each residue goes (LM row, column) and how long each row is
        if pieces is None:
            lengths = padding_mask.sum(1)
            row, col = None, None
        else:
            real = padding_mask.reshape(-1)
            flat = torch.arange(b * l, device=dev)[real]
            p = pieces.reshape(-1)[real]
            first = torch.ones_like(p, dtype=torch.bool)
            if len(p) > 1:
                # a new piece where the piece number changes or a new row starts
                first[1:] = (p[1:] != p[:-1]) | (flat[1:] // max(l, 1) != flat[:-1] // max(l, 1))
            row = torch.cumsum(first.long(), 0) - 1  # [T] the LM row of each residue
            n_rows = int(row[-1]) + 1 if len(row) else 0
            lengths = torch.bincount(row, minlength=n_rows)
            starts = torch.cumsum(lengths, 0) - lengths
            col = torch.arange(len(row), device=dev) - starts[row]
        longest = int(lengths.max()) if len(lengths) else 0
        if longest > self.max_residues:
            raise UsageError(
                f"a chain of {longest} residues exceeds the {self.max_residues} residues the "
                "conditioning language model covers (max_position_embeddings "
                f"{self.max_residues + 2}); crop chains to at most {self.max_residues} "
                "(`crop_length`)"
            )
        n, width = len(lengths), (l if pieces is None else longest)
        if n == 0:  # no residue at all: nothing for the LM to read
            return torch.zeros(b, l, self.hidden_size, device=dev)
        ids = torch.full((n, width + 2), self.pad_id, dtype=torch.long, device=dev)
        ids[:, 0] = self.cls_id
        if pieces is None:
            ids[:, 1 : width + 1] = torch.where(padding_mask, self.token_map[tokens], self.pad_id)
        else:
            ids[row, col + 1] = self.token_map[tokens.reshape(-1)[real]]
        ids[torch.arange(n, device=dev), lengths + 1] = self.eos_id
        attention = (torch.arange(width + 2, device=dev)[None, :] < (lengths + 2)[:, None]).long()
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.trainable):
            h = self.model(input_ids=ids, attention_mask=attention).last_hidden_state
        if pieces is None:
            h = h[:, 1 : l + 1]
            return h * padding_mask[..., None].to(h.dtype)
        out = h.new_zeros(b * l, h.shape[-1])
        out = out.index_copy(0, flat, h[row, col + 1])
        return out.view(b, l, h.shape[-1])

    def read_context(self, context: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
        """The LM reads ``context`` [B, W] (coordformer ids, ``PAD`` after each row's sequence)
        and each residue takes the representation at its column: ``columns`` [B, L] long (-1 at
        padding). For a spatial crop: the context is the crop's chain with the crop's inputs in
        place (``Batch.lm_context``). Returns [B, L, H] (zeros at padding)."""
        h = self.forward(context, context != PAD)
        at = columns.clamp(min=0)[..., None].expand(-1, -1, h.shape[-1])
        return torch.gather(h, 1, at) * (columns >= 0)[..., None].to(h.dtype)


def load_conditioner(config) -> tuple[EsmConditioner, str]:
    """The EsmConditioner a ModelConfig with ``condition_on`` needs, checked against its recorded
    ``lm_dim`` / ``lm_fingerprint`` (when set). Returns (conditioner, fingerprint)."""
    source = lm_source(config.condition_on)
    try:
        model, tokenizer = load_esm(source)
    except UsageError as e:
        if os.environ.get(LM_ENV) or LM_ENV in str(e):  # set, or already said
            raise
        # loading a trained model: its recorded LM is not where it was (another folder, another
        # machine); the one remedy a command that only loads the model has
        raise UsageError(
            f"{e} To load a model trained with it, set {LM_ENV}=FOLDER to that ESM-2 folder."
        ) from None
    # a model trained with an older version of the fingerprint is checked as it was made
    version = (
        fingerprint_version(config.lm_fingerprint) if config.lm_fingerprint else FINGERPRINT_VERSION
    )
    fp = fingerprint(model, version=version)
    if config.lm_fingerprint and fp != config.lm_fingerprint:
        raise UsageError(
            f"language model {source!r} (fingerprint {fp}) is not the one this model was trained "
            f"with ({config.condition_on!r}, fingerprint {config.lm_fingerprint}); set "
            f"{LM_ENV}=FOLDER to that one"
        )
    if config.lm_dim and model.config.hidden_size != config.lm_dim:
        raise UsageError(
            f"language model {source!r} has hidden size {model.config.hidden_size}, the model "
            f"expects {config.lm_dim}; set {LM_ENV}=FOLDER to the ESM-2 model it was trained with"
        )
    return EsmConditioner(model, tokenizer, trainable=config.unfreeze_lm), fp


def conditioned_config(config, condition_on: str, unfreeze: bool = False):
    """``config`` conditioned on the ESM-2 model at ``condition_on``, with its hidden size and
    fingerprint filled in (the LM is loaded once to read them)."""
    model, _ = load_esm(condition_on)
    # a local folder is recorded by its absolute path, so that the model loads from any working
    # directory (a relative one resolved only where training ran)
    folder = Path(condition_on).expanduser()
    if folder.is_dir():
        condition_on = str(folder.resolve())
    return config.replace(
        condition_on=condition_on,
        lm_dim=int(model.config.hidden_size),
        lm_fingerprint=fingerprint(model),
        unfreeze_lm=unfreeze,
    )
