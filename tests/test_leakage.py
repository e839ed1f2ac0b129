"""Which scored chains a model was trained on: the shipped tables, the check by id and sequence,
`evaluate`'s warning and --unseen-only, and finetune's leakage record."""

import gzip
import hashlib
import json
import sys
from pathlib import Path

import pytest
from tests.conftest import pretrain_args, synthetic_chains, write_jsonl

from coordformer.cli import main
from coordformer.config import PrepareConfig
from coordformer.data.prepare import prepare
from coordformer.data.store import PreparedDataset
from coordformer.eval.leakage import (
    HEADER,
    TrainingChains,
    chain_listing,
    dataset_rows,
    seen_in_training,
    seen_summary,
    sequence_digest,
    training_chains,
    write_training_chains,
)
from coordformer.model.weights import model_card, shipped_models, shipped_models_dir

DEMO = Path(__file__).parents[1] / "src/coordformer/resources/demo/heldout_chains.jsonl.gz"


def _prepare(records, folder: Path, **fractions) -> PreparedDataset:
    src = write_jsonl(records, folder.parent / f"{folder.name}.jsonl")
    cfg = PrepareConfig(min_length=10, **fractions)
    prepare([str(src)], folder, cfg, workers=1, progress=False)
    return PreparedDataset(folder)


def test_every_shipped_model_lists_the_chains_it_saw():
    """Each card names a table of its train and valid chains that is there, holds what the card
    says (counts, SHA-256 of the text) and reads back with those counts."""
    assert shipped_models()
    for name in shipped_models():
        card = model_card(name)
        record = card["training_chains"]
        text = gzip.decompress((shipped_models_dir() / record["file"]).read_bytes()).decode()
        assert hashlib.sha256(text.encode()).hexdigest() == record["sha256"]
        assert text.splitlines()[0].split("\t") == list(HEADER)
        want = {s: card["data"]["splits"][s] for s in ("train", "valid")}
        got = training_chains(name).counts
        assert record["splits"] == got
        if card.get("continued_from"):  # it also saw what the model it continued saw
            assert all(got[s] >= n for s, n in want.items())
        else:
            assert got == want


@pytest.mark.slow
def test_the_bundled_held_out_chains_are_not_among_the_shipped_models_training_chains(tmp_path):
    """The demo's real PDB chains were held out: none matches a shipped model's training chain by
    id or sequence, so the demo's figures are held-out figures."""
    records = [json.loads(line) for line in gzip.open(DEMO, "rt")]
    ds = _prepare(records, tmp_path / "demo", valid_fraction=0.0, test_fraction=0.0)
    for name in shipped_models():
        seen = seen_in_training(training_chains(name), ds, range(len(ds)))
        assert seen["n_chains"] == len(ds) > 10 and seen["seen"] == 0, (name, seen["seen_ids"])


def test_a_chain_counts_as_seen_by_its_id_in_any_spelling_or_by_an_identical_sequence(
    tmp_path, prepared
):
    """An id matches with case and separators ignored (12as_A for 12AS.A); another id with the
    sequence of a training chain matches by sequence; neither counts twice; other chains do not
    match."""
    ids = list(prepared.ids[:4])
    rows = [
        (ids[0].lower().replace(".", "_"), "train", "0" * 16),  # by id only
        ("ZZZZ.Q", "valid", sequence_digest(prepared.sequence(1))),  # by sequence only
        (ids[2], "train", sequence_digest(prepared.sequence(2))),  # both
    ]
    chains = TrainingChains.from_rows(tmp_path / "t.tsv.gz", rows)
    seen = seen_in_training(chains, prepared, [0, 1, 2, 3])
    assert seen["seen"] == 3 and seen["seen_ids"] == ids[:3]
    assert seen["same_id"] == {"train": 2} and seen["same_sequence"] == {"valid": 1, "train": 1}
    line = seen_summary("m", seen, "test")
    assert line.startswith("3 of the 4 chains of split 'test' were in m's training data")
    assert "2 by chain id, 2 by identical sequence" in line


def test_the_table_is_named_by_its_content_and_written_the_same_every_time(tmp_path, prepared):
    a = write_training_chains(dataset_rows(prepared), tmp_path)
    first = (tmp_path / a["file"]).read_bytes()
    b = write_training_chains(dataset_rows(prepared), tmp_path)
    assert a == b and (tmp_path / a["file"]).read_bytes() == first
    assert a["splits"] == {s: len(prepared.split_indices(s)) for s in ("train", "valid")}
    c = write_training_chains(dataset_rows(prepared)[1:], tmp_path)
    assert c["file"] != a["file"]


