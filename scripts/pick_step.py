"""Which training step the issue16 stage trains with (``PICK16`` in scripts/gpu_session.sh).

    python scripts/pick_step.py ABLATIONS_JSON MIN_RATIO [--preset P] [--tokens N]
        [--precision X] [--device D] [--minutes M]

reads a ``benchmarks/training_ablations.py`` record and prints the ``pretrain`` flag of the fastest
arm whose step gives the same weights as the default one (``--varlen``, ``--cuda-graphs``: tested
in tests/test_packing.py) and is at least MIN_RATIO times as fast as the default step, or nothing:
padded rows. A missing or unreadable record (an arm that failed, a cut-short run) picks nothing,
and so does a record measured at another preset, token budget, precision or device than the
training's (the reason goes to stderr). With ``--minutes``, each arm's start-up (its fixed cost
before it trains at its rate: compilation, mostly) is charged to a training of that length: what
counts is the residues each would train in those minutes.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

#: arms of the ablation benchmark that change only the speed of a step, and their pretrain flags
EQUIVALENT_STEPS = {"varlen": "--varlen", "graphs": "--cuda-graphs"}

#: the benchmark's arguments that must match the training's for its ratios to apply
MATCHED = ("preset", "tokens", "precision", "device")


def mismatch(record: dict, **expected) -> str:
    """Why the record's measurement does not apply to a training with ``expected`` settings
    (``preset``, ``tokens``, ``precision``, ``device``; None: not checked), or "" when it does (or
    when there is no record: it then picks nothing anyway)."""
    args = record.get("args")
    if not args:
        return ""
    diffs = [
        f"{k} {args.get(k)!r}, not {v!r}"
        for k, v in expected.items()
        if k in MATCHED and v is not None and args.get(k) != v
    ]
    return "measured at " + ", ".join(diffs) if diffs else ""


def effective_ratio(arm: dict, default: dict, seconds: float | None) -> float | None:
    """The residues ``arm`` trains in ``seconds`` over those the default step trains in them,
    each after its own start-up (None: the per-step ratio)."""
    ratio = arm.get("ratio_to_default")
    if ratio is None or seconds is None:
        return ratio
    own = max(0.0, seconds - (arm.get("startup_seconds") or 0.0))
    base = max(0.0, seconds - (default.get("startup_seconds") or 0.0))
    return ratio * own / base if base > 0 else 0.0


def pick(record: dict, min_ratio: float, minutes: float | None = None) -> str:
    """The flag of the fastest equivalent arm at least ``min_ratio`` times as fast as default over
    a training of ``minutes`` (None: per step)."""
    summary = record.get("summary", {})
    if "default" not in summary:
        return ""
    seconds = minutes * 60 if minutes is not None else None
    ratios = {
        arm: effective_ratio(summary[arm], summary["default"], seconds)
        for arm in EQUIVALENT_STEPS
        if arm in summary
    }
    fast = {arm: r for arm, r in ratios.items() if r is not None and r >= min_ratio}
    return EQUIVALENT_STEPS[max(fast, key=fast.get)] if fast else ""


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("record", help="a benchmarks/training_ablations.py JSON")
    ap.add_argument("min_ratio", type=float, help="least speed-up over the default step")
    ap.add_argument("--preset", default=None, help="the training's size preset")
    ap.add_argument("--tokens", type=int, default=None, help="the training's tokens per step")
    ap.add_argument("--precision", default=None, help="the training's precision")
    ap.add_argument("--device", default=None, help="the training's device (cuda, cpu)")
    ap.add_argument("--minutes", type=float, default=None, help="the training's length")
    args = ap.parse_args(argv)
    try:
        record = json.loads(Path(args.record).read_text())
    except (OSError, ValueError):
        record = {}
    why = mismatch(
        record, preset=args.preset, tokens=args.tokens, precision=args.precision, device=args.device
    )
    if why:
        print(f"pick_step: {args.record} does not apply: {why}", file=sys.stderr)
        print("")
        return
    print(pick(record, args.min_ratio, args.minutes))


if __name__ == "__main__":
    main()
