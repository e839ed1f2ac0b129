import gzip
import json
from pathlib import Path

import numpy as np
import pytest

DATA = Path(__file__).parent / "data"


def synthetic_chains(n: int, seed: int = 0, min_len: int = 30, max_len: int = 120):
    """Random-walk CA traces (3.8 A steps) with plausible N/C/O offsets; returns chain_set
    records."""
    rng = np.random.default_rng(seed)
    recs = []
    for i in range(n):
        length = int(rng.integers(min_len, max_len))
        steps = rng.normal(size=(length, 3))
        steps = 3.8 * steps / np.linalg.norm(steps, axis=1, keepdims=True)
        ca = np.cumsum(steps, 0) + rng.normal(scale=20, size=3)
        seq = "".join(rng.choice(list("ACDEFGHIKLMNPQRSTVWY"), length))
        coords = {
            a: (ca + off).round(2).tolist()
            for a, off in zip(
                ("N", "CA", "C", "O"),
                ([-1.2, 0.5, 0.3], [0, 0, 0], [1.3, 0.4, -0.2], [2.0, 1.2, 0.1]),
            )
        }
        recs.append({"name": f"S{i:03d}.A", "seq": seq, "coords": coords})
    return recs


def write_jsonl(records, path: Path) -> Path:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    return path


def pretrain_args(data, out, *extra, preset: str | None = "tiny-0.1m", **flags) -> list[str]:
    """The argument list of a `coordformer pretrain` run, all strings, without the program name:
    `pretrain --data DATA --out OUT --preset PRESET`, then one option per keyword in the order
    given (`max_steps=4` -> `--max-steps 4`; True -> the bare flag, `quiet=True` -> `--quiet`;
    None or False -> left out), then `extra` word for word (`--no-coords`, `--pack`). `data`, `out`
    or `preset` None leaves that option out: a list to complete later, or `--init`, which refuses
    `--preset`."""
    args = ["pretrain"]
    for name, value in (("data", data), ("out", out), ("preset", preset), *flags.items()):
        if value is True:
            args.append("--" + name.replace("_", "-"))
        elif value is not None and value is not False:
            args += ["--" + name.replace("_", "-"), str(value)]
    return args + [str(word) for word in extra]


def weight_gap(run_a: Path, run_b: Path) -> float:
    """The largest absolute difference between the final weights (checkpoints/last.ckpt) of two
    pretrain runs: 0 (to float noise) when a stopped and resumed run is the uninterrupted one."""
    import torch

    a, b = (
        torch.load(Path(r) / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
        for r in (run_a, run_b)
    )
    return max((a[k] - b[k]).abs().max().item() for k in a)


@pytest.fixture
def synthetic_jsonl(tmp_path) -> Path:
    return write_jsonl(synthetic_chains(60), tmp_path / "synthetic.jsonl")


@pytest.fixture
def prepared(tmp_path, synthetic_jsonl):
    """A small prepared dataset built through the real `prepare`."""
    from coordformer.config import PrepareConfig
    from coordformer.data.prepare import prepare
    from coordformer.data.store import PreparedDataset

    out = tmp_path / "ds"
    prepare(
        [str(synthetic_jsonl)],
        out,
        PrepareConfig(min_length=10, valid_fraction=0.15, test_fraction=0.15),
        workers=1,
        progress=False,
    )
    return PreparedDataset(out)


@pytest.fixture(autouse=True)
def _signal_dispositions_restored(request):
    """Every test leaves SIGINT/SIGTERM as it found them. A disposition left behind (SIG_IGN above
    all: children inherit it, and `pretrain` keeps an ignored signal ignored, as for a background
    job) changes what later tests see; it is put back here and the test named in the log."""
    import signal
    import warnings

    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    for s, handler in before.items():
        if signal.getsignal(s) is not handler:
            warnings.warn(f"{request.node.nodeid} left {signal.Signals(s).name} changed; restored")
            with open("/tmp/coordformer_signal_leaks.txt", "a") as fh:
                fh.write(f"{request.node.nodeid} {signal.Signals(s).name} {signal.getsignal(s)}\n")
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
