"""Typed, frozen configuration records. Every checkpoint and output folder carries the ones used.

Each record converts to/from plain dicts (JSON/YAML friendly); unknown keys are rejected so a
config written by another version fails loudly instead of being half-read.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import yaml

from .constants import VOCAB_SIZE
from .errors import ConfigError, OptionError

T = TypeVar("T")

#: The seed every command, config record and library entry point starts from unless told otherwise
#: (one seed per command: data order, masks, rotations and initialisation all derive from it).
SEED = 0


def _from_dict(cls: type[T], d: dict[str, Any]) -> T:
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    # Keys that earlier development versions wrote and that no longer mean anything.
    d = {k: v for k, v in d.items() if k not in getattr(cls, "_obsolete_keys", ())}
    unknown = set(d) - names
    if unknown:
        raise ConfigError(
            f"{cls.__name__}: unknown keys {sorted(unknown)} (written by a different coordformer "
            "version?)"
        )
    kwargs = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name in d:
            v = d[f.name]
            kwargs[f.name] = tuple(v) if isinstance(v, list) else v
    return cls(**kwargs)


def default_of(cls: type, name: str) -> Any:
    """The default of field ``name`` of the dataclass ``cls`` (so that the CLI's option defaults are
    the records' own, written once)."""
    for f in dataclasses.fields(cls):
        if f.name == name:
            if f.default is not dataclasses.MISSING:
                return f.default
            if f.default_factory is not dataclasses.MISSING:
                return f.default_factory()
            raise ConfigError(f"{cls.__name__}.{name} has no default")
    raise ConfigError(f"{cls.__name__} has no field {name!r}")


def field_names(cls: type) -> tuple[str, ...]:
    """The field names of the dataclass ``cls``, in order."""
    return tuple(f.name for f in dataclasses.fields(cls))


class Record:
    """Base of the configuration records: plain-dict / JSON / YAML conversion and ``replace``."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        return _from_dict(cls, d)

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]

    def save(self, path: str | Path) -> None:
        path = Path(path)
        text = (
            yaml.safe_dump(self.to_dict(), sort_keys=False)
            if path.suffix in (".yaml", ".yml")
            else json.dumps(self.to_dict(), indent=2)
        )
        path.write_text(text)

    @classmethod
    def load(cls, path: str | Path):
        text = Path(path).read_text()
        return cls.from_dict(yaml.safe_load(text))


def name_list(value: str | Sequence[str]) -> tuple[str, ...]:
    """Names given as one string, "A,B" -> ("A", "B") (as the CLI takes them; a bare string would
    otherwise be iterated letter by letter: "AB" -> "A", "B"), or as a sequence of names."""
    if isinstance(value, str):
        return tuple(v.strip() for v in value.split(",") if v.strip())
    return tuple(value)


def _names(record, *fields: str) -> None:
    """Let a tuple-of-names field of a frozen record be given as one string (:func:`name_list`)."""
    for name in fields:
        if isinstance(getattr(record, name), str):
            object.__setattr__(record, name, name_list(getattr(record, name)))


#: Coordinate input modes: what per-residue features the linear coordinate embedding sees.
#: "ca": (x, y, z)/16 of CA + missing flag -> 4 features (the paper).
#: "backbone": (x, y, z)/16 of N, CA, C, O + one missing flag per atom -> 16 features.
COORD_MODES = ("ca", "backbone")
#: ModelConfig.weight_init and ModelConfig.lm_head values.
WEIGHT_INITS = ("normal", "pytorch")
LM_HEADS = ("mlp", "linear")


@dataclass(frozen=True)
class ModelConfig(Record):
    """Architecture of a CoordFormer. Sizes follow the usual names (d_model, n_layers, ...)."""

    _obsolete_keys = ("tie_embeddings",)  # never implemented; dropped before the first release

    d_model: int = 256
    n_layers: int = 4
    n_heads: int = 8
    d_ff: int = 1024
    dropout: float = 0.0
    max_len: int = 4096  # longest position the sinusoidal table covers
    use_coords: bool = True
    coord_mode: str = "ca"
    coord_norm_feature: bool = False  # also feed |x|^2 (scaled) as an input feature
    # also feed (100 - pLDDT) / 100 per residue (0 where unknown), see coordinate_features
    plddt_feature: bool = False
    coord_scale: float = 16.0  # Angstrom per unit of coordinate input
    gaussian_init_heads: int = 0  # first-layer heads initialised to attend by 3D distance
    gaussian_init_sigmas: tuple[float, ...] = (4.0, 6.0, 8.0, 12.0)  # Angstrom, cycled over heads
    gaussian_init_values: bool = False  # also give those heads unit-scale value/output projections
    vocab_size: int = VOCAB_SIZE
    #: "normal": every Linear N(0, 0.02), residual output projections N(0, 0.02 / sqrt(2 n_layers))
    #: (GPT-2 / ESM style). "pytorch": PyTorch's own defaults, as the paper's nn.TransformerEncoder
    #: and nn.Linear have them (Kaiming-uniform Linear layers, Xavier-uniform attention input
    #: projection with zero bias); the coordinate embedding then starts about 14x larger. Token
    #: embeddings are N(0, 1) either way.
    weight_init: str = "normal"
    #: "mlp": Linear, GELU, LayerNorm, Linear (ESM's head); "linear": one Linear after the final
    #: LayerNorm (the paper's).
    lm_head: str = "mlp"
    #: Language-model conditioning (coordformer.model.lm; the paper's ESM hybrid): a local folder or
    #: Hub name of an ESM-2 model whose last hidden state, through a Linear(lm_dim, d_model)
    #: connector, replaces the token embedding and the sinusoidal positions. None = a plain
    #: CoordFormer.
    condition_on: str | None = None
    lm_dim: int = 0  # the LM's hidden size (recorded when conditioned)
    lm_fingerprint: str = ""  # sizes + hash of sampled LM weights; loading refuses another LM
    unfreeze_lm: bool = False  # train the LM too (its weights are then saved with the model)

    def __post_init__(self):
        if self.condition_on is None:
            if self.lm_dim or self.lm_fingerprint or self.unfreeze_lm:
                raise ConfigError(
                    "`lm_dim`, `lm_fingerprint` and `unfreeze_lm` need `condition_on` (a language "
                    "model)"
                )
        elif self.gaussian_init_heads:
            raise ConfigError(
                "`gaussian_init_heads` needs the token embedding, which language-model "
                "conditioning (`condition_on`) replaces; use the recipe paper (`recipe=paper`) "
                "with it"
            )
        # sizes first: a bad one otherwise surfaces as a ZeroDivisionError, a torch error at
        # build time, or (coord_scale 0) silent NaN outputs
        for name in ("d_model", "n_layers", "n_heads", "d_ff", "max_len", "vocab_size"):
            if getattr(self, name) < 1:
                raise OptionError(name, getattr(self, name), "must be at least 1")
        if not 0.0 <= self.dropout < 1.0:
            raise OptionError("dropout", self.dropout, "must be in [0, 1)")
        if not self.coord_scale > 0:
            raise OptionError("coord_scale", self.coord_scale, "must be > 0 (Angstrom)")
        if self.d_model % self.n_heads:
            raise ConfigError(
                f"`d_model` ({self.d_model}) must be divisible by `n_heads` ({self.n_heads})"
            )
        if self.weight_init not in WEIGHT_INITS:
            raise OptionError("weight_init", self.weight_init, f"must be one of {WEIGHT_INITS}")
        if self.lm_head not in LM_HEADS:
            raise OptionError("lm_head", self.lm_head, f"must be one of {LM_HEADS}")
        if self.coord_mode not in COORD_MODES:
            raise OptionError("coord_mode", self.coord_mode, f"must be one of {COORD_MODES}")
        if self.plddt_feature and not self.use_coords:
            raise ConfigError(
                "`plddt_feature` goes through the coordinate embedding, which a sequence-only "
                "model (`use_coords=False`) lacks"
            )
        if not 0 <= self.gaussian_init_heads <= self.n_heads:
            raise OptionError(
                "gaussian_init_heads",
                self.gaussian_init_heads,
                f"must be in 0..{self.n_heads}, the model's number of heads",
            )
        if self.gaussian_init_heads:
            if self.d_model // self.n_heads < 4:
                raise ConfigError(
                    "`gaussian_init_heads` needs a head dimension of at least 4 (n + 1 for 3D)"
                )
            if not (self.use_coords and self.coord_norm_feature):
                raise ConfigError(
                    "`gaussian_init_heads` needs coordinates (not `use_coords=False`) and their "
                    "|x|^2 input (`coord_norm_feature`)"
                )

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_heads

    @property
    def n_coord_features(self) -> int:
        n_atoms = 4 if self.coord_mode == "backbone" else 1
        return n_atoms * 4 + int(self.plddt_feature) + int(self.coord_norm_feature)


#: Size presets, named by approximate parameter count. "paper-33m" is the paper's model: 6 layers x
#: 768 x 12 heads with nn.TransformerEncoderLayer's default d_ff of 2048 (33.1 M parameters with
#: the paper's linear LM head, 33.7 M with the MLP head of the fast recipe).
#: "large-43m" is the same with d_ff 3072 (it was called "paper-43m" before it was found not to be).
PRESETS: dict[str, dict[str, int]] = {
    "tiny-0.1m": dict(d_model=64, n_layers=2, n_heads=4, d_ff=128),
    "small-3m": dict(d_model=256, n_layers=4, n_heads=8, d_ff=1024),
    "base-13m": dict(d_model=512, n_layers=4, n_heads=8, d_ff=2048),
    "paper-33m": dict(d_model=768, n_layers=6, n_heads=12, d_ff=2048),
    "large-43m": dict(d_model=768, n_layers=6, n_heads=12, d_ff=3072),
}
_RENAMED_PRESETS = {"paper-43m": "large-43m (d_ff 3072; the paper's model is paper-33m)"}

#: How a model is initialised and fed (``pretrain --recipe``). "paper": the paper's model: a linear
#: embedding of CA (x, y, z) / 16 A and a missing flag, PyTorch's default initialisation and a
#: linear LM head (as the paper's code; its training settings are pretrain options, see README).
#: "fast": also |x|^2 as a feature, and the first ``min(4, n_heads // 2)`` heads of layer 1
#: initialised to attend by a Gaussian of 3D distance with unit-scale values
#: (``CoordFormer._init_gaussian_heads``): coordinates help from the first hundreds of steps
#: (docs/RESULTS.md, "Structure learning at the paper's size").
RECIPES = ("fast", "paper")
#: What ``pretrain`` uses for a structure model when no --recipe is given.
DEFAULT_RECIPE = "fast"


def recipe_settings(recipe: str, n_heads: int, use_coords: bool = True) -> dict:
    """ModelConfig fields a recipe sets for a model with ``n_heads`` heads. Without coordinates
    only the paper recipe sets anything (its initialisation and head, for a sequence-only twin)."""
    if recipe not in RECIPES:
        raise ConfigError(f"unknown recipe {recipe!r}; choose one of {', '.join(RECIPES)}")
    if recipe == "paper":
        paper = dict(weight_init="pytorch", lm_head="linear")
        if not use_coords:
            return paper
        return dict(
            paper, coord_norm_feature=False, gaussian_init_heads=0, gaussian_init_values=False
        )
    if not use_coords:
        return {}
    return dict(
        coord_norm_feature=True,
        gaussian_init_heads=max(min(4, n_heads // 2), 1),
        gaussian_init_values=True,
    )


def preset(name: str, recipe: str | None = None, **overrides) -> ModelConfig:
    """The ModelConfig of a size preset. ``recipe`` ("fast" or "paper", see RECIPES) sets the
    coordinate switches of a structure model, and "paper" also the paper's initialisation and LM
    head (for a sequence-only model too); None leaves them at ModelConfig's defaults.
    ``overrides`` win over both."""
    if name in _RENAMED_PRESETS:
        raise ConfigError(f"size preset {name!r} was renamed {_RENAMED_PRESETS[name]}")
    if name not in PRESETS:
        raise ConfigError(f"unknown size preset {name!r}; choose one of {', '.join(PRESETS)}")
    fields = dict(PRESETS[name])
    if recipe is not None:
        fields.update(recipe_settings(recipe, fields["n_heads"], overrides.get("use_coords", True)))
    return ModelConfig(**{**fields, **overrides})


@dataclass(frozen=True)
class PrepareConfig(Record):
    """How structure files become a prepared dataset (recorded in the dataset's manifest)."""

    min_length: int = 20
    max_length: int = 100_000
    max_missing_ca: float = 0.5  # drop chains with a larger fraction of residues lacking CA
    split: str = "random"  # "random" | "identity"
    split_identity: float = 0.3  # MMseqs2 --min-seq-id for split="identity"
    valid_fraction: float = 0.05
    test_fraction: float = 0.05
    seed: int = SEED
    exclude_files: tuple[str, ...] = ()  # chain ids that must never reach train
    #: "clusters": the held-out splits are whole MMseqs2 clusters (default); "strict" (identity
    #: split only): then no held-out chain keeps a train homologue at ``split_identity`` over half
    #: the shorter sequence (``data.splits.strict_holdout``).
    holdout: str = "clusters"
    #: FASTA files of sequences that must have no homologue in train (e.g. DeepFRI's
    #: *_test_sequences.fasta, whose chains a dataset may lack): train chains with one at
    #: ``split_identity`` over half the shorter sequence are set aside (splits/aside.txt).
    exclude_sequences: tuple[str, ...] = ()
    #: Predicted models (AlphaFold, ESMFold): residues whose B-factor column (= pLDDT) is below this
    #: become missing (all four atoms NaN) before the max_missing_ca filter. None = off.
    plddt_min: float | None = None
    #: Author chain ids to keep (e.g. ("A", "B")); empty = every protein chain. A structure file
    #: with none of them is skipped and logged; other inputs' chains are kept by their id's suffix.
    chains: tuple[str, ...] = ()
    #: Keep each residue's pLDDT (the CA B-factor, 0-1 files scaled to 0-100) in plddt.npy, for
    #: models with ``plddt_feature``. Only meaningful for predicted models; experimental B-factors
    #: are not pLDDT.
    store_plddt: bool = False
    #: Residues of the deposited sequence (mmCIF entity_poly_seq / PDB SEQRES) that a structure file
    #: has no coordinates for: "off" = left out (the chain is what was modelled); "gaps" = put back
    #: between the first and last modelled residue as missing-coordinate residues; "all" = termini
    #: too. They count as lacking CA for max_missing_ca.
    seqres: str = "off"

    def __post_init__(self):
        _names(self, "chains", "exclude_files", "exclude_sequences")

    #: Fields applied only when the dataset is assembled (always redone), so an interrupted prepare
    #: run resumes when they change; every other field is in :meth:`unit_fingerprint`.
    CONSOLIDATION_FIELDS = (
        "split",
        "split_identity",
        "valid_fraction",
        "test_fraction",
        "seed",
        "exclude_files",
        "holdout",
        "exclude_sequences",
    )

    def unit_fingerprint(self) -> dict[str, Any]:
        """The fields a prepare work unit's output depends on (JSON-able): an interrupted run
        resumes only when they are unchanged. Options are left out at their default, so that a run
        interrupted before an option existed still resumes (and its state file still matches)."""
        d: dict[str, Any] = {
            "min_length": self.min_length,
            "max_length": self.max_length,
            "max_missing_ca": self.max_missing_ca,
        }
        if self.plddt_min is not None:
            d["plddt_min"] = self.plddt_min
        if self.chains:
            d["chains"] = list(self.chains)
        if self.store_plddt:
            d["store_plddt"] = True
        if self.seqres != "off":
            d["seqres"] = self.seqres
        return d


#: What ``precision`` may be (Lightning's names; "auto" is resolved by
#: ``train.lifecycle.resolve_precision``). The "-true" half and double precisions are left out:
#: Lightning casts each batch with ``apply_to_collection``, which cannot rebuild the frozen
#: ``Batch``, and weights kept in bfloat16 or float16 lose AdamW's small updates, which bf16-mixed
#: keeps in float32.
PRECISIONS = ("auto", "32-true", "32", "bf16-mixed", "16-mixed")
#: Lightning's older names for the mixed precisions, which earlier runs may have recorded.
_PRECISION_ALIASES = ("16", "bf16")


def check_precision(precision) -> None:
    """An OptionError unless ``precision`` is one of :data:`PRECISIONS` (or an older alias)."""
    if str(precision) in PRECISIONS + _PRECISION_ALIASES:
        return
    if str(precision).endswith("-true") or str(precision) == "64":
        raise OptionError(
            "precision",
            precision,
            "weights in that precision are not supported; use bf16-mixed (bfloat16 compute, "
            f"float32 weights) or one of {', '.join(PRECISIONS)}",
        )
    raise OptionError("precision", precision, f"must be one of {', '.join(PRECISIONS)}")


#: How chains longer than the crop length are cut: a contiguous window, or a 3D neighbourhood
#: (``coordformer.data.batching.spatial_crop``).
CROP_MODES = ("sequence", "spatial")


@dataclass(frozen=True)
class BatchConfig(Record):
    """What the model is fed, chain by chain: the crop, the rotation, the masking and structure
    dropout (``coordformer.data.batching``). Independent of the seed; with it (and the batch count
    per optimizer step) these fix the training data stream, which a resumed run must keep."""

    crop_length: int = 512  # residues; longer chains are cropped (crop_mode)
    # longer chains: a "sequence" window or a "spatial" 3D neighbourhood
    crop_mode: str = "sequence"
    tokens_per_batch: int = 8192  # padded tokens (rows x longest row) per batch
    mask_prob: float = 0.15
    mask_token_frac: float = 0.8
    random_token_frac: float = 0.1
    rotate: bool = True  # a fresh uniform random rotation per chain
    # structure dropout: P(a training chain is fed with no coordinates)
    drop_chain_coords: float = 0.0
    # P(one 5-30% stretch of a training chain is fed without coordinates)
    drop_span_coords: float = 0.0

    def __post_init__(self):
        if self.crop_mode not in CROP_MODES:
            raise OptionError(
                "crop_mode", self.crop_mode, f"must be one of {', '.join(CROP_MODES)}"
            )
        for name in ("crop_length", "tokens_per_batch"):
            if getattr(self, name) < 1:
                raise OptionError(name, getattr(self, name), "must be at least 1")
        if not 0.0 < self.mask_prob < 1.0:
            raise OptionError("mask_prob", self.mask_prob, "must be in (0, 1)")
        fracs = (self.mask_token_frac, self.random_token_frac)
        if min(fracs) < 0 or sum(fracs) > 1:
            raise ConfigError(
                "`mask_token_frac` and `random_token_frac` must be >= 0 and sum to at most 1"
            )
        if not (0.0 <= self.drop_chain_coords <= 1.0 and 0.0 <= self.drop_span_coords <= 1.0):
            raise ConfigError(
                "coordinate dropout probabilities (`drop_chain_coords`, `drop_span_coords`) "
                "must lie in [0, 1]"
            )

    @property
    def batch(self) -> BatchConfig:
        """These settings as a plain :class:`BatchConfig` (also on records that extend it)."""
        return BatchConfig(**{name: getattr(self, name) for name in field_names(BatchConfig)})


@dataclass(frozen=True)
class TrainConfig(BatchConfig):
    """Masked-language-model pretraining run settings: the data stream (:class:`BatchConfig`, whose
    fields it has; ``cfg.batch`` is that part) plus optimisation, schedule and hardware.

    ``to_dict()`` is flat (the batch fields beside the others), the layout every checkpoint,
    config.json and summary.json has always stored; ``from_dict`` also reads the batch fields nested
    under ``"batch"``."""

    seed: int = SEED
    lr: float = 1e-3
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.98)
    warmup_steps: int = 500
    schedule: str = "cosine"  # "cosine" | "constant" | "noam"
    max_steps: int = 100_000
    max_minutes: float | None = None
    grad_clip: float = 1.0
    val_every_steps: int = 500
    val_max_chains: int = 512
    # one of PRECISIONS; "auto" -> bf16-mixed on GPU, 32-true on CPU (coordformer.train.lifecycle)
    precision: str = "auto"
    accelerator: str = "auto"
    devices: str = "auto"
    num_nodes: int = 1
    strategy: str = "auto"
    # DataLoader worker processes; None: AUTO_WORKERS on a CUDA GPU (at most the CPUs per device
    # less one), 0 elsewhere (coordformer.train.lifecycle.resolve_workers). On one H100 at
    # paper-33m, 4 workers trained about 1.4x faster than none (docs/RESULTS.md, issue 18); on the
    # CPU workers take cores from the model.
    num_workers: int | None = None
    compile: bool = False
    # recompute layer activations in backward (less memory, ~1/3 more compute)
    activation_checkpointing: bool = False
    # several chains per row (data.batching.pack_batch): the same chains and masks per step in
    # fewer, fuller rows; attention stays within each chain, so the loss is the same as padded
    pack_sequences: bool = False
    #: the layers run on the real residues only (Batch.varlen), with FlashAttention's
    #: variable-length kernel on a GPU: no padding and no attention mask in any layer (packing's
    #: aim, without its [L, L] masks). On the CPU it loops over chains (slower; for tests).
    varlen_attention: bool = False
    #: varlen rows padded to ``tokens_per_batch`` residues (model.core.StaticRows), and each layer
    #: compiled in place with torch.compile(mode="reduce-overhead"): the layers then see one shape
    #: every step, and on a GPU each layer's forward and backward replay as CUDA graphs (no kernel
    #: launches from the host). Implies varlen_attention; without a GPU it only compiles.
    cuda_graphs: bool = False
    #: torch.optim.AdamW(fused=True): one kernel for the whole update, and the non-finite-step skip
    #: is then decided on the device (no host sync per step); never slower on the CPU
    #: (docs/RESULTS.md), PyTorch's fastest AdamW on CUDA
    fused_adamw: bool = True
    #: the LM head runs on the masked (target) positions only, not on every residue; the loss is the
    #: same (benchmarks/training_ablations.py measures what it saves)
    logits_at_targets: bool = True
    log_every_steps: int = 25
    threads: int | None = None  # torch CPU threads; None = torch default
    checkpoint_every_steps: int = 500
    #: micro-batches per optimizer step (global batch = tokens_per_batch x this x processes)
    accumulate_grad_batches: int = 1
    #: weights the run started from (pretrain --init: a
    #: shipped model name or a checkpoint), None = random
    init: str | None = None

    #: Settings that determine which residues the model
    #: sees in which order; a resume must keep them.
    DATA_STREAM_FIELDS = ("seed", *field_names(BatchConfig), "accumulate_grad_batches")

    def __post_init__(self):
        super().__post_init__()
        if self.accumulate_grad_batches < 1:
            raise OptionError(
                "accumulate_grad_batches", self.accumulate_grad_batches, "must be >= 1"
            )
        # lr 0 is allowed: a run that must hold its initial weights (tests, --init checks)
        for name in ("lr", "warmup_steps", "weight_decay"):
            if getattr(self, name) < 0:
                raise OptionError(name, getattr(self, name), "must be >= 0")
        if self.crop_length > self.tokens_per_batch:
            default = default_of(BatchConfig, "crop_length")
            raise OptionError(
                "tokens_per_batch",
                self.tokens_per_batch,
                f"a batch must hold at least one crop of `crop_length` ({self.crop_length}"
                f"{', its default' if self.crop_length == default else ''}); raise "
                f"`tokens_per_batch` to {self.crop_length} or more, or lower `crop_length`",
            )
        check_precision(self.precision)
        if self.schedule not in ("cosine", "constant", "noam"):
            raise OptionError("schedule", self.schedule, "must be cosine, constant or noam")
        if self.max_steps < 1 or self.checkpoint_every_steps < 1 or self.val_every_steps < 1:
            raise ConfigError(
                "`max_steps`, `checkpoint_every_steps` and `val_every_steps` must be >= 1"
            )

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        if isinstance(d.get("batch"), dict):  # a nested layout: the BatchConfig part under "batch"
            d = {**{k: v for k, v in d.items() if k != "batch"}, **d["batch"]}
        return _from_dict(cls, d)


#: Output of the synthetic model's final head: "row" = exp(logit - max over keys) per query (what
#: the paper computes; unchanged by a per-query constant, like softmax); "raw" = exp(logit)
#: (unnormalised).
SIM_OUTPUTS = ("row", "raw")
#: Optimisation regimes: "paper" = Adam(0.9, 0.98) with the Noam schedule (factor, warmup, d_model);
#: "modern" = AdamW with a one-cycle schedule peaking at ``lr``.
SIM_REGIMES = ("paper", "modern")


@dataclass(frozen=True)
class SimConfig(Record):
    """One synthetic point-cloud run (``coordformer simulate``): data, model and optimisation.

    Coordinates are uniform in [0, box]^n_dims; the target for points i, j is
    exp(-(d_ij / length_scale)^exponent). The model reads (x - mean) / input_scale.
    """

    # data
    n_dims: int = 3
    n_points: int = 5
    n_train: int = 8000
    n_valid: int = 1000
    n_test: int = 1000
    box: float = 200.0
    length_scale: float = 200.0
    exponent: float = 2.0
    input_scale: float = 16.0
    augment: bool = True  # fresh uniform random rotation of every training structure at every step
    # model: linear coordinate embedding -> pre-LN encoder -> LayerNorm -> one attention head
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 8  # encoder heads
    d_ff: int = 256
    d_out: int = 4  # per-head dimension (q, k) of the attention head that produces the output
    output: str = "row"
    output_norm: bool = True  # LayerNorm before the output head's q/k projections
    # optimisation
    regime: str = "modern"
    batch_size: int = 64
    steps: int = 4000
    lr: float = 2e-3  # modern: one-cycle peak
    weight_decay: float = 0.01  # modern only
    noam_factor: float = 0.4  # paper only
    warmup: int = 4000  # paper only (Noam warmup steps)
    eval_every: int = 250
    seed: int = SEED  # model init, batch order and rotations
    data_seed: int = SEED  # point clouds (shared across model seeds unless changed)

    def __post_init__(self):
        if self.output not in SIM_OUTPUTS:
            raise ConfigError(f"output must be one of {SIM_OUTPUTS}, got {self.output!r}")
        if self.regime not in SIM_REGIMES:
            raise ConfigError(f"regime must be one of {SIM_REGIMES}, got {self.regime!r}")
        if self.d_model % self.n_heads:
            raise ConfigError(
                f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})"
            )
        if (
            min(
                self.n_dims,
                self.n_points,
                self.n_train,
                self.n_valid,
                self.n_test,
                self.d_out,
                self.steps,
                self.batch_size,
            )
            < 1
        ):
            raise ConfigError(
                "n_dims, n_points, n_train, n_valid, n_test, d_out, steps and batch_size must be "
                ">= 1"
            )
        if self.n_points < 2:
            raise ConfigError("n_points must be at least 2")


