"""The repository's scripts and benchmark helpers that results depend on."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "scripts"))


def test_transport_dataset_round_trips_ca_bit_exactly(tmp_path, prepared):
    import transport_dataset

    from coordformer.data.store import PreparedDataset

    transport_dataset.main(["pack", str(prepared.path), str(tmp_path / "t.tar")])
    transport_dataset.main(["unpack", str(tmp_path / "t.tar"), str(tmp_path / "back")])
    a, b = PreparedDataset(prepared.path), PreparedDataset(tmp_path / "back")
    assert a.ids == b.ids and list(a.split_indices("train")) == list(b.split_indices("train"))
    ca_a = np.asarray(a._coords[:, 1])
    ca_b = np.asarray(b._coords[:, 1])
    assert np.array_equal(np.isnan(ca_a), np.isnan(ca_b)) and np.array_equal(
        np.nan_to_num(ca_a), np.nan_to_num(ca_b)
    )
    assert np.isnan(b._coords[:, [0, 2, 3]]).all()  # only CA travels, and the manifest says so
    assert b.manifest["transport"]["atoms_exact"] == ["CA"]


def test_transport_weights_round_trips_shipped_weights_in_parts(tmp_path):
    """The float16 weights come back from a lease in parts; they must unpack bit-exactly, be smaller
    than plain zlib at the same level (the point of the shuffle), and a damaged or missing part must
    be refused rather than give wrong weights."""
    import zlib

    import transport_weights

    src = ROOT / "src/coordformer/resources/models/small-coords.pt"
    data = src.read_bytes()
    parts = transport_weights.pack(src, tmp_path / "w", part_mb=2.0)
    assert len(parts) == 3 and all(p.stat().st_size <= 2 * 2**20 for p in parts)
    packed = sum(p.stat().st_size for p in parts)
    assert packed < 0.95 * len(zlib.compress(data, 1))
    transport_weights.main(["unpack", str(tmp_path / "w"), str(tmp_path / "back.pt")])
    assert (tmp_path / "back.pt").read_bytes() == data

    for n in (0, 1, 2, 7):  # odd and even lengths
        b = bytes(range(n))
        assert transport_weights.unshuffle(transport_weights.shuffle(b)) == b

    damaged = bytearray(parts[1].read_bytes())
    damaged[100] ^= 1
    parts[1].write_bytes(bytes(damaged))
    with pytest.raises(SystemExit, match="damaged|inflate"):
        transport_weights.unpack(tmp_path / "w", tmp_path / "bad.pt")
    parts[2].unlink()
    with pytest.raises(SystemExit, match="missing part"):
        transport_weights.unpack(tmp_path / "w", tmp_path / "bad.pt")
    assert not (tmp_path / "bad.pt").exists()


def test_sdpa_runs_a_fused_kernel_with_and_without_padding():
    import torch
    from sdpa_backend import attention_ops, make_batch

    from coordformer.config import preset
    from coordformer.model import CoordFormer

    model = CoordFormer(preset("tiny-0.1m"))
    for padded in (False, True):
        ops = attention_ops(model, make_batch(2, 32, padded, "cpu"), "cpu")
        assert ops and not any("math" in op for op in ops), ops
    # Without padding the model passes SDPA no mask; the same rows inside a padded batch (mask
    # given) must come out the same.
    t, c, m = make_batch(2, 32, False, "cpu")
    t3 = torch.cat([t, torch.zeros(1, 32, dtype=t.dtype)])
    t3[2, :10] = t[0, :10]
    c3 = torch.cat([c, c[:1]])
    with torch.no_grad():
        alone = model(t, c, m).logits
        padded = model(t3, c3, t3 != 0).logits[:2]
    assert torch.allclose(alone, padded, atol=1e-5)


SCRIPTS = sorted(
    p.relative_to(ROOT).as_posix()
    for p in [*ROOT.glob("benchmarks/*.py"), *ROOT.glob("scripts/*.py")]
)


@pytest.mark.slow
@pytest.mark.parametrize("script", SCRIPTS)
def test_every_script_answers_help(script):
    """Each benchmark and script starts and prints its usage (an argparse help text with a bare %
    once crashed ship_models.py --help)."""
    import subprocess

    proc = subprocess.run(
        [sys.executable, script, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip()


def test_training_ablations_go_on_past_a_failing_arm(tmp_path, monkeypatch, capsys):
    """A failing arm (compile on a new device, say) is reported and recorded, and the arms after it
    still run: on a lease, one crash must not cost the rest of the measurement."""
    import json

    import training_ablations

    def fake(arm, args, out, profile=False):
        if arm == "compile":
            raise RuntimeError("inductor failed\nlong traceback")
        return {
            "residues_per_s": 100.0,
            "model_tflops_per_s": 1.0,
            "seconds": 1.0,
            "peak_gib": None,
            "syncs_per_step": None,
        }

    monkeypatch.setattr(training_ablations, "run_arm", fake)
    out = tmp_path / "a.json"
    training_ablations.main(
        [
            "--data",
            str(tmp_path),
            "--device",
            "cpu",
            "--threads",
            "1",
            "--arms",
            "default",
            "compile",
            "nocoords",
            "--json",
            str(out),
        ]
    )
    rec = json.loads(out.read_text())
    assert set(rec["summary"]) == {"default", "nocoords"}
    assert rec["errors"] == {"compile": "RuntimeError: inductor failed"}
    assert "compile: FAILED (RuntimeError: inductor failed)" in capsys.readouterr().out


@pytest.mark.slow
def test_ship_models_records_the_no_coordinates_twin_on_the_card(
    tmp_path, prepared, monkeypatch, capsys
):
    """`ship_models.py NAME=RUN --twin NAME=TWIN_RUN`: the shipped model's card carries the twin's
    command, training and held-out figures on the same masks, and the models README says them; the
    twin itself is not shipped; the chains it saw are listed beside the card."""
    import gzip
    import json

    import ship_models
    from tests.conftest import pretrain_args

    from coordformer.cli import main as cli

    runs = {}
    for name, extra in (("coords", []), ("nocoords", ["--no-coords"])):
        runs[name] = tmp_path / name
        flags = dict(max_steps=3, val_every=3, tokens_per_batch=512, seed=0, quiet=True)
        assert cli(pretrain_args(prepared.path, runs[name], *extra, **flags)) == 0
    ev = tmp_path / "eval.json"
    assert (
        cli(
            [
                "evaluate",
                "-c",
                str(runs["coords"]),
                "-c",
                str(runs["nocoords"]),
                "--data",
                str(prepared.path),
                "--split",
                "test",
                "--quiet",
                "--json",
                str(ev),
            ]
        )
        == 0
    )
    shipped = tmp_path / "models"
    monkeypatch.setattr(ship_models, "shipped_models_dir", lambda: shipped)
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "ship_models.py",
            f"tiny-coords={runs['coords']}",
            "--twin",
            f"tiny-coords={runs['nocoords']}",
            "--eval",
            str(ev),
        ],
    )
    assert ship_models.main() == 0
    card = json.loads((shipped / "tiny-coords.json").read_text())
    models = json.loads(ev.read_text())["models"]
    twin = card["twin"]
    summary = json.loads((runs["nocoords"] / "summary.json").read_text())
    assert twin["run"] == "nocoords" and twin["command"] == summary["command"]
    assert twin["n_parameters"] == summary["n_parameters"] != card["n_parameters"]
    assert twin["heldout_eval"]["perplexity"] == models["nocoords"]["perplexity"]
    assert (
        twin["perplexity_ratio"]
        == models["coords"]["perplexity"] / models["nocoords"]["perplexity"]
    )
    assert twin["training"]["global_step"] == 3
    assert "No-coordinates twin (`nocoords`, not shipped" in (shipped / "README.md").read_text()
    assert sorted(p.name for p in shipped.glob("*.pt")) == ["tiny-coords.pt"]
    # the chains it saw are listed beside the card, from the run's own dataset folder
    tc = card["training_chains"]
    assert tc["from"] == "the run's dataset folders"
    rows = gzip.decompress((shipped / tc["file"]).read_bytes()).decode().splitlines()[1:]
    saw = [prepared.ids[i] for s in ("train", "valid") for i in prepared.split_indices(s)]
    assert [r.split("\t")[0] for r in rows] == saw and "Chains it saw" in (
        shipped / "README.md"
    ).read_text()
    # that folder elsewhere (a run brought back from a GPU): --data names it, checked by split sizes
    gone = {"path": str(tmp_path / "gone"), "fingerprint": "x", "manifest": prepared.manifest}
    assert ship_models.chains_field(shipped, gone, prepared.path)["file"] == tc["file"]
    with pytest.raises(SystemExit, match="give the prepared dataset with --data"):
        ship_models.chains_field(shipped, gone, None)
    other = {**gone, "manifest": {"splits": {"train": 1, "valid": 0, "test": 0}}}
    with pytest.raises(SystemExit, match="not the dataset it trained on"):
        ship_models.chains_field(shipped, other, prepared.path)

    # the shipped card's table names one more chain (as if it had trained on more), so that a
    # continuation's table can be told to add it and a fresh model's not to
    from coordformer.eval.leakage import read_rows, write_training_chains

    fake = write_training_chains(
        [*read_rows(shipped / tc["file"]), ("FAKE.Z", "train", "f" * 16)], shipped
    )
    card_file = shipped / "tiny-coords.json"
    card_file.write_text(json.dumps({**json.loads(card_file.read_text()), "training_chains": fake}))
    tables = sorted(p.name for p in shipped.glob("chains-*"))

    # shipping over it: refused unless the new model beats it on the same masks (the same run
    # and evaluation do not), and the card and weights stay as they were, and no table is left
    before = (shipped / "tiny-coords.json").read_text()
    again = ["ship_models.py", f"tiny-coords={runs['coords']}", "--eval", str(ev)]
    monkeypatch.setattr(sys, "argv", [*again, "--continued-from", "tiny-coords"])
    assert ship_models.main() == 1
    assert "does not beat the shipped" in capsys.readouterr().err
    assert (shipped / "tiny-coords.json").read_text() == before
    assert sorted(p.name for p in shipped.glob("chains-*")) == tables
    # --replace ships it; a continuation records what it started from and keeps the old twin
    monkeypatch.setattr(sys, "argv", [*again, "--continued-from", "tiny-coords", "--replace"])
    assert ship_models.main() == 0
    card = json.loads((shipped / "tiny-coords.json").read_text())
    assert card["continued_from"]["global_step"] == 3 and card["total_global_step"] == 6
    assert card["continued_from"]["heldout_perplexity"] == models["coords"]["perplexity"]
    # the continuation saw what the model it continued saw, and its own chains
    assert card["training_chains"]["splits"]["train"] == len(prepared.split_indices("train")) + 1
    assert not (shipped / fake["file"]).exists()  # no card names it any more
    assert card["twin"]["run"] == "nocoords" and "continued from" in card["twin"]["note"]
    # continued again: the total counts every segment, not the last two
    assert ship_models.main() == 0
    card = json.loads((shipped / "tiny-coords.json").read_text())
    assert card["continued_from"]["global_step"] == 3 and card["total_global_step"] == 9
    # annotated with --data: the table keeps what the continuation inherited
    monkeypatch.setattr(
        sys, "argv", ["ship_models.py", "--annotate", "tiny-coords", "--data", str(prepared.path)]
    )
    assert ship_models.main() == 0
    card = json.loads((shipped / "tiny-coords.json").read_text())
    assert card["training_chains"]["splits"]["train"] == len(prepared.split_indices("train")) + 1
    # shipped over without --continued-from: a fresh model lists its own chains only
    monkeypatch.setattr(sys, "argv", [*again, "--replace"])
    assert ship_models.main() == 0
    card = json.loads((shipped / "tiny-coords.json").read_text())
    assert card["training_chains"]["file"] == tc["file"]
    assert sorted(p.name for p in shipped.glob("chains-*")) == [tc["file"]]
    ok = models["coords"]
    assert ship_models.not_better({**ok, "perplexity": ok["perplexity"] - 0.1}, ok) == ""
    assert "n_masked" in ship_models.not_better({**ok, "n_masked": 1, "perplexity": 1.0}, ok)
    assert "no held-out evaluation" in ship_models.not_better(None, ok)
    # evaluations on different datasets do not compare, where both cards record theirs
    assert card["heldout_eval"]["data_fingerprint"] == prepared.fingerprint
    a, b = ({**ok, "data_fingerprint": f} for f in ("a", "b"))
    assert "data_fingerprint" in ship_models.not_better({**a, "perplexity": 1.0}, b)
    assert ship_models.not_better({**a, "perplexity": ok["perplexity"] - 0.1}, ok) == ""


def test_training_ablations_keep_an_arm_timed_before_the_budgets_sigterm(tmp_path, monkeypatch):
    """The lease's `timeout` stopped the compile arm after its timed steps, in its final validation,
    and the measurement was lost (2026-11-26). A SIGTERM after the timed steps keeps the arm's
    figures and ends the benchmark; one before them still stops it with nothing invented."""
    import json
    from types import SimpleNamespace

    import training_ablations

    import coordformer.train.run as run
    from coordformer.errors import TrainingInterrupted

    calls = []

    def fake_pretrain(data, out, mc, tc, resume, progress, callbacks):
        (timer,) = callbacks
        calls.append(out.name)
        module = SimpleNamespace(model_flops=0.0, residues_seen=0)
        timer.on_train_batch_start(SimpleNamespace(global_step=2), module, None, 0)
        module.model_flops, module.residues_seen = 3e12, 3000
        if "nocoords" in out.name:  # this arm is stopped before its timed steps end
            raise TrainingInterrupted("stopped by SIGTERM: saved last.ckpt at step 3", 15)
        timer.on_train_batch_end(SimpleNamespace(global_step=5), module, None, None, 0)
        raise TrainingInterrupted("stopped by SIGTERM: saved last.ckpt at step 5", 15)

    monkeypatch.setattr(run, "pretrain", fake_pretrain)
    out = tmp_path / "a.json"
    argv = ["--data", str(tmp_path), "--device", "cpu", "--threads", "1", "--steps", "3",
            "--warmup", "2", "--json", str(out), "--arms"]  # fmt: skip
    training_ablations.main([*argv, "compile", "default"])
    rec = json.loads(out.read_text())
    assert calls == ["compile-0"]  # the signal ended the benchmark: `default` never started
    assert set(rec["summary"]) == {"compile"} and rec["summary"]["compile"]["residues_per_s"] > 0
    with pytest.raises(TrainingInterrupted):
        training_ablations.main([*argv, "nocoords"])


def test_training_ablations_name_the_lines_that_sync(tmp_path, monkeypatch):
    """With --sync-debug each arm records where its host syncs came from (PyTorch attributes the
    warning to the Python line), so a lease can name the syncs left, not only count them."""
    import warnings
    from types import SimpleNamespace

    import training_ablations

    import coordformer.train.run as run

    def fake_pretrain(data, out, mc, tc, resume, progress, callbacks):
        (timer,) = callbacks
        module = SimpleNamespace(model_flops=0.0, residues_seen=0)
        timer.on_train_batch_start(SimpleNamespace(global_step=2), module, None, 0)
        for _ in range(3):
            warnings.warn("called a synchronizing CUDA operation")  # the line recorded
        module.model_flops, module.residues_seen = 3e12, 3000
        timer.on_train_batch_end(SimpleNamespace(global_step=5), module, None, None, 0)

    monkeypatch.setattr(run, "pretrain", fake_pretrain)
    args = SimpleNamespace(preset="tiny-0.1m", tokens=512, crop_length=64, steps=3, warmup=2,
                           seed=0, device="cpu", threads=1, precision="auto", sync_debug=True,
                           data=str(tmp_path))  # fmt: skip
    res = training_ablations.run_arm("default", args, tmp_path / "default-0")
    assert res["syncs_per_step"] == 1.0
    ((site, n),) = res["sync_sites"].items()
    assert site.startswith("test_tools.py:") and n == 3


def test_profile_summary_says_how_much_of_a_step_the_device_is_busy():
    """The lease's profile must tell a device-bound step from a host-bound one: kernels on two
    streams that overlap count once in the busy time, every kernel counts in its kind, and the
    host operators are ranked by their total self time."""
    import training_ablations

    kernels = [
        ("sm90_xmma_gemm_bf16bf16_bf16f32", 0.0, 400.0),
        ("ampere_bf16_s16816gemm", 300.0, 600.0),  # overlaps the first: busy 0-600 once
        ("fmha_cutlassF_bf16_aligned_64x64_rf_sm80", 1000.0, 1200.0),
        ("multi_tensor_apply_kernel<FusedAdamMathFunctor>", 1500.0, 1600.0),
        ("Memcpy HtoD (Pinned -> Device)", 1700.0, 1750.0),
        ("vectorized_elementwise_kernel<GeluCUDAKernelImpl>", 1800.0, 2000.0),
    ]
    host = [("aten::mm", 30.0), ("aten::copy_", 50.0), ("aten::mm", 30.0)]
    s = training_ablations.profile_summary(kernels, host, steps=2, wall_s=0.004)
    assert s["wall_ms_per_step"] == pytest.approx(2.0)
    # busy 600 + 200 + 100 + 50 + 200 = 1150 us over 2 steps
    assert s["device_busy_ms_per_step"] == pytest.approx(0.575)
    assert s["device_busy_fraction"] == pytest.approx(0.575 / 2.0)
    kinds = s["kernel_ms_per_step_by_kind"]
    assert kinds["matmul"] == pytest.approx(0.35)  # 700 us of kernel time, overlap included
    assert kinds["attention"] == pytest.approx(0.1)
    assert kinds["optimizer"] == pytest.approx(0.05)
    assert kinds["copy"] == pytest.approx(0.025)
    assert kinds["other"] == pytest.approx(0.1)
    assert s["top_kernels"][0]["name"].startswith("sm90_xmma_gemm")
    assert [r["name"] for r in s["top_host_ops"]] == ["aten::mm", "aten::copy_"]
    assert s["top_host_ops"][0]["calls_per_step"] == 1.0
    # a CPU profile has no device activity: nothing is claimed about it
    cpu = training_ablations.profile_summary([], host, steps=2, wall_s=0.004)
    assert cpu["device_busy_fraction"] is None and cpu["kernel_ms_per_step_by_kind"] == {}


def test_lease_tree_hides_the_shipped_weights_from_the_device_copy_and_puts_them_back(tmp_path):
    """scripts/lease_tree.sh on a fresh clone (no .git/hooks folder, which broke `hide` on
    2026-11-27): `hide` takes the weights out of the index and ignores them, so they neither
    travel nor show as untracked; a commit meanwhile is refused (it would delete them); `restore`
    tracks them again exactly as before and removes the hook."""
    import shutil

    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "lease_tree.sh", repo / "scripts")
    models = repo / "src" / "coordformer" / "resources" / "models"
    models.mkdir(parents=True)
    (models / "big.pt").write_bytes(b"\0" * (2 * 2**20 + 1))
    (models / "small.json").write_text("{}")

    def git(*args, check=True):
        return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=check)

    git("init", "-q")
    git("-c", "user.name=t", "-c", "user.email=t@t", "add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    shutil.rmtree(repo / ".git" / "hooks", ignore_errors=True)
    env = {**os.environ, "HIDE_OVER_MB": "1"}
    hide = subprocess.run(["bash", "scripts/lease_tree.sh", "hide"], cwd=repo, env=env,
                          capture_output=True, text=True)  # fmt: skip
    assert hide.returncode == 0, hide.stderr
    tracked = git("ls-files").stdout.split()
    assert "src/coordformer/resources/models/big.pt" not in tracked
    assert "src/coordformer/resources/models/small.json" in tracked
    assert (
        "??" not in git("status", "--short", "--untracked-files=all").stdout
    )  # ignored, not untracked
    assert (models / "big.pt").exists()  # only the index changed
    commit = git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x", check=False)
    assert commit.returncode != 0 and "restore first" in commit.stderr
    again = subprocess.run(["bash", "scripts/lease_tree.sh", "hide"], cwd=repo, env=env,
                           capture_output=True, text=True)  # fmt: skip
    assert again.returncode == 1 and "already hidden" in again.stdout
    subprocess.run(["bash", "scripts/lease_tree.sh", "restore"], cwd=repo, check=True,
                   capture_output=True)  # fmt: skip
    assert git("status", "--short").stdout == ""  # the index is as HEAD has it
    assert not (repo / ".git" / "hooks" / "pre-commit").exists()
    assert "lease_tree" not in (repo / ".git" / "info" / "exclude").read_text()


def test_pick_step_trains_with_the_fastest_step_that_keeps_the_weights(tmp_path):
    """PICK16 (the issue16 stage) takes --varlen or --cuda-graphs only where the ablation measured
    it at least the given ratio faster than the default step; other arms (a larger batch changes
    the training) and failed or missing records pick nothing."""
    import json

    import pick_step

    def record(**ratios):
        summary = {"default": {"ratio_to_default": 1.0}}
        summary.update({a: {"ratio_to_default": r} for a, r in ratios.items()})
        return {"summary": summary}

    assert pick_step.pick(record(varlen=1.10, graphs=1.60, tokens4x=2.0), 1.03) == "--cuda-graphs"
    assert pick_step.pick(record(varlen=1.10, graphs=0.90), 1.03) == "--varlen"
    assert pick_step.pick(record(varlen=1.02), 1.03) == ""
    assert pick_step.pick(record(tokens4x=1.5), 1.03) == ""
    assert pick_step.pick({"summary": {"graphs": {"ratio_to_default": None}}}, 1.03) == ""
    assert pick_step.pick({}, 1.03) == ""
    path = tmp_path / "a.json"
    path.write_text(json.dumps(record(graphs=1.2)))
    out = subprocess.run([sys.executable, "scripts/pick_step.py", str(path), "1.03"], cwd=ROOT,
                         capture_output=True, text=True, check=True)  # fmt: skip
    assert out.stdout.strip() == "--cuda-graphs"
    argv = [sys.executable, "scripts/pick_step.py", str(tmp_path / "no.json"), "1.03"]
    missing = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=True)
    assert missing.stdout.strip() == ""


def test_pick_step_charges_compile_time_and_refuses_another_measurement(tmp_path):
    """A step that compiles pays its extra start-up out of the training's minutes, and a record
    measured at another preset, token budget or precision than the training's picks nothing."""
    import json

    import pick_step

    rec = {
        "args": {"preset": "paper-33m", "tokens": 16384, "precision": "auto"},
        "summary": {
            "default": {"ratio_to_default": 1.0, "startup_seconds": 20.0},
            "varlen": {"ratio_to_default": 1.10, "startup_seconds": 20.0},
            "graphs": {"ratio_to_default": 1.30, "startup_seconds": 140.0},
        },
    }
    assert pick_step.pick(rec, 1.03) == "--cuda-graphs"  # per step
    assert pick_step.pick(rec, 1.03, minutes=20) == "--cuda-graphs"  # 1.3 x 1060/1180 = 1.17
    assert pick_step.pick(rec, 1.03, minutes=5) == "--varlen"  # 1.3 x 160/280 = 0.74
    graphs, default = rec["summary"]["graphs"], rec["summary"]["default"]
    assert pick_step.effective_ratio(graphs, default, 300) == pytest.approx(1.3 * 160 / 280)
    assert pick_step.effective_ratio(graphs, {}, 60) == 0.0  # all of it spent compiling
    assert pick_step.pick(rec, 0.5, minutes=0) == ""  # no time to train: nothing pays
    assert pick_step.mismatch(rec, preset="paper-33m", tokens=16384, precision="auto") == ""
    assert "tokens 16384, not 65536" in pick_step.mismatch(rec, preset="paper-33m", tokens=65536)
    assert pick_step.mismatch(rec, preset=None, tokens=None, precision=None) == ""
    assert pick_step.mismatch({}, preset="paper-33m") == ""  # no record: picks nothing anyway
    rec["args"]["device"] = "cpu"
    assert "device 'cpu', not 'cuda'" in pick_step.mismatch(rec, device="cuda")
    path = tmp_path / "a.json"
    path.write_text(json.dumps(rec))
    base = [sys.executable, "scripts/pick_step.py", str(path), "1.03", "--minutes", "5"]
    ok = subprocess.run(base + ["--preset", "paper-33m", "--tokens", "16384"], cwd=ROOT,
                        capture_output=True, text=True, check=True)  # fmt: skip
    assert ok.stdout.strip() == "--varlen"
    other = subprocess.run(base + ["--preset", "small-3m", "--precision", "auto"], cwd=ROOT,
                           capture_output=True, text=True, check=True)  # fmt: skip
    assert other.stdout.strip() == "" and "preset 'paper-33m', not 'small-3m'" in other.stderr


