#!/usr/bin/env python
"""Package trained runs as the shipped models: half-precision weights + a record of how they were
made.

For each NAME=RUN_DIR pair: exports RUN_DIR's last checkpoint (checkpoints/last.ckpt, or
export/last.pt for a run brought back from another machine by scripts/gpu_session.sh) to
src/coordformer/resources/models/NAME.pt (float16, split into NAME.pt.shardN files where one file
would exceed MAX_MB; int8 for the names given with --int8, only when the --eval files show its cost
under MAX_INT8_COST), writes NAME.json (description, the exact `coordformer pretrain` command, the
data manifest, training summary, where it ran, held-out metrics if given) and copies the training
log to NAME.train_log.csv.

    python scripts/ship_models.py \
        small-coords=work/gpu_runs/coords small-nocoords=work/gpu_runs/nocoords \
        --eval work/ship/eval_test.json --eval-key small-coords=small-coords \
        --trained-on "one NVIDIA H100 80GB, 2026-11-22, three runs sharing it"

The README of the models folder is rewritten from every shipped model's card. `--annotate NAME` adds
the `--hide-coords` evaluations of the --eval files to an already shipped model's card, leaving its
weights alone.
"""

from __future__ import annotations

import argparse
import csv
import json
import shlex
import sys
from pathlib import Path

from coordformer.data.store import DatasetFormatError, PreparedDataset
from coordformer.eval.leakage import (
    dataset_rows,
    read_rows,
    training_chains,
    write_training_chains,
)
from coordformer.model.checkpoints import (
    WITHOUT_COORDS_USE,
    export_model,
    load_model,
    missing_flag_learnt,
    shipped_models_dir,
)

DESCRIPTIONS = {
    "small-coords": (
        "small-3m masked-LM with the paper's linear embedding of CA coordinates ((x, y, z) / 16 A "
        "and a missing flag) added to token + position embeddings (structure model)"
    ),
    "small-nocoords": "small-3m masked-LM, sequence only (same size, data, schedule and budget)",
    "paper-coords": (
        "paper-33m masked-LM (the paper's 6 x 768 x 12, d_ff 2048) with the fast recipe: "
        "CA coordinates and |x|^2 through the linear embedding, four Gaussian-initialised "
        "first-layer heads (structure model; float16 weights in two files)"
    ),
    "small-coords-sd": (
        "small-coords continued with structure dropout (sd): some training chains fed without "
        "coordinates, some with one stretch without them, so that the missing flag is learnt; for "
        "inputs with missing or no structure"
    ),
}
#: order of the models in the README (others follow by name)
ORDER = ("small-coords", "small-nocoords", "small-coords-sd", "paper-coords")
#: the most a shipped weights file may take (MB); larger float16 models ship in shards
MAX_MB = 48
#: the largest relative test-perplexity cost of int8 weights (measured: --eval with both models)
#: that may ship
MAX_INT8_COST = 0.005


