"""Folder scanning names every file it does not read (issue 20, item 8): broken links, unreadable
folders, linked folders (followed once), extension-less structure files (sniffed), archives; and a
chain whose coordinates are all zero is counted as a warning."""

from __future__ import annotations

import bz2
import csv
import gzip
import json
import os
import shutil
import tarfile
import zipfile
from pathlib import Path

from coordformer.config import PrepareConfig
from coordformer.data.prepare import prepare
from coordformer.io import find_sources

DATA = Path(__file__).parent / "data"


def _skipped(out: Path) -> dict[str, str]:
    with open(out / "skipped.tsv", newline="") as f:
        return {row["input"]: row["reason"] for row in csv.DictReader(f, delimiter="\t")}


def _cfg(**kw) -> PrepareConfig:
    return PrepareConfig(min_length=1, valid_fraction=0.0, test_fraction=0.0, **kw)


def _messy_folder(tmp_path: Path) -> Path:
    root = tmp_path / "in"
    root.mkdir()
    shutil.copy(DATA / "1A8O.pdb", root / "1A8O.pdb")
    dompdb = root / "dompdb"  # CATH: PDB files without a name ending
    dompdb.mkdir()
    shutil.copy(DATA / "1orc.pdb", dompdb / "1orcA00")
    (dompdb / "1lcdA01").write_bytes(
        gzip.compress((DATA / "1LCD.pdb").read_bytes())
    )  # gzipped, no ending
    (root / "x.pdb.bz2").write_bytes(bz2.compress((DATA / "1A8O.pdb").read_bytes()))
    with zipfile.ZipFile(root / "models.zip", "w") as z:
        z.write(DATA / "1A8O.pdb", "1A8O.pdb")
    with tarfile.open(root / "models.tar.gz", "w:gz") as t:
        t.add(DATA / "1A8O.pdb", "1A8O.pdb")
    (root / "model_1_bz").write_bytes(bz2.compress(b"ATOM"))  # compressed, name says nothing
    (root / "notes").write_text("some notes\n")
    os.symlink(root / "gone.pdb", root / "dangling.pdb")
    return root


def test_find_sources_names_every_file_it_does_not_read(tmp_path):
    root = _messy_folder(tmp_path)
    sources, problems = find_sources([root])
    assert sources == [root / "1A8O.pdb", root / "dompdb" / "1lcdA01", root / "dompdb" / "1orcA00"]
    why = dict(problems)
    assert "broken symbolic link" in why[str(root / "dangling.pdb")]
    assert "bzip2" in why[str(root / "x.pdb.bz2")] and "unpack" in why[str(root / "x.pdb.bz2")]
    assert "bzip2" in why[str(root / "model_1_bz")]
    assert "zip archive" in why[str(root / "models.zip")]
    assert "tar archive" in why[str(root / "models.tar.gz")]
    assert "neither PDB nor mmCIF" in why[str(root / "notes")]
    assert len(problems) == 6


def test_prepare_lists_skipped_files_and_reads_extensionless_pdb(tmp_path):
    root = _messy_folder(tmp_path)
    out = tmp_path / "ds"
    summary = prepare([str(root)], out, _cfg(), progress=False)
    skipped = _skipped(out)
    for name in ("dangling.pdb", "x.pdb.bz2", "models.zip", "models.tar.gz", "model_1_bz", "notes"):
        assert str(root / name) in skipped, name
    assert summary.inputs_skipped == 6
    chains = (out / "chains.tsv").read_text()
    assert "1ORC.A\t" in chains and "1lcdA01.A\t" in chains  # read by sniffing their content
    assert str(root / "dompdb" / "1orcA00") in chains


def test_linked_folders_followed_once_and_loops_end(tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    shutil.copy(DATA / "1orc.pdb", outside / "1orc.pdb")
    root = tmp_path / "in"
    (root / "sub").mkdir(parents=True)
    shutil.copy(DATA / "1A8O.pdb", root / "sub" / "1A8O.pdb")
    os.symlink(outside, root / "linked")  # a folder behind a link: searched
    os.symlink(root, root / "sub" / "up")  # a loop back to the top: not searched again
    os.symlink(root / "sub", root / "again")  # a second way into a folder already searched
    sources, problems = find_sources([root])
    assert sources == [root / "linked" / "1orc.pdb", root / "sub" / "1A8O.pdb"]
    why = dict(problems)
    assert "searched already" in why[str(root / "sub" / "up")]
    assert "searched already" in why[str(root / "again")]
    assert len(problems) == 2


def test_unreadable_subfolder_is_listed(tmp_path, monkeypatch):
    root = tmp_path / "in"
    (root / "locked").mkdir(parents=True)
    shutil.copy(DATA / "1A8O.pdb", root / "1A8O.pdb")
    shutil.copy(DATA / "1orc.pdb", root / "locked" / "1orc.pdb")
    real_scandir = os.scandir

    def scandir(path="."):  # tests run as root, for whom chmod 000 hides nothing
        if isinstance(path, (str, os.PathLike)) and Path(path) == root / "locked":
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    out = tmp_path / "ds"
    prepare([str(root)], out, _cfg(), progress=False)
    skipped = _skipped(out)
    assert skipped[str(root / "locked")] == "cannot read folder: Permission denied"
    assert "1A8O.A" in (out / "chains.tsv").read_text()


def test_explicit_dangling_link_is_named(tmp_path):
    os.symlink(tmp_path / "gone.pdb", tmp_path / "x.pdb")
    _, problems = find_sources([tmp_path / "x.pdb"])
    assert "broken symbolic link" in problems[0][1]


def test_all_zero_coordinates_chain_is_counted(tmp_path):
    lines = (DATA / "1orc.pdb").read_text().splitlines(keepends=True)
    zeroed = [
        l[:30] + f"{0.0:8.3f}{0.0:8.3f}{0.0:8.3f}" + l[54:]
        if l.startswith(("ATOM", "HETATM"))
        else l
        for l in lines
    ]
    src = tmp_path / "in"
    src.mkdir()
    (src / "zero.pdb").write_text("".join(l for l in zeroed if not l.startswith("HEADER")))
    shutil.copy(DATA / "1A8O.pdb", src / "1A8O.pdb")
    out = tmp_path / "ds"
    summary = prepare([str(src)], out, _cfg(), progress=False)
    assert summary.chains_zero_coords == 1
    assert summary.zero_coords_examples[0].startswith("zero.A")
    assert "every coordinate at (0, 0, 0)" in summary.format()
    assert json.loads((out / "manifest.json").read_text())["counts"]["chains_zero_coords"] == 1
