"""``coordformer demo``: the shipped coords and no-coords models on bundled held-out chains.

The bundled chains (``resources/demo/``) are real PDB chains from the test split of the dataset
the shipped models were trained on, so neither model has seen them (see PROVENANCE.md there).
"""

from __future__ import annotations

import json
import tempfile
import time
from importlib import resources
from pathlib import Path
from typing import Callable

from .errors import UsageError

MODELS = ("small-coords", "small-nocoords")


def bundled_chains() -> Path:
    p = Path(str(resources.files("coordformer") / "resources" / "demo" / "heldout_chains.jsonl.gz"))
    if not p.exists():
        raise UsageError(f"bundled demo data missing at {p}; reinstall coordformer")
    return p


def run_demo(
    out: str | Path,
    train_minutes: float = 0.0,
    max_chains: int | None = None,
    progress: bool = True,
    echo: Callable[[str], None] = print,
    seed: int = 0,
) -> dict:
    """Prepare the bundled chains, evaluate both shipped models on identical masks, write a report.

    With ``train_minutes`` > 0 also pretrain a coords and a no-coords model from scratch (small
    preset) on a random split of the bundled chains and evaluate them on its test part.
    Returns {label: metrics}.
    """
    from .analysis.plots import per_residue_recovery_figure
    from .config import PrepareConfig, TrainConfig, preset
    from .data.prepare import prepare
    from .data.store import PreparedDataset
    from .eval.mlm import evaluate_mlm
    from .eval.report import comparison_rows, markdown_report, markdown_table
    from .model.checkpoints import load_model, shipped_models

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    missing = [m for m in MODELS if m not in shipped_models()]
    if missing:
        raise UsageError(f"shipped models {missing} are not installed; reinstall coordformer")
    t0 = time.time()
    src = bundled_chains()
    data_dir = out / "bundled_dataset"
    # Everything in the bundle is held out from the shipped models, so all of it is "test".
    cfg = PrepareConfig(min_length=1, split="random", valid_fraction=0.0, test_fraction=1.0, seed=seed)
    summary = prepare([str(src)], data_dir, cfg, workers=1, progress=progress, overwrite=True)
    echo(f"prepared {summary.chains_kept} bundled held-out chains ({summary.n_residues} residues) from {src.name}")
    ds = PreparedDataset(data_dir)
    results: dict[str, dict] = {}
    for name in MODELS:
        model, _ = load_model(name)
        results[name] = evaluate_mlm(model, ds, "test", max_chains=max_chains, progress=progress)

    if train_minutes > 0:
        tdir = out / "train_from_scratch"
        tcfg = PrepareConfig(min_length=1, split="random", valid_fraction=0.1, test_fraction=0.2, seed=seed)
        prepare([str(src)], tdir / "dataset", tcfg, workers=1, progress=progress, overwrite=True)
        for label, use in (("scratch-coords", True), ("scratch-nocoords", False)):
            mc = preset("small-3m", use_coords=use)
            tc = TrainConfig(seed=seed, max_minutes=train_minutes, warmup_steps=100, val_every_steps=200,
                             tokens_per_batch=4096, crop_length=512)
            from .train.run import pretrain

            run = tdir / label
            pretrain(tdir / "dataset", run, mc, tc, resume=False, progress=progress) if not (run / "checkpoints" / "last.ckpt").exists() else None
            model, _ = load_model(run)
            results[label] = evaluate_mlm(model, PreparedDataset(tdir / "dataset"), "test", progress=progress)

    header, rows = comparison_rows(results)
    table = markdown_table(header, rows)
    fig = per_residue_recovery_figure(results, out / "per_residue_recovery.png",
                                      title="bundled held-out PDB chains, 15% masked")
    (out / "metrics.json").write_text(json.dumps(results, indent=2))
    cmd = "coordformer demo" + (f" --train-minutes {train_minutes:g}" if train_minutes else "")
    (out / "report.md").write_text(markdown_report(results, fig.name, f"{summary.chains_kept} bundled held-out chains", cmd))
    echo("")
    echo(table)
    echo("")
    echo(f"report: {out / 'report.md'}  figure: {fig}  ({time.time() - t0:.0f} s)")
    return results
