"""The user-visible outputs of one small end-to-end pipeline, pinned across refactors (issue 17).

`prepare` (synthetic chains + real structures) -> `pretrain` (tiny, CPU, fixed seed) -> `evaluate`
(plain, BERT masking, withheld spans) -> `embed` (plain, windows, complexes, per residue) -> `score`
(exact and fast). `run(workdir)` returns a JSON-able dict of what those commands wrote; the values
in tests/data/golden.json were recorded with the code before the issue-17 redesign, and re-recorded
once since, when training's LM head moved to the masked positions only (issue 18): of all the values
only one weight moved, a qkv bias by 3.4e-4 relative, float rounding (tests/test_training_step.py
shows the loss and gradients equal):

    python tests/golden_pipeline.py  # re-record (only when a change of outputs is intended)
"""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).parent
DATA = HERE / "data"
GOLDEN = DATA / "golden.json"
STRUCTURES = ("1orc.pdb", "1A8O.cif", "1LCD.pdb", "4hhh_frag.pdb")


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def _floats(a) -> list[float]:
    """A compact fingerprint of an array: sum, sum of squares, first and last entries (float64)."""
    a = np.asarray(a, dtype=np.float64).ravel()
    return [float(a.sum()), float((a * a).sum()), float(a[0]), float(a[-1])] if a.size else []


def run(work: Path) -> dict:
    sys.path.insert(0, str(HERE))
    from conftest import pretrain_args, synthetic_chains, write_jsonl
    from coordformer.cli import main

    def cf(*args) -> None:
        code = main([str(a) for a in args])
        assert code == 0, f"coordformer {' '.join(map(str, args))} exited {code}"

    out: dict = {}
    # every input in one folder of the work directory: prepare and embed order their sources by
    # absolute path, so inputs split between the repository and a temporary folder would come in
    # an order that depends on where the repository was cloned
    inputs = work / "inputs"
    inputs.mkdir()
    jsonl = write_jsonl(synthetic_chains(60, seed=3), inputs / "synthetic.jsonl")
    for s in STRUCTURES:
        shutil.copyfile(DATA / s, inputs / s)
    ds = work / "ds"
    cf(
        "prepare",
        jsonl,
        *(inputs / s for s in STRUCTURES),
        "--out",
        ds,
        "--split",
        "random",
        "--min-length",
        10,
        "--valid-fraction",
        0.15,
        "--test-fraction",
        0.15,
        "--workers",
        1,
        "--quiet",
    )
    manifest = json.loads((ds / "manifest.json").read_text())
    out["prepare"] = {
        "counts": manifest.get("counts"),
        "n_chains": manifest.get("n_chains"),
        "n_residues": manifest.get("n_residues"),
        "splits": manifest.get("splits"),
        "files": {
            p.name: _sha(p)
            for p in sorted(ds.iterdir())
            if p.is_file() and p.name != "manifest.json" and not p.name.endswith((".log", ".tsv"))
        },
    }

    run_dir = work / "run"
    cf(
        *pretrain_args(
            ds,
            run_dir,
            max_steps=12,
            val_every=6,
            tokens_per_batch=2048,
            warmup_steps=4,
            lr="3e-3",
            seed=0,
            accelerator="cpu",
            threads=1,
            workers=0,
            quiet=True,
        )
    )
    summary = json.loads((run_dir / "summary.json").read_text())
    state = torch.load(
        run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False
    )["state_dict"]
    out["pretrain"] = {
        "global_step": summary["global_step"],
        "final_val": summary["final_val"],
        "weights": {k: _floats(v) for k, v in sorted(state.items()) if v.is_floating_point()},
    }
    ck = run_dir / "checkpoints" / "last.ckpt"

    out["evaluate"] = {}
    for name, extra in (
        ("valid", ()),
        ("test_bert", ("--split", "test", "--masking", "bert")),
        ("test_span", ("--split", "test", "--hide-coords", "span")),
    ):
        js = work / f"eval_{name}.json"
        cf(
            "evaluate",
            "-c",
            ck,
            "--data",
            ds,
            "--json",
            js,
            "--device",
            "cpu",
            "--quiet",
            *(extra or ("--split", "valid")),
        )
        m = json.loads(js.read_text())
        m = m["models"][next(iter(m["models"]))] if "models" in m else m
        out["evaluate"][name] = {
            k: m[k] for k in ("n_masked", "loss", "perplexity", "recovery") if k in m
        }

    out["embed"] = {}
    structs = [inputs / s for s in STRUCTURES]
    for name, extra in (
        ("plain", ()),
        ("window", ("--window", 40, "--overlap", 10)),
        ("complexes", ("--complexes",)),
        ("nocoords", ("--no-coords",)),
    ):
        npz = work / f"emb_{name}.npz"
        cf(
            "embed",
            "-c",
            ck,
            *structs,
            "--out",
            npz,
            "--device",
            "cpu",
            "--workers",
            1,
            "--quiet",
            *extra,
        )
        z = np.load(npz, allow_pickle=False)
        out["embed"][name] = {
            k: _floats(z[k]) if z[k].dtype.kind == "f" else [str(x) for x in z[k].ravel()[:50]]
            for k in sorted(z.files)
            # what produced the file (this run's temporary paths and command line), not a result
            if k != "provenance"
        }

    out["score"] = {}
    for mode in ("exact", "fast"):
        tsv = work / f"score_{mode}.tsv"
        cf(
            "score",
            inputs / "1orc.pdb",
            "-c",
            ck,
            "-o",
            tsv,
            "--mode",
            mode,
            "--device",
            "cpu",
            "--quiet",
        )
        with open(tsv) as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
        columns = list(rows[0]) if rows else []
        numeric = [c for c in columns if all(_is_float(r[c]) for r in rows)]
        out["score"][mode] = {
            "n_rows": len(rows),
            "columns": columns,
            "values": {c: _floats([float(r[c]) for r in rows]) for c in numeric},
            "text": {
                c: hashlib.sha256("\n".join(r[c] for r in rows).encode()).hexdigest()[:16]
                for c in columns
                if c not in numeric
            },
        }
    return out


def _is_float(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def compare(got, want, path: str = "", rtol: float = 1e-4, atol: float = 1e-6) -> list[str]:
    """Differences between two run() results: exact for strings and ints, relative for floats."""
    if isinstance(want, dict):
        if not isinstance(got, dict) or set(got) != set(want):
            return [
                f"{path}: keys {sorted(got) if isinstance(got, dict) else got} != {sorted(want)}"
            ]
        return [d for k in want for d in compare(got[k], want[k], f"{path}.{k}", rtol, atol)]
    if isinstance(want, list):
        if not isinstance(got, list) or len(got) != len(want):
            return [f"{path}: {got} != {want}"]
        return [
            d
            for i, (g, w) in enumerate(zip(got, want))
            for d in compare(g, w, f"{path}[{i}]", rtol, atol)
        ]
    if isinstance(want, float) and isinstance(got, (int, float)):
        return (
            [] if abs(got - want) <= atol + rtol * abs(want) else [f"{path}: {got!r} != {want!r}"]
        )
    return [] if got == want else [f"{path}: {got!r} != {want!r}"]


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        result = run(Path(d))
    GOLDEN.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    print(f"recorded {GOLDEN} ({GOLDEN.stat().st_size:,} bytes)")