@pytest.mark.slow
def test_evaluate_warns_of_chains_a_model_saw_and_unseen_only_leaves_them_out(
    tmp_path, prepared, capsys
):
    """A run trained on one dataset, scored on another that holds some of its chains (renamed:
    found by sequence; one under its own id: found by id) and new ones: `evaluate` warns and
    records the count; --unseen-only scores the others; a model that does not list its chains
    is refused with --unseen-only; a run whose dataset changed lists none."""
    run = tmp_path / "run"
    assert (
        main(pretrain_args(prepared.path, run, max_steps=2, tokens_per_batch=1024, quiet=True)) == 0
    )
    seen_ids = {prepared.ids[i] for s in ("train", "valid") for i in prepared.split_indices(s)}
    old = synthetic_chains(60)  # the chains `prepared` was made from
    mixed = [dict(r, name=f"X{i:03d}.B") for i, r in enumerate(old[:12])]
    mixed[0]["name"] = old[0]["name"].lower().replace(".", "_")  # the same id, spelt otherwise
    mixed += [dict(r, name=f"N{i:03d}.A") for i, r in enumerate(synthetic_chains(8, seed=7))]
    ds = _prepare(mixed, tmp_path / "other", valid_fraction=0.0, test_fraction=0.0)
    expected = sum(r["name"] in seen_ids for r in old[:12])
    assert 0 < expected < 12

    out = tmp_path / "eval.json"
    args = ["evaluate", "-c", str(run), "--data", str(ds.path), "--split", "train", "--quiet"]
    assert main([*args, "--json", str(out)]) == 0
    rec = json.loads(out.read_text())
    assert rec["n_chains"] == 20 and rec["seen_in_training"]["seen"] == expected
    assert (
        f"warning: {expected} of the 20 chains of split 'train' were in" in capsys.readouterr().err
    )
    assert main([*args, "--json", str(out), "--unseen-only"]) == 0
    rec = json.loads(out.read_text())
    assert rec["n_chains"] == 20 - expected and rec["settings"]["skipped_chains"] == expected
    assert not set(rec["per_chain"]) & set(rec["seen_in_training"]["seen_ids"])

    pt = tmp_path / "model.pt"
    assert main(["export", "-c", str(run), "--out", str(pt)]) == 0
    capsys.readouterr()
    assert main(["evaluate", "-c", str(pt), *args[3:], "--unseen-only"]) == 2
    err = capsys.readouterr().err.strip()
    assert "does not list the chains it was trained on" in err and len(err.splitlines()) == 1

    # finetune's leakage record counts the task's held-out chains the encoder saw
    from coordformer.function.finetune import pretraining_leakage

    files = {"valid": Path("v.txt"), "test": Path("t.txt")}
    idx = ds.split_indices("train")
    leak = pretraining_leakage(
        run, ds, files, {"valid": ([], idx[:0], None), "test": ([], idx, None)}
    )
    assert leak["seen_in_pretraining"]["test"] == expected and "not held out" in leak["warning"]

    # the run's dataset moved: scored where it lies now (same fingerprint), it stands in
    import shutil

    moved = tmp_path / "moved"
    shutil.move(prepared.path, moved)
    assert training_chains(run) is None
    capsys.readouterr()
    on_moved = ["evaluate", "-c", str(run), "--data", str(moved), "--split", "valid", "--quiet"]
    assert main([*on_moved, "--json", str(out)]) == 0
    err = capsys.readouterr().err
    assert json.loads(out.read_text())["seen_in_training"]["seen"] == len(
        prepared.split_indices("valid")
    )
    assert "not checked" not in err
    # scored on another dataset, the check says it could not be made, and why
    assert main([*args, "--json", str(out)]) == 0
    err = capsys.readouterr().err
    assert f"warning: {run}: its training chains are not checked" in err and "is gone" in err
    assert "seen_in_training" not in json.loads(out.read_text())
    assert main([*args, "--unseen-only"]) == 2
    err = capsys.readouterr().err
    assert "is gone; put it back, or score that dataset" in err and len(err.splitlines()) == 1
    shutil.move(moved, prepared.path)

    # the run's dataset rewritten: its chains are no longer known, and evaluate says why
    manifest = prepared.path / "manifest.json"
    m = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**m, "content_digest": "0" * 32}))
    assert training_chains(run) is None
    assert "holds other data since" in chain_listing(run)[1]


