"""Command-line interface: parse arguments, build configs, call one library function each.

Errors that users can fix are printed as one line (``error: ...``) with exit status 2; ``--debug``
shows the traceback instead.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shlex
import sys
from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer

from . import interrupts
from .config import (
    CONSTRUCT_SIGMA,
    FETCH_RETRIES,
    FETCH_TIMEOUT_S,
    FETCH_WORKERS,
    PRECISIONS,
    SEED,
    SIMULATE_DEVICE,
    SIMULATE_PRESET,
    SIMULATE_WORKERS,
    AttentionAnalysisConfig,
    EmbedConfig,
    EvalConfig,
    FinetuneConfig,
    ModelConfig,
    PrepareConfig,
    ScoreConfig,
    TrainConfig,
    default_of,
    name_list,
)
from .errors import CoordformerError, OptionError, TrainingInterrupted, UsageError


def _prep(name: str):
    """PrepareConfig's default for ``name``: each default is written once, in the record."""
    return default_of(PrepareConfig, name)


def _train(name: str):
    """TrainConfig's default for ``name``."""
    return default_of(TrainConfig, name)


def _model(name: str):
    """ModelConfig's default for ``name``."""
    return default_of(ModelConfig, name)


# rich_markup_mode=None: click's plain help, which keeps whole option names and wraps at 80 columns
# (the rich panels cut names short there and showed a <bool> column for every flag)
app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help="coordformer: structure-aware protein Transformers via linear coordinate embeddings.",
)
_DEBUG = {"on": False}


class SplitMode(str, Enum):
    random = "random"
    identity = "identity"


class HoldoutMode(str, Enum):
    clusters = "clusters"
    strict = "strict"


class SeqresMode(str, Enum):
    off = "off"
    gaps = "gaps"
    all = "all"


class CropMode(str, Enum):
    sequence = "sequence"
    spatial = "spatial"


class CoordMode(str, Enum):
    ca = "ca"
    backbone = "backbone"


class Recipe(str, Enum):
    fast = "fast"
    paper = "paper"


def _print_version(value: bool) -> None:
    if value:
        from . import __version__

        typer.echo(f"coordformer {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
    version: bool = typer.Option(
        False,
        "--version",
        is_eager=True,
        callback=_print_version,
        help="Print the version and exit.",
    ),
):
    _DEBUG["on"] = debug
    logging.basicConfig(
        level=logging.INFO if debug else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )


#: the arguments of the command `main` runs (None outside it): what a run records as its command,
#: also when a test or notebook calls ``main([...])``, whose sys.argv is the host's
_ARGS: list[str] | None = None


def _command_line() -> str:
    args = sys.argv[1:] if _ARGS is None else _ARGS
    return "coordformer " + " ".join(shlex.quote(a) for a in args)


_CHAINS_HELP = "Author chain ids to keep, comma-separated (e.g. A,B); default: every protein chain."
_SEQRES_HELP = (
    "Residues of the deposited sequence (SEQRES / entity_poly_seq) the file has no coordinates "
    "for: off = left out; gaps = put back inside the chain (unresolved loops) as "
    "missing-coordinate residues; all = termini too. Pair with a model trained with structure "
    "dropout (small-coords-sd)."
)


def _chain_list(value: Optional[str]) -> tuple[str, ...]:
    if value is None:
        return ()
    chains = name_list(value)
    if not chains:
        raise UsageError(
            f"--chains {value!r}: give author chain ids separated by commas, e.g. --chains A,B"
        )
    return chains


def _out_folder(
    path: Path, flag: str = "--out", command: str | None = None, writes: tuple[str, ...] = ()
) -> Path:
    """``path`` for an option naming a folder to write into; a one-line error where it is a file
    (mkdir would fail with a bare FileExistsError), or where ``command`` would overwrite one of the
    files (``writes``) of another command's folder, such as a training run's config.json, which
    its resume reads."""
    if path.exists() and not path.is_dir():
        raise UsageError(f"{flag} {path} is a file; give a folder")
    owner = _folder_owner(path)
    clash = [f for f in writes if (path / f).exists()]
    if command and owner and owner != command and clash:
        who = owner if owner == "another program" else f"`coordformer {owner}`"
        raise UsageError(
            f"{flag} {path} holds the output of {who}, whose {clash[0]} "
            f"`coordformer {command}` would overwrite; give another folder"
        )
    return path


def _folder_owner(path: Path) -> str | None:
    """Who wrote the config.json in ``path``: the coordformer command it records (``command``,
    global options such as ``--debug`` skipped), "construct" or "export" (a model folder: an
    ``export --format hf`` or ``save_pretrained``), "pretrain" for a run folder written through the
    Python API (no command recorded), "another program" for any other config.json; None where
    there is none (or it cannot be read as JSON)."""
    try:
        record = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict):
        return "another program"
    recorded = record.get("command")
    words = recorded.split() if isinstance(recorded, str) else []
    if words and words[0] == "coordformer":
        command = next((w for w in words[1:] if not w.startswith("-")), None)
        if command:
            return command
    if "construct" in record:
        return "construct"
    if "finetune" in record:  # started from Python: no command recorded
        return "finetune"
    if "coordformer_meta" in record or record.get("model_type") == "coordformer":
        return "export"
    if "train_config" in record or "model_config" in record:
        return "pretrain"
    return "another program"


def _out_file(path: Path, flag: str = "--out", hint: str = "") -> Path:
    """``path`` for an option naming a file to write; a one-line error where it is a folder (the
    finished file is renamed onto it, which fails once all the work is done)."""
    if path.is_dir():
        raise UsageError(f"{flag} {path} is a folder; give a file name{hint}")
    return path


def _distinct_outputs(**files: Path | None) -> None:
    """A one-line error, before any work, when two of a command's output files (given or derived,
    as flag -> path) are one file: the later write replaced the earlier, and exited 0."""
    seen: dict[Path, str] = {}
    for flag, path in files.items():
        if path is None:
            continue
        key = Path(os.path.abspath(path))
        if key in seen:
            raise UsageError(
                f"{seen[key]} and {flag} would both write {path}: give them different names"
            )
        seen[key] = flag


#: File endings a figure may be written with (matplotlib's common formats).
_FIGURE_SUFFIXES = (".png", ".pdf", ".svg", ".jpg", ".jpeg")


def _figure_file(path: Path, flag: str) -> Path:
    """``path`` for an option naming a figure: a one-line error, before any work, for an ending
    matplotlib would refuse (or add) after it."""
    _out_file(path, flag)
    if path.suffix.lower() not in _FIGURE_SUFFIXES:
        raise UsageError(
            f"{flag} {path}: a figure file ends in {', '.join(_FIGURE_SUFFIXES)}; add one"
        )
    return path


_PLDDT_HELP = (
    "Predicted models (AlphaFold, ESMFold): residues whose B-factor (= pLDDT, 0-100; 0-1 files are "
    "scaled) is below this become missing coordinates; files that declare an experiment (EXPDTA, "
    "_exptl.method) are left whole. Default: off."
)


_THREADS = typer.Option(
    None, min=1, help="torch CPU threads (default: torch's, one per core; OMP_NUM_THREADS)."
)