def final_val(summary: dict, logs: list[Path]) -> dict:
    """The run's final validation metrics; for a run stopped before its end (SIGTERM at a deadline:
    no final validation) the last periodic one from its metrics.csv, with its step."""
    if summary.get("final_val"):
        return summary["final_val"]
    last: dict = {}
    for log in logs:
        for row in csv.DictReader(open(log)):
            if row.get("val/perplexity"):
                last = {
                    k: float(row[k])
                    for k in ("val/loss", "val/perplexity", "val/acc")
                    if row.get(k)
                }
                last["step"] = int(row["step"]) + 1
    return last


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("pairs", nargs="*", help="NAME=RUN_DIR")
    ap.add_argument(
        "--annotate",
        action="append",
        default=[],
        metavar="NAME",
        help="an already shipped model: add the --hide-coords evaluations of the --eval files to "
        "its card (weights and the rest of the card untouched)",
    )
    ap.add_argument(
        "--eval",
        type=Path,
        action="append",
        default=[],
        help="`coordformer evaluate --json` output with several models; "
        "repeat for runs with --hide-coords",
    )
    ap.add_argument(
        "--eval-key",
        action="append",
        default=[],
        metavar="NAME=KEY",
        help="which model of the --eval JSON is NAME (default: the run folder's name)",
    )
    ap.add_argument(
        "--int8",
        action="append",
        default=[],
        metavar="NAME",
        # argparse formats help with %: the percent sign is written %%
        help="ship NAME with int8 matrices; "
        f"refused unless the --eval files show a cost under {MAX_INT8_COST:.1%}%",
    )
    ap.add_argument(
        "--twin",
        action="append",
        default=[],
        metavar="NAME=RUN_DIR",
        help="the no-coordinates twin of shipped model NAME (not shipped): its command, training "
        "and its model of the --eval files (key: RUN_DIR's name) go into NAME's card",
    )
    ap.add_argument(
        "--data",
        type=Path,
        default=None,
        metavar="DIR",
        help="the prepared dataset the runs (or the --annotate models) trained on, where the "
        "folder a run's summary names is not on this machine (a run brought back from a GPU): its "
        "split sizes must be the run's; its train and valid chains are listed beside the cards",
    )
    ap.add_argument(
        "--trained-on", default=None, help="machine and date the runs trained on, for the record"
    )
    ap.add_argument(
        "--continued-from",
        action="append",
        default=[],
        metavar="NAME",
        help="NAME=RUN_DIR continued the shipped NAME (`pretrain --init`): its card records the "
        "shipped model it started from and keeps that model's twin",
    )
    ap.add_argument(
        "--replace",
        action="store_true",
        help="ship over an already shipped model even where the new one does not beat its "
        "held-out perplexity on the same masks (a re-packaging of the same run, say)",
    )
    args = ap.parse_args()
    if not args.pairs and not args.annotate:
        ap.error("give NAME=RUN_DIR pairs to ship, or --annotate NAME")
    eval_keys = dict(pair.split("=", 1) for pair in args.eval_key)
    twins = {name: Path(run) for name, run in (pair.split("=", 1) for pair in args.twin)}
    out = shipped_models_dir()
    out.mkdir(parents=True, exist_ok=True)
    # hide_coords condition -> {model key: metrics}
    evals: dict[str, dict] = {}
    for path in args.eval:
        payload = json.loads(path.read_text())
        models = payload.get("models", {})
        # the dataset the masks were drawn on, with each model's figures (evaluate records it
        # once, at the top level): two evaluations compare only on the same data
        fingerprint = (payload.get("data") or {}).get("fingerprint")
        if fingerprint:
            models = {k: {**m, "data_fingerprint": fingerprint} for k, m in models.items()}
        cond = next(iter(models.values()), {}).get("settings", {}).get("hide_coords", "none")
        for key in set(models) & set(evals.get(cond, {})):
            print(
                f"{path}: {key} ({cond}) is also in an earlier --eval file; using this one",
                file=sys.stderr,
            )
        evals.setdefault(cond, {}).update(models)
    cards = []
    for name in args.annotate:
        card = json.loads((out / f"{name}.json").read_text())
        # the card's own held-out evaluation stays; a plain (--hide-coords none) one given here is
        # kept beside it
        card.update(
            {
                ("heldout_eval_hide_none" if k == "heldout_eval" else k): v
                for k, v in eval_fields(evals, eval_keys.get(name, name)).items()
            }
        )
        if args.data is not None:
            # a table the card names already stays in (a continuation's lists what it continued)
            card["training_chains"] = chains_field(out, card["data"], args.data, old=card)
        card.setdefault("annotated_with", []).append(f"python {shlex.join(sys.argv)}")
        (out / f"{name}.json").write_text(json.dumps(card, indent=2))
    for pair in args.pairs:
        name, run = pair.split("=", 1)
        run = Path(run)
        old_path = out / f"{name}.json"
        old = json.loads(old_path.read_text()) if old_path.exists() else None
        ckpt = run / "checkpoints" / "last.ckpt"
        model, meta = load_model(ckpt if ckpt.exists() else run / "export" / "last.pt")
        summary = json.loads((run / "summary.json").read_text())
        logs = sorted((run / "logs").glob("version_*/metrics.csv"))
        key = eval_keys.get(name, run.name)
        card = {
            "name": name,
            "description": DESCRIPTIONS.get(name, ""),
            "n_parameters": model.num_parameters(),
            "weights": "int8 per output row (matrices of 65,536+ entries), the rest float16"
            if name in args.int8
            else "float16",
            "model_config": model.config.to_dict(),
            "train_config": summary["train_config"],
            "command": summary.get("command"),
            "data": {
                k: summary["data"]["manifest"].get(k)
                for k in (
                    "n_chains",
                    "n_residues",
                    "splits",
                    "config",
                    "counts",
                    "created",
                    "transport",
                )
            },
            "training": {
                "global_step": summary["global_step"],
                "train_minutes": summary["train_minutes"],
                "final_val": final_val(summary, logs),
                "skipped_steps": summary.get("skipped_steps", 0),
                **({"interrupted": summary["interrupted"]} if summary.get("interrupted") else {}),
            },
            "trained_on": args.trained_on,
            **eval_fields(evals, key),
            # the same evaluation of the unquantised checkpoint, when the --eval file has it too:
            # the int8 cost
            **(
                {"heldout_eval_unquantised": eval_fields(evals, run.name)["heldout_eval"]}
                if name in args.int8
                and key != run.name
                and "heldout_eval" in eval_fields(evals, run.name)
                else {}
            ),
            "train_log": f"{name}.train_log.csv",
            "ship_command": f"python {shlex.join(sys.argv)}",
        }
        card.update(missing_flag_fields(card))
        if name in twins:
            card["twin"] = twin_fields(twins[name], evals, card.get("heldout_eval"))
        if name in args.continued_from:
            if old is None:
                print(
                    f"{name}: --continued-from names a model that is not shipped", file=sys.stderr
                )
                return 1
            card.update(continuation_fields(old, card))
        if old is not None and not args.replace:
            why = not_better(card.get("heldout_eval"), old.get("heldout_eval"))
            if why:
                print(
                    f"{name}: not shipped over the shipped {name}: {why} (--replace ships it "
                    "anyway)",
                    file=sys.stderr,
                )
                return 1
        if name in args.int8:
            cost = int8_cost(card)
            if cost is None or cost > MAX_INT8_COST:
                print(
                    f"{name}: int8 costs "
                    f"{'an unmeasured amount' if cost is None else f'{cost:.2%}'} "
                    "of test perplexity "
                    "(give --eval with the int8 and the unquantised model, "
                    f"--eval-key {name}=INT8KEY; at most "
                    f"{MAX_INT8_COST:.1%} ships); ship it in float16 instead (no --int8)",
                    file=sys.stderr,
                )
                return 1
        # written once nothing refuses it (a refused ship leaves no table behind); a continuation
        # also lists what the model it continued saw
        card["training_chains"] = chains_field(
            out,
            summary["data"],
            args.data,
            old if name in args.continued_from else None,
            run=run,
            init=summary["train_config"].get("init"),
        )
        export_model(
            model,
            out / f"{name}.pt",
            meta={"name": name, "global_step": summary["global_step"]},
            int8=name in args.int8,
            max_file_bytes=int(MAX_MB * 1e6),
        )
        files = [out / f"{name}.pt", *sorted(out.glob(f"{name}.pt.shard*"))]
        card["files"] = [f.name for f in files]
        (out / f"{name}.json").write_text(json.dumps(card, indent=2))
        if logs:
            with open(out / f"{name}.train_log.csv", "w") as f:
                for i, log in enumerate(logs):
                    lines = log.read_text().splitlines(keepends=True)
                    f.writelines(lines if i == 0 else lines[1:])
        size = max(f.stat().st_size for f in files) / 1e6
        print(
            f"{name}: {len(files)} file(s), largest {size:.1f} MB, step {summary['global_step']}, "
            f"{summary['train_minutes']:.1f} min"
        )
        if size >= MAX_MB:
            print(
                f"{name} is {size:.1f} MB, over the {MAX_MB} MB a shipped file may take",
                file=sys.stderr,
            )
            return 1
        cards.append(card)
    # the README covers every shipped model, including those packaged by an earlier run of this
    # script
    shipped = {c["name"]: c for c in (json.loads(p.read_text()) for p in out.glob("*.json"))}
    shipped.update({c["name"]: c for c in cards})
    listed = {(c.get("training_chains") or {}).get("file") for c in shipped.values()}
    for table in out.glob("chains-*.tsv.gz"):
        if table.name not in listed:  # no card names it any more
            table.unlink()
    rank = {n: i for i, n in enumerate(ORDER)}
    (out / "README.md").write_text(
        readme(sorted(shipped.values(), key=lambda c: (rank.get(c["name"], len(ORDER)), c["name"])))
    )
    return 0


