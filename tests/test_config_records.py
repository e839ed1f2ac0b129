"""Each setting defined once (issue 17): BatchConfig inside TrainConfig, batching and the resume
check; saved flat TrainConfig dicts still load; the CLI's defaults are the records'; one precision
rule; library errors carry data (Python names) and the CLI phrases them as flags."""

import dataclasses
import json

import pytest
import torch
import typer.main

from coordformer.cli import _flags, app, main
from coordformer.config import (
    AttentionAnalysisConfig,
    BatchConfig,
    EmbedConfig,
    EvalConfig,
    FinetuneConfig,
    ModelConfig,
    PrepareConfig,
    Record,
    ScoreConfig,
    TrainConfig,
    default_of,
    field_names,
)
from coordformer.data.batching import BatchSettings
from coordformer.errors import (
    ConfigError,
    OptionError,
    SequenceTooLong,
    UsageError,
    flag_of,
    with_flags,
)
from coordformer.train import run as train_run
from coordformer.train.lifecycle import resolve_precision

#: TrainConfig.to_dict() as the runs before BatchConfig stored it (checkpoints, config.json,
#: summary.json).
OLD_FLAT = {
    "seed": 3,
    "mask_prob": 0.15,
    "mask_token_frac": 0.8,
    "random_token_frac": 0.1,
    "crop_length": 64,
    "crop_mode": "spatial",
    "tokens_per_batch": 1024,
    "lr": 0.001,
    "weight_decay": 0.01,
    "betas": [0.9, 0.98],
    "warmup_steps": 2,
    "schedule": "cosine",
    "max_steps": 7,
    "max_minutes": None,
    "grad_clip": 1.0,
    "rotate": True,
    "val_every_steps": 2,
    "val_max_chains": 512,
    "precision": "auto",
    "accelerator": "auto",
    "devices": "auto",
    "num_nodes": 1,
    "strategy": "auto",
    "num_workers": 0,
    "compile": False,
    "activation_checkpointing": False,
    "drop_chain_coords": 0.1,
    "drop_span_coords": 0.0,
    "log_every_steps": 25,
    "threads": None,
    "checkpoint_every_steps": 500,
    "accumulate_grad_batches": 1,
    "init": None,
}


def test_train_config_is_batch_config_plus_the_rest_and_stays_flat_both_ways():
    tc = TrainConfig.from_dict(OLD_FLAT)  # an old run's record
    assert tc.batch == BatchConfig(
        crop_length=64, crop_mode="spatial", tokens_per_batch=1024, drop_chain_coords=0.1
    )
    assert isinstance(tc, BatchConfig) and tc.seed == 3 and tc.betas == (0.9, 0.98)
    d = tc.to_dict()
    # fields added since that run take their defaults
    added = {
        "pack_sequences": False,
        "fused_adamw": True,
        "logits_at_targets": True,
        "varlen_attention": False,
        "cuda_graphs": False,
    }
    assert set(d) == set(OLD_FLAT) | set(added) and json.loads(json.dumps(d)) == {
        **OLD_FLAT,
        "betas": [0.9, 0.98],
        **added,
    }
    assert TrainConfig.from_dict(d) == tc
    # a nested layout (the batch part under "batch") reads the same
    rest = {k: v for k, v in d.items() if k not in field_names(BatchConfig)}
    nested = {**rest, "batch": tc.batch.to_dict()}
    assert TrainConfig.from_dict(nested) == tc
    with pytest.raises(ConfigError, match="unknown keys"):
        TrainConfig.from_dict({**OLD_FLAT, "wat": 1})


def test_batch_defaults_and_data_stream_fields_are_written_once():
    for name in field_names(BatchConfig):
        default = default_of(BatchConfig, name)
        assert default_of(TrainConfig, name) == default == default_of(BatchSettings, name)
    assert TrainConfig.DATA_STREAM_FIELDS == (
        "seed",
        *field_names(BatchConfig),
        "accumulate_grad_batches",
    )
    assert train_run.DATA_STREAM_FIELDS == TrainConfig.DATA_STREAM_FIELDS
    tc = TrainConfig(crop_length=64, tokens_per_batch=512, rotate=False, drop_span_coords=0.5)
    train, valid = train_run.batch_settings(tc, True), train_run.batch_settings(tc, False)
    assert train == BatchSettings(**tc.batch.to_dict(), random_crop=True)
    unchanged = {**tc.batch.to_dict(), "rotate": True, "drop_span_coords": 0.0}
    assert valid == BatchSettings(**unchanged, random_crop=False)
    assert BatchSettings.of(tc).batch == tc.batch


