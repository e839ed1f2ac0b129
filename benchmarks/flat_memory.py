"""Does iterating a very large prepared dataset keep memory flat? (AlphaFold-DB-sized sets.)

    python benchmarks/flat_memory.py --chains 200000 --length 32 --dir /tmp/flat200k

Writes a synthetic prepared dataset of ``--chains`` chains (random-walk CA traces, the real
on-disk format, arrays written through memory maps so writing is flat too), then streams every
training batch once (crop, centre, rotate, BERT-mask, pad: what a DataLoader worker does) and
samples the process's anonymous resident memory (``RssAnon``: heap, not the page cache that the
memory-mapped arrays occupy, which the kernel reclaims at will) as it goes. Prints the samples and
the growth between the first tenth of the pass and its end.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def rss_anon_mb() -> float:
    """Anonymous resident memory of this process in MB (Linux); NaN elsewhere."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


def write_synthetic_dataset(
    out: Path, n_chains: int, length: int, seed: int = 0, block: int = 20_000
) -> Path:
    """A prepared dataset (store.py layout) of ``n_chains`` chains of ``length`` residues, all in
    train except 1% valid. Written block by block through memory maps (constant memory)."""
    from coordformer import __version__
    from coordformer.config import PrepareConfig
    from coordformer.constants import DATASET_FORMAT_VERSION
    from coordformer.data import store

    out.mkdir(parents=True, exist_ok=True)
    n_res = n_chains * length
    rng = np.random.default_rng(seed)
    seq = np.lib.format.open_memmap(out / store.SEQ_FILE, mode="w+", dtype=np.uint8, shape=(n_res,))
    coords = np.lib.format.open_memmap(
        out / store.COORDS_FILE, mode="w+", dtype=np.float32, shape=(n_res, 4, 3)
    )
    letters = np.frombuffer(b"ACDEFGHIKLMNPQRSTVWY", dtype=np.uint8)
    for c0 in range(0, n_chains, block):
        c1 = min(c0 + block, n_chains)
        r0, r1 = c0 * length, c1 * length
        seq[r0:r1] = rng.choice(letters, r1 - r0)
        step = rng.standard_normal((c1 - c0, length, 3)).astype(np.float32)
        ca = 3.8 * np.cumsum(step / np.linalg.norm(step, axis=-1, keepdims=True), axis=1)
        coords[r0:r1] = (
            ca[:, :, None, :] + np.float32([[-1.2, 0, 0], [0, 0, 0], [1.2, 0.5, 0], [1.8, 1.4, 0]])
        ).reshape(-1, 4, 3)
    seq.flush()
    coords.flush()
    del seq, coords
    np.save(out / store.OFFSETS_FILE, np.arange(n_chains + 1, dtype=np.int64) * length)
    ids = [f"SYN{i:07d}" for i in range(n_chains)]
    store.write_tsv(
        out / store.CHAINS_FILE, store.CHAINS_HEADER, ((i, length, "synthetic") for i in ids)
    )
    store.write_tsv(out / store.SKIPPED_FILE, store.SKIPPED_HEADER, [])
    (out / store.SPLITS_DIR).mkdir(exist_ok=True)
    n_valid = max(1, n_chains // 100)
    store.write_id_list(out / store.SPLITS_DIR / "valid.txt", ids[:n_valid])
    store.write_id_list(out / store.SPLITS_DIR / "train.txt", ids[n_valid:])
    store.write_id_list(out / store.SPLITS_DIR / "test.txt", [])
    (out / store.LOG_FILE).write_text("synthetic dataset written by benchmarks/flat_memory.py\n")
    store.write_manifest(
        out,
        {
            "format_version": DATASET_FORMAT_VERSION,
            "coordformer_version": __version__,
            "config": PrepareConfig().to_dict(),
            "n_chains": n_chains,
            "n_residues": n_res,
            "atoms": ["N", "CA", "C", "O"],
            "splits": {"train": n_chains - n_valid, "valid": n_valid, "test": 0},
            "synthetic": True,
        },
    )
    return out


def stream_once(
    path: Path, tokens_per_batch: int = 16384, crop: int = 512, samples: int = 10
) -> dict:
    """Open the dataset and collate every train batch once; RssAnon sampled ``samples`` times."""
    from coordformer.data.batching import BatchSettings, MaskedBatches
    from coordformer.data.store import PreparedDataset

    before_open = rss_anon_mb()
    data = PreparedDataset(path)
    idx = data.split_indices("train")
    ds = MaskedBatches(
        data,
        idx,
        BatchSettings(crop_length=crop, tokens_per_batch=tokens_per_batch),
        seed=0,
        train=True,
    )
    after_open = rss_anon_mb()
    n = len(ds)
    marks = set(np.linspace(0, n - 1, samples).round().astype(int).tolist())
    trace, tokens, t0 = [], 0, time.perf_counter()
    for k in range(n):
        tokens += int(ds[k].padding_mask.sum())
        if k in marks:
            trace.append({"batch": k + 1, "rss_anon_mb": round(rss_anon_mb(), 1)})
    dt = time.perf_counter() - t0
    first = trace[1]["rss_anon_mb"] if len(trace) > 1 else trace[0]["rss_anon_mb"]
    return {
        "chains": len(data),
        "train_chains": int(len(idx)),
        "batches": n,
        "tokens": tokens,
        "seconds": round(dt, 1),
        "rss_anon_before_open_mb": round(before_open, 1),
        "rss_anon_after_open_mb": round(after_open, 1),
        "trace": trace,
        "growth_after_first_tenth_mb": round(trace[-1]["rss_anon_mb"] - first, 1),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--chains", type=int, default=200_000)
    ap.add_argument("--length", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument(
        "--dir",
        type=Path,
        default=None,
        help="where to write the dataset (default: a temporary folder)",
    )
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        path = a.dir or Path(tmp) / "flat"
        t0 = time.perf_counter()
        write_synthetic_dataset(path, a.chains, a.length)
        print(
            f"wrote {a.chains:,} chains x {a.length} residues to {path} in "
            f"{time.perf_counter() - t0:.0f} s"
        )
        res = stream_once(path, a.tokens)
    for s in res["trace"]:
        print(f"batch {s['batch']:>6}/{res['batches']}: RssAnon {s['rss_anon_mb']:8.1f} MB")
    print(
        f"{res['tokens']:,} tokens in {res['seconds']} s; "
        f"RssAnon {res['rss_anon_before_open_mb']} MB before opening, "
        f"{res['rss_anon_after_open_mb']} MB after; growth from the first tenth to the end: "
        f"{res['growth_after_first_tenth_mb']} MB"
    )
    if a.json:
        a.json.write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