def chains_field(
    out: Path,
    recorded: dict,
    data_dir: Path | None,
    old: dict | None = None,
    run: Path | None = None,
    init: str | None = None,
) -> dict:
    """The card's ``training_chains`` record, writing the table it names into ``out``: the train
    and valid chains of the datasets a run trained on and of what its ``--init`` weights saw.
    From the run folder ``run`` where all of that is here (``eval.leakage.training_chains``).
    Else piece by piece: the run's dataset (``recorded``: its summary's ``data``, with ``path``,
    ``fingerprint`` and any ``previous`` datasets; or a shipped card's ``data``, split sizes only)
    from its own folder or from ``data_dir`` when its split sizes are the run's; its earlier
    datasets from their folders; its ``init`` weights from ``old``, the card of the shipped model
    it continued (``--continued-from``), or from what ``init`` lists. SystemExit when a part is
    not at hand."""
    tc = training_chains(run) if run is not None else None
    if tc is not None and tc.complete:
        rows = list(tc.rows)
        origin = "the run's dataset folders" + (" and its --init weights' list" if init else "")
    else:
        ds, origin = None, None
        own = Path(recorded["path"]) if recorded.get("path") else None
        if own is not None and own.is_dir():
            d = PreparedDataset(own)
            if d.fingerprint == recorded.get("fingerprint"):
                ds, origin = d, "the run's own dataset folder"
        if ds is None and data_dir is not None:
            d = PreparedDataset(data_dir)
            want = (recorded.get("manifest") or recorded).get("splits")
            if d.manifest.get("splits") != want:
                raise SystemExit(
                    f"--data {data_dir}: splits {d.manifest.get('splits')}, but the run's were "
                    f"{want}: not the dataset it trained on"
                )
            ds = d
            sizes = " / ".join(f"{n:,} {s}" for s, n in want.items())
            origin = (
                f"{data_dir.name}, given with --data (not the run's own folder; the run's "
                f"splits: {sizes})"
            )
        if ds is None:
            raise SystemExit(
                f"the dataset a run trained on ({own or 'not recorded'}) is not here with its "
                "fingerprint: give the prepared dataset with --data DIR, so that its training "
                "chains are listed"
            )
        rows = dataset_rows(ds)
        for p in recorded.get("previous") or ():
            earlier = training_chains_of_folder(p)
            if earlier is None:
                raise SystemExit(
                    f"the run also trained on {p.get('path') or 'a dataset not recorded'} "
                    "(--allow-new-data), which is not here with its fingerprint: its chains "
                    "cannot be listed"
                )
            have = set(rows)
            rows += [r for r in earlier if r not in have]
        if init and old is None:
            earlier_model = training_chains(init)
            if earlier_model is None or not earlier_model.complete:
                raise SystemExit(
                    f"the run started from --init {init}, whose chains are not listed here: "
                    "ship it with --continued-from NAME if it continued the shipped NAME"
                )
            have = set(rows)
            rows += [r for r in earlier_model.rows if r not in have]
    earlier = (old or {}).get("training_chains") or {}
    if earlier.get("file") and (out / earlier["file"]).exists():
        have = set(rows)
        added = [r for r in read_rows(out / earlier["file"]) if r not in have]
        rows = added + rows
        if added:
            origin += (
                f"; with the {len(added):,} more chains of the earlier table {earlier['file']}"
            )
    return {**write_training_chains(rows, out), "from": origin}


