"""A shipped model that never learnt the missing-coordinate flag says so on mostly coordinate-less
inputs (issue 20, item 9): its card records it, and embed / evaluate / finetune warn once, naming
small-coords-sd."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from coordformer.cli import main
from coordformer.model.checkpoints import (
    load_model,
    missing_coords_warning,
    missing_flag_learnt,
    model_card,
    shipped_models,
)

DATA = Path(__file__).parent / "data"
FASTA = (
    ">seq1 test\n"
    "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQAPILSRVGDGTQDNLSGAEKAVQVKVKALPDAQFEVVHSLAKWKRQT"
    "LGQHDFSAGEGLYTHMKALRPDEDRLSPLHSVYVDQWDWERVMGDGERQFSTLKSTVEAIWAGIKATEAAVSEEFGLAPF"
    "LPDQIHFVHSQELLSRYPDLDAKGRERAIAKDLGAVFLVGIGGKLSDGHRHDVRAPDYDDWSTPSELGHAGLNGDILVWN"
    "PVLEDAFELSSMGIRVDADTLKHQLALTGDEDRLELEWHQALLRGEMPQTIGGGIGQSRLTMLLLQLPHIGQVQAGVWPA"
    "ACRESVPALL\n"
    ">seq2\n"
    "MSDKIIHLTDDSFDTDVLKADGAILVDFWAEWCGPCKMIAPILDEIADEYQGKLTVAKLNIDQNPGTAPKYGIRGIPTLL"
    "LFKNGEVAASKVGALSKGQLKEFLDANLA\n"
)


def _fasta(tmp_path: Path) -> Path:
    p = tmp_path / "seqs.fasta"
    p.write_text(FASTA)
    return p


def _warnings(text: str) -> list[str]:
    return [
        line for line in text.splitlines() if line.startswith("warning:") and "never learnt" in line
    ]


def test_shipped_cards_record_whether_the_flag_was_learnt():
    assert set(shipped_models()) >= {"small-coords", "small-nocoords", "small-coords-sd"}
    expected = {"small-coords": False, "small-nocoords": None, "small-coords-sd": True}
    for name, learnt in expected.items():
        card = model_card(name)
        assert card["learnt_missing_flag"] is learnt, name
        assert card["missing_flag_note"]
        # the same answer from the training config alone (cards without the field)
        assert (
            missing_flag_learnt({k: v for k, v in card.items() if k != "learnt_missing_flag"})
            is learnt
        ), name
    assert model_card("small-coords")["without_coords_use"] == "small-coords-sd"
    assert load_model("small-coords")[1]["learnt_missing_flag"] is False
    assert load_model("small-coords-sd")[1]["learnt_missing_flag"] is True


def test_embed_fasta_with_small_coords_warns_once(tmp_path, capsys):
    fasta = _fasta(tmp_path)
    assert (
        main(["embed", str(fasta), "-c", "small-coords", "-o", str(tmp_path / "a.npz"), "--quiet"])
        == 0
    )
    err = capsys.readouterr().err
    (line,) = _warnings(err)
    assert "100%" in line and "small-coords" in line and "-c small-coords-sd" in line
    assert (
        main(
            ["embed", str(fasta), "-c", "small-coords-sd", "-o", str(tmp_path / "b.npz"), "--quiet"]
        )
        == 0
    )
    assert (
        main(
            ["embed", str(fasta), "-c", "small-nocoords", "-o", str(tmp_path / "c.npz"), "--quiet"]
        )
        == 0
    )
    assert not _warnings(capsys.readouterr().err)


def test_embed_structures_warns_only_when_coordinates_are_withheld(tmp_path, capsys):
    pdb = DATA / "1orc.pdb"
    assert (
        main(["embed", str(pdb), "-c", "small-coords", "-o", str(tmp_path / "a.npz"), "--quiet"])
        == 0
    )
    assert not _warnings(capsys.readouterr().err)
    assert (
        main(
            [
                "embed",
                str(pdb),
                "-c",
                "small-coords",
                "-o",
                str(tmp_path / "b.npz"),
                "--quiet",
                "--no-coords",
            ]
        )
        == 0
    )
    assert len(_warnings(capsys.readouterr().err)) == 1


def test_evaluate_hide_coords_all_warns(tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    for name in ("1orc.pdb", "1A8O.pdb", "1LCD.pdb"):
        shutil.copy(DATA / name, src / name)
    ds = tmp_path / "ds"
    assert (
        main(
            [
                "prepare",
                str(src),
                "-o",
                str(ds),
                "--min-length",
                "5",
                "--valid-fraction",
                "0",
                "--test-fraction",
                "0",
                "--quiet",
                "--workers",
                "1",
            ]
        )
        == 0
    )
    capsys.readouterr()
    base = [
        "evaluate",
        "-c",
        "small-coords",
        "-d",
        str(ds),
        "--split",
        "train",
        "--quiet",
        "--device",
        "cpu",
    ]
    assert main(base) == 0
    assert not _warnings(capsys.readouterr().err)
    assert main([*base, "--hide-coords", "all", "-c", "small-coords-sd"]) == 0
    (line,) = _warnings(capsys.readouterr().err)  # one line, for small-coords only
    assert "small-coords-sd" in line


def test_exported_copies_keep_the_record(tmp_path):
    pt, hf = tmp_path / "m.pt", tmp_path / "m-hf"
    assert main(["export", "-c", "small-coords", "-o", str(pt)]) == 0
    assert main(["export", "-c", "small-coords", "-o", str(hf), "--format", "hf"]) == 0
    for path in (pt, hf):
        model, meta = load_model(str(path))
        assert meta["learnt_missing_flag"] is False, path
        assert "small-coords-sd" in missing_coords_warning(model, meta, fraction=0.9)
        assert missing_coords_warning(model, meta, fraction=0.4) is None


def test_training_checkpoints_with_structure_dropout_count_as_learnt(tmp_path):
    model, _ = load_model("small-coords")
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    for drop, learnt in ((0.15, True), (0.0, None)):
        ckpt = tmp_path / f"d{drop}.ckpt"
        torch.save(
            {
                "state_dict": state,
                "coordformer": {
                    "model_config": model.config.to_dict(),
                    "train_config": {"drop_chain_coords": drop},
                },
            },
            ckpt,
        )
        m, meta = load_model(str(ckpt))
        assert meta.get("learnt_missing_flag") is learnt
        # unknown (a run without dropout may have trained on gaps): no warning
        assert missing_coords_warning(m, meta, fraction=1.0) is None
