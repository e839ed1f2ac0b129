"""coordformer finetune / evaluate-function on tiny models and label files written here."""

import json

import numpy as np
import pytest

from conftest import pretrain_args
from coordformer.cli import main

EC_CLASSES = ["1.1.1.1", "2.7.11.1", "3.4.21.-"]
GO_MF = ["GO:0003824", "GO:0005515", "GO:0046872", "GO:0000166"]


def _write_deepfri(folder, prepared, go=False):
    """DeepFRI-format label and split files for the synthetic chains (dotted ids: S000.A)."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    ids = {
        s: [prepared.ids[i] for i in prepared.split_indices(s)] for s in ("train", "valid", "test")
    }
    every = [c for s in ids.values() for c in s]
    dash = {c: c for c in every}  # synthetic names are not PDB ids, so keep the dotted form
    if go:
        lines = []
        for onto, terms in (
            ("molecular_function", GO_MF),
            ("biological_process", ["GO:0008152"]),
            ("cellular_component", ["GO:0005737"]),
        ):
            lines += [
                f"### GO-terms ({onto})",
                "\t".join(terms),
                f"### GO-names ({onto})",
                "\t".join(f"n{t}" for t in terms),
            ]
        lines.append(
            "### PDB-chain\tGO-terms (molecular_function)\tGO-terms (biological_process)\t"
            "GO-terms (cellular_component)"
        )
        for c in every:
            mf = ",".join(t for t in GO_MF if rng.random() < 0.4) or GO_MF[0]
            lines.append(f"{dash[c]}\t{mf}\tGO:0008152\t")
        name = "nrPDB-GO_2019.06.18"
    else:
        lines = ["### EC-numbers", "\t".join(EC_CLASSES), "### PDB-chain\tEC-numbers"]
        # learnable: the class follows the chain's length
        for k, c in enumerate(every):
            n = int(prepared.lengths[prepared.index_of(c)])
            ec = EC_CLASSES[0 if n < 60 else 1 if n < 90 else 2]
            # one annotation outside the class list: left out, and counted
            lines.append(f"{dash[c]}\t{ec}" + (",9.9.9.9" if k == 0 else ""))
        name = "nrPDB-EC_2020.04"
    (folder / f"{name}_annot.tsv").write_text("\n".join(lines) + "\n")
    for s, cs in ids.items():
        (folder / f"{name}_{s}.txt").write_text("\n".join(dash[c] for c in cs) + "\n")
    rows = ["PDB-chain,<30%,<40%,<50%,<70%,<95%"] + [
        f"{dash[c]},{int(k % 2 == 0)},1,1,1,1" for k, c in enumerate(ids["test"])
    ]
    (folder / f"{name}_test.csv").write_text("\n".join(rows) + "\n")
    return ids


@pytest.fixture
def tiny_checkpoint(tmp_path, prepared):
    out = tmp_path / "pre"
    args = pretrain_args(
        prepared.path,
        out,
        max_steps=4,
        val_every=4,
        warmup_steps=2,
        tokens_per_batch=1024,
        quiet=True,
    )
    assert main(args) == 0
    return out


@pytest.mark.slow
def test_finetune_both_heads_end_to_end_and_evaluate(tmp_path, prepared, tiny_checkpoint, capsys):
    labels = tmp_path / "deepfri"
    ids = _write_deepfri(labels, prepared)
    common = [
        "finetune",
        "-c",
        str(tiny_checkpoint),
        "--labels",
        str(labels),
        "--data",
        str(prepared.path),
        "--quiet",
    ]
    assert (
        main(
            [
                *common,
                "--head",
                "mlp",
                "--max-epochs",
                "30",
                "--patience",
                "30",
                "--out",
                str(tmp_path / "mlp"),
            ]
        )
        == 0
    )
    assert (
        main(
            [
                *common,
                "--head",
                "linear",
                "--max-epochs",
                "2",
                "--tokens-per-batch",
                "2048",
                "--out",
                str(tmp_path / "lin"),
            ]
        )
        == 0
    )
    lin = json.loads((tmp_path / "lin" / "metrics.json").read_text())
    # LP-FT: the linear layer was first fitted on frozen embeddings (its own log and checkpoint)
    assert 1 <= lin["probe"]["epochs_run"] <= 50 and 0 <= lin["probe"]["best_valid_fmax"] <= 1
    assert (tmp_path / "lin" / "checkpoints" / "probe.ckpt").exists() and (
        tmp_path / "lin" / "logs_probe"
    ).is_dir()
    for run in ("mlp", "lin"):
        m = json.loads((tmp_path / run / "metrics.json").read_text())
        assert (
            m["test"]["n"] == len(ids["test"])
            and 0 <= m["test"]["fmax"] <= 1
            and 0 <= m["test"]["micro_aupr"] <= 1
        )
        assert set(m["test_by_identity"]) == {"<30%", "<40%", "<50%", "<70%", "<95%"}
        # scored as DeepFRI does: the partial EC class (3.4.21.-) is trained on, not scored
        assert m["protocol"].startswith("DeepFRI") and m["test"]["n_classes"] <= 2
        z = np.load(tmp_path / run / "predictions_test.npz")
        # rows are in split order and carry the right labels
        assert [str(x) for x in z["ids"]] == ids["test"]
        for cid, row in zip(z["ids"], z["y_true"]):
            n = int(prepared.lengths[prepared.index_of(str(cid))])
            assert row.argmax() == (0 if n < 60 else 1 if n < 90 else 2) and row.sum() == 1
        cfg = json.loads((tmp_path / run / "config.json").read_text())
        assert cfg["data_report"]["train"]["kept"] == len(ids["train"]) and cfg["n_classes"] == 3
        assert cfg["data_report"]["annotations"] == {
            "unknown_classes": 1,
            "chains_without_known_class": 0,
        }
        assert (tmp_path / run / "checkpoints" / "best.ckpt").exists()
    # the MLP on frozen embeddings learns the length rule well above chance
    assert json.loads((tmp_path / "mlp" / "metrics.json").read_text())["valid"]["fmax"] > 0.5
    capsys.readouterr()
    assert (
        main(
            [
                "evaluate-function",
                str(tmp_path / "mlp"),
                str(tmp_path / "lin"),
                "--identity",
                str(next(labels.glob("*_test.csv"))),
            ]
        )
        == 0
    )
    table = capsys.readouterr().out
    assert "| mlp |" in table and "| lin |" in table and "<30% Fmax / AUPR" in table
    # --report into a folder not made yet is made (it failed after the table); a folder is refused
    # before the work
    report = tmp_path / "new" / "r.md"
    assert main(["evaluate-function", str(tmp_path / "mlp"), "--report", str(report)]) == 0
    assert "| mlp |" in report.read_text()
    capsys.readouterr()
    assert main(["evaluate-function", str(tmp_path / "mlp"), "--report", str(tmp_path)]) == 2
    out = capsys.readouterr()
    assert "is a folder" in out.err and "| mlp |" not in out.out
    assert (
        main(
            ["evaluate-function", str(tmp_path / "mlp"), str(tmp_path / "lin"), "--bootstrap", "50"]
        )
        == 0
    )
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert (
        last.startswith("| lin |") and " to " in last
    )  # difference from the first run with an interval
    # a finished run is not overwritten
    assert main([*common, "--out", str(tmp_path / "mlp")]) == 2


@pytest.mark.slow
def test_finetune_go_mf_with_random_init_baseline(tmp_path, prepared, tiny_checkpoint):
    labels = tmp_path / "deepfri"
    _write_deepfri(labels, prepared, go=True)
    out = tmp_path / "go"
    assert (
        main(
            [
                "finetune",
                "-c",
                str(tiny_checkpoint),
                "--task",
                "go-mf",
                "--labels",
                str(labels),
                "--data",
                str(prepared.path),
                "--random-init",
                "--max-epochs",
                "2",
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["n_classes"] == len(GO_MF) and cfg["finetune"]["random_init"] is True
    assert np.load(out / "predictions_test.npz")["y_score"].shape[1] == len(GO_MF)


def test_finetune_bad_label_folder_is_one_line(tmp_path, prepared, capsys):
    assert (
        main(
            [
                "finetune",
                "-c",
                "small-coords",
                "--labels",
                str(tmp_path),
                "--data",
                str(prepared.path),
                "--out",
                str(tmp_path / "x"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "no nrPDB-EC_annot/train/valid/test file(s)" in err and err.count("\n") == 1


def test_output_bias_starts_at_class_log_odds():
    import torch

    from coordformer.function.finetune import FinetuneConfig, FunctionModule

    y = np.zeros((99, 3), dtype=np.float32)
    y[:9, 0] = 1  # 9 of 99 chains have class 0, 49 class 1, none class 2
    y[:49, 1] = 1
    for head in ("linear", "mlp"):
        m = FunctionModule(FinetuneConfig(head=head), n_classes=3, d_in=8)
        m.init_output_bias(y)
        p = torch.sigmoid(m(({"features": torch.zeros(1, 8)}))[0]) if head == "linear" else None
        last = m.head if head == "linear" else m.head.out[-1]
        prior = torch.sigmoid(last.bias.detach()).numpy()
        # (count + 0.5) / (n + 1): close to the frequency, finite for a class without positives
        np.testing.assert_allclose(prior, [9.5 / 100, 49.5 / 100, 0.5 / 100], rtol=1e-5)
        if p is not None:  # zero features: the linear head predicts exactly the prior
            np.testing.assert_allclose(p.detach().numpy(), prior, rtol=1e-6)


@pytest.mark.slow
def test_linear_head_without_probe_and_with_zero_bias(tmp_path, prepared, tiny_checkpoint):
    labels = tmp_path / "deepfri"
    _write_deepfri(labels, prepared)
    out = tmp_path / "lin0"
    assert (
        main(
            [
                "finetune",
                "-c",
                str(tiny_checkpoint),
                "--labels",
                str(labels),
                "--data",
                str(prepared.path),
                "--head",
                "linear",
                "--probe-epochs",
                "0",
                "--zero-bias",
                "--max-epochs",
                "1",
                "--tokens-per-batch",
                "2048",
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    m = json.loads((out / "metrics.json").read_text())
    assert "probe" not in m and not (out / "checkpoints" / "probe.ckpt").exists()
    cfg = json.loads((out / "config.json").read_text())["finetune"]
    assert cfg["probe_epochs"] == 0 and cfg["prior_bias"] is False


@pytest.mark.slow
def test_finetune_progress_off_a_terminal_is_plain_lines_per_stage(
    tmp_path, prepared, tiny_checkpoint, capsys, monkeypatch
):
    import coordformer.train.progress

    monkeypatch.setattr(coordformer.train.progress, "PLAIN_EVERY_S", 0.0)
    labels = tmp_path / "deepfri"
    _write_deepfri(labels, prepared)
    args = ["finetune", "-c", str(tiny_checkpoint), "--labels", str(labels)]
    args += ["--data", str(prepared.path), "--head", "linear", "--probe-epochs", "2"]
    args += ["--probe-patience", "5", "--max-epochs", "2", "--patience", "5"]
    args += ["--tokens-per-batch", "2048", "--out", str(tmp_path / "run")]
    assert main(args) == 0
    out = capsys.readouterr().out
    # captured output is not a terminal: no tqdm redraws, no logger version number
    assert "\r" not in out and "v_num" not in out and "Epoch " not in out, out
    lines = out.splitlines()
    # epochs counted from 1 against the stage's maximum, with batches, elapsed time and an ETA
    probe = [line for line in lines if line.startswith("linear probe: epoch 2/2, batch ")]
    assert probe and " elapsed, ETA <= 0:" in probe[0], out
    assert any(line.startswith("fine-tune: epoch 1/2, batch ") for line in lines), out
    done = [line for line in lines if line.startswith("fine-tune: epoch 2/2 done, ")]
    assert done and "valid_fmax" in done[0], out
    assert any(line.startswith("fine-tune: ended after 2/2 epochs, ") for line in lines), out
    assert not any("epoch 3/2" in line for line in lines), out


@pytest.mark.slow
def test_pretraining_leakage_is_reported(tmp_path, prepared, tiny_checkpoint):
    from pathlib import Path

    from coordformer.function.finetune import pretraining_leakage

    train, test = prepared.split_indices("train"), prepared.split_indices("test")
    files = {"valid": Path("x_valid.txt"), "test": Path("x_test.txt")}

    def splits(test_idx):
        return {"valid": ([], test[:0], None), "test": ([], test_idx, None)}

    # pretrained on this very dataset: its held-out chains are fine, its train chains are not
    clean = pretraining_leakage(tiny_checkpoint, prepared, files, splits(test))
    assert clean["in_pretraining_train"] == {"valid": 0, "test": 0} and clean["warning"] is None
    ckpt = next((tiny_checkpoint / "checkpoints").glob("*.ckpt"))
    leak = pretraining_leakage(ckpt, prepared, files, splits(train[:3]))
    assert leak["in_pretraining_train"]["test"] == 3 and "not held out" in leak["warning"]
    # a shipped model is judged by the --exclude files its dataset recorded
    ec = {"valid": Path("nrPDB-EC_2020.04_valid.txt"), "test": Path("nrPDB-EC_2020.04_test.txt")}
    ok = pretraining_leakage("small-coords", prepared, ec, splits(test))
    assert ok["known"] and ok["excluded_files"] and ok["warning"] is None
    assert ok["excluded_by"] == "file name"  # what the record allows, said
    other = pretraining_leakage("small-coords", prepared, {**ec, "test": Path("y_test.txt")}, {})
    assert other["excluded_files"] is False and "y_test.txt" in other["warning"]
    # nothing recorded (an exported file): unknown, no claim either way
    assert pretraining_leakage(tmp_path / "model.pt", prepared, files, {})["known"] is False


def test_fine_tuned_predictions_do_not_depend_on_the_frame_of_the_file():
    """Evaluation batches were only centred: rotating a test chain's file changed its scores by up
    to 8% with the linear head (the probe's frozen features were already in the canonical
    frame)."""
    import torch

    from conftest import DATA
    from coordformer.config import FinetuneConfig, preset
    from coordformer.data.batching import chains_to_batch
    from coordformer.function.finetune import FunctionModule
    from coordformer.geometry import random_rotation
    from coordformer.io import read_structure
    from coordformer.model import CoordFormer

    torch.manual_seed(0)
    encoder = CoordFormer(preset("tiny-0.1m"))
    module = FunctionModule(
        FinetuneConfig(head="linear"), 7, encoder.config.d_model, encoder=encoder
    ).eval()
    chains = [read_structure(DATA / "1orc.pdb")[0], read_structure(DATA / "1A8O.pdb")[0]]
    tokens, coords, mask = chains_to_batch(chains)
    from coordformer.batch import Batch

    def scores(c):
        batch = Batch(tokens=tokens, coords=c, padding_mask=mask)
        with torch.no_grad():
            return torch.sigmoid(module({"batch": batch}))

    rot = random_rotation(1, generator=torch.Generator().manual_seed(3))[0]
    moved = coords @ rot.T + torch.tensor([10.0, -4.0, 7.0])
    assert torch.allclose(scores(coords), scores(moved), atol=1e-5)


def test_validation_scores_in_float32_whatever_the_precision():
    """Under bf16-mixed (a GPU's default) validation scored in bf16 (a few hundred distinct values),
    so early stopping ranked epochs by an Fmax that metrics.json's float32 predictions did not
    reproduce."""
    import torch

    from coordformer.config import FinetuneConfig
    from coordformer.function.finetune import FunctionModule

    torch.manual_seed(0)
    module = FunctionModule(FinetuneConfig(head="mlp"), 50, 32).eval()
    batch = {"features": torch.randn(64, 32), "labels": torch.zeros(64, 50)}
    with torch.no_grad():
        ref = torch.sigmoid(module(batch).float())
        with torch.autocast("cpu", dtype=torch.bfloat16):
            module.validation_step(batch, 0)
    scores, _ = module._val[0]
    assert torch.equal(scores, ref)


def test_a_resumed_epoch_trains_on_the_batches_it_had_left(prepared):
    """Lightning calls no on_train_epoch_start in the epoch a run resumes in and asks for the
    batches left from index 0: the structure path then trained on epoch 0's unshuffled plan, and
    the feature path on epoch 0's first batches again."""
    import torch

    from coordformer.config import FinetuneConfig
    from coordformer.function.finetune import _EpochOrder, _StructureBatches

    idx = prepared.split_indices("train")
    y = np.zeros((len(idx), 3), dtype=np.float32)
    ds = _StructureBatches(prepared, idx, y, FinetuneConfig(tokens_per_batch=512), train=True)
    ds.set_epoch(2)
    full = [ds[k]["rows"].tolist() for k in range(len(ds))]
    ds.set_epoch(2, 3)  # resumed after 3 of epoch 2's batches
    assert len(ds) == len(full) - 3
    assert [ds[k]["rows"].tolist() for k in range(len(ds))] == full[3:]

    order = _EpochOrder(10, seed=4, batch_size=2)
    # the loader it replaces (one long-lived shuffling DataLoader): the same order every epoch
    old = torch.utils.data.DataLoader(
        list(range(10)), batch_size=1, shuffle=True, generator=torch.Generator().manual_seed(4)
    )
    passes = [[int(x) for x in old] for _ in range(3)]
    for epoch in range(3):
        order.set_epoch(epoch)
        assert list(order) == passes[epoch]
    order.set_epoch(2, 2)  # resumed after 2 batches of epoch 2
    order.set_epoch(2)  # Lightning's own call at the epoch's start keeps the skip
    assert list(order) == passes[2][4:] and len(order) == 6
    order.set_epoch(3)
    assert len(order) == 10


@pytest.mark.parametrize(
    "bad", [{"lr": -1.0}, {"lr": float("nan")}, {"lr": 0.0}, {"encoder_lr_scale": -0.1}]
)
def test_learning_rates_are_checked_before_training(bad):
    """`--lr -1` trained (the loss climbing) and exited 0; `--lr nan` failed only after training,
    and the folder then refused the corrected command."""
    from coordformer.config import FinetuneConfig
    from coordformer.errors import OptionError

    with pytest.raises(OptionError):
        FinetuneConfig(**bad)