# Settings of the commands that use a trained model. They live here, beside the training records,
# so that the CLI reads their defaults without importing torch (each default is written once).

#: FinetuneConfig.task values (the DeepFRI benchmarks, ``function.labels``).
TASKS = ("ec", "go-mf", "go-bp", "go-cc")
#: FinetuneConfig.head values.
HEADS = ("linear", "mlp")
#: ScoreConfig.mode values.
SCORE_MODES = ("exact", "fast")
#: Seed of the fixed rotations ``ScoreConfig.rotations`` adds to the canonical frame: the same
#: frames for every chain and every run.
SCORE_ROTATION_SEED = 20250203
#: Residue positions between consecutive chains of a complex (``data.complexes``). A chain break
#: in a single structure is a jump of at least a few residues; 64 separates chains clearly while
#: keeping a complex of a few thousand residues inside the position table (max_len 4096).
DEFAULT_CHAIN_GAP = 64

# Defaults of the commands that have no config record, written once: the library function's
# signature and the CLI option both read them.
#: ``construct``: width of the Gaussian kernel, in coordinate units (not Angstrom).
CONSTRUCT_SIGMA = 0.5
#: ``fetch``: parallel downloads, seconds per request, retries after a network error / 429 / 5xx.
FETCH_WORKERS = 4
FETCH_TIMEOUT_S = 60.0
FETCH_RETRIES = 3
#: ``simulate``: worker processes (one CPU thread each), device, and the preset docs/RESULTS.md
#: reports (``sim.studies.PRESETS``).
SIMULATE_WORKERS = 2
SIMULATE_DEVICE = "cpu"
SIMULATE_PRESET = "standard"


