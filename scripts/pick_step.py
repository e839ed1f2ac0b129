"""Which training step the issue16 stage trains with (``PICK16`` in scripts/gpu_session.sh).

    python scripts/pick_step.py ABLATIONS_JSON MIN_RATIO

reads a ``benchmarks/training_ablations.py`` record and prints the ``pretrain`` flag of the fastest
arm whose step gives the same weights as the default one (``--varlen``, ``--cuda-graphs``: tested
in tests/test_packing.py) and is at least MIN_RATIO times as fast as the default step, or nothing:
padded rows. A missing or unreadable record (an arm that failed, a cut-short run) picks nothing.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

#: arms of the ablation benchmark that change only the speed of a step, and their pretrain flags
EQUIVALENT_STEPS = {"varlen": "--varlen", "graphs": "--cuda-graphs"}


def pick(record: dict, min_ratio: float) -> str:
    """The flag of the fastest equivalent arm at least ``min_ratio`` times as fast as default."""
    summary = record.get("summary", {})
    ratios = {
        arm: summary[arm].get("ratio_to_default")
        for arm in EQUIVALENT_STEPS
        if arm in summary and "default" in summary
    }
    fast = {arm: r for arm, r in ratios.items() if r is not None and r >= min_ratio}
    return EQUIVALENT_STEPS[max(fast, key=fast.get)] if fast else ""


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("record", help="a benchmarks/training_ablations.py JSON")
    ap.add_argument("min_ratio", type=float, help="least speed-up over the default step")
    args = ap.parse_args(argv)
    try:
        record = json.loads(Path(args.record).read_text())
    except (OSError, ValueError):
        record = {}
    print(pick(record, args.min_ratio))


if __name__ == "__main__":
    main()