@pytest.mark.slow
def test_a_run_lists_what_its_init_weights_and_its_earlier_datasets_saw(tmp_path, prepared, capsys):
    """`pretrain --init small-coords` saw small-coords' chains too; a run resumed on other data
    (--allow-new-data) saw both datasets; a misspelt model is said as such with --unseen-only; an
    empty split is said as such; finetune's record counts the chains of the encoder's own valid
    split."""
    first = tmp_path / "first"
    assert (
        main(pretrain_args(prepared.path, first, max_steps=2, tokens_per_batch=1024, quiet=True))
        == 0
    )
    own = {s: len(prepared.split_indices(s)) for s in ("train", "valid")}
    assert training_chains(first).counts == own

    cont = tmp_path / "cont"
    flags = dict(max_steps=1, tokens_per_batch=1024, quiet=True, init="small-coords")
    assert main(pretrain_args(prepared.path, cont, preset=None, **flags)) == 0
    shipped = training_chains("small-coords")
    got = training_chains(cont)
    assert (
        got.by_id.keys() >= shipped.by_id.keys()
        and got.counts["train"] == shipped.counts["train"] + own["train"]
    )

    fresh = [dict(r, name=f"M{i:03d}.A") for i, r in enumerate(synthetic_chains(20, seed=9))]
    other = _prepare(fresh, tmp_path / "other", valid_fraction=0.0, test_fraction=0.0)
    import shutil

    resumed = tmp_path / "resumed"
    shutil.copytree(first, resumed)
    args = pretrain_args(
        other.path, resumed, "--allow-new-data", max_steps=4, tokens_per_batch=1024, quiet=True
    )
    assert main(args) == 0
    both = training_chains(resumed)
    assert len(both.sources) == 2 and both.counts["train"] == own["train"] + len(other)
    assert both.complete
    # resumed once more on the new data: the first dataset stays on record
    args = pretrain_args(other.path, resumed, max_steps=5, tokens_per_batch=1024, quiet=True)
    assert main(args) == 0
    assert training_chains(resumed).counts == both.counts
    # shipped, its table lists both datasets: read through the run folder, or piece by piece
    # (a run brought back from a GPU: no config.json, its dataset given with --data)
    sys.path.insert(0, str(Path(__file__).parents[1] / "scripts"))
    import ship_models

    summary = json.loads((resumed / "summary.json").read_text())
    shelf = tmp_path / "shelf"
    shelf.mkdir()
    whole = ship_models.chains_field(shelf, summary["data"], None, run=resumed)
    assert whole["splits"] == both.counts
    gone = {**summary["data"], "path": str(tmp_path / "gone")}
    pieces = ship_models.chains_field(shelf, gone, other.path)
    assert pieces["file"] == whole["file"]

    # --init weights that are not there any more: the run's own chains are still checked, the
    # list says it is partial, evaluate warns, --unseen-only refuses, shipping needs
    # --continued-from
    base = tmp_path / "base.pt"
    assert main(["export", "-c", str(first), "--out", str(base)]) == 0
    late = tmp_path / "late"
    flags = dict(max_steps=1, tokens_per_batch=1024, quiet=True, init=base)
    assert main(pretrain_args(prepared.path, late, preset=None, **flags)) == 0
    base.unlink()
    part = training_chains(late)
    assert part.counts == own and not part.complete and str(base) in part.unknown[0]
    # a Hugging Face export of it writes no partial table, and says why
    capsys.readouterr()
    hf = tmp_path / "late-hf"
    assert main(["export", "-c", str(late), "--format", "hf", "--out", str(hf)]) == 0
    err = capsys.readouterr().err
    assert "no table of training chains written" in err and str(base) in err
    assert not list(hf.glob("chains-*"))
    summary = json.loads((late / "summary.json").read_text())
    with pytest.raises(SystemExit, match="--continued-from"):
        ship_models.chains_field(
            shelf, summary["data"], None, run=late, init=summary["train_config"]["init"]
        )
    capsys.readouterr()
    capsys.readouterr()

    warn = [
        "evaluate",
        "-c",
        str(late),
        "--data",
        str(prepared.path),
        "--split",
        "valid",
        "--quiet",
    ]
    assert main(warn) == 0
    err = capsys.readouterr().err
    assert f"at least {own['valid']} of the {own['valid']} chains" in err and "only in part" in err
    assert main([*warn, "--unseen-only"]) == 2
    assert "lists only part of the chains" in capsys.readouterr().err

    ev = ["evaluate", "--data", str(other.path), "--split", "train", "--quiet", "--unseen-only"]
    assert main([*ev, "-c", "no-such-model"]) == 2
    err = capsys.readouterr().err
    assert "no-such-model" in err and "does not list the chains" not in err
    (other.path / "splits" / "valid.txt").write_text("")
    assert main([*ev[:4], "valid", "--quiet", "--unseen-only", "-c", str(first)]) == 2
    assert "split 'valid' is empty" in capsys.readouterr().err

    from coordformer.function.finetune import pretraining_leakage

    files = {"valid": Path("v.txt"), "test": Path("t.txt")}
    valid = prepared.split_indices("valid")
    leak = pretraining_leakage(
        first, prepared, files, {"valid": ([], valid[:0], None), "test": ([], valid, None)}
    )
    assert leak["in_pretraining_train"] == {"valid": 0, "test": 0}  # not in its train split
    assert leak["seen_in_pretraining"]["test"] == len(valid) and "valid split" in leak["warning"]