@dataclass(frozen=True)
class FinetuneConfig(Record):
    task: str = "ec"
    head: str = "mlp"
    random_init: bool = False
    use_coords: bool | None = None  # None = as the checkpoint was trained
    max_epochs: int = 100
    patience: int = 10  # epochs without a better validation Fmax before stopping
    lr: float = 1e-3  # head (and, for "linear", encoder lr = lr * encoder_lr_scale)
    encoder_lr_scale: float = 0.1
    weight_decay: float = 0.01
    batch_size: int = 64  # mlp: chains per batch
    tokens_per_batch: int = 8192  # linear: padded tokens per batch
    max_length: int = 1024
    hidden: int = 512  # mlp width
    blocks: int = 2  # residual MLP blocks
    dropout: float = 0.2
    seed: int = SEED
    precision: str = "auto"
    # Start the output bias at each class's training-set log-odds. With hundreds of rare classes
    # (median EC prior 0.1%) logits starting at 0 spend thousands of steps learning the priors
    # before any feature matters, which is what a short encoder fine-tune otherwise measures.
    prior_bias: bool = True
    # linear head: epochs of fitting the linear layer alone on frozen embeddings before the encoder
    # is unfrozen (0 = fine-tune from a fresh head); early-stopped on validation Fmax like the rest.
    probe_epochs: int = 50
    # probe epochs take seconds and its validation Fmax is noisy: be patient
    probe_patience: int = 10

    def __post_init__(self):
        if self.task not in TASKS:
            raise OptionError("task", self.task, f"must be one of {', '.join(TASKS)}")
        if self.head not in HEADS:
            raise OptionError("head", self.head, f"must be one of {', '.join(HEADS)}")
        if self.max_epochs < 1 or self.patience < 1:
            raise ConfigError("max_epochs and patience must be >= 1")
        if self.probe_epochs < 0 or self.probe_patience < 1:
            raise ConfigError("probe_epochs must be >= 0 and probe_patience >= 1")
        for name in ("lr", "encoder_lr_scale", "weight_decay"):
            value = getattr(self, name)
            # refused up front: a NaN rate failed only after training (NaN scores), a negative one
            # climbed the loss and exited 0
            if not math.isfinite(value) or value < 0 or (name == "lr" and value == 0):
                raise OptionError(
                    name,
                    value,
                    "must be a finite number" + (" above 0" if name == "lr" else " >= 0"),
                )
        check_precision(self.precision)