@app.command()
def prepare(
    ctx: typer.Context,
    sources: List[Path] = typer.Argument(
        ..., help="PDB/mmCIF files (.gz ok), folders (recursive), chain_set JSONL or FASTA files."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder for the prepared dataset."),
    split: SplitMode = typer.Option(
        SplitMode(_prep("split")),
        help="random: seeded hash of chain id; identity: MMseqs2 clusters never cross splits.",
    ),
    identity: float = typer.Option(
        _prep("split_identity"), min=0.0, max=1.0, help="Sequence identity for --split identity."
    ),
    valid_fraction: float = typer.Option(_prep("valid_fraction"), min=0.0, max=0.9),
    test_fraction: float = typer.Option(_prep("test_fraction"), min=0.0, max=0.9),
    exclude: List[Path] = typer.Option(
        [], help="File(s) of chain ids (12AS-A or 12AS.A) kept out of train (put in test)."
    ),
    exclude_sequences: List[Path] = typer.Option(
        [],
        "--exclude-sequences",
        help="FASTA file(s) of sequences with no homologue allowed in train (e.g. DeepFRI's "
        "*_test_sequences.fasta): train chains with one at --identity over half the shorter "
        "chain are set aside (splits/aside.txt). Needs MMseqs2.",
    ),
    holdout: HoldoutMode = typer.Option(
        HoldoutMode(_prep("holdout")),
        help="clusters: valid/test are whole MMseqs2 clusters (80% coverage of both chains); "
        "strict (--split identity): then no valid/test chain keeps a train homologue at "
        "--identity over half the shorter chain (MMseqs2 search; leaky ones move into train).",
    ),
    min_length: int = typer.Option(_prep("min_length"), min=1),
    max_length: int = typer.Option(_prep("max_length"), min=1),
    max_missing_ca: float = typer.Option(
        _prep("max_missing_ca"),
        min=0.0,
        max=1.0,
        help="Drop chains with a larger fraction of residues lacking CA.",
    ),
    plddt_min: Optional[float] = typer.Option(None, min=0.0, max=100.0, help=_PLDDT_HELP),
    chains: Optional[str] = typer.Option(None, help=_CHAINS_HELP),
    store_plddt: bool = typer.Option(
        False,
        "--store-plddt",
        help="Keep each residue's pLDDT (B-factor column) for models "
        "trained with --plddt-feature (predicted models only: files that declare an experiment "
        "store none, read as certain).",
    ),
    seqres: SeqresMode = typer.Option(
        SeqresMode(_prep("seqres")),
        help=_SEQRES_HELP + " Inserted residues count as lacking CA for --max-missing-ca.",
    ),
    workers: int = typer.Option(
        2, min=0, help="Parallel worker processes (0 or 1: read in this process)."
    ),
    seed: int = typer.Option(_prep("seed")),
    overwrite: bool = typer.Option(False, help="Replace an existing finished dataset in --out."),
    quiet: bool = typer.Option(False, help="No progress bar."),
):
    """Turn structure files into a memory-mapped dataset with train/valid/test splits."""
    from .data.prepare import prepare as run_prepare

    _out_folder(out)
    source = ctx.get_parameter_source("identity")
    if holdout is HoldoutMode.strict and split is not SplitMode.identity:
        raise UsageError(
            "--holdout strict needs --split identity (its --identity sets the homology)"
        )
    if split is not SplitMode.identity and source is not None and source.name == "COMMANDLINE":
        # a random split would ignore it, and the manifest would still record it
        raise UsageError(
            f"--identity {identity} sets the clustering of --split identity only; add "
            "--split identity, or drop --identity for a random split"
        )
    for flag, files in (("--exclude", exclude), ("--exclude-sequences", exclude_sequences)):
        for f in files:
            if not f.is_file():
                raise UsageError(f"{flag} file {f} does not exist")
    cfg = PrepareConfig(
        min_length=min_length,
        max_length=max_length,
        max_missing_ca=max_missing_ca,
        split=split.value,
        split_identity=identity,
        valid_fraction=valid_fraction,
        test_fraction=test_fraction,
        seed=seed,
        exclude_files=tuple(str(f) for f in exclude),
        holdout=holdout.value,
        exclude_sequences=tuple(str(f) for f in exclude_sequences),
        plddt_min=plddt_min,
        chains=_chain_list(chains),
        store_plddt=store_plddt,
        seqres=seqres.value,
    )
    summary = run_prepare(
        [str(s) for s in sources],
        out,
        cfg,
        workers=workers,
        progress=not quiet,
        overwrite=overwrite,
    )
    typer.echo(summary.format())


@app.command()
def fetch(
    ids: List[str] = typer.Argument(
        None,
        help="PDB ids (1abc; 1abc_A fetches the whole entry) and UniProt accessions / "
        "AlphaFold DB ids (P69905, AF-P69905-F1).",
    ),
    out: Path = typer.Option(
        ..., "--out", "-o", help="Folder for the files (then: coordformer prepare FOLDER)."
    ),
    ids_file: Optional[Path] = typer.Option(
        None, "--ids", help="File of ids, one per line or separated by spaces/commas (# comments)."
    ),
    pdb_url: str = typer.Option(
        None,
        help="PDB file URL template with {id} (upper case) or {id_lower}; default RCSB "
        "(https://files.rcsb.org/download/{id}.cif.gz). A mirror, e.g. PDBe, goes here.",
    ),
    afdb_api: str = typer.Option(
        None,
        help="AlphaFold DB prediction API template with {accession}; default "
        "https://alphafold.ebi.ac.uk/api/prediction/{accession}.",
    ),
    workers: int = typer.Option(FETCH_WORKERS, min=1, help="Parallel downloads."),
    timeout: float = typer.Option(FETCH_TIMEOUT_S, min=1.0, help="Seconds per request."),
    retries: int = typer.Option(
        FETCH_RETRIES, min=0, help="Retries after a network error, HTTP 429 or 5xx (not after 404)."
    ),
    quiet: bool = typer.Option(False),
):
    """Download PDB entries (mmCIF) and AlphaFold DB
    models; needs a network, unlike every other command."""
    from .io.fetch import AFDB_API, PDB_URL, read_id_tokens
    from .io.fetch import fetch as run

    _out_folder(out)
    tokens = list(ids or [])
    if ids_file is not None:
        if not ids_file.is_file():
            raise UsageError(f"--ids {ids_file}: no such file")
        tokens += read_id_tokens(ids_file)
    summary = run(
        tokens,
        out,
        pdb_url=pdb_url or PDB_URL,
        afdb_api=afdb_api or AFDB_API,
        workers=workers,
        timeout=timeout,
        retries=retries,
        progress=not quiet,
    )
    typer.echo(summary.format())
    if summary.failed and not (summary.downloaded or summary.present):
        raise typer.Exit(1)


@app.command()
def pretrain(
    data: Path = typer.Option(
        ..., "--data", "-d", help="Prepared dataset folder (from `coordformer prepare`)."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Run folder (checkpoints, logs, config)."),
    coords: bool = typer.Option(
        True,
        "--coords/--no-coords",
        help="Feed coordinates (the structure model) or not (sequence-only).",
    ),
    size: Optional[str] = typer.Option(
        None,
        "--preset",
        help="Model size preset: tiny-0.1m, small-3m (default), base-13m, "
        "paper-33m (the paper's 6 x 768 x 12, d_ff 2048), large-43m (d_ff 3072).",
    ),
    recipe: Optional[Recipe] = typer.Option(
        None,
        help="Model recipe: fast (default with coordinates: |x|^2 feature and Gaussian-"
        "initialised first-layer heads, coordinates help from the first hundreds of "
        "steps) or paper (the paper's model: plain linear coordinate embedding, PyTorch's "
        "default initialisation, linear LM head; with --no-coords, its initialisation and head).",
    ),
    init: Optional[str] = typer.Option(
        None,
        "--init",
        help="Start from these weights (a shipped model name, checkpoint or run "
        "folder) instead of random ones: continued pretraining. The model's architecture "
        "comes with them; the optimizer and schedule start afresh.",
    ),
    coord_mode: CoordMode = typer.Option(
        CoordMode(_model("coord_mode")),
        help="ca: CA xyz + missing flag (paper); backbone: N, CA, C, O.",
    ),
    norm_feature: Optional[bool] = typer.Option(
        None,
        "--norm-feature/--no-norm-feature",
        help="Also feed |x|^2 of CA as an input feature (default: as the recipe says).",
    ),
    gaussian_heads: Optional[int] = typer.Option(
        None,
        min=0,
        help="First-layer heads initialised to attend by a Gaussian of 3D "
        "distance (needs the |x|^2 feature; default: as the recipe says).",
    ),
    gaussian_values: Optional[bool] = typer.Option(
        None,
        "--gaussian-values/--no-gaussian-values",
        help="Give those heads unit-scale value/output projections (default: as the recipe says).",
    ),
    weight_init: Optional[str] = typer.Option(
        None,
        help="normal (N(0, 0.02) Linear layers, as ESM) or pytorch (PyTorch's defaults, as the "
        "paper's code); default: as the recipe says.",
    ),
    lm_head: Optional[str] = typer.Option(
        None, help="mlp (as ESM) or linear (as the paper); default: as the recipe says."
    ),
    plddt_feature: bool = typer.Option(
        False,
        "--plddt-feature",
        help="Also feed (100 - pLDDT)/100 per residue (from a dataset "
        "prepared with --store-plddt; 0 where unknown) through the coordinate embedding.",
    ),
    condition_on: Optional[str] = typer.Option(
        None,
        "--condition-on",
        help="Condition on an ESM-2 language model (a local "
        "folder, or a Hub name where there is network): its frozen last-layer "
        "representation, through a linear connector, replaces the token and position "
        "embedding (the paper's ESM hybrid; recipe paper). Its weights are not saved: "
        "loading re-reads it (or $COORDFORMER_LM).",
    ),
    unfreeze_lm: bool = typer.Option(
        False,
        "--unfreeze-lm",
        help="With --condition-on: train the language model too (its "
        "weights are then saved with the model).",
    ),
    max_steps: int = typer.Option(_train("max_steps"), min=1),
    max_minutes: Optional[float] = typer.Option(
        None, min=0.1, help="Stop after this much training time; the cosine schedule follows it."
    ),
    lr: float = typer.Option(_train("lr"), min=0.0),
    warmup_steps: int = typer.Option(_train("warmup_steps"), min=0),
    schedule: str = typer.Option(_train("schedule"), help="cosine | constant | noam"),
    weight_decay: float = typer.Option(
        _train("weight_decay"),
        min=0.0,
        help="AdamW weight decay (on weight matrices, the coordinate embedding included; not "
        "on biases, LayerNorm or the token embedding); 0 = Adam, as the paper.",
    ),
    grad_clip: float = typer.Option(
        _train("grad_clip"), min=0.0, help="Gradient-norm clipping; 0 = none, as the paper."
    ),
    tokens_per_batch: int = typer.Option(
        _train("tokens_per_batch"), min=16, help="Token budget per batch (padded size)."
    ),
    crop_length: int = typer.Option(
        _train("crop_length"),
        min=8,
        help="Chains longer than this are randomly cropped to a window.",
    ),
    crop: CropMode = typer.Option(
        CropMode(_train("crop_mode")),
        help="sequence: a random contiguous window; spatial: the crop-length "
        "residues nearest (CA-CA) a random centre residue, gaps kept in the positions.",
    ),
    dropout: float = typer.Option(_model("dropout"), min=0.0, max=0.9),
    seed: int = typer.Option(_train("seed")),
    val_every: int = typer.Option(_train("val_every_steps"), min=1, help="Validate every N steps."),
    val_max_chains: int = typer.Option(
        _train("val_max_chains"),
        min=1,
        help="Validate on at most this many chains of the valid split.",
    ),
    checkpoint_every: int = typer.Option(
        _train("checkpoint_every_steps"), min=1, help="Write checkpoints/last.ckpt every N steps."
    ),
    accelerator: str = typer.Option(_train("accelerator"), help="auto | cpu | gpu | mps"),
    devices: str = typer.Option(
        _train("devices"), help="Number of devices (or 'auto'); >1 uses DDP."
    ),
    num_nodes: int = typer.Option(_train("num_nodes"), min=1),
    strategy: str = typer.Option(
        _train("strategy"), help="Lightning strategy: auto | ddp | fsdp | ..."
    ),
    precision: str = typer.Option(
        _train("precision"),
        help=f"{', '.join(PRECISIONS)}. auto: bf16-mixed on a GPU (16-mixed on one without "
        "bfloat16), 32-true on the CPU. Half-precision weights (bf16-true, 16-true) are not "
        "supported: use bf16-mixed.",
    ),
    workers: Optional[int] = typer.Option(
        _train("num_workers"),
        min=0,
        help="DataLoader worker processes. Default: 4 on a CUDA GPU (fewer when the CPUs per GPU "
        "are fewer than 5), 0 on the CPU.",
    ),
    accumulate: int = typer.Option(
        _train("accumulate_grad_batches"),
        min=1,
        help="Micro-batches per optimizer step (a larger global batch on fewer GPUs); the loss is "
        "the mean over all the step's masked residues.",
    ),
    threads: Optional[int] = typer.Option(None, min=1, help="torch CPU threads."),
    compile: bool = typer.Option(False, "--compile", help="torch.compile the model."),
    drop_chain_coords: float = typer.Option(
        _train("drop_chain_coords"),
        min=0.0,
        max=1.0,
        help="Structure dropout: probability that a training chain "
        "is fed with no coordinates (teaches the model sequence-only inputs).",
    ),
    drop_span_coords: float = typer.Option(
        _train("drop_span_coords"),
        min=0.0,
        max=1.0,
        help="Probability that one contiguous 5-30% stretch of a "
        "training chain is fed without coordinates (teaches unresolved loops).",
    ),
    activation_checkpointing: bool = typer.Option(
        False,
        "--activation-checkpointing",
        help="Recompute layer activations in the backward pass: activation memory "
        "stops growing with depth, for ~1/3 more compute (long chains, big models).",
    ),
    pack: bool = typer.Option(
        default_of(TrainConfig, "pack_sequences"),
        "--pack/--no-pack",
        help="Pack several chains per row (attention stays within each chain; the same loss as "
        "padded rows, with fewer padding positions).",
    ),
    varlen: bool = typer.Option(
        default_of(TrainConfig, "varlen_attention"),
        "--varlen/--no-varlen",
        help="Run the layers on the real residues only, each chain attending to itself "
        "(FlashAttention's variable-length kernel on a GPU, bf16/fp16): no FLOP goes to padding. "
        "Needs dropout 0 (the default). On the CPU it is slower than padded rows.",
    ),
    cuda_graphs: bool = typer.Option(
        default_of(TrainConfig, "cuda_graphs"),
        "--cuda-graphs/--no-cuda-graphs",
        help="--varlen with one shape for the layers (the real residues padded to "
        "--tokens-per-batch), each layer compiled with torch.compile(mode='reduce-overhead'): on a "
        "GPU its kernels replay as CUDA graphs, with no launch cost on the host. Not with "
        "--activation-checkpointing.",
    ),
    fused_adamw: bool = typer.Option(
        default_of(TrainConfig, "fused_adamw"),
        "--fused-adamw/--no-fused-adamw",
        help="AdamW's fused kernel: one kernel per update, and no host sync to skip a step with "
        "non-finite gradients.",
    ),
    resume: bool = typer.Option(
        True, "--resume/--no-resume", help="Continue from OUT/checkpoints/last.ckpt if present."
    ),
    allow_new_data: bool = typer.Option(
        False,
        "--allow-new-data",
        help="Let a resumed run continue on another dataset "
        "than it was trained on (refused otherwise); config.json keeps the earlier ones.",
    ),
    quiet: bool = typer.Option(False),
):
    """Masked-language-model pretraining (BERT masking 15%, 80/10/10)."""
    from .config import DEFAULT_RECIPE, preset
    from .train.run import pretrain as run_pretrain

    _out_folder(out)
    if schedule not in ("cosine", "constant", "noam"):
        raise UsageError(f"--schedule must be cosine, constant or noam, not {schedule!r}")
    init_state = None
    if init is not None:
        from .model.checkpoints import load_model

        architecture = {
            "--preset": size is not None,
            "--recipe": recipe is not None,
            "--no-coords": not coords,
            "--coord-mode": coord_mode != CoordMode(_model("coord_mode")),
            "--norm-feature": norm_feature is not None,
            "--gaussian-heads": gaussian_heads is not None,
            "--gaussian-values": gaussian_values is not None,
            "--weight-init": weight_init is not None,
            "--lm-head": lm_head is not None,
            "--plddt-feature": plddt_feature,
            "--condition-on": condition_on is not None,
            "--unfreeze-lm": unfreeze_lm,
        }
        given = [k for k, v in architecture.items() if v]
        if given:
            raise UsageError(
                f"{', '.join(given)} set the architecture, which --init takes from {init}; drop "
                f"{'it' if len(given) == 1 else 'them'}"
            )
        init_model, _ = load_model(init)
        mc = init_model.config.replace(dropout=dropout)
        init_state = init_model.state_dict()
    else:
        explicit = {
            k: v
            for k, v in (
                ("coord_norm_feature", norm_feature),
                ("gaussian_init_heads", gaussian_heads),
                ("gaussian_init_values", gaussian_values),
                ("weight_init", weight_init),
                ("lm_head", lm_head),
            )
            if v is not None
        }
        if unfreeze_lm and condition_on is None:
            raise UsageError("--unfreeze-lm needs --condition-on (the language model to train)")
        # The Gaussian heads of the fast recipe need the
        # token embedding, which conditioning replaces.
        default_recipe = "paper" if condition_on is not None else DEFAULT_RECIPE
        mc = preset(
            size or "small-3m",
            # a sequence-only model takes only --recipe paper's initialisation and head, if given
            recipe=recipe.value if recipe else (default_recipe if coords else None),
            use_coords=coords,
            coord_mode=coord_mode.value,
            plddt_feature=plddt_feature,
            dropout=dropout,
            **explicit,
        )
        if condition_on is not None:
            from .model.lm import conditioned_config

            mc = conditioned_config(mc, condition_on, unfreeze=unfreeze_lm)
    tc = TrainConfig(
        seed=seed,
        crop_length=crop_length,
        crop_mode=crop.value,
        tokens_per_batch=tokens_per_batch,
        lr=lr,
        warmup_steps=warmup_steps,
        schedule=schedule,
        weight_decay=weight_decay,
        grad_clip=grad_clip,
        max_steps=max_steps,
        max_minutes=max_minutes,
        val_every_steps=val_every,
        val_max_chains=val_max_chains,
        checkpoint_every_steps=checkpoint_every,
        precision=precision,
        accelerator=accelerator,
        devices=devices,
        num_nodes=num_nodes,
        strategy=strategy,
        num_workers=workers,
        compile=compile,
        threads=threads,
        accumulate_grad_batches=accumulate,
        activation_checkpointing=activation_checkpointing,
        pack_sequences=pack,
        varlen_attention=varlen,
        cuda_graphs=cuda_graphs,
        fused_adamw=fused_adamw,
        drop_chain_coords=drop_chain_coords,
        drop_span_coords=drop_span_coords,
        init=init,
    )
    summary = run_pretrain(
        data,
        out,
        mc,
        tc,
        resume=resume,
        progress=not quiet,
        extra_meta={"command": _command_line()},
        init_state=init_state,
        allow_new_data=allow_new_data,
    )
    if summary.pop("is_global_zero", True):  # one summary, not one per DDP process
        typer.echo(json.dumps(summary, indent=2))


@app.command()
def evaluate(
    checkpoint: List[str] = typer.Option(
        ...,
        "--checkpoint",
        "-c",
        help="Checkpoint path, run folder or shipped model name; repeat to compare.",
    ),
    data: Path = typer.Option(..., "--data", "-d", help="Prepared dataset folder."),
    split: str = typer.Option(default_of(EvalConfig, "split")),
    json_out: Optional[Path] = typer.Option(
        None,
        "--json",
        help="Write metrics JSON here: one model's at the top level, several as "
        '{"models": {label: metrics}}, with the comparison report beside it (OUT.md, OUT.png).',
    ),
    report: Optional[Path] = typer.Option(
        None, help="Write a Markdown report (and a PNG figure beside it)."
    ),
    seed: int = typer.Option(
        default_of(EvalConfig, "seed"), help="Masking seed; identical masks for every model."
    ),
    max_chains: Optional[int] = typer.Option(None, min=1),
    crop_length: int = typer.Option(
        default_of(EvalConfig, "crop_length"),
        min=8,
        help="Chains longer than this are evaluated on their first N residues (or in windows of N "
        "with --windows).",
    ),
    windows: bool = typer.Option(
        False,
        "--windows",
        help="Evaluate long chains over their whole length in overlapping windows of "
        "--crop-length.",
    ),
    overlap: int = typer.Option(
        default_of(EvalConfig, "overlap"),
        min=0,
        help="With --windows: least overlap between consecutive windows.",
    ),
    masking: str = typer.Option(
        default_of(EvalConfig, "masking"),
        help="mask: all selected residues become <mask>; bert: 80/10/10 as in training.",
    ),
    hide_coords: str = typer.Option(
        default_of(EvalConfig, "hide_coords"),
        help="none; all: no chain gets coordinates (as FASTA); span: one 5-30% "
        "stretch per chain gets none (an unresolved loop put back with --seqres); cut: that "
        "stretch is deleted (a loop the file omits). Same masked residues in each case.",
    ),
    unseen_only: bool = typer.Option(
        False,
        "--unseen-only",
        help="Score only chains that no model given was trained on (by chain id or identical "
        "sequence; see the models' training_chains); without it such chains are counted and "
        "warned about.",
    ),
    device: str = typer.Option(
        "auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps."
    ),
    threads: Optional[int] = _THREADS,
    quiet: bool = typer.Option(False),
):
    """Perplexity and sequence recovery on masked residues of a dataset split."""
    from . import __version__
    from .data.store import PreparedDataset
    from .eval.leakage import chain_listing, seen_in_training, seen_summary
    from .eval.mlm import evaluate_mlm
    from .eval.report import comparison_rows, markdown_report, markdown_table
    from .model.checkpoints import SPAN_SHARE, load_model, missing_coords_warning
    from .model.weights import resolve_checkpoint

    if json_out is not None:
        _out_file(json_out, "--json")
    if report is not None:
        _out_file(report, "--report")
    # the comparison report of several models goes beside --json when --report is not given
    beside = (
        json_out.with_suffix(".md") if report is None and json_out and len(checkpoint) > 1 else None
    )
    md = report or beside
    _distinct_outputs(
        **{
            "--json": json_out,
            "--report": md,
            "the report's figure": None if md is None else md.with_suffix(".png"),
        }
    )
    device = _device(device)
    _torch_threads(threads)
    ds = PreparedDataset(data)
    scored = ds.split_indices(split)[:max_chains]
    if len(scored) == 0:
        raise UsageError(
            f"{data}: split {split!r} is empty; choose another --split "
            f"({', '.join(ds.split_names) or 'it has none'})"
        )
    for ck in checkpoint:  # a misspelt name is said as such, not as a model without a chain list
        resolve_checkpoint(ck)
    # the scored dataset stands in for a run's own dataset moved elsewhere (same fingerprint)
    listings = {ck: chain_listing(ck, [ds]) for ck in checkpoint}
    seen = {ck: seen_in_training(tc, ds, scored) for ck, (tc, _) in listings.items() if tc}
    unlisted = {ck: why for ck, (tc, why) in listings.items() if tc is None and why}
    for ck, why in unlisted.items():
        if not unseen_only:  # (--unseen-only refuses it below)
            typer.echo(f"warning: {ck}: its training chains are not checked ({why})", err=True)
    if unseen_only:
        unknown = [ck for ck in checkpoint if ck not in seen]
        if unknown:
            ck = unknown[0]
            raise OptionError(
                "unseen_only",
                True,
                f"{ck} does not list the chains it was trained on ("
                + (
                    unlisted[ck]
                    if ck in unlisted
                    else "a Hugging Face folder without its table: export it again from the "
                    "run folder it came from"
                    if Path(ck).is_dir()
                    else "an exported file outside its run folder, or in another model's: give "
                    "the run folder it came from"
                )
                + "), or drop --unseen-only",
            )
        part = {ck: s["unknown"] for ck, s in seen.items() if s.get("unknown")}
        if part:
            ck, lacks = next(iter(part.items()))
            raise OptionError(
                "unseen_only",
                True,
                f"{ck} lists only part of the chains it was trained on (not listed: "
                f"{'; '.join(lacks)}): put them back where its config.json says, or drop "
                "--unseen-only",
            )
        skip = sorted({i for s in seen.values() for i in s["seen_indices"]})
        if len(skip) == len(scored):
            raise OptionError(
                "unseen_only",
                True,
                f"every chain of split {split!r} was in a model's training data",
            )
        typer.echo(
            f"--unseen-only: {len(skip)} of the {len(scored)} chains of split {split!r} were in a "
            f"model's training data; scoring the other {len(scored) - len(skip)}",
            err=True,
        )
    results = {}
    for ck in checkpoint:
        if ck in seen and (seen[ck]["seen"] or seen[ck].get("unknown")) and not unseen_only:
            typer.echo(f"warning: {seen_summary(ck, seen[ck], split)}", err=True)
        model, meta = load_model(ck)
        if Path(ck).is_dir() and Path(meta["path"]).name == "last.ckpt":
            # a run folder is read for its best.ckpt; say when the final state stands in for it
            typer.echo(
                f"warning: {ck} has no checkpoints/best.ckpt (it never validated: an empty valid "
                "split, or stopped before the first validation); evaluating checkpoints/last.ckpt",
                err=True,
            )
        warning = missing_coords_warning(
            model,
            meta,
            ds,
            ds.split_indices(split)[:max_chains],
            fraction=1.0 if hide_coords == "all" else None,
            hidden=SPAN_SHARE if hide_coords == "span" else 0.0,
        )
        if (
            warning
        ):  # the model never learnt the missing flag, and most residues come without coordinates
            typer.echo(warning, err=True)
        label = _checkpoint_label(ck)
        while label in results:
            label += "'"
        results[label] = {
            **evaluate_mlm(
                model,
                ds,
                split,
                seed=seed,
                crop_length=crop_length,
                max_chains=max_chains,
                device=device,
                progress=not quiet,
                masking=masking,
                windows=windows,
                overlap=overlap,
                hide_coords=hide_coords,
                skip=skip if unseen_only else (),
            ),
            "checkpoint": meta["path"],
            # which scored chains it was trained on (before --unseen-only left them out); absent
            # where its files do not say
            **({"seen_in_training": _seen_record(seen[ck])} if ck in seen else {}),
        }
    header, rows = comparison_rows(results)
    typer.echo(markdown_table(header, rows))
    command = _command_line()
    payload = results[next(iter(results))] if len(results) == 1 else {"models": results}
    # what produced the numbers (the report's "Data:" and "Command:" lines), the data as
    # pretrain's config.json records it; "split" is one model's own already, not a comparison's
    payload = {
        **payload,
        "split": split,
        "data": {"path": str(data.resolve()), "fingerprint": ds.fingerprint},
        "command": command,
        "coordformer_version": __version__,
    }
    if report is None and json_out and len(results) > 1:
        report = json_out.with_suffix(".md")  # a comparison always gets its summary and figure
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(payload, indent=2))
    if report:
        from .analysis.plots import per_residue_recovery_figure

        fig = report.with_suffix(".png")
        per_residue_recovery_figure(results, fig, title=f"{data.name} / {split}")
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(markdown_report(results, fig.name, f"{data} split {split}", command))
        typer.echo(f"report: {report}")


def _seen_record(seen: dict) -> dict:
    """evaluate --json's ``seen_in_training``: the check's counts and ids (dataset indices are
    internal)."""
    return {k: v for k, v in seen.items() if k != "seen_indices"}


def _torch_threads(threads: int | None) -> None:
    """--threads: torch's CPU threads for this command (``main`` puts the count back after)."""
    if threads:
        import torch

        torch.set_num_threads(threads)


def _device(device: str) -> str:
    """The torch device for --device: "auto" picks CUDA, then Apple MPS, then CPU; an explicit
    device that is not there is a one-line error."""
    import torch

    from .model.encode import auto_device, mps_available

    if device == "auto":
        return auto_device()
    mps = mps_available()
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        parsed = None
    if parsed is None or parsed.type not in ("cpu", "cuda", "mps"):
        hint = " (a GPU is --device cuda)" if device.lower() in ("gpu", "cuda") else ""
        raise UsageError(
            f"--device {device!r} is not a device: use auto, cpu, cuda, cuda:N or mps{hint}"
        )
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(
            f"--device {device} was given but no CUDA GPU is visible; use --device cpu (or auto)"
        )
    if device == "mps" and not mps:
        raise UsageError(
            "--device mps was given but Apple MPS is not available; use --device cpu (or auto)"
        )
    return device


def _checkpoint_label(ck: str) -> str:
    """Run-folder name for run/checkpoints/{last,best}.ckpt,
    file stem for other files, else as given."""
    p = Path(ck)
    if p.is_file():
        if p.stem in ("last", "best") and p.parent.name == "checkpoints":
            return p.parent.parent.name
        return p.stem
    return p.name


@app.command()
def demo(
    out: Path = typer.Option(
        Path("demo_out"), "--out", "-o", help="Folder for the report, figure and JSON."
    ),
    train_minutes: float = typer.Option(
        0.0,
        min=0.0,
        help="Also pretrain both models from scratch on the bundled data for N minutes each.",
    ),
    max_chains: Optional[int] = typer.Option(
        None, min=1, help="Evaluate on at most this many bundled chains."
    ),
    device: str = typer.Option(
        "auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps."
    ),
    threads: Optional[int] = _THREADS,
    quiet: bool = typer.Option(False),
):
    """Evaluate the shipped coords and no-coords models
    on bundled held-out chains; print a table."""
    from .demo import run_demo

    _out_folder(
        out, command="demo", writes=("metrics.json", "report.md", "per_residue_recovery.png")
    )
    device = _device(device)
    _torch_threads(threads)
    run_demo(
        out,
        train_minutes=train_minutes,
        max_chains=max_chains,
        progress=not quiet,
        echo=typer.echo,
        command=_command_line(),
        device=device,
    )


@app.command()
def construct(
    out: Path = typer.Option(Path("construction_out"), "--out", "-o"),
    sigma: float = typer.Option(
        CONSTRUCT_SIGMA, min=1e-3, help="Kernel width in coordinate units."
    ),
    seed: int = typer.Option(SEED),
):
    """Hand-built Gaussian-attention weights: measure
    n, n+1, n+2 head dims and FFN |x|^2 (CSV + PNG)."""
    from .sim.construct import construction_report

    _out_folder(
        out,
        command="construct",
        writes=(
            "config.json",
            "construction.png",
            "construction_attention.csv",
            "construction_ffn.csv",
        ),
    )
    res = construction_report(out, sigma=sigma, seed=seed, command=_command_line())
    for r in res["attention"]:
        typer.echo(
            f"n={r['n']} d_head={r['d_head']} {r['method']:>16}: mean |error| "
            f"{r['mean_abs_error']:.2e}"
        )
    typer.echo(
        f"wrote {out / 'construction.png'}, construction_attention.csv, construction_ffn.csv, "
        "config.json"
    )


@app.command()
def simulate(
    out: Path = typer.Option(
        Path("simulate_out"), "--out", "-o", help="Output folder (re-running it resumes)."
    ),
    quick: bool = typer.Option(
        False, "--quick", help="Shorthand for --preset quick (about 3 minutes on 2 CPU cores)."
    ),
    preset: Optional[str] = typer.Option(
        None,
        help="quick | standard (what docs/RESULTS.md reports, ~35 min on 2 CPU cores) | paper (the "
        f"paper's sizes; GPU). Default: {SIMULATE_PRESET}.",
        show_default=False,
    ),
    study: List[str] = typer.Option(
        [], "--study", help="exponent, headdim, width or augment (repeatable; default: all)."
    ),
    workers: int = typer.Option(
        SIMULATE_WORKERS, min=1, help="Parallel worker processes (one CPU thread each)."
    ),
    device: str = typer.Option(SIMULATE_DEVICE, help="cpu, cuda or auto (CUDA if there is one)."),
    seed: int = typer.Option(SEED, help="Added to every model and data seed."),
    quiet: bool = typer.Option(False),
):
    """Synthetic point clouds: exponent, head-dimension,
    width and augmentation studies (CSV + PNG + summary)."""
    from .sim.studies import PRESETS, STUDIES
    from .sim.studies import simulate as run_simulate

    if quick and preset not in (None, "quick"):
        raise UsageError(f"--quick is --preset quick: give one of --quick and --preset {preset}")
    _out_folder(out)
    name = "quick" if quick else preset or SIMULATE_PRESET
    if name not in PRESETS:
        raise UsageError(f"unknown --preset {name!r}; choose one of {', '.join(PRESETS)}")
    bad = [s for s in study if s not in STUDIES]
    if bad:
        raise UsageError(f"unknown --study {bad[0]!r}; choose from {', '.join(STUDIES)}")
    device = _device(device)
    summary = run_simulate(
        out,
        preset=name,
        studies=tuple(study) or STUDIES,
        workers=workers,
        device=device,
        seed=seed,
        echo=typer.echo,
        progress=not quiet,
    )
    for line in summary:
        typer.echo(
            f"{line['study']}: {line['finding']} [paper: {line['paper']}; reproduced: "
            f"{line['reproduced']}]"
        )
    typer.echo(f"wrote {out / 'summary.md'} and a CSV + PNG per study")


@app.command("analyze-attention")
def analyze_attention(
    checkpoint: List[str] = typer.Option(
        ...,
        "--checkpoint",
        "-c",
        help="Checkpoint, exported model or shipped name; give two to compare (e.g. coords, then "
        "no-coords).",
    ),
    data: Path = typer.Option(
        ..., "--data", "-d", help="Prepared dataset folder (coordformer prepare)."
    ),
    out: Path = typer.Option(Path("attention_out"), "--out", "-o"),
    split: str = typer.Option(default_of(AttentionAnalysisConfig, "split")),
    max_chains: int = typer.Option(
        default_of(AttentionAnalysisConfig, "max_chains"),
        min=1,
        help="Analyse at most this many chains of the split.",
    ),
    max_distance: float = typer.Option(
        default_of(AttentionAnalysisConfig, "max_distance"),
        min=2.0,
        help="Distance cut-off (Angstrom).",
    ),
    bin_width: float = typer.Option(
        default_of(AttentionAnalysisConfig, "bin_width"),
        min=0.05,
        help="Distance bin width (Angstrom).",
    ),
    max_separation: int = typer.Option(
        default_of(AttentionAnalysisConfig, "max_separation"),
        min=1,
        help="Sequence separations up to +/- this many residues.",
    ),
    crop_length: int = typer.Option(
        default_of(AttentionAnalysisConfig, "crop_length"),
        min=2,
        help="Use the first N residues of each chain.",
    ),
    tokens_per_batch: int = typer.Option(
        default_of(AttentionAnalysisConfig, "tokens_per_batch"),
        min=2,
        help="Bounds memory: attention maps are [H, L, L] per chain.",
    ),
    ablations: bool = typer.Option(
        True,
        "--ablations/--no-ablations",
        help="Also zero the coordinate input and the positional encoding.",
    ),
    device: str = typer.Option(
        "auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps."
    ),
    threads: Optional[int] = _THREADS,
    quiet: bool = typer.Option(False),
):
    """Attention vs 3D distance and sequence separation per
    layer and head, Gaussian fits, ablations, report."""
    from .analysis.attention import ABLATIONS
    from .analysis.attention import analyze_attention as run

    _out_folder(out)
    device = _device(device)
    _torch_threads(threads)
    cfg = AttentionAnalysisConfig(
        split=split,
        max_chains=max_chains,
        max_distance=max_distance,
        bin_width=bin_width,
        max_separation=max_separation,
        crop_length=crop_length,
        tokens_per_batch=max(tokens_per_batch, crop_length),
    )
    if not data.is_dir():
        raise UsageError(f"--data {data}: not a folder; make one with `coordformer prepare`")
    res = run(
        checkpoint,
        str(data),
        str(out),
        cfg,
        ablations=tuple(ABLATIONS) if ablations else ("none",),
        device=device,
        progress=not quiet,
        echo=typer.echo,
        command=_command_line(),
    )
    for label, hs in res["heads"].items():
        local = [
            f"L{h['layer']}H{h['head']} ({h['sigma_3d_only']:.1f} A)"
            for h in hs
            if h.get("local_3d")
        ]
        typer.echo(
            f"{label}: heads not classified (3D-local needs the no-positions ablation, which "
            "--no-ablations skips)"
            if "no-positions" not in res["ablations"]
            else f"{label}: {len(local)} 3D-local heads: " + ", ".join(local)
            if local
            else f"{label}: no 3D-local heads"
        )
    typer.echo(f"wrote {out / 'report.md'}, fits.csv, heads.csv, binned.csv and figures")


@app.command()
def embed(
    inputs: List[str] = typer.Argument(
        ...,
        help="PDB/mmCIF files, folders, chain_set JSONL or FASTA files, or one prepared dataset "
        "folder.",
    ),
    checkpoint: str = typer.Option(
        ..., "--checkpoint", "-c", help="Checkpoint, exported model or shipped name."
    ),
    out: Path = typer.Option(
        ..., "--out", "-o", help="Output file: .h5 (HDF5, streamed) or .npz (mean-pooled only)."
    ),
    layer: Optional[int] = typer.Option(
        None,
        help="Layer whose states to use (0 = embeddings); default: final, after the last "
        "LayerNorm.",
    ),
    per_residue: bool = typer.Option(
        False, "--per-residue", help="Also store per-residue embeddings (HDF5 only, float16)."
    ),
    window: Optional[int] = typer.Option(
        None,
        min=8,
        help="Residues per model pass (default: 1024 or the model's max_len if smaller); longer "
        "chains are embedded in overlapping windows stitched back to full length.",
    ),
    overlap: int = typer.Option(
        default_of(EmbedConfig, "overlap"),
        min=0,
        help="Least overlap between consecutive windows; each residue is taken from the window it "
        "is most central in.",
    ),
    max_length: Optional[int] = typer.Option(
        None,
        min=1,
        help="Embed only the first N residues of longer chains (default: whole chains).",
    ),
    tokens_per_batch: int = typer.Option(default_of(EmbedConfig, "tokens_per_batch"), min=1),
    split: Optional[str] = typer.Option(None, help="For a prepared dataset: embed one split only."),
    no_coords: bool = typer.Option(
        False, "--no-coords", help="Withhold coordinates (sequence only) from a coordinate model."
    ),
    device: str = typer.Option(
        "auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps."
    ),
    threads: Optional[int] = _THREADS,
    workers: int = typer.Option(
        1, min=0, help="Processes for reading structure files (0 or 1: this process)."
    ),
    plddt_min: Optional[float] = typer.Option(None, min=0.0, max=100.0, help=_PLDDT_HELP),
    chains: Optional[str] = typer.Option(None, help=_CHAINS_HELP),
    complexes: bool = typer.Option(
        False,
        "--complexes",
        help="Embed the chains of each file together (one frame, a position gap "
        "between chains); adds one mean-pooled row per complex.",
    ),
    chain_gap: int = typer.Option(
        default_of(EmbedConfig, "chain_gap"),
        min=0,
        help="With --complexes: residue positions between consecutive chains.",
    ),
    seqres: SeqresMode = typer.Option(SeqresMode.off, help=_SEQRES_HELP),
    quiet: bool = typer.Option(False),
):
    """Per-chain mean-pooled (and optionally per-residue) embeddings keyed by chain id."""
    from .embed import embed as run

    _out_file(out)
    device = _device(device)
    _torch_threads(threads)
    cfg = EmbedConfig(
        layer=layer,
        per_residue=per_residue,
        window=window,
        overlap=overlap,
        max_length=max_length,
        tokens_per_batch=tokens_per_batch,
        use_coords=False if no_coords else None,
        split=split,
        plddt_min=plddt_min,
        chains=_chain_list(chains),
        complexes=complexes,
        chain_gap=chain_gap,
        seqres=seqres.value,
    )
    res = run(
        checkpoint,
        inputs,
        out,
        cfg,
        device=device,
        workers=workers,
        progress=not quiet,
        echo=typer.echo,
        command=_command_line(),
    )
    notes = (
        (
            [f"{res['windowed']} longer than {res['window']} in overlapping windows"]
            if res["windowed"]
            else []
        )
        + ([f"{res['cropped']} cropped to {max_length}"] if res["cropped"] else [])
        + (
            [f"{n} inputs skipped (unreadable, or no chain to keep), see {out}.skipped.tsv"]
            if (n := res.get("prepare", {}).get("inputs_skipped"))
            else []
        )
        + (
            [f"{n} chains not in --chains {','.join(cfg.chains)}, see {out}.skipped.tsv"]
            if (n := res["not_selected"])
            else []
        )
    )
    if complexes:
        notes.append(
            f"{res['complexes']} complexes"
            + (
                f", {res['complexes_skipped']} too long, skipped (see {out}.skipped.tsv)"
                if res["complexes_skipped"]
                else ""
            )
        )
    typer.echo(
        f"wrote {res['chains']} chains x {res['dim']} to {out}"
        + (f" ({'; '.join(notes)})" if notes else "")
    )


class ScoreMode(str, Enum):
    exact = "exact"
    fast = "fast"


class MultiMode(str, Enum):
    additive = "additive"
    joint = "joint"


class Numbering(str, Enum):
    auto = "auto"
    author = "author"
    index = "index"


@app.command()
def score(
    inputs: List[str] = typer.Argument(
        ...,
        help="PDB/mmCIF files, folders, chain_set JSONL or FASTA files, or one prepared dataset "
        "folder.",
    ),
    checkpoint: str = typer.Option(
        ..., "--checkpoint", "-c", help="Checkpoint, exported model or shipped name."
    ),
    out: Path = typer.Option(
        ..., "--out", "-o", help="Output table: tab-separated, or comma-separated for a .csv name."
    ),
    mutations: Optional[Path] = typer.Option(
        None,
        "--mutations",
        help="CSV (or .tsv) of mutants, e.g. a ProteinGym DMS file; "
        "rows that cannot be scored are skipped and listed in OUT.skipped.tsv.",
    ),
    mutant: List[str] = typer.Option(
        [],
        "--mutant",
        "-m",
        help="A mutant to score (repeatable): A23G, A23G:K45R, A:A23G. A bad one is an error.",
    ),
    mutant_column: str = typer.Option("mutant", help="Column of --mutations holding the mutants."),
    mode: ScoreMode = typer.Option(
        ScoreMode.exact,
        help="exact: one masked position per forward pass; fast: several per "
        "pass, each pair at least --min-sep residues and --min-dist A (CA-CA) apart.",
    ),
    min_sep: int = typer.Option(
        default_of(ScoreConfig, "min_sep"),
        min=1,
        help="fast: least sequence separation of positions masked together.",
    ),
    min_dist: float = typer.Option(
        default_of(ScoreConfig, "min_dist"),
        min=0.0,
        help="fast: least CA-CA distance (A) of positions masked together; 0 = off.",
    ),
    rotations: int = typer.Option(
        default_of(ScoreConfig, "rotations"),
        min=1,
        help="Frames per pass, probabilities averaged: the canonical frame of the CAs, then fixed "
        "rotations of it (the model is not rotation-invariant); K times the passes.",
    ),
    multi: MultiMode = typer.Option(
        MultiMode.additive,
        help="Multi-mutants: additive = sum of single-position masked "
        "marginals; joint = the mutated positions of a chain masked together in one pass.",
    ),
    numbering: Numbering = typer.Option(
        Numbering.auto,
        help="Mutant positions: author = residue numbers of the structure "
        "file (insertion code after the number); index = 1-based index in the chain's "
        "sequence as read (ProteinGym); auto = author where the input has them, else index.",
    ),
    offset: int = typer.Option(
        0,
        help="With --numbering index: mutant position p is residue p - OFFSET of the chain (a "
        "structure covering positions OFFSET+1... of the sequence the mutants are numbered on).",
    ),
    chain: Optional[str] = typer.Option(
        None,
        "--chain",
        help="Chain of mutants written without one (author id A or full id "
        "1ABC.A); needed when several chains are scored.",
    ),
    chains: Optional[str] = typer.Option(None, help=_CHAINS_HELP),
    per_aa: bool = typer.Option(
        False, "--per-aa", help="Per-residue table: also log p of each of the 20 amino acids."
    ),
    plot: Optional[Path] = typer.Option(
        None, help="Write a per-position PNG (log p(native) and entropy, or substitution scores)."
    ),
    no_coords: bool = typer.Option(
        False, "--no-coords", help="Withhold coordinates (sequence only) from a coordinate model."
    ),
    plddt_min: Optional[float] = typer.Option(None, min=0.0, max=100.0, help=_PLDDT_HELP),
    seqres: SeqresMode = typer.Option(SeqresMode.off, help=_SEQRES_HELP),
    split: Optional[str] = typer.Option(None, help="For a prepared dataset: score one split only."),
    window: Optional[int] = typer.Option(
        None,
        min=8,
        help="Residues per model pass (default: 1024 or the model's max_len); "
        "longer chains are scored in overlapping windows.",
    ),
    overlap: int = typer.Option(
        default_of(ScoreConfig, "overlap"),
        min=0,
        help="Least overlap between windows; each position is scored where it is most central.",
    ),
    tokens_per_batch: int = typer.Option(default_of(ScoreConfig, "tokens_per_batch"), min=1),
    device: str = typer.Option(
        "auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps."
    ),
    threads: Optional[int] = _THREADS,
    quiet: bool = typer.Option(False),
):
    """Log-likelihoods of the native sequence given its structure (masked marginals,
    pseudo-perplexity), or mutant scores."""
    from .score.run import run_score

    _out_file(out)
    if plot is not None:
        _figure_file(plot, "--plot")
    _distinct_outputs(
        **{
            "--out": out,
            "--plot": plot,
            "OUT.json": out.with_name(out.name + ".json"),
            "OUT.chains.tsv": out.with_name(out.name + ".chains.tsv"),
            "OUT.skipped.tsv": out.with_name(out.name + ".skipped.tsv"),
        }
    )
    device = _device(device)
    _torch_threads(threads)
    cfg = ScoreConfig(
        mode=mode.value,
        min_sep=min_sep,
        min_dist=min_dist,
        window=window,
        overlap=overlap,
        tokens_per_batch=tokens_per_batch,
        use_coords=False if no_coords else None,
        rotations=rotations,
    )
    res = run_score(
        checkpoint,
        inputs,
        out,
        cfg,
        mutations=mutations,
        mutants=mutant,
        mutant_column=mutant_column,
        multi=multi.value,
        numbering=numbering.value,
        offset=offset,
        chain=chain,
        chains=_chain_list(chains),
        plddt_min=plddt_min,
        seqres=seqres.value,
        split=split,
        per_aa=per_aa,
        plot=plot,
        device=device,
        progress=not quiet,
        echo=typer.echo,
        warn=lambda m: typer.echo(m, err=True),
        command=_command_line(),
    )
    extra = "".join(
        f"; {n} {what} (see {out}.skipped.tsv)"
        for n, what in (
            (res["inputs_skipped"], "inputs skipped (unreadable or duplicate)"),
            (res["chains_not_selected"], f"chains not in --chains {chains}"),
        )
        if n
    )
    if "residues" in res:
        for cid, n, ppl in res["per_chain"][:10]:
            typer.echo(f"{cid}\t{n} residues\tpseudo-perplexity {ppl:.3f}")
        if len(res["per_chain"]) > 10:
            typer.echo(f"... {len(res['per_chain']) - 10} more chains in {res['chains_file']}")
        ppl = res["pseudo_perplexity"]
        typer.echo(
            f"wrote {res['residues']} residues of {res['chains']} chains to {out} ({res['mode']}, "
            f"{res['passes']} passes; overall pseudo-perplexity {ppl:.3f})" + extra
            if ppl is not None
            else f"wrote {out}" + extra
        )
    else:
        line = (
            f"scored {res['scored']} of {res['mutants']} mutants ({res['multi']}, {res['mode']}, "
            f"{res['passes']} passes) to {out}"
        )
        if res["skipped"]:
            row, m, why = res["first_skipped"]
            line += (
                f"; skipped {res['skipped']} (see {out}.skipped.tsv; first: row {row + 1} {m}: "
                f"{why})"
            )
        typer.echo(line + extra)
        if res.get("spearman_dms") is not None:
            typer.echo(
                f"Spearman rho with DMS_score: {res['spearman_dms']:.3f} (n = {res['spearman_n']})"
            )
    if res.get("plot"):
        typer.echo(f"plot: {res['plot']}")


class FunctionTask(str, Enum):
    ec = "ec"
    go_mf = "go-mf"
    go_bp = "go-bp"
    go_cc = "go-cc"


class FunctionHead(str, Enum):
    linear = "linear"
    mlp = "mlp"


@app.command()
def finetune(
    checkpoint: str = typer.Option(
        ..., "--checkpoint", "-c", help="Pretrained checkpoint, exported model or shipped name."
    ),
    task: FunctionTask = typer.Option(FunctionTask.ec, help="ec, go-mf, go-bp or go-cc."),
    labels: Path = typer.Option(
        ..., help="Folder with the DeepFRI nrPDB annot/train/valid/test files."
    ),
    data: Path = typer.Option(
        ...,
        "--data",
        "-d",
        help="Prepared dataset holding the structures (chain ids as in the label files).",
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Run folder."),
    head: FunctionHead = typer.Option(
        FunctionHead.mlp,
        help="mlp: residual MLP on frozen pooled embeddings; linear: fine-tune the whole encoder "
        "with a linear head.",
    ),
    random_init: bool = typer.Option(
        False,
        "--random-init",
        help="Use the checkpoint's architecture with fresh weights (no-pretraining baseline).",
    ),
    no_coords: bool = typer.Option(
        False, "--no-coords", help="Withhold coordinates from a coordinate model."
    ),
    max_epochs: int = typer.Option(default_of(FinetuneConfig, "max_epochs"), min=1),
    patience: int = typer.Option(
        default_of(FinetuneConfig, "patience"),
        min=1,
        help="Stop after this many epochs without a better validation Fmax.",
    ),
    lr: float = typer.Option(
        default_of(FinetuneConfig, "lr"),
        help="Head learning rate (the encoder gets lr x --encoder-lr-scale).",
    ),
    encoder_lr_scale: float = typer.Option(default_of(FinetuneConfig, "encoder_lr_scale")),
    batch_size: int = typer.Option(
        default_of(FinetuneConfig, "batch_size"), min=1, help="mlp head: chains per batch."
    ),
    tokens_per_batch: int = typer.Option(
        default_of(FinetuneConfig, "tokens_per_batch"),
        min=1,
        help="linear head: padded tokens per batch.",
    ),
    max_length: int = typer.Option(default_of(FinetuneConfig, "max_length"), min=1),
    probe_epochs: int = typer.Option(
        default_of(FinetuneConfig, "probe_epochs"),
        min=0,
        help="linear head: first fit the linear layer on frozen embeddings for up to this many "
        "epochs (early-stopped), then fine-tune the encoder (LP-FT); 0 = start from a fresh head.",
    ),
    probe_patience: int = typer.Option(
        default_of(FinetuneConfig, "probe_patience"),
        min=1,
        help="linear head: early-stopping patience of the probe stage.",
    ),
    prior_bias: bool = typer.Option(
        True,
        "--prior-bias/--zero-bias",
        help="Start the output bias at each class's training log-odds (default) or at 0.",
    ),
    seed: int = typer.Option(default_of(FinetuneConfig, "seed")),
    device: str = typer.Option(
        "auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps."
    ),
    threads: Optional[int] = _THREADS,
    quiet: bool = typer.Option(False),
):
    """Train an EC/GO function head on a pretrained (or randomly initialised) encoder; early
    stopping on validation Fmax."""
    from .function.finetune import finetune as run

    _out_folder(out)
    device = _device(device)
    _torch_threads(threads)
    cfg = FinetuneConfig(
        task=task.value,
        head=head.value,
        random_init=random_init,
        use_coords=False if no_coords else None,
        max_epochs=max_epochs,
        patience=patience,
        lr=lr,
        encoder_lr_scale=encoder_lr_scale,
        batch_size=batch_size,
        tokens_per_batch=tokens_per_batch,
        max_length=max_length,
        seed=seed,
        prior_bias=prior_bias,
        probe_epochs=probe_epochs,
        probe_patience=probe_patience,
    )
    m = run(
        checkpoint,
        labels,
        data,
        out,
        cfg,
        device=device,
        progress=not quiet,
        echo=typer.echo,
        command=_command_line(),
    )
    t = m["test"]
    typer.echo(
        f"test: Fmax {t['fmax']:.3f}, micro-AUPR {t['micro_aupr']:.3f}, flattened max-F1 "
        f"{t['flattened_max_f1']:.3f} ({t['n']} chains); wrote {out / 'metrics.json'}"
    )


@app.command("evaluate-function")
def evaluate_function(
    runs: List[Path] = typer.Argument(
        ..., help="finetune run folders (or predictions_*.npz files)."
    ),
    split: str = typer.Option("test", help="valid or test predictions of a run folder."),
    identity: Optional[Path] = typer.Option(
        None, help="DeepFRI *_test.csv for a breakdown by sequence identity to train."
    ),
    report: Optional[Path] = typer.Option(None, help="Also write a Markdown table here."),
    bootstrap: int = typer.Option(
        0, min=0, help="Resamples for a 95% interval of each run's Fmax minus the first run's."
    ),
    seed: int = typer.Option(SEED),
):
    """Fmax, micro-AUPR and flattened max-F1 of saved
    predictions, side by side (and by identity bin)."""
    from .function.finetune import evaluate_predictions

    if report is not None:
        _out_file(report, "--report")  # before the work, not after the table is printed
    text = evaluate_predictions(
        runs, split=split, identity=identity, bootstrap=bootstrap, seed=seed
    )
    typer.echo(text)
    if report:
        report.parent.mkdir(parents=True, exist_ok=True)  # as the other commands' outputs
        report.write_text(text + "\n")


@app.command()
def models(
    chains: Optional[str] = typer.Option(
        None,
        "--chains",
        metavar="NAME",
        help="Print the chains shipped model NAME saw (its train and valid splits) as a table: "
        "id, split, SHA-256 of the sequence (first 16 hex digits).",
    ),
):
    """List the shipped pretrained models."""
    from .model.checkpoints import model_card, shipped_models

    ship = shipped_models()
    if chains is not None:
        import gzip

        from .model.weights import pretraining_data

        if chains not in ship:
            raise OptionError(
                "chains", chains, f"not a shipped model (shipped: {', '.join(ship) or 'none'})"
            )
        table = (pretraining_data(chains) or {}).get("chains")
        if table is None or not table.is_file():
            raise OptionError("chains", chains, "its card lists no training chains")
        typer.echo(gzip.decompress(table.read_bytes()).decode("ascii"), nl=False)
        return
    if not ship:
        typer.echo("no shipped models installed")
    for name, path in ship.items():
        card = model_card(name)
        # a sharded model's size is that of all its files (the card lists them)
        files = [path.parent / f for f in card.get("files", [])] or [path]
        size = sum(f.stat().st_size for f in files if f.exists())
        parts = f" in {len(files)} files" if len(files) > 1 else ""
        typer.echo(f"{name}\t{size / 1e6:.1f} MB{parts}\t{card.get('description', '')}")


class ExportFormat(str, Enum):
    pt = "pt"
    hf = "hf"


def _provenance(checkpoint: str) -> dict:
    """Description and training command of a shipped
    model or run folder, for a shared model card."""
    from .model.checkpoints import model_card, shipped_models

    if checkpoint in shipped_models() and not Path(checkpoint).exists():
        card = model_card(checkpoint)
    else:
        try:
            card = json.loads((Path(checkpoint) / "config.json").read_text())
        except (OSError, ValueError):
            card = {}
    return {
        k: card[k]
        for k in ("description", "command", "trained_on")
        if isinstance(card, dict) and k in card
    }


@app.command()
def export(
    checkpoint: str = typer.Option(..., "--checkpoint", "-c"),
    out: Path = typer.Option(
        ...,
        "--out",
        "-o",
        help="Model file (.pt) to write, or folder for --format hf; an earlier export there is "
        "replaced.",
    ),
    half: bool = typer.Option(True, "--half/--full", help="Store float16 weights (half the size)."),
    int8: bool = typer.Option(
        False,
        "--int8",
        help="Store the large matrices as int8 with a scale per row, the rest "
        "float16 (a quarter of float32; check its cost with `coordformer evaluate`). pt only.",
    ),
    fmt: ExportFormat = typer.Option(
        ExportFormat.pt,
        "--format",
        help="pt: one torch file; hf: Hugging Face-style "
        "folder (config.json + model.safetensors + README.md) for sharing on a model hub.",
    ),
    max_file_mb: Optional[float] = typer.Option(
        None,
        "--max-file-mb",
        help="No file over this many MB: the weights "
        "that do not fit go to OUT.shard1, OUT.shard2, ... beside it (keep them "
        "together; load OUT). pt only.",
    ),
):
    """Write an inference-only model file (or Hub-style folder) from a training checkpoint."""
    from .model.checkpoints import export_model, load_model

    if max_file_mb is not None and not (math.isfinite(max_file_mb) and max_file_mb > 1):
        raise UsageError(f"--max-file-mb must be a number above 1 (got {max_file_mb})")
    if (int8 or max_file_mb) and fmt == ExportFormat.hf:
        raise UsageError(
            "--int8 and --max-file-mb write .pt model files; use --format pt, or --half for a "
            "Hub-style folder"
        )
    if fmt == ExportFormat.hf:
        from .model.hub import is_pretrained_folder

        _out_folder(out)
        # An earlier export is replaced, as embed and score replace their files; any other folder
        # with files in it (a run folder has its own config.json) is not written into.
        if out.is_dir() and any(out.iterdir()) and not is_pretrained_folder(out):
            raise UsageError(
                f"--out {out} holds other files; give a new folder for --format hf (or an "
                "earlier export to replace)"
            )
    else:
        _out_file(out, hint=" (--format hf writes a folder)")
    model, meta = load_model(checkpoint)
    # a record read from a Hugging Face folder names a table beside it, which a copy elsewhere
    # lacks: only _export_training_chains (hf) writes one, from what the source's files say
    meta = {k: v for k, v in meta.items() if k != "pretraining_data"}
    if fmt == ExportFormat.hf:
        from .model.hub import WEIGHTS_NAME, save_pretrained

        # torch_dtype: what older versions called the stored dtype
        dropped = ("format", "weights_dtype", "torch_dtype")
        meta = {
            **_provenance(checkpoint),
            **{k: v for k, v in meta.items() if k not in dropped},
        }
        listed, why_not = _export_training_chains(checkpoint, out)
        if listed:  # the chains the model saw travel with it (evaluate checks scored chains)
            meta["pretraining_data"] = listed
        if why_not:
            typer.echo(f"{checkpoint}: no table of training chains written ({why_not})", err=True)
        save_pretrained(model, out, meta=meta, half=half)
        typer.echo(
            f"wrote {out}/ (config.json, {WEIGHTS_NAME} "
            f"{(out / WEIGHTS_NAME).stat().st_size / 1e6:.1f} MB, README.md"
            # the table is one of the files to upload: evaluate's check needs it beside them
            + (f", {listed['training_chains']}" if listed else "")
            + ")"
        )
        return
    try:
        export_model(
            model,
            out,
            meta=meta,
            half=half,
            int8=int8,
            max_file_bytes=int(max_file_mb * 1e6) if max_file_mb else None,
        )
    except OptionError as e:
        if e.option != "max_file_bytes":
            raise
        raise UsageError(f"--max-file-mb {max_file_mb}: {e.reason}") from e
    shards = sorted(out.parent.glob(f"{out.name}.shard*"))
    typer.echo(
        f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)"
        + (
            f" and {len(shards)} shard(s) beside it "
            f"({sum(f.stat().st_size for f in shards) / 1e6:.1f} MB)"
            if shards
            else ""
        )
    )


def _export_training_chains(checkpoint: str, folder: Path) -> tuple[dict | None, str | None]:
    """Write the table of the chains ``checkpoint`` saw into an export folder (replacing an
    earlier export's). Returns (the record for its config: {"config": the pretraining dataset's
    prepare config, "training_chains": the file's name}, None) or, when no table is written, (None,
    why: a list known only in part, or one the files promise that cannot be read; None when the
    files list none at all)."""
    from .eval.leakage import chain_listing, write_training_chains
    from .model.weights import pretraining_data

    chains, why = chain_listing(checkpoint)
    for old in folder.glob("chains-*.tsv.gz") if folder.is_dir() else ():
        old.unlink()
    if chains is None:
        return None, why
    if not chains.complete:
        # a partial table would read as "unseen" for chains the model did see
        return None, f"the list is incomplete: {'; '.join(chains.unknown)} cannot be read"
    folder.mkdir(parents=True, exist_ok=True)
    name = write_training_chains(chains.rows, folder)["file"]
    return {
        "config": (pretraining_data(checkpoint) or {}).get("config") or {},
        "training_chains": name,
    }, None


#: Library parameter names whose flag is not the name
#: with dashes (or that no command's parameter has).
_API_FLAGS = {
    "out_dir": "--out",
    "data_dir": "--data",
    "labels_dir": "--labels",
    "crop_mode": "--crop",
    "accumulate_grad_batches": "--accumulate",
    "val_every_steps": "--val-every",
    "checkpoint_every_steps": "--checkpoint-every",
    "num_workers": "--workers",
    "mutants": "--mutant",
    "default_chain": "--chain",
    "split_identity": "--identity",
    "exclude_files": "--exclude",
    "gaussian_init_heads": "--gaussian-heads",
    "coord_norm_feature": "--norm-feature",
    "gaussian_init_values": "--gaussian-values",
    "pack_sequences": "--pack",
    "varlen_attention": "--varlen",
    "cuda_graphs": "--cuda-graphs",
    "use_coords": "--coords",  # `use_coords=False` reads --no-coords
}


def _flags() -> dict[str, str]:
    """Python name -> long flag of every command's options, and the library names of _API_FLAGS:
    what an error's :meth:`~coordformer.errors.CoordformerError.flag_message` writes parameters
    as."""
    import typer.main

    flags: dict[str, str] = {}
    for command in typer.main.get_command(app).commands.values():
        for param in command.params:
            long = [o for o in getattr(param, "opts", ()) if o.startswith("--")]
            if long and param.name:
                flags.setdefault(param.name, long[0])
    return {**flags, **_API_FLAGS}


def _resume_hint(args: list[str], e: TrainingInterrupted) -> str:
    """The command that continues an interrupted `pretrain` / `finetune`: the same one (without
    --no-resume, which would refuse the run folder)."""
    command = next((a for a in args if not a.startswith("-")), "")
    if command not in ("pretrain", "finetune"):
        return ""
    line = "coordformer " + " ".join(shlex.quote(a) for a in args if a != "--no-resume")
    return f"; {'resume' if e.resumable else 'start again'} with: {line}"


def main(argv: list[str] | None = None) -> int:
    """Console entry point: one-line errors for
    user-fixable problems, tracebacks only with --debug."""
    global _ARGS
    args = sys.argv[1:] if argv is None else argv
    _ARGS = [str(a) for a in args]
    debug = "--debug" in args
    if debug:  # a global option, accepted anywhere on the line (people add it at the end)
        args = ["--debug", *(a for a in args if a != "--debug")]
    previous_sigint = (
        interrupts.install()
    )  # Ctrl-C while importing torch & co: one line, no traceback
    # a command's --threads holds for that command only (tests and notebooks call main in-process)
    threads_before = sys.modules["torch"].get_num_threads() if "torch" in sys.modules else None
    try:
        rc = app(args=args, prog_name="coordformer", standalone_mode=False)
        if rc == 130:  # typer turns a KeyboardInterrupt into exit status 130, silently
            typer.echo(interrupts.MESSAGE, err=True)
        if isinstance(rc, int) and not isinstance(
            rc, bool
        ):  # click hands back typer.Exit's code here
            return rc
    except (
        TrainingInterrupted
    ) as e:  # pretrain / finetune saved what there was to save, and say where
        if e.report:
            typer.echo(f"{e}{_resume_hint(args, e)}", err=True)
        return e.exit_code
    except SystemExit as e:
        return int(e.code or 0)
    except KeyboardInterrupt:
        typer.echo(interrupts.MESSAGE, err=True)
        return 130
    except Exception as e:  # noqa: BLE001 - the one place that turns errors into messages
        # Typer vendors click privately; recognise its exceptions by shape, not by import.
        name = type(e).__name__
        if name == "Exit":
            return int(getattr(e, "exit_code", 0))
        if name == "Abort":
            cause = e.__context__
            if isinstance(cause, EOFError):
                # click turns any EOFError (np.load of an empty file, among others) into a bare
                # Abort, which said nothing at all
                typer.echo(
                    f"error: a file ended before its data did ({cause or 'EOFError'}): an empty "
                    "or truncated file; run with --debug for the traceback",
                    err=True,
                )
                return 2
            return 1
        if name == "NoArgsIsHelpError":  # a bare `coordformer`: its message is the whole help
            typer.echo(e.format_message())
            return int(getattr(e, "exit_code", 2))
        if hasattr(e, "format_message") and hasattr(
            e, "exit_code"
        ):  # click usage errors, as one line
            ctx = getattr(e, "ctx", None)
            hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
            # typer words a bad choice "Value error, 'x' is not one of ..."; the prefix says nothing
            first = e.format_message().strip().splitlines()[0].replace(": Value error, ", ": ")
            typer.echo(f"error: {first}{hint}", err=True)
            return int(e.exit_code)
        if debug:
            raise
        known = isinstance(e, (CoordformerError, FileNotFoundError, PermissionError))
        if isinstance(
            e, CoordformerError
        ):  # the library names parameters as Python does; here, as flags
            msg = e.flag_message(_flags())
        else:
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        typer.echo(
            f"error: {msg}"
            if known
            else f"error: {type(e).__name__}: {msg} (run with --debug for the traceback)",
            err=True,
        )
        return 2
    finally:
        interrupts.restore(previous_sigint)
        if threads_before is not None:
            sys.modules["torch"].set_num_threads(threads_before)
        _ARGS = None
    return 0


if __name__ == "__main__":
    sys.exit(main())