def training_chains_of_folder(record: dict) -> list | None:
    """The (id, split, digest) rows of a dataset a run trained on before ({"path",
    "fingerprint"}), None when it is not here with that fingerprint."""
    try:
        d = PreparedDataset(record.get("path") or "")
    except DatasetFormatError:
        return None
    if record.get("fingerprint") and d.fingerprint != record["fingerprint"]:
        return None
    return dataset_rows(d)


#: what two held-out evaluations must share for their perplexities to be compared: the same
#: split, chains and masks (the masks are drawn per chain from the evaluation's seed)
SAME_MASKS = ("split", "n_chains", "n_masked", "settings")


def not_better(new: dict | None, old: dict | None) -> str:
    """Why a model with held-out evaluation ``new`` must not replace a shipped one with ``old``
    (the cards' ``heldout_eval``), or "" when it beats it on the same masks."""
    if not old:
        return ""  # nothing measured to beat
    if not new:
        return "the new model has no held-out evaluation (give --eval) to compare"
    # the dataset, where both evaluations record it (cards shipped before 2026-11-28 do not)
    keys = (
        *SAME_MASKS,
        *(("data_fingerprint",) if "data_fingerprint" in new.keys() & old.keys() else ()),
    )
    diff = [k for k in keys if new.get(k) != old.get(k)]
    if diff:
        return (
            "its held-out evaluation is not on the same masks as the shipped one's (differs in "
            f"{', '.join(diff)})"
        )
    if not new["perplexity"] < old["perplexity"]:
        return (
            f"held-out perplexity {new['perplexity']:.3f} does not beat the shipped "
            f"{old['perplexity']:.3f}"
        )
    return ""


