"""Real-training throughput ablations (issue 18 item 3), side by side in one process.

Each arm runs `coordformer pretrain` itself (``coordformer.train.run.pretrain``: the Lightning loop,
the length-bucketed masked batches of a prepared dataset, logging, gradient clipping and the
non-finite check) for ``--warmup`` untimed steps and then ``--steps`` timed ones, and reports
residues/s, model TFLOP/s and MFU against the device's measured matrix-product rate. Arms are
interleaved round by round, so drift in the machine hits them alike; medians over rounds.

    python benchmarks/training_ablations.py --data work/pdb_chains_x --preset paper-33m \
        --tokens 16384 --device cuda --json work/issue18/ablations.json

Arms (each a change of the training settings; ``default`` is what `pretrain` does today):

  default     DataLoader workers as `pretrain` picks them (4 on a CUDA GPU, 0 on the CPU),
              counts read on the host before the transfer (Batch.indexed), pinned batches copied
              without blocking, the LM head on the masked positions only, fused AdamW with its skip
              of non-finite steps decided on the device
  old         as before issue 18 item 3: the LM head on every residue, the step asks the device
              for its counts (padding_mask.all(), the targets, the chain lengths: a host sync each),
              each batch field is copied with a blocking copy, plain (foreach) AdamW with a host
              check for non-finite gradients
  indexed     old + host-side counts and non-blocking copies
  head        indexed + the LM head on the masked positions only (default without fused AdamW)
  compile     default + torch.compile (compilation falls in the untimed warm-up)
  pack        default + sequence packing
  compile-pack  default + torch.compile + sequence packing
  tokens2x    default with twice the token budget per step
  tokens4x    default with four times the token budget per step (fixed costs amortised further)
  noworkers   default with no DataLoader worker process: the main process builds each batch
              between steps (the default has 4 on a CUDA GPU, none on the CPU: noworkers = default
              there)
  nocoords    default without coordinates (coordinates' cost = default / nocoords)

On CUDA, ``--sync-debug`` also counts the host syncs PyTorch reports in the timed steps
(torch.cuda.set_sync_debug_mode), per step. Ratios are printed against ``default`` and ``old``.
Timings are noisy on shared machines: read the ratios, and rerun.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

#: In the order they run: the most wanted first, so that a run cut short by its time limit has them.
ARMS = (
    "default",
    "old",
    "nocoords",
    "tokens2x",
    "compile",  # after the quick ones: a cold compile may take most of a short budget
    "head",
    "pack",
    "compile-pack",
    "indexed",
    "noworkers",
    "tokens4x",
)


def arm_settings(arm: str, tokens: int) -> tuple[dict, dict]:
    """(model overrides, TrainConfig overrides) of an arm."""
    plain = {"fused_adamw": False}
    train = {
        "default": {},
        "old": {**plain, "logits_at_targets": False},
        "indexed": {**plain, "logits_at_targets": False},
        "head": plain,
        "compile": {"compile": True},
        "pack": {"pack_sequences": True},
        "compile-pack": {"compile": True, "pack_sequences": True},
        "tokens2x": {"tokens_per_batch": 2 * tokens},
        "tokens4x": {"tokens_per_batch": 4 * tokens},
        "noworkers": {"num_workers": 0},
        "nocoords": {},
    }[arm]
    model = {"use_coords": False} if arm == "nocoords" else {}
    return model, train


@contextlib.contextmanager
def old_step():
    """The step as it was before issue 18 item 3 (the ``old`` arm): batches without host fields,
    so the step asks the device for the padding, the targets and the chain lengths, and copied to
    the device with a blocking copy per field. (The old step also read the number of targets with
    one more sync; this one reads it from the boolean-indexed logits' shape.)"""
    from coordformer.data.batching import MaskedBatches
    from coordformer.train import run

    real_item = MaskedBatches.__getitem__
    real_transfer = run._DataModule.transfer_batch_to_device
    MaskedBatches.__getitem__ = lambda self, k: real_item(self, k).replace()
    run._DataModule.transfer_batch_to_device = lambda self, batch, device, i: batch.to(device)
    try:
        yield
    finally:
        MaskedBatches.__getitem__ = real_item
        run._DataModule.transfer_batch_to_device = real_transfer


def _timer(warmup: int, last: int, device: str, sync_debug: bool):
    import torch
    from lightning.pytorch.callbacks import Callback

    class Timer(Callback):
        """Times the steps after ``warmup`` (one device sync at each end), counting residues and
        model FLOPs; with ``sync_debug`` PyTorch warns at every host sync in between."""

        def __init__(self):
            self.t0 = self.t1 = None
            self.residues0 = self.residues1 = 0
            self.flops0 = self.flops1 = 0.0

        def _sync(self):
            if device.startswith("cuda"):
                torch.cuda.synchronize()

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == warmup and self.t0 is None:
                self._sync()
                if device.startswith("cuda"):
                    torch.cuda.reset_peak_memory_stats()
                    if sync_debug:
                        torch.cuda.set_sync_debug_mode("warn")
                self.t0 = time.perf_counter()
                self.flops0, self.residues0 = pl_module.model_flops, pl_module.residues_seen

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if self.t0 is not None and self.t1 is None and trainer.global_step >= last:
                if device.startswith("cuda"):
                    torch.cuda.set_sync_debug_mode(0)
                self._sync()
                self.t1 = time.perf_counter()
                self.flops1, self.residues1 = pl_module.model_flops, pl_module.residues_seen

    return Timer()


def _short_path(filename: str) -> str:
    """A source file named from its package (``lightning/pytorch/loops/...``, ``coordformer/...``):
    a bare file name such as ``__init__.py`` would not say which."""
    parts = Path(filename).parts
    for anchor in ("site-packages", "src"):
        if anchor in parts:
            return "/".join(parts[len(parts) - parts[::-1].index(anchor) :])
    return Path(filename).name


def run_arm(arm: str, args, out: Path) -> dict:
    """One arm, once: residues/s, model TFLOP/s, peak memory and host syncs of the timed steps."""
    import gc

    import torch

    from coordformer.config import TrainConfig, preset
    from coordformer.train.run import pretrain

    gc.collect()  # the previous arm's model and optimizer must not count in this arm's peak memory
    if args.device.startswith("cuda"):
        torch.cuda.empty_cache()

    model_over, train_over = arm_settings(arm, args.tokens)
    mc = preset(args.preset, recipe="fast", **model_over)
    settings = {
        "max_steps": args.warmup + args.steps,
        "tokens_per_batch": args.tokens,
        "crop_length": args.crop_length,
        "val_every_steps": 10**9,
        "val_max_chains": 8,
        "warmup_steps": min(100, args.warmup),
        "lr": 5e-4,
        "seed": args.seed,
        "accelerator": "gpu" if args.device.startswith("cuda") else "cpu",
        "threads": args.threads or None,
        "checkpoint_every_steps": 10**9,
        "precision": args.precision,
    }
    tc = TrainConfig(**{**settings, **train_over})
    timer = _timer(args.warmup, args.warmup + args.steps, args.device, args.sync_debug)
    patch = old_step() if arm == "old" else contextlib.nullcontext()
    from coordformer.errors import TrainingInterrupted

    stopped = None
    with patch, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            pretrain(args.data, out, mc, tc, resume=False, progress=False, callbacks=[timer])
        except TrainingInterrupted as e:
            # the budget's SIGTERM (gpu_session.sh: timeout) may land after the timed steps, in
            # the run's final validation or checkpoint: their measurement stands
            if timer.t1 is None:
                raise
            stopped = str(e).splitlines()[0]
    seconds = timer.t1 - timer.t0
    sync_warnings = [w for w in caught if "synchronizing" in str(w.message).lower()]
    syncs = len(sync_warnings)
    # where they come from: PyTorch attributes each warning to the Python line that caused it, so
    # the next lease can name the syncs that are left, not just count them
    sites = collections.Counter(f"{_short_path(w.filename)}:{w.lineno}" for w in sync_warnings)
    peak = torch.cuda.max_memory_allocated() / 2**30 if args.device.startswith("cuda") else None
    return {
        "residues_per_s": (timer.residues1 - timer.residues0) / seconds,
        "model_tflops_per_s": (timer.flops1 - timer.flops0) / seconds / 1e12,
        "seconds": seconds,
        "peak_gib": peak,
        "syncs_per_step": syncs / args.steps if args.sync_debug else None,
        "sync_sites": dict(sites.most_common(12)) if args.sync_debug else None,
        **({"stopped_after_timing": stopped} if stopped else {}),
    }


def main(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data", required=True, help="a prepared dataset (coordformer prepare)")
    ap.add_argument("--preset", default="paper-33m")
    ap.add_argument("--tokens", type=int, default=16384, help="tokens per step (padded size)")
    ap.add_argument("--crop-length", type=int, default=512)
    ap.add_argument("--steps", type=int, default=100, help="timed steps per arm and round")
    ap.add_argument("--warmup", type=int, default=30, help="untimed steps first (compile, caches)")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--precision", default="auto", help="as pretrain's (auto: bf16-mixed on CUDA)")
    ap.add_argument("--sync-debug", action="store_true", help="count host syncs (CUDA)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    import torch

    from coordformer.model.flops import measured_matmul_rate

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device here; use --device cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    peak = measured_matmul_rate(args.device)
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.machine()
    results: dict[str, list[dict]] = {a: [] for a in args.arms}
    errors: dict[str, str] = {}  # arm -> its first failure
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for arm in args.arms:
                try:
                    res = run_arm(arm, args, Path(tmp) / f"{arm}-{r}")
                except (
                    Exception
                ) as e:  # one failing arm (compile on a new device) must not end the rest
                    msg = f"{type(e).__name__}: {e}".splitlines()[0][:300]
                    print(f"round {r + 1} {arm:>12}: FAILED ({msg})", flush=True)
                    errors.setdefault(arm, msg)
                    if args.json:
                        write_json(args, peak, device, results, summarise(results, peak), errors)
                    continue
                results[arm].append(res)
                print(
                    f"round {r + 1} {arm:>12}: {res['residues_per_s']:10.0f} residues/s, "
                    f"{res['model_tflops_per_s']:7.2f} TFLOP/s, MFU "
                    f"{res['model_tflops_per_s'] * 1e12 / peak:.1%}",
                    flush=True,
                )
                if args.json:  # after every arm: a run cut short keeps what it measured
                    write_json(args, peak, device, results, summarise(results, peak), errors)
                if "stopped_after_timing" in res:  # a signal ends the benchmark, not just the arm
                    print(f"stopped after {arm}'s timed steps: {res['stopped_after_timing']}")
                    break
            else:
                continue
            break
    summary = summarise(results, peak)
    print(
        f"\n{args.preset}, {args.tokens} tokens per step, {args.steps} timed steps after "
        f"{args.warmup}, median of {args.rounds} round(s); matrix-product rate "
        f"{peak / 1e12:.3g} TFLOP/s on {device}"
    )
    print(
        f"{'arm':>12} {'residues/s':>11} {'MFU':>6} {'/default':>9} {'/old':>6} {'GiB':>6} "
        f"{'syncs/step':>10}"
    )

    def cell(v, fmt, width):
        return format(v, fmt) if v is not None else "-".rjust(width)

    for arm, s in summary.items():
        print(
            f"{arm:>12} {s['residues_per_s']:11.0f} {s['mfu']:6.1%} "
            f"{cell(s['ratio_to_default'], '9.3f', 9)} {cell(s['ratio_to_old'], '6.3f', 6)} "
            f"{cell(s['peak_gib'], '6.2f', 6)} {cell(s['syncs_per_step'], '10.1f', 10)}"
        )
    if "nocoords" in summary and "default" in summary:
        print(
            "coordinates' throughput ratio (default / nocoords): "
            f"{summary['default']['residues_per_s'] / summary['nocoords']['residues_per_s']:.3f}"
        )
    for arm, runs in results.items():
        if arm == "default" and runs and runs[0].get("sync_sites"):
            sites = ", ".join(f"{k} x{v}" for k, v in runs[0]["sync_sites"].items())
            print(f"host syncs of default's timed steps, by line: {sites}")
    for arm, msg in errors.items():
        print(f"{arm:>12} failed: {msg}")
    if args.json:
        write_json(args, peak, device, results, summary, errors)


def summarise(results: dict[str, list[dict]], peak: float) -> dict[str, dict]:
    """Medians over rounds of each measured arm, its MFU and its ratios to ``default``/``old``."""
    keys = ("residues_per_s", "model_tflops_per_s", "peak_gib", "syncs_per_step")
    summary = {}
    for arm, runs in results.items():
        if not runs:
            continue
        s = {}
        for k in keys:
            vals = [x[k] for x in runs if x[k] is not None]
            s[k] = statistics.median(vals) if vals else None
        s["mfu"] = s["model_tflops_per_s"] * 1e12 / peak
        summary[arm] = s
    for s in summary.values():
        for ref in ("default", "old"):
            base = summary.get(ref)
            s[f"ratio_to_{ref}"] = s["residues_per_s"] / base["residues_per_s"] if base else None
    return summary


def write_json(
    args, peak: float, device: str, results: dict, summary: dict, errors: dict | None = None
) -> None:
    import torch

    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    record = {
        "args": vars(args),
        "matmul_tflops_per_s": peak / 1e12,
        "summary": summary,
        "rounds": results,
        "errors": errors or {},
        "machine": platform.platform(),
        "device": device,
        "torch": torch.__version__,
    }
    Path(args.json).write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