def test_record_validation_raises_config_errors():
    for bad in (
        dict(crop_mode="random"),
        dict(mask_prob=1.0),
        dict(drop_chain_coords=2.0),
        dict(mask_token_frac=0.9, random_token_frac=0.2),
    ):
        with pytest.raises(ConfigError):
            BatchConfig(**bad)
        with pytest.raises(ConfigError):
            TrainConfig(**bad)
    with pytest.raises(ConfigError):
        BatchSettings(withhold="chain", drop_chain_coords=0.5)
    with pytest.raises(OptionError) as e:
        FinetuneConfig(task="pfam")
    assert (e.value.option, e.value.value) == ("task", "pfam")
    assert e.value.flag_message().startswith("--task pfam: ")
    assert issubclass(OptionError, ConfigError) and issubclass(ConfigError, UsageError)
    assert issubclass(FinetuneConfig, Record)
    # a tuple of names may be given as one string, split at commas (not into letters)
    assert PrepareConfig(chains="A,BB").chains == ("A", "BB")
    assert EmbedConfig(chains="AB").chains == ("AB",)
    assert PrepareConfig(exclude_files="ids.txt").exclude_files == ("ids.txt",)
    for record, name, value in (
        (TrainConfig, "lr", -1.0),
        (TrainConfig, "warmup_steps", -5),
        (BatchConfig, "tokens_per_batch", 0),
        (BatchConfig, "crop_length", 0),
    ):
        with pytest.raises(OptionError) as e:
            record(**{name: value})
        assert (e.value.option, e.value.value) == (name, value)
    # model sizes are checked where they are set, not at build time (or never: coord_scale 0 gave
    # NaN outputs)
    for name, value in (("n_heads", 0), ("d_model", -8), ("dropout", 2.0), ("coord_scale", 0.0)):
        with pytest.raises(OptionError) as e:
            ModelConfig(**{name: value})
        assert (e.value.option, e.value.value) == (name, value)


def _cli_defaults(command: str) -> dict:
    group = typer.main.get_command(app)
    return {p.name: p.default for p in group.commands[command].params}


@pytest.mark.parametrize(
    "command,record,names",
    [
        (
            "pretrain",
            TrainConfig,
            {
                "crop_length": "crop_length",
                "tokens_per_batch": "tokens_per_batch",
                "lr": "lr",
                "max_steps": "max_steps",
                "warmup_steps": "warmup_steps",
                "seed": "seed",
                "val_every": "val_every_steps",
                "checkpoint_every": "checkpoint_every_steps",
                "precision": "precision",
                "accumulate": "accumulate_grad_batches",
                "drop_chain_coords": "drop_chain_coords",
                "crop": "crop_mode",
            },
        ),
        ("pretrain", ModelConfig, {"dropout": "dropout", "coord_mode": "coord_mode"}),
        (
            "prepare",
            PrepareConfig,
            {
                "min_length": "min_length",
                "max_length": "max_length",
                "identity": "split_identity",
                "valid_fraction": "valid_fraction",
                "max_missing_ca": "max_missing_ca",
                "split": "split",
                "seqres": "seqres",
            },
        ),
        ("embed", EmbedConfig, {k: k for k in ("overlap", "tokens_per_batch", "chain_gap")}),
        (
            "evaluate",
            EvalConfig,
            {k: k for k in ("split", "seed", "crop_length", "overlap", "masking", "hide_coords")},
        ),
        (
            "analyze-attention",
            AttentionAnalysisConfig,
            {
                k: k
                for k in (
                    "split",
                    "max_chains",
                    "max_distance",
                    "bin_width",
                    "max_separation",
                    "crop_length",
                    "tokens_per_batch",
                )
            },
        ),
        (
            "score",
            ScoreConfig,
            {k: k for k in ("min_sep", "min_dist", "overlap", "tokens_per_batch")},
        ),
        (
            "finetune",
            FinetuneConfig,
            {
                k: k
                for k in (
                    "max_epochs",
                    "patience",
                    "lr",
                    "batch_size",
                    "tokens_per_batch",
                    "max_length",
                    "probe_epochs",
                    "probe_patience",
                    "seed",
                )
            },
        ),
    ],
)
def test_cli_defaults_are_the_records_defaults(command, record, names):
    defaults = _cli_defaults(command)
    for option, field in names.items():
        value = defaults[option]
        assert getattr(value, "value", value) == default_of(record, field), option