def continuation_fields(old: dict, card: dict) -> dict:
    """Card fields of a model trained from the shipped model ``old``'s weights (`pretrain --init`):
    what it started from, the steps in all, and ``old``'s twin (trained against ``old``, the only
    twin there is), unless ``card`` has its own."""
    ev = old.get("heldout_eval") or {}
    fields = {
        "continued_from": {
            "name": old["name"],
            "weights": old.get("weights"),
            "command": old.get("command"),
            "global_step": old["training"]["global_step"],
            "train_minutes": old["training"]["train_minutes"],
            "heldout_perplexity": ev.get("perplexity"),
            "heldout_recovery": ev.get("recovery"),
            "note": "this card's `command` and `training` are the continuation's alone; its "
            "--init file held the weights named here",
        },
        # a continued model's own card holds its total: a continuation of a continuation adds to it
        "total_global_step": old.get("total_global_step", old["training"]["global_step"])
        + card["training"]["global_step"],
    }
    if "twin" not in card and "twin" in old:
        twin = dict(old["twin"])
        twin["note"] = (
            f"the no-coordinates twin of the {old['name']} this model continued from, trained for "
            "that model's budget, not this continuation's"
        )
        if card.get("heldout_eval") and twin.get("heldout_eval"):
            twin["perplexity_ratio"] = (
                card["heldout_eval"]["perplexity"] / twin["heldout_eval"]["perplexity"]
            )
        fields["twin"] = twin
    return fields


def twin_fields(run: Path, evals: dict[str, dict], shipped_eval: dict | None) -> dict:
    """The no-coordinates twin's record for the shipped model's card: how it was trained (its
    summary.json and metrics.csv in ``run``) and its plain held-out evaluation on the same masks
    (model ``run.name`` of the --eval files), with the coordinates / no-coordinates perplexity
    ratio."""
    summary = json.loads((run / "summary.json").read_text())
    logs = sorted((run / "logs").glob("version_*/metrics.csv"))
    ev = eval_fields(evals, run.name).get("heldout_eval")
    twin = {
        "run": run.name,
        "command": summary.get("command"),
        "n_parameters": summary.get("n_parameters"),
        "training": {
            "global_step": summary["global_step"],
            "train_minutes": summary["train_minutes"],
            "final_val": final_val(summary, logs),
            "skipped_steps": summary.get("skipped_steps", 0),
            **({"interrupted": summary["interrupted"]} if summary.get("interrupted") else {}),
        },
    }
    if ev:
        twin["heldout_eval"] = {
            k: ev[k]
            for k in (
                "split",
                "n_chains",
                "n_masked",
                "perplexity",
                "recovery",
                "per_residue_recovery",
                "settings",
            )
            if k in ev
        }
        if shipped_eval:
            twin["perplexity_ratio"] = shipped_eval["perplexity"] / ev["perplexity"]
    return twin