@dataclass(frozen=True)
class ScoreConfig(Record):
    """How masked marginals are computed (``coordformer score``)."""

    # "exact": one masked position per pass; "fast": several far-apart positions per pass
    mode: str = "exact"
    # fast: least sequence separation (residues) between positions masked in one pass
    min_sep: int = 8
    # fast: least CA-CA distance (Angstrom) between them; 0 = sequence separation only
    min_dist: float = 12.0
    # residues per model pass; None = min(1024, the model's max_len); longer chains are windowed
    window: int | None = None
    # least overlap between consecutive windows (each position is scored where it is most central)
    overlap: int = 256
    tokens_per_batch: int = 8192  # padded tokens per forward pass
    # None = as the model was trained; False withholds coordinates from a structure model
    use_coords: bool | None = None
    # frames each pass is run in, probabilities averaged: the canonical frame of the CAs, then
    # rotations of it fixed by SCORE_ROTATION_SEED (the models are not rotation-invariant)
    rotations: int = 1

    def __post_init__(self):
        if self.rotations < 1:
            raise OptionError("rotations", self.rotations, "must be at least 1")
        if self.mode not in SCORE_MODES:
            raise OptionError(
                "mode", self.mode, f"scoring mode must be one of {', '.join(SCORE_MODES)}"
            )
        if self.min_sep < 1:
            raise OptionError("min_sep", self.min_sep, "must be at least 1")
        if not self.min_dist >= 0:
            raise OptionError("min_dist", self.min_dist, "must be >= 0 Angstrom")
        if self.tokens_per_batch < 1:
            raise OptionError("tokens_per_batch", self.tokens_per_batch, "must be positive")

    def window_for(self, max_len: int) -> int:
        window = self.window or min(1024, max_len)
        if window > max_len:
            raise OptionError("window", window, f"exceeds the model's max_len {max_len}")
        check_overlap(self.overlap, window)
        return window