@pytest.mark.slow
def test_a_resume_keeps_the_init_on_record_and_an_export_in_its_run_lists_the_runs_chains(
    tmp_path, prepared, monkeypatch, capsys
):
    """--init is recorded absolute; a resume without it keeps it (its chains stay listed), one
    with other weights is refused; a model exported into its run's export/ folder lists the run's
    chains."""
    monkeypatch.chdir(tmp_path)
    flags = dict(tokens_per_batch=1024, quiet=True)
    assert main(pretrain_args(prepared.path, "first", max_steps=2, **flags)) == 0
    assert main(["export", "-c", "first", "--out", "first/export/last.pt"]) == 0
    assert training_chains(tmp_path / "first" / "export" / "last.pt").counts == (
        training_chains(tmp_path / "first").counts
    )
    other = _prepare(
        [dict(r, name=f"M{i:03d}.A") for i, r in enumerate(synthetic_chains(20, seed=9))],
        tmp_path / "other",
        valid_fraction=0.0,
        test_fraction=0.0,
    )
    run = tmp_path / "second"
    assert (
        main(pretrain_args(other.path, run, preset=None, init="first", max_steps=1, **flags)) == 0
    )
    recorded = json.loads((run / "config.json").read_text())["train_config"]["init"]
    assert recorded == str(tmp_path / "first")
    full = training_chains(run).counts
    assert full["train"] == 20 + len(prepared.split_indices("train"))
    # resumed without --init (the architecture named instead): the record and the list stay
    assert main(pretrain_args(other.path, run, max_steps=2, **flags)) == 0
    assert json.loads((run / "config.json").read_text())["train_config"]["init"] == recorded
    assert training_chains(run).counts == full
    capsys.readouterr()
    # resumed with other weights: refused, in one line
    args = pretrain_args(
        other.path, run, preset=None, init="first/export/last.pt", max_steps=3, **flags
    )
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "started from" in err and len(err.splitlines()) == 1


@pytest.mark.slow
def test_the_library_records_init_absolute_and_a_resume_takes_a_relative_record_it_cannot_find(
    tmp_path, prepared, monkeypatch, caplog
):
    """`pretrain()` (not only the CLI) records `init` absolute; a run recorded with a relative
    `init` by an older version, resumed from another working directory with the weights given
    again, keeps the given weights on record (a warning says so) instead of refusing them; a
    shipped model's name is still held to."""
    import torch

    from coordformer.config import TrainConfig, preset
    from coordformer.errors import OptionError
    from coordformer.train.run import pretrain

    monkeypatch.chdir(tmp_path)
    mc = preset("tiny-0.1m")
    tc = TrainConfig(max_steps=1, tokens_per_batch=1024, crop_length=64, warmup_steps=1)
    pretrain(prepared.path, "first", mc, tc, progress=False)
    pretrain(prepared.path, "second", mc, tc.replace(init="first"), progress=False)
    record = json.loads((tmp_path / "second" / "config.json").read_text())["train_config"]
    assert record["init"] == str(tmp_path / "first")

    last = tmp_path / "second" / "checkpoints" / "last.ckpt"

    def resume_recorded_as(init: str, steps: int) -> None:
        """Resume "second" with init=first, its checkpoint rewritten to record ``init``."""
        ckpt = torch.load(last, weights_only=False)
        ckpt["coordformer"]["train_config"]["init"] = init
        torch.save(ckpt, last)
        first = str(tmp_path / "first")
        pretrain(
            prepared.path, "second", mc, tc.replace(init=first, max_steps=steps), progress=False
        )

    # as an older version left it: relative to a working directory that is not this one
    caplog.clear()
    with caplog.at_level("WARNING", logger="coordformer.train.run"):
        resume_recorded_as("runs/first", 2)
    assert "runs/first" in caplog.text and "not there from here" in caplog.text
    record = json.loads((tmp_path / "second" / "config.json").read_text())["train_config"]
    assert record["init"] == str(tmp_path / "first")
    assert training_chains(tmp_path / "second").complete

    with pytest.raises(OptionError, match="started from small-coords"):
        resume_recorded_as("small-coords", 3)


