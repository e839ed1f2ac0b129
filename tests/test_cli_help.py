"""CLI help reads at 80 columns: whole option names, no <bool> column for flags; --version; a
bare `coordformer` prints the help; --workers 0 means this process everywhere (issue 20)."""

import typer

from coordformer import __version__
from coordformer.cli import app, main


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"coordformer {__version__}"


def test_help_shows_whole_option_names_at_80_columns(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    group = typer.main.get_command(app)
    for name, command in group.commands.items():
        assert main([name, "--help"]) == 0, name
        text = capsys.readouterr().out
        assert "<bool>" not in text and "…" not in text, name
        assert max(map(len, text.splitlines())) <= 80, name
        for param in command.params:
            for opt in (*param.opts, *param.secondary_opts):
                if opt.startswith("--"):
                    assert opt in text, (name, opt)


def test_no_arguments_prints_the_help_not_an_error(capsys):
    assert main([]) == 2  # click's status for a bare group
    captured = capsys.readouterr()
    assert captured.out.startswith("Usage: coordformer") and "Commands:" in captured.out
    assert "pretrain" in captured.out and "error" not in captured.err


def test_workers_0_reads_in_this_process_as_pretrain_takes_it(tmp_path):
    """`pretrain --workers 0` loads batches in the main process; prepare and embed take 0 the
    same way (their library calls always did) instead of refusing it."""
    from pathlib import Path

    pdb = Path(__file__).parent / "data" / "1orc.pdb"
    ds = tmp_path / "ds"
    args = ["--valid-fraction", "0", "--test-fraction", "0", "--quiet"]
    assert main(["prepare", str(pdb), "-o", str(ds), "--workers", "0", *args]) == 0
    assert (ds / "manifest.json").exists()
    out = tmp_path / "e.npz"
    assert main(["embed", str(pdb), "-c", "small-coords", "-o", str(out), "--workers", "0"]) == 0
    assert out.exists()


def test_threads_holds_for_the_command_only(tmp_path, monkeypatch):
    """evaluate, embed, score, analyze-attention and finetune take --threads like pretrain; the
    count is put back when the command returns (main runs in-process in tests and notebooks)."""
    from pathlib import Path

    import torch

    pdb = Path(__file__).parent / "data" / "1orc.pdb"
    ds = tmp_path / "ds"
    args = ["--valid-fraction", "0", "--test-fraction", "0", "--quiet"]
    assert main(["prepare", str(pdb), "-o", str(ds), *args]) == 0
    before = torch.get_num_threads()
    seen = []
    real = torch.set_num_threads
    monkeypatch.setattr(torch, "set_num_threads", lambda n: (seen.append(n), real(n)))
    evaluate = ["evaluate", "-c", "small-coords", "--data", str(ds), "--split", "train"]
    assert main([*evaluate, "--device", "cpu", "--quiet", "--threads", "1"]) == 0
    assert seen[0] == 1 and torch.get_num_threads() == before
    group = typer.main.get_command(app)
    for name in ("evaluate", "embed", "score", "analyze-attention", "finetune", "pretrain"):
        opts = {o for p in group.commands[name].params for o in p.opts}
        assert "--threads" in opts, name