def check_overlap(overlap: int, window: int) -> None:
    """An OptionError unless consecutive windows of ``window`` residues can overlap by
    ``overlap``."""
    if overlap < 0:
        raise OptionError("overlap", overlap, "must be >= 0")
    if overlap >= window:
        raise OptionError(
            "overlap",
            overlap,
            f"must be less than `window` ({window}); lower `overlap` or raise `window`",
        )


@dataclass(frozen=True)
class EmbedConfig(Record):
    """Settings of one ``coordformer embed`` run (stored in the output file's attributes)."""

    # None = final layer after the final LayerNorm; k = residual stream after layer k
    layer: int | None = None
    per_residue: bool = False
    # residues per model pass; None = min(1024, the model's max_len); longer chains are windowed
    window: int | None = None
    # least overlap between consecutive windows (each residue is taken from the window it is most
    # central in)
    overlap: int = 256
    # None = whole chains; N = embed only the first N residues (counted as cropped)
    max_length: int | None = None
    tokens_per_batch: int = 8192
    use_coords: bool | None = None  # None = as the model was trained
    split: str | None = None  # for a prepared dataset: one split only
    plddt_min: float | None = None  # raw inputs only: passed to prepare (PrepareConfig.plddt_min)
    chains: tuple[str, ...] = ()  # author chain ids to keep (empty = all)
    complexes: bool = False  # embed the chains of each file together (see the module docstring)
    chain_gap: int = DEFAULT_CHAIN_GAP  # residue positions between consecutive chains of a complex
    # put back unobserved residues of structure files: "off" | "gaps" | "all" (PrepareConfig.seqres)
    seqres: str = "off"

    def __post_init__(self):
        _names(self, "chains")