def test_a_hugging_face_export_carries_the_chains_its_model_saw(tmp_path):
    """`export --format hf` of a shipped model writes its table into the folder and records it, so
    that the check (and finetune's exclude-file record) works on the folder as on the name."""
    from coordformer.model.weights import pretraining_data

    out = tmp_path / "hf"
    assert main(["export", "-c", "small-coords", "--format", "hf", "--out", str(out)]) == 0
    tables = sorted(p.name for p in out.glob("chains-*.tsv.gz"))
    assert tables == [model_card("small-coords")["training_chains"]["file"]]
    assert training_chains(out).counts == training_chains("small-coords").counts
    assert pretraining_data(out)["config"] == model_card("small-coords")["data"]["config"]
    assert tables[0] in (out / "README.md").read_text()
    # the table gone (only the weights uploaded): the list is unknown, not empty
    (out / tables[0]).unlink()
    assert training_chains(out) is None
    # exported again over it from a model without a list: no stale table, no record
    assert main(["export", "-c", "small-coords", "--format", "hf", "--out", str(out)]) == 0
    pt = tmp_path / "m.pt"
    assert main(["export", "-c", "small-coords", "--out", str(pt)]) == 0
    assert main(["export", "-c", str(pt), "--format", "hf", "--out", str(out)]) == 0
    assert not list(out.glob("chains-*")) and pretraining_data(out) is None

    # folder -> file -> folder: the record read from the first folder names a table that the
    # file does not carry, so neither copy keeps it
    import torch

    assert main(["export", "-c", "small-coords", "--format", "hf", "--out", str(out)]) == 0
    assert main(["export", "-c", str(out), "--out", str(pt)]) == 0
    assert "pretraining_data" not in torch.load(pt, weights_only=False)["meta"]
    again = tmp_path / "hf2"
    assert main(["export", "-c", str(pt), "--format", "hf", "--out", str(again)]) == 0
    assert pretraining_data(again) is None and training_chains(again) is None


def test_a_corrupt_table_in_an_exported_folder_leaves_its_chains_unchecked(
    tmp_path, prepared, capsys
):
    """A table cut short in a downloaded folder, or left out of it, is not the package's fault:
    evaluate warns that the chains are not checked and scores the split; --unseen-only refuses,
    as for a folder without a table. A shipped table that does not read still says to
    reinstall. The export names the table among the files it wrote."""
    from coordformer.eval.leakage import read_rows

    out = tmp_path / "hf"
    assert main(["export", "-c", "small-coords", "--format", "hf", "--out", str(out)]) == 0
    table = next(out.glob("chains-*.tsv.gz"))
    assert table.name in capsys.readouterr().out
    blob = table.read_bytes()
    table.write_bytes(blob[:100])
    assert training_chains(out) is None
    why = chain_listing(out)[1]
    assert "download or export the folder again" in why and "reinstall" not in why

    ev = ["evaluate", "-c", str(out), "--data", str(prepared.path), "--split", "test", "--quiet"]
    assert main(ev) == 0
    err = capsys.readouterr().err
    assert "its training chains are not checked" in err and "download or export" in err
    assert main([*ev, "--unseen-only"]) == 2
    assert "does not list the chains" in capsys.readouterr().err

    with pytest.raises(Exception, match="reinstall coordformer"):
        read_rows(table)

    table.unlink()  # only the weights and config.json downloaded
    assert main(ev) == 0
    err = capsys.readouterr().err
    assert f"{table.name}, named in its config.json, is not in the folder" in err