def test_one_precision_rule(monkeypatch):
    assert resolve_precision("16-mixed", cuda=True) == "16-mixed"
    assert resolve_precision("auto", cuda=False) == "32-true"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_precision("auto", cuda=True) == "16-mixed"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_precision("auto", cuda=True) == "bf16-mixed"


def test_workers_default_to_four_per_gpu_within_the_cpus_and_none_on_the_cpu(monkeypatch):
    """On one H100 four DataLoader workers trained paper-33m about 1.4x faster than none, so a
    GPU run gets them unless asked otherwise; each GPU's launching process keeps a CPU; the CPU
    gets none."""
    import os

    from coordformer.train.lifecycle import AUTO_WORKERS, resolve_workers

    assert resolve_workers(None, cuda=False) == 0
    assert resolve_workers(2, cuda=True) == 2 and resolve_workers(0, cuda=True) == 0
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    for cpus, devices, want in (
        (16, "1", AUTO_WORKERS),
        (16, "auto", 1),  # 8 GPUs: 2 CPUs each, one of them for the launching process
        (16, "0,1", AUTO_WORKERS),
        (2, "1", 1),
        (1, "1", 0),
    ):
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid, n=cpus: set(range(n)))
        assert resolve_workers(None, cuda=True, devices=devices) == want, (cpus, devices)


def test_errors_name_python_parameters_and_the_cli_their_flags():
    e = OptionError(
        "out_dir", "runs/a", "already holds a run; pass `resume=True` or choose a new `out_dir`"
    )
    assert (
        str(e)
        == "out_dir=runs/a: already holds a run; pass `resume=True` or choose a new `out_dir`"
    )
    flags = _flags()
    assert (
        e.flag_message(flags)
        == "--out runs/a: already holds a run; pass --resume or choose a new --out"
    )
    assert (
        with_flags("use `numbering='index'` and `mmseqs`", flags)
        == "use --numbering index and `mmseqs`"
    )
    assert flag_of("crop_length") == "--crop-length" and flag_of("crop_mode", _flags()) == "--crop"
    # a switch turned off reads as its --no- form; the model's settings read as the flags
    assert with_flags("not `use_coords=False`", flags) == "not --no-coords"
    for bad, said in (
        (dict(use_coords=False, plddt_feature=True), "--plddt-feature goes through"),
        (dict(n_heads=8, gaussian_init_heads=20), "--gaussian-heads 20: must be in 0..8"),
        (
            dict(use_coords=False, coord_norm_feature=False, gaussian_init_heads=2),
            "(not --no-coords)",
        ),
    ):
        with pytest.raises(ConfigError) as e:
            ModelConfig(**bad)
        assert said in e.value.flag_message(flags) and "use_coords" not in e.value.flag_message(
            flags
        )
    too_long = SequenceTooLong(700, 512, "1ABC.A", "window")
    head = "chain 1ABC.A of length 700 exceeds the model's max_len 512"
    assert str(too_long) == head + "; lower `window` to 512 or less"
    assert too_long.flag_message() == head + "; use --window 512 or less"
    assert isinstance(too_long, UsageError) and isinstance(too_long, ValueError)
    # a parameter the command line does not have keeps its Python name
    assert (
        OptionError("ablate", ("x",), "unknown").flag_message(_flags()) == "ablate=('x',): unknown"
    )
    # a switch reads as typed, not `--varlen True` / `--coords False`
    assert (
        OptionError("cuda_graphs", True, "no dropout").flag_message() == "--cuda-graphs: no dropout"
    )
    flags = {"use_coords": "--coords"}
    assert OptionError("use_coords", False, "x").flag_message(flags) == "--no-coords: x"
    assert dataclasses.is_dataclass(BatchConfig)