def test_profile_counts_kernels_not_the_annotations_around_them():
    """On a GPU, Kineto puts record_function ranges on the device timeline too; Lightning's
    ``Optimizer.step#AdamW.step`` spans forward and backward, idle gaps included. Counted as a
    kernel it made every step look busy (review, 2026-11-27); only kernels and copies count."""
    from types import SimpleNamespace

    import training_ablations

    def ev(name, device, t0, t1, annotation=False):
        return SimpleNamespace(name=name, device_type=device, is_user_annotation=annotation,
                               time_range=SimpleNamespace(start=t0, end=t1))  # fmt: skip

    events = [
        ev("Optimizer.step#AdamW.step", "cuda", 0.0, 1000.0, annotation=True),
        ev("sm90_xmma_gemm_bf16", "cuda", 100.0, 300.0),
        ev("Memcpy HtoD (Pinned -> Device)", "cuda", 400.0, 450.0),
        ev("aten::mm", "cpu", 0.0, 50.0),
    ]
    kernels = training_ablations.device_activity(events, "cpu")
    assert [k[0] for k in kernels] == ["sm90_xmma_gemm_bf16", "Memcpy HtoD (Pinned -> Device)"]
    s = training_ablations.profile_summary(kernels, [], steps=1, wall_s=0.001)
    assert s["device_busy_fraction"] == pytest.approx(0.25)
    assert s["kernel_ms_per_step_by_kind"]["optimizer"] == 0.0