def test_weights_put_in_another_models_folder_do_not_take_its_list(
    tmp_path, prepared, monkeypatch, capsys
):
    """A run's list goes with weights that saw what the run saw (same dataset, earlier datasets
    and --init, recorded in the export), wherever they lie in it and whatever the folder is
    called: exported from inside the run by relative paths, into its root, a copy of the run under
    another name, a checkpoint copied out of checkpoints/. Weights that saw something else do not
    take it: small-coords exported into the run, another run's export put in a folder of the same
    name, a .pt put in a Hugging Face folder."""
    import shutil

    run = tmp_path / "run"
    flags = dict(max_steps=1, tokens_per_batch=1024, quiet=True)
    assert main(pretrain_args(prepared.path, run, **flags)) == 0
    own = training_chains(run).counts
    monkeypatch.chdir(run)
    assert main(["export", "-c", "checkpoints/last.ckpt", "--out", "export/b.pt"]) == 0
    assert main(["export", "-c", ".", "--out", "model.pt"]) == 0
    assert main(["export", "-c", "export/b.pt", "--out", "export/b2.pt"]) == 0  # export of export
    monkeypatch.chdir(tmp_path)
    for f in ("export/b.pt", "model.pt", "export/b2.pt"):
        assert training_chains(run / f).counts == own, f
    shutil.copy(run / "checkpoints" / "last.ckpt", run / "last.ckpt")
    assert training_chains(run / "last.ckpt").counts == own
    shutil.copytree(run, tmp_path / "run-copy")
    assert training_chains(tmp_path / "run-copy" / "export" / "b.pt").counts == own

    assert main(["export", "-c", "small-coords", "--out", str(run / "export" / "sc.pt")]) == 0
    assert training_chains(run / "export" / "sc.pt") is None
    other = _prepare(
        [dict(r, name=f"M{i:03d}.A") for i, r in enumerate(synthetic_chains(20, seed=9))],
        tmp_path / "other",
        valid_fraction=0.0,
        test_fraction=0.0,
    )
    exp2 = tmp_path / "exp2" / "run"
    assert main(pretrain_args(other.path, exp2, **flags)) == 0
    (exp2 / "export").mkdir()
    shutil.copy(run / "export" / "b.pt", exp2 / "export" / "from_exp1.pt")
    assert training_chains(exp2 / "export" / "from_exp1.pt") is None

    hf = tmp_path / "hf"
    assert main(["export", "-c", str(run), "--format", "hf", "--out", str(hf)]) == 0
    assert training_chains(hf).counts == own
    assert main(["export", "-c", "small-coords", "--out", str(hf / "sc.pt")]) == 0
    assert training_chains(hf / "sc.pt") is None

    # the run's dataset moved away: an export to a folder writes no table, and says why
    shutil.move(prepared.path, tmp_path / "moved")
    capsys.readouterr()
    assert main(["export", "-c", str(run), "--format", "hf", "--out", str(tmp_path / "hf2")]) == 0
    err = capsys.readouterr().err
    assert "no table of training chains written" in err and "is gone" in err
    assert not list((tmp_path / "hf2").glob("chains-*"))


@pytest.mark.slow
def test_init_cannot_name_the_runs_own_folder_and_a_gone_absolute_init_stays_on_record(
    tmp_path, prepared, monkeypatch, capsys
):
    """`--out small-coords --init small-coords` is refused in one line (it recorded the run as its
    own start); a resume of a run whose absolute --init is gone, given other weights, is refused
    (its list stays partial rather than claiming another model's chains)."""
    monkeypatch.chdir(tmp_path)
    flags = dict(tokens_per_batch=1024, quiet=True, max_steps=1)
    args = pretrain_args(prepared.path, "small-coords", preset=None, init="small-coords", **flags)
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "names the run's own folder" in err and len(err.splitlines()) == 1
    assert main(pretrain_args(prepared.path, "a", **flags)) == 0
    assert main(pretrain_args(prepared.path, "b", **flags)) == 0
    assert main(pretrain_args(prepared.path, "c", preset=None, init="a", **flags)) == 0
    import shutil

    shutil.rmtree(tmp_path / "a")
    assert not training_chains(tmp_path / "c").complete
    capsys.readouterr()
    args = pretrain_args(prepared.path, "c", preset=None, init="b", **{**flags, "max_steps": 2})
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "which is no longer there" in err and "resume without --init" in err
    assert len(err.splitlines()) == 1
    assert not training_chains(tmp_path / "c").complete