def test_cli_prints_option_errors_as_one_flag_line(tmp_path, capsys):
    pdb = tmp_path / "x.pdb"
    pdb.write_text("")
    base = [
        "score",
        str(pdb),
        "-c",
        "small-coords",
        "--out",
        str(tmp_path / "o.tsv"),
        "--device",
        "cpu",
    ]
    assert main([*base, "--mutations", str(tmp_path / "none.csv")]) == 2
    assert capsys.readouterr().err == f"error: --mutations {tmp_path / 'none.csv'}: no such file\n"
    assert main([*base, "--mutant", "A1G", "--offset", "3"]) == 2
    err = capsys.readouterr().err
    assert err == "error: --offset 3: applies to 1-based index numbering; add --numbering index\n"


def test_config_errors_of_pretrain_and_prepare_name_flags(tmp_path, capsys, synthetic_jsonl):
    """Errors raised by the records and split settings: Python names for the library, the flags
    the user typed on the command line, and what to do."""
    with pytest.raises(OptionError) as e:
        TrainConfig(tokens_per_batch=100)
    assert (e.value.option, e.value.value) == ("tokens_per_batch", 100)
    assert "`crop_length` (512, its default)" in str(e.value)
    data = tmp_path / "no-such-dataset"  # refused before the dataset is read
    assert (
        main(["pretrain", "-d", str(data), "-o", str(tmp_path / "r"), "--tokens-per-batch", "100"])
        == 2
    )
    assert capsys.readouterr().err == (
        "error: --tokens-per-batch 100: a batch must hold at least one crop of --crop-length "
        "(512, its default); raise --tokens-per-batch to 512 or more, or lower --crop-length\n"
    )
    prep = ["prepare", str(synthetic_jsonl), "--out", str(tmp_path / "ds"), "--quiet"]
    assert main([*prep, "--valid-fraction", "0.7", "--test-fraction", "0.5"]) == 2
    assert capsys.readouterr().err == (
        "error: --valid-fraction 0.7: with --test-fraction 0.5 the two sum to 1.2, but at most 1 "
        "can be held out (the rest is the train split); lower one of them\n"
    )
    assert not (tmp_path / "ds").exists()
    assert main([*prep, "--split", "identity", "--identity", "0"]) == 2
    assert capsys.readouterr().err == "error: --identity 0.0: must be in (0, 1]\n"
    # --identity alone would be ignored by the random split, yet recorded in the manifest
    assert main([*prep, "--identity", "0.5"]) == 2
    assert capsys.readouterr().err == (
        "error: --identity 0.5 sets the clustering of --split identity only; add --split "
        "identity, or drop --identity for a random split\n"
    )
    assert not (tmp_path / "ds").exists()


def test_precision_values_that_work_and_those_refused():
    from coordformer.config import PRECISIONS

    for ok in (*PRECISIONS, "16", "bf16"):  # the older aliases: earlier runs recorded them
        assert TrainConfig(precision=ok).precision == ok
        assert FinetuneConfig(precision=ok).precision == ok
    for record in (TrainConfig, FinetuneConfig):
        with pytest.raises(OptionError, match="not supported; use bf16-mixed") as e:
            record(precision="bf16-true")
        assert (e.value.option, e.value.value) == ("precision", "bf16-true")
        with pytest.raises(OptionError, match="must be one of auto, 32-true"):
            record(precision="foo")


def test_evaluate_mlm_keyword_defaults_are_the_eval_record():
    import inspect

    from coordformer.eval.mlm import evaluate_mlm

    params = inspect.signature(evaluate_mlm).parameters
    for name in field_names(EvalConfig):
        assert params[name].default == default_of(EvalConfig, name), name


@pytest.mark.parametrize(
    "command, module, function, names",
    [
        ("construct", "coordformer.sim.construct", "construction_report", ("sigma", "seed")),
        ("fetch", "coordformer.io.fetch", "fetch", ("workers", "timeout", "retries")),
        (
            "simulate",
            "coordformer.sim.studies",
            "simulate",
            # --preset defaults to None (so that --quick with it can be refused): SIMULATE_PRESET
            ("workers", "device", "seed"),
        ),
        (
            "evaluate-function",
            "coordformer.function.finetune",
            "evaluate_predictions",
            ("split", "bootstrap", "seed"),
        ),
    ],
)
def test_commands_without_a_record_share_their_library_function_defaults(
    command, module, function, names
):
    # the CLI option and the library signature read one constant (config.py); a literal written
    # again on either side would drift unnoticed
    import importlib
    import inspect

    params = inspect.signature(getattr(importlib.import_module(module), function)).parameters
    defaults = _cli_defaults(command)
    for name in names:
        assert defaults[name] == params[name].default, (command, name)