def int8_cost(card: dict) -> float | None:
    """Relative test-perplexity cost of the int8 weights (card's ``heldout_eval``) over the
    unquantised checkpoint (``heldout_eval_unquantised``); None when not measured."""
    q, u = card.get("heldout_eval"), card.get("heldout_eval_unquantised")
    return q["perplexity"] / u["perplexity"] - 1 if q and u else None


def missing_flag_fields(card: dict) -> dict:
    """``learnt_missing_flag`` (True / False / None: not applicable) with a note, from the training
    config's structure dropout; models that did not learn it name the model to use instead (their
    commands warn when most residues lack coordinates)."""
    learnt = missing_flag_learnt({k: v for k, v in card.items() if k != "learnt_missing_flag"})
    tc = card.get("train_config") or {}
    if learnt is None:
        return {
            "learnt_missing_flag": None,
            "missing_flag_note": (
                "not applicable: a sequence-only model, which reads no coordinates"
            ),
        }
    if learnt:
        return {
            "learnt_missing_flag": True,
            "missing_flag_note": (
                "trained with structure dropout "
                f"(--drop-chain-coords {tc.get('drop_chain_coords', 0)} --drop-span-coords "
                f"{tc.get('drop_span_coords', 0)}): learnt chains and stretches without coordinates"
            ),
        }
    return {
        "learnt_missing_flag": False,
        "without_coords_use": WITHOUT_COORDS_USE,
        "missing_flag_note": (
            "trained without structure dropout: if its training chains had a CA for every residue, "
            "the missing-coordinate flag never occurred in training, so inputs without coordinates "
            f"get poor outputs; use {WITHOUT_COORDS_USE}"
        ),
    }


def eval_fields(evals: dict[str, dict], key: str) -> dict:
    """Card fields for model ``key`` of the --eval files: ``heldout_eval`` (plain evaluation) and
    ``heldout_eval_hide_<condition>`` (evaluate --hide-coords), without the per-chain tables."""
    return {
        ("heldout_eval" if cond == "none" else f"heldout_eval_hide_{cond}"): {
            # the ids of scored chains the model was trained on stay in the evaluation's JSON
            k: (
                {kk: vv for kk, vv in v.items() if kk != "seen_ids"}
                if k == "seen_in_training"
                else v
            )
            for k, v in models[key].items()
            if k != "checkpoint" and not k.startswith("per_chain")
        }
        for cond, models in evals.items()
        if key in models
    }


