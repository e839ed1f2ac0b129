"""``coordformer demo``: the shipped coords and no-coords models on bundled held-out chains.

The bundled chains (``resources/demo/``) are real PDB chains from the test split of the dataset
the shipped models were trained on, so neither model has seen them (see PROVENANCE.md there).
"""

from __future__ import annotations

import json
import shlex
import shutil
import time
from importlib import resources
from pathlib import Path
from typing import Callable

from .config import SEED
from .errors import UsageError

MODELS = ("small-coords", "small-nocoords")
#: Shown beside MODELS when installed: the paper-size structure model once a GPU session has shipped
#: it.
OPTIONAL_MODELS = ("paper-coords",)


def bundled_chains() -> Path:
    p = Path(str(resources.files("coordformer") / "resources" / "demo" / "heldout_chains.jsonl.gz"))
    if not p.exists():
        raise UsageError(f"bundled demo data missing at {p}; reinstall coordformer")
    return p


def _trainer_device(device: str) -> dict:
    """TrainConfig's accelerator and devices for one torch device ("cuda:1" -> gpu, "1,": the GPU
    of index 1, in Lightning's spelling)."""
    kind, _, index = device.partition(":")
    accelerator = {"cuda": "gpu"}.get(kind, kind)
    return {"accelerator": accelerator, "devices": f"{index}," if index else "1"}


def run_demo(
    out: str | Path,
    train_minutes: float = 0.0,
    max_chains: int | None = None,
    progress: bool = True,
    echo: Callable[[str], None] = print,
    seed: int = SEED,
    command: str | None = None,
    device: str = "auto",
) -> dict:
    """Prepare the bundled chains, evaluate both shipped models on identical masks, write a report.

    With ``train_minutes`` > 0 also pretrain a coords and a no-coords model from scratch (small
    preset) on a random split of the bundled chains and evaluate them on its test part.
    ``device``: a torch device ("cpu", "cuda", "cuda:1", "mps") for evaluation and that training;
    "auto": CUDA, then MPS, then the CPU.
    Returns {label: metrics}.
    """
    from .analysis.plots import per_residue_recovery_figure
    from .config import DEFAULT_RECIPE, PrepareConfig, TrainConfig, preset
    from .data.prepare import prepare
    from .data.store import PreparedDataset
    from .eval.mlm import evaluate_mlm
    from .eval.report import comparison_rows, markdown_report, markdown_table
    from .model.checkpoints import load_model, shipped_models
    from .model.encode import auto_device

    device = auto_device() if device == "auto" else device
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    missing = [m for m in MODELS if m not in shipped_models()]
    if missing:
        raise UsageError(f"shipped models {missing} are not installed; reinstall coordformer")
    t0 = time.time()
    src = bundled_chains()
    data_dir = out / "bundled_dataset"
    # Everything in the bundle is held out from the shipped models, so all of it is "test".
    cfg = PrepareConfig(
        min_length=1, split="random", valid_fraction=0.0, test_fraction=1.0, seed=seed
    )
    summary = prepare([str(src)], data_dir, cfg, workers=1, progress=progress, overwrite=True)
    echo(
        f"prepared {summary.chains_kept} bundled held-out chains ({summary.n_residues} residues) "
        f"from {src.name}"
    )
    ds = PreparedDataset(data_dir)
    results: dict[str, dict] = {}
    shown = (*MODELS, *(m for m in OPTIONAL_MODELS if m in shipped_models()))
    for name in shown:
        model, _ = load_model(name)
        results[name] = evaluate_mlm(
            model, ds, "test", max_chains=max_chains, progress=progress, device=device
        )

    # the chains evaluated (--max-chains may take fewer than were prepared)
    n_eval = results[MODELS[0]]["n_chains"]
    sections = [
        (
            f"Shipped models on {n_eval} bundled held-out chains"
            + (
                f" (the first {n_eval} of {summary.chains_kept})"
                if n_eval < summary.chains_kept
                else ""
            ),
            dict(results),
        )
    ]
    if train_minutes > 0:
        from .train.run import pretrain

        tdir = out / "train_from_scratch"
        tcfg = PrepareConfig(
            min_length=1, split="random", valid_fraction=0.1, test_fraction=0.2, seed=seed
        )
        prepare([str(src)], tdir / "dataset", tcfg, workers=1, progress=progress, overwrite=True)
        tds = PreparedDataset(tdir / "dataset")
        # Scratch models can only be scored on the part of the bundle they did not train on; the
        # shipped models are re-scored there too so the table compares like with like.
        scratch: dict[str, dict] = {}
        for label, use in (("scratch-coords", True), ("scratch-nocoords", False)):
            run = tdir / label
            if run.exists():
                shutil.rmtree(run)  # a fresh run each time: --train-minutes may have changed
            mc = preset("small-3m", recipe=DEFAULT_RECIPE, use_coords=use)  # what `pretrain` builds
            tc = TrainConfig(
                seed=seed,
                max_minutes=train_minutes,
                warmup_steps=50,
                val_every_steps=200,
                tokens_per_batch=2048,
                crop_length=512,
                **_trainer_device(device),
            )
            pretrain(tdir / "dataset", run, mc, tc, resume=False, progress=progress)
            model, _ = load_model(run)
            scratch[label] = evaluate_mlm(
                model, tds, "test", max_chains=max_chains, progress=progress, device=device
            )
        for name in MODELS:
            model, _ = load_model(name)
            scratch[name] = evaluate_mlm(
                model, tds, "test", max_chains=max_chains, progress=progress, device=device
            )
        results.update({k: v for k, v in scratch.items() if k.startswith("scratch")})
        n_test = scratch[MODELS[0]]["n_chains"]
        sections.append(
            (
                f"Trained from scratch for {train_minutes:g} min each, on {n_test} bundled chains "
                "held out from that training",
                scratch,
            )
        )

    # ``command``: the command line as typed (the CLI's); from Python, what it amounts to
    cmd = command or (
        "coordformer demo"
        + f" --out {shlex.quote(str(out))}"
        + (f" --train-minutes {train_minutes:g}" if train_minutes else "")
        + (f" --max-chains {max_chains}" if max_chains else "")
        + (f" --device {device}" if device != "cpu" else "")
    )
    report = [f"# coordformer demo\n\nCommand: `{cmd}`\n"]
    for k, (title, res) in enumerate(sections):
        header, rows = comparison_rows(res)
        table = markdown_table(header, rows)
        fig = per_residue_recovery_figure(
            res, out / f"per_residue_recovery{'' if k == 0 else f'_{k}'}.png", title=title
        )
        echo("")
        echo(title + ":")
        echo(table)
        desc = (
            "the bundled held-out chains (coordformer/resources/demo, provenance in "
            "PROVENANCE.md there)"
        )
        report.append(markdown_report(res, fig.name, desc, None, title=f"## {title}"))
    (out / "metrics.json").write_text(json.dumps(results, indent=2))
    (out / "report.md").write_text("\n".join(report))
    echo("")
    echo(f"report: {out / 'report.md'}  ({time.time() - t0:.0f} s)")
    return results