#: Most distance bins of one attention analysis: its histograms are dense (layers x heads x bins)
#: arrays, and proteins span at most a few hundred Angstrom.
MAX_DISTANCE_BINS = 10_000


@dataclass(frozen=True)
class AttentionAnalysisConfig(Record):
    """Settings of one ``analyze-attention`` pass (saved beside its outputs)."""

    split: str = "test"
    max_chains: int | None = 200
    max_distance: float = 32.0  # Angstrom; pairs farther apart are not binned by distance
    bin_width: float = 1.0  # Angstrom
    max_separation: int = 32  # residues, either side
    crop_length: int = 512
    tokens_per_batch: int = 4096

    def __post_init__(self):
        if not (math.isfinite(self.bin_width) and self.bin_width > 0):
            raise OptionError("bin_width", self.bin_width, "must be a positive number of Angstrom")
        if not (math.isfinite(self.max_distance) and self.max_distance > self.bin_width):
            raise OptionError(
                "max_distance", self.max_distance, "must be a number of Angstrom above `bin_width`"
            )
        bins = self.max_distance / self.bin_width  # infinite for a tiny enough bin_width
        if not bins <= MAX_DISTANCE_BINS:  # the histograms are dense arrays
            count = f"{math.ceil(bins):,}" if math.isfinite(bins) else "too many"
            raise OptionError(
                "max_distance",
                self.max_distance,
                f"makes {count} distance bins of `bin_width` {self.bin_width:g}; "
                f"at most {MAX_DISTANCE_BINS:,} (raise `bin_width`)",
            )
        if (
            self.max_separation < 1
            or self.crop_length < 2
            or self.tokens_per_batch < self.crop_length
        ):
            raise ConfigError(
                "need max_separation >= 1, crop_length >= 2 and tokens_per_batch >= crop_length"
            )

    @property
    def n_distance_bins(self) -> int:
        return int(math.ceil(self.max_distance / self.bin_width))

    def distance_centres(self) -> np.ndarray:
        return (np.arange(self.n_distance_bins) + 0.5) * self.bin_width

    def separations(self) -> np.ndarray:
        return np.arange(-self.max_separation, self.max_separation + 1)


@dataclass(frozen=True)
class EvalConfig(Record):
    """Settings of a masked-LM evaluation (``coordformer evaluate``, ``eval.mlm.evaluate_mlm``,
    whose keyword defaults are these)."""

    split: str = "test"
    # masking seed: the same masks for every model evaluated with it
    seed: int = 12345
    mask_prob: float = 0.15
    # longer chains are evaluated on their first N residues, or in windows of N (windows)
    crop_length: int = 1024
    tokens_per_batch: int = 16384
    max_chains: int | None = None
    # "mask": every selected residue becomes <mask>; "bert": 80/10/10 as in training
    masking: str = "mask"
    windows: bool = False
    # least overlap between consecutive windows
    overlap: int = 256
    # "none" | "all" | "span" | "cut": which coordinates the model is not given
    hide_coords: str = "none"