def readme(cards: list[dict]) -> str:
    lines = [
        "# Shipped models",
        "",
        "Made by `coordformer pretrain`; packaged by `scripts/ship_models.py` "
        "(the command is given per model).",
        "",
    ]
    for c in cards:
        t, d, ev = c["training"], c["data"], c.get("heldout_eval") or {}
        lines += [
            f"## {c['name']}",
            "",
            c["description"],
            "",
            f"- Parameters: {c['n_parameters']:,} (stored as {c.get('weights', 'float16')}"
            + (
                f", in {len(c['files'])} files: {', '.join(c['files'])}"
                if len(c.get("files", [])) > 1
                else ""
            )
            + ")",
            f"- Command: `{c['command']}`",
            f"- Data: prepared dataset with {d['n_chains']:,} chains / "
            f"{d['n_residues']:,} residues, splits {d['splits']} "
            f"(prepare config: split {d['config']['split']} at "
            f"{d['config']['split_identity']} identity, "
            f"exclusions {len(d['config']['exclude_files'])} DeepFRI id files); "
            "trained on train only"
            + (
                "; carried to the training machine CA-only and bit-exact by "
                "scripts/transport_dataset.py"
                if d.get("transport")
                else ""
            ),
            f"- Training: {t['global_step']} steps, {t['train_minutes']:.1f} min of training time"
            f"{' on ' + c['trained_on'] if c.get('trained_on') else ''}; "
            f"final validation {json.dumps({k: round(v, 4) for k, v in t['final_val'].items()})}"
            + (
                f" (the run was stopped by {t['interrupted']['signal']} at step "
                f"{t['interrupted']['step']}: the last periodic validation)"
                if t.get("interrupted") and "step" in t["final_val"]
                else ""
            ),
            f"- Training log: `{c['train_log']}`; full record: `{c['name']}.json`",
            f"- Packaged with: `{c['ship_command']}`",
        ]
        if "missing_flag_note" in c:
            lines.append(f"- Missing coordinates: {c['missing_flag_note']}")
        tc = c.get("training_chains") or {}
        if tc:
            lines.append(
                f"- Chains it saw: `{tc['file']}` lists the "
                + " and ".join(f"{n:,} {s}" for s, n in tc["splits"].items())
                + " chains (id, split, SHA-256 of the sequence; read from "
                f"{tc.get('from', 'its dataset')}); `coordformer evaluate` counts the chains "
                "it scores that are among them"
            )
        if ev:
            lines.append(
                f"- Held-out test split: perplexity {ev['perplexity']:.2f}, "
                f"recovery {ev['recovery']:.1%} "
                f"({ev['n_masked']:,} masked residues of {ev['n_chains']:,} chains)"
            )
        tw = c.get("twin") or {}
        if tw:
            te = tw.get("heldout_eval") or {}
            lines.append(
                f"- No-coordinates twin (`{tw['run']}`, not shipped; same data, seed and budget): "
                f"{tw['training']['global_step']} steps, final validation perplexity "
                f"{tw['training']['final_val'].get('val/perplexity', float('nan')):.2f}"
                + (
                    f"; same test masks: perplexity {te['perplexity']:.2f}, recovery "
                    f"{te['recovery']:.1%} (coordinates / no-coordinates perplexity ratio "
                    f"{tw['perplexity_ratio']:.3f})"
                    if te and "perplexity_ratio" in tw
                    else ""
                )
                + f"; command `{tw['command']}`"
            )
        if c.get("heldout_eval_unquantised"):
            u = c["heldout_eval_unquantised"]
            lines.append(
                "- Cost of the int8 weights, same masks: the unquantised checkpoint has "
                f"perplexity {u['perplexity']:.2f}, recovery {u['recovery']:.1%}"
            )
        for cond, what in (("span", "one 5-30% stretch per chain"), ("all", "every chain")):
            h = c.get(f"heldout_eval_hide_{cond}") or {}
            if h.get("hidden"):
                lines.append(
                    f"- Same masks, coordinates withheld from {what} "
                    f"(`evaluate --hide-coords {cond}`): "
                    f"perplexity {h['perplexity']:.2f}, recovery {h['recovery']:.1%}; on the "
                    f"{h['hidden']['n_masked']:,} masked residues without coordinates "
                    f"{h['hidden']['perplexity']:.2f}, {h['hidden']['recovery']:.1%}"
                )
        cut = (c.get("heldout_eval_hide_cut") or {}).get("outside")
        span = (c.get("heldout_eval_hide_span") or {}).get("outside")
        given = (c.get("heldout_eval_hide_none") or ev).get("outside")
        if cut and span and given:
            lines.append(
                "- Same masks, that stretch deleted instead "
                "(`evaluate --hide-coords cut`, a loop the file omits): on "
                f"the {cut['n_masked']:,} masked residues outside it "
                f"perplexity {cut['perplexity']:.2f}, against "
                f"{span['perplexity']:.2f} with the stretch present without coordinates and "
                f"{given['perplexity']:.2f} with its coordinates"
            )
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
