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
  varlen      default + the layers on the real residues only (FlashAttention's variable-length
              kernel: no padding, no mask)
  varlen-tokens4x, compile-varlen   varlen with four times the token budget, or compiled
  graphs      default + --cuda-graphs: varlen rows of one shape, each layer compiled with
              mode="reduce-overhead" (CUDA graphs on a GPU; recording falls in the warm-up)
  graphs-tokens4x   graphs with four times the token budget
  compile-pack  default + torch.compile + sequence packing
  tokens2x    default with twice the token budget per step
  tokens4x    default with four times the token budget per step (fixed costs amortised further)
  noworkers   default with no DataLoader worker process: the main process builds each batch
              between steps (the default has 4 on a CUDA GPU, none on the CPU: noworkers = default
              there)
  nocoords    default without coordinates (coordinates' cost = default / nocoords)

On CUDA, ``--sync-debug`` also counts the host syncs PyTorch reports in the timed steps
(torch.cuda.set_sync_debug_mode), per step. ``--profile N`` runs the first ``default`` arm N steps
longer under ``torch.profiler``, after its timed steps (so the profiler's cost stays out of the
ratios): how much of each step the device is busy (the union of its kernels' intervals), the
kernel time by kind (matrix products, attention, optimizer and gradient norms, copies, the rest:
elementwise, norms, reductions), and the top kernels and host operators. A device busy most of the
step is bound by its kernels; one idle most of it waits for the host. Ratios are printed against
``default`` and ``old``. Timings are noisy on shared machines: read the ratios, and rerun.
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
    "varlen",
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
    "varlen-tokens4x",
    "compile-varlen",
    "graphs",
    "graphs-tokens4x",
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
        "varlen": {"varlen_attention": True},
        "varlen-tokens4x": {"varlen_attention": True, "tokens_per_batch": 4 * tokens},
        "compile-varlen": {"compile": True, "varlen_attention": True},
        "graphs": {"cuda_graphs": True},
        "graphs-tokens4x": {"cuda_graphs": True, "tokens_per_batch": 4 * tokens},
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


#: Kernel kinds of the profile, by the first pattern found in a lower-cased kernel name. cuBLAS,
#: cuBLASLt and CUTLASS name their matrix products gemm / nvjet / xmma / wgmma / cutlass; SDPA's
#: kernels name themselves flash / fmha / attention; fused and foreach AdamW, clipping and the
#: non-finite check are multi_tensor_apply kernels.
KERNEL_KINDS = (
    # attention first: the memory-efficient kernel is a CUTLASS one (fmha_cutlassF_...)
    ("attention", ("flash", "fmha", "attention", "attn", "mem_eff")),
    ("matmul", ("gemm", "nvjet", "xmma", "wgmma", "cutlass", "cublas", "gemv")),
    ("optimizer", ("adam", "multi_tensor", "foreach")),
    ("copy", ("memcpy", "memset")),
)


def kernel_kind(name: str) -> str:
    low = name.lower()
    for kind, patterns in KERNEL_KINDS:
        if any(p in low for p in patterns):
            return kind
    return "other"


def profile_summary(
    kernels: list[tuple[str, float, float]],
    host_ops: list[tuple[str, float]],
    steps: int,
    wall_s: float,
    top: int = 12,
) -> dict:
    """What bounds a training step, from a profile of ``steps`` steps taking ``wall_s`` seconds.

    Args:
        kernels: device activity, one (name, start_us, end_us) per kernel launch or copy.
        host_ops: (operator name, self CPU microseconds) per host operator call.
    Returns milliseconds per step: wall clock, device busy (the union of the kernels' intervals,
    so overlapping streams count once) and its fraction of the wall clock (None without device
    activity), kernel time by kind (``KERNEL_KINDS``), and the ``top`` kernels and host operators
    by total time, each with its calls per step.
    """
    per_step = 1e-3 / max(steps, 1)  # microseconds in all -> milliseconds per step
    busy, end = 0.0, float("-inf")
    for _, t0, t1 in sorted(kernels, key=lambda k: k[1]):
        if t1 > end:
            busy += t1 - max(t0, end)
            end = t1
    wall_ms = wall_s * 1e3 / max(steps, 1)

    def ranked(items: list[tuple[str, float]]) -> list[dict]:
        total: dict[str, float] = collections.defaultdict(float)
        calls: collections.Counter = collections.Counter()
        for name, us in items:
            total[name] += us
            calls[name] += 1
        order = sorted(total, key=total.get, reverse=True)[:top]
        return [
            {
                "name": n[:120],
                "ms_per_step": total[n] * per_step,
                "calls_per_step": calls[n] / steps,
            }
            for n in order
        ]

    by_kind: dict[str, float] = {kind: 0.0 for kind, _ in KERNEL_KINDS}
    by_kind["other"] = 0.0
    for name, t0, t1 in kernels:
        by_kind[kernel_kind(name)] += (t1 - t0) * per_step
    return {
        "steps": steps,
        "wall_ms_per_step": wall_ms,
        "device_busy_ms_per_step": busy * per_step if kernels else None,
        "device_busy_fraction": busy * per_step / wall_ms if kernels and wall_ms > 0 else None,
        "kernel_ms_per_step_by_kind": by_kind if kernels else {},
        "top_kernels": ranked([(n, t1 - t0) for n, t0, t1 in kernels]),
        "top_host_ops": ranked(host_ops),
    }


def device_activity(events, cpu) -> list[tuple[str, float, float]]:
    """(name, start_us, end_us) of the kernels and copies among profiler ``events`` (those whose
    ``device_type`` is not ``cpu``). Kineto also puts each ``record_function`` range on the device
    timeline (``is_user_annotation``): Lightning's optimizer step wraps forward and backward in
    ``Optimizer.step#AdamW.step``, whose device span covers the whole step, idle gaps included, so
    counting it would make any step look busy."""
    return [
        (e.name, e.time_range.start, e.time_range.end)
        for e in events
        if e.device_type != cpu and not getattr(e, "is_user_annotation", False)
    ]


def _profiler(start: int, steps: int, device: str, trace: str | None):
    """A callback that profiles the steps from global step ``start`` for ``steps`` steps and keeps
    their ``profile_summary`` (and, with ``trace``, a Chrome trace there)."""
    import torch
    from lightning.pytorch.callbacks import Callback
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    cuda = device.startswith("cuda")

    class Profiler(Callback):
        def __init__(self):
            self.prof = None
            self.t0 = None
            self.summary = None

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == start and self.prof is None:
                acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
                if cuda:
                    torch.cuda.synchronize()
                self.prof = profile(activities=acts)
                self.prof.__enter__()
                self.t0 = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if self.prof is None or self.summary is not None or trainer.global_step < start + steps:
                return
            if cuda:
                torch.cuda.synchronize()
            wall = time.perf_counter() - self.t0
            self.prof.__exit__(None, None, None)
            events = self.prof.events()
            kernels = device_activity(events, DeviceType.CPU)
            host = [
                (e.name, e.self_cpu_time_total) for e in events if e.device_type == DeviceType.CPU
            ]
            self.summary = profile_summary(kernels, host, steps, wall)
            if trace:
                Path(trace).parent.mkdir(parents=True, exist_ok=True)
                self.prof.export_chrome_trace(trace)

    return Profiler()


def _short_path(filename: str) -> str:
    """A source file named from its package (``lightning/pytorch/loops/...``, ``coordformer/...``):
    a bare file name such as ``__init__.py`` would not say which."""
    parts = Path(filename).parts
    for anchor in ("site-packages", "src"):
        if anchor in parts:
            return "/".join(parts[len(parts) - parts[::-1].index(anchor) :])
    return Path(filename).name


def run_arm(arm: str, args, out: Path, profile: bool = False) -> dict:
    """One arm, once: residues/s, model TFLOP/s, peak memory and host syncs of the timed steps;
    with ``profile``, ``args.profile`` more steps under the profiler (``profile_summary``)."""
    import gc

    import torch

    from coordformer.config import TrainConfig, preset
    from coordformer.train.run import pretrain

    # a fresh compiler for each arm, as in a process of its own: the previous arm's compiled code
    # and its CUDA graphs' memory pool (cudagraph trees) go, and a compiling arm pays its compile
    torch._dynamo.reset()
    gc.collect()  # the previous arm's model and optimizer must not count in this arm's peak memory
    if args.device.startswith("cuda"):
        torch.cuda.empty_cache()

    model_over, train_over = arm_settings(arm, args.tokens)
    mc = preset(args.preset, recipe="fast", **model_over)
    n_profile = getattr(args, "profile", 0) if profile else 0
    settings = {
        "max_steps": args.warmup + args.steps + n_profile,
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
    callbacks = [timer]
    if n_profile:
        trace = getattr(args, "profile_trace", None)
        callbacks.append(_profiler(args.warmup + args.steps, n_profile, args.device, trace))
    patch = old_step() if arm == "old" else contextlib.nullcontext()
    from coordformer.errors import TrainingInterrupted

    stopped = None
    called = time.perf_counter()
    with patch, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            pretrain(args.data, out, mc, tc, resume=False, progress=False, callbacks=callbacks)
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
        # the fixed cost before training at this rate (data, model, compilation): the time to the
        # first timed step less the warm-up steps at the timed rate, since those steps train too
        "startup_seconds": max(0.0, timer.t0 - called - args.warmup * seconds / args.steps),
        "peak_gib": peak,
        "syncs_per_step": syncs / args.steps if args.sync_debug else None,
        "sync_sites": dict(sites.most_common(12)) if args.sync_debug else None,
        **({"stopped_after_timing": stopped} if stopped else {}),
        **({"profile": callbacks[1].summary} if n_profile and callbacks[1].summary else {}),
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
    ap.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="N",
        help="profile N more steps of the first default arm, after its timed ones (0: none)",
    )
    ap.add_argument("--profile-trace", default=None, help="also write that profile's Chrome trace")
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
                    first_default = arm == "default" and r == 0
                    res = run_arm(arm, args, Path(tmp) / f"{arm}-{r}", profile=first_default)
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
        f"{'syncs/step':>10} {'start s':>7}"
    )

    def cell(v, fmt, width):
        return format(v, fmt) if v is not None else "-".rjust(width)

    for arm, s in summary.items():
        print(
            f"{arm:>12} {s['residues_per_s']:11.0f} {s['mfu']:6.1%} "
            f"{cell(s['ratio_to_default'], '9.3f', 9)} {cell(s['ratio_to_old'], '6.3f', 6)} "
            f"{cell(s['peak_gib'], '6.2f', 6)} {cell(s['syncs_per_step'], '10.1f', 10)} "
            f"{cell(s['startup_seconds'], '7.1f', 7)}"
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
    prof = next(
        (runs[0]["profile"] for a, runs in results.items() if runs and "profile" in runs[0]), None
    )
    if prof:
        print_profile(prof)
    if args.json:
        write_json(args, peak, device, results, summary, errors)


def print_profile(prof: dict) -> None:
    busy = prof["device_busy_ms_per_step"]
    line = f"\nprofile of {prof['steps']} default steps: {prof['wall_ms_per_step']:.1f} ms per step"
    if busy is not None:
        kinds = ", ".join(f"{k} {v:.1f}" for k, v in prof["kernel_ms_per_step_by_kind"].items())
        frac = prof["device_busy_fraction"]
        line += f", device busy {busy:.1f} ms ({frac:.0%}); kernel ms by kind: {kinds}"
    print(line)
    for title, key in (("kernels", "top_kernels"), ("host operators (self CPU)", "top_host_ops")):
        if prof[key]:
            print(f"top {title}, ms per step (calls per step):")
            for row in prof[key]:
                print(f"  {row['ms_per_step']:8.2f} ({row['calls_per_step']:6.1f})  {row['name']}")


def summarise(results: dict[str, list[dict]], peak: float) -> dict[str, dict]:
    """Medians over rounds of each measured arm, its MFU and its ratios to ``default``/``old``."""
    keys = ("residues_per_s", "model_tflops_per_s", "peak_gib", "syncs_per_step", "startup_seconds")
    summary = {}
    for arm, runs in results.items():
        if not runs:
            continue
        s = {}
        for k in keys:
            vals = [x[k] for x in runs if x.get(k) is not None]
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