def test_holdout_homologues_counts_identical_close_and_unrelated_chains():
    """benchmarks/holdout_homologues.py: of three held-out chains (a copy of a train chain, one at
    about 90% identity to another, one unrelated) it counts 1 identical, 2 with a hit at >= 30%
    identity and 1 at >= 95%."""
    from holdout_homologues import homologue_shares

    from coordformer.data.splits import mmseqs_available

    if not mmseqs_available():
        pytest.skip("MMseqs2 is not installed")
    rng = np.random.default_rng(0)
    train = ["".join(rng.choice(list("ACDEFGHIKLMNPQRSTVWY"), 150)) for _ in range(5)]
    close = list(train[1])
    for i in range(0, len(close), 10):
        close[i] = "W" if close[i] != "W" else "A"
    unrelated = "".join(rng.choice(list("ACDEFGHIKLMNPQRSTVWY"), 150))
    codes = np.array([0] * 5 + [1] * 3, dtype=np.int8)
    r = homologue_shares([*train, train[0], "".join(close), unrelated], codes, 1, [0.3, 0.95], 1)
    assert r["n_held_out"] == 3 and r["n_train"] == 5
    assert r["identical"] == pytest.approx(1 / 3)
    assert r["at_least"] == {"0.3": pytest.approx(2 / 3), "0.95": pytest.approx(1 / 3)}
