"""`coordformer score`: masked marginals, pseudo-perplexity and substitution scores, checked against
direct forward passes of a tiny model, plus invariants, error handling and the CLI end to end."""

import csv
import json

import numpy as np
import pytest
import torch

from conftest import DATA, synthetic_chains
from coordformer.cli import main
from coordformer.config import preset
from coordformer.constants import AA_OFFSET, AMINO_ACIDS, MASK
from coordformer.errors import OptionError
from coordformer.geometry import canonical_frame
from coordformer.io import Chain, read_structure
from coordformer.model import CoordFormer
from coordformer.model.checkpoints import load_model
from coordformer.score import (
    MutationError,
    ScoreConfig,
    masked_marginals,
    masking_plan,
    missing_structure_warning,
    parse_mutant,
    score_mutations,
    substitution_matrix,
)
from coordformer.score.marginals import chain_tokens
from coordformer.score.structure import ca_neighbour_counts, secondary_structure

AA = {a: i for i, a in enumerate(AMINO_ACIDS)}


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return CoordFormer(preset("tiny-0.1m")).eval()


def _chains(n=3, seed=0, min_len=30, max_len=70):
    out = []
    for r in synthetic_chains(n, seed=seed, min_len=min_len, max_len=max_len):
        coords = np.stack(
            [np.asarray(r["coords"][a], dtype=np.float32) for a in ("N", "CA", "C", "O")], axis=1
        )
        out.append(Chain(id=r["name"], sequence=r["seq"], coords=coords, source="synthetic"))
    return out


@torch.no_grad()
def _direct(model, chain, masked, start=0, span=None):
    """log p over the 20 amino acids at ``masked`` (0-based chain indices), all masked in one pass
    over residues start:start+span, computed here from the model's forward alone (in the canonical
    frame of the span's CAs, as scoring feeds it)."""
    span = len(chain.sequence) if span is None else span
    tok = torch.from_numpy(chain_tokens(chain.sequence)[start : start + span].copy())
    for i in masked:
        tok[i - start] = MASK
    coords = torch.from_numpy(chain.coords[start : start + span].copy())
    logits = model(tok[None], canonical_frame(coords[None])).logits[0]
    return torch.log_softmax(
        logits[[i - start for i in masked]][:, AA_OFFSET : AA_OFFSET + 20], -1
    ).numpy()


def test_masked_marginals_match_a_direct_forward_pass(tiny):
    chains = _chains(2)
    scores = masked_marginals(tiny, chains)
    for c, s in zip(chains, scores):
        assert s.log_probs.shape == (len(c.sequence), 20)
        for i in (0, 7, len(c.sequence) - 1):
            np.testing.assert_allclose(s.log_probs[i], _direct(tiny, c, [i])[0], atol=1e-5)
        lp_wt = np.array(
            [_direct(tiny, c, [i])[0][AA[c.sequence[i]]] for i in range(len(c.sequence))]
        )
        np.testing.assert_allclose(s.log_p_wt, lp_wt, atol=1e-5)
        assert s.pseudo_perplexity == pytest.approx(float(np.exp(-lp_wt.mean())), rel=1e-5)
        p = np.exp(s.log_probs.astype(np.float64))
        np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-5)
        np.testing.assert_allclose(s.entropy, -(p * np.log(p)).sum(1), atol=1e-5)
        assert s.n_passes == len(c.sequence)


def test_mutation_scores_by_hand(tiny):
    [c] = _chains(1)
    seq = c.sequence
    m1, m2 = f"{seq[4]}5A", f"{seq[20]}21W"
    lp4, lp20 = _direct(tiny, c, [4])[0], _direct(tiny, c, [20])[0]
    s1 = lp4[AA["A"]] - lp4[AA[seq[4]]]
    s2 = lp20[AA["W"]] - lp20[AA[seq[20]]]
    res = score_mutations(tiny, [c], [m1, m2, f"{m1}:{m2}"], strict=True)
    assert [r.score for r in res.scored] == pytest.approx([s1, s2, s1 + s2], abs=1e-5)
    # joint: both positions masked in the same pass
    both = _direct(tiny, c, [4, 20])
    joint = both[0][AA["A"]] - both[0][AA[seq[4]]] + both[1][AA["W"]] - both[1][AA[seq[20]]]
    res = score_mutations(tiny, [c], [f"{m1}:{m2}", m1], multi="joint", strict=True)
    assert res.scored[0].score == pytest.approx(joint, abs=1e-5)
    assert res.scored[1].score == pytest.approx(
        s1, abs=1e-5
    )  # a single mutant is the same in both modes
    assert abs(joint - (s1 + s2)) > 1e-7  # the modes really differ


def test_invariants_wild_type_zero_and_additivity(tiny):
    chains = _chains(2)
    a, b = chains
    wt_self = [f"{a.sequence[i]}{i + 1}{a.sequence[i]}" for i in (0, 9, 30)]
    res = score_mutations(tiny, [a], wt_self + ["WT"], strict=True)
    assert [r.score for r in res.scored] == [0.0, 0.0, 0.0, 0.0]
    singles = [f"{a.sequence[i]}{i + 1}{'G' if a.sequence[i] != 'G' else 'P'}" for i in (2, 11, 25)]
    res = score_mutations(tiny, [a], singles + [":".join(singles)], strict=True)
    assert res.scored[3].score == pytest.approx(sum(r.score for r in res.scored[:3]), abs=1e-6)
    assert res.scored[3].terms == pytest.approx([r.score for r in res.scored[:3]], abs=1e-7)
    # the full substitution matrix agrees with the mutant scores
    [s] = masked_marginals(tiny, [a])
    mat = substitution_matrix(s)
    assert mat[11, AA[singles[1][-1]]] == pytest.approx(res.scored[1].score, abs=1e-6)
    assert np.allclose(mat[np.arange(len(a.sequence)), [AA[x] for x in a.sequence]], 0)
    # two chains: qualified mutants, summed across chains
    res = score_mutations(
        tiny,
        chains,
        [
            f"S000.A:{singles[0]}",
            f"{b.id}:{b.sequence[3]}4C",
            f"A:{singles[0]}:S001.A:{b.sequence[3]}4C",
        ],
    )
    assert res.skipped == [
        (
            2,
            f"A:{singles[0]}:S001.A:{b.sequence[3]}4C",
            "chain 'A' is ambiguous: several inputs have it; use the full id (ENTRY.CHAIN)",
        )
    ]
    res2 = score_mutations(
        tiny, chains, [f"S000.A:{singles[0]}:S001.A:{b.sequence[3]}4C"], strict=True
    )
    assert res2.scored[0].score == pytest.approx(
        res.scored[0].score + res.scored[1].score, abs=1e-6
    )


def test_batch_invariance(tiny):
    chains = _chains(5, seed=3, min_len=20, max_len=90)
    together = masked_marginals(tiny, chains, ScoreConfig(tokens_per_batch=4000))
    for k in (0, 3):
        [alone] = masked_marginals(tiny, [chains[k]])
        np.testing.assert_allclose(alone.log_probs, together[k].log_probs, atol=2e-5)
    # and mutation scores do not depend on the other chains scored with them
    m = f"{chains[3].sequence[5]}6A"
    alone = score_mutations(tiny, [chains[3]], [m], strict=True).scored[0].score
    mixed = (
        score_mutations(
            tiny,
            chains,
            [f"{chains[3].id}:{m}", f"{chains[0].id}:{chains[0].sequence[0]}1A"],
            strict=True,
        )
        .scored[0]
        .score
    )
    assert mixed == pytest.approx(alone, abs=2e-5)


def test_fast_mode_plan_and_exact_agreement(tiny):
    chains = _chains(2, seed=5, min_len=60, max_len=80)
    exact = masked_marginals(tiny, chains)
    one_each = masked_marginals(tiny, chains, ScoreConfig(mode="fast", min_sep=10_000))
    for e, f in zip(exact, one_each):
        assert f.n_passes == e.n_passes == len(e.sequence)
        assert np.array_equal(e.log_probs, f.log_probs)  # same passes, same batches: identical
    fast = masked_marginals(tiny, chains, ScoreConfig(mode="fast", min_sep=8, min_dist=12.0))
    for c, e, f in zip(chains, exact, fast):
        assert f.n_passes < e.n_passes / 2
        assert np.isfinite(f.log_probs).all()
        assert np.corrcoef(e.log_p_wt, f.log_p_wt)[0, 1] > 0.9
    # the rule: every position once; pairs in a pass >= min_sep apart and >= min_dist A apart (CA)
    c = chains[0]
    ca = c.coords[:, 1].copy()
    ca[10] = np.nan  # a residue without CA is judged by separation alone
    groups = masking_plan(np.arange(len(c.sequence)), ca, "fast", 8, 12.0)
    flat = np.sort(np.concatenate(groups))
    assert np.array_equal(flat, np.arange(len(c.sequence)))
    for g in groups:
        for x in range(len(g)):
            for y in range(x + 1, len(g)):
                assert abs(g[x] - g[y]) >= 8
                d = np.linalg.norm(ca[g[x]] - ca[g[y]])
                assert not d < 12.0
    assert [g.tolist() for g in masking_plan([5, 3, 3], None, "exact")] == [[3], [5]]
    assert [g.tolist() for g in masking_plan(range(20), None, "fast", 8, 12.0)] == [
        [0, 8, 16],
        [1, 9, 17],
        [2, 10, 18],
        [3, 11, 19],
        [4, 12],
        [5, 13],
        [6, 14],
        [7, 15],
    ]


def test_fast_mode_scores_a_position_the_same_whatever_else_is_asked_for():
    """In fast mode a position is masked together with the others of its pass of the whole chain's
    plan, so a mutant's score cannot change with the other rows of its table (it once did: the plan
    was made over the asked-for positions only)."""
    model = load_model("small-coords")[0]
    chain = read_structure(DATA / "1orc.pdb")[0]
    cfg = ScoreConfig(mode="fast")
    full = masked_marginals(model, [chain], cfg)[0]
    alone = masked_marginals(model, [chain], cfg, positions=[[10]])[0]
    with_other = masked_marginals(model, [chain], cfg, positions=[[10, 40]])[0]
    assert np.isfinite(alone.log_probs[10]).all() and np.isnan(alone.log_probs[11]).all()
    assert np.isnan(with_other.log_probs[np.r_[0:10, 11:40, 41:64]]).all()  # only what was asked
    np.testing.assert_allclose(alone.log_probs[10], full.log_probs[10], atol=1e-5)
    np.testing.assert_allclose(with_other.log_probs[10], full.log_probs[10], atol=1e-5)
    np.testing.assert_allclose(with_other.log_probs[40], full.log_probs[40], atol=1e-5)
    assert alone.n_passes == 1 and with_other.n_passes <= 2
    # and the pass is the plan's: position 10 masked with its whole group, not alone
    group = next(
        g
        for g in masking_plan(np.arange(len(chain.sequence)), chain.coords[:, 1], "fast", 8, 12.0)
        if 10 in g
    )
    assert len(group) > 1
    by_group = _direct(model, chain, group.tolist())[group.tolist().index(10)]
    np.testing.assert_allclose(alone.log_probs[10], by_group, atol=1e-5)
    assert np.abs(_direct(model, chain, [10])[0] - by_group).max() > 1e-3  # the test can tell


def test_scores_do_not_depend_on_the_frame_of_the_file():
    """The same structure rotated and moved scores the same: passes go in the canonical frame of
    their CAs. In the file's own frame one rotation moved small-coords' log p by up to 0.9 nats."""
    from coordformer.geometry import random_rotation

    model = load_model("small-coords")[0]
    chain = read_structure(DATA / "1orc.pdb")[0]
    rot = random_rotation(1, torch.Generator().manual_seed(0), dtype=torch.float64)[0].numpy()
    coords = (chain.coords.astype(np.float64) @ rot.T + [40.0, 2.0, -9.0]).astype(np.float32)
    moved = Chain(id="moved", sequence=chain.sequence, coords=coords, source="")
    for cfg in (ScoreConfig(), ScoreConfig(mode="fast"), ScoreConfig(window=32, overlap=8)):
        a, b = masked_marginals(model, [chain, moved], cfg)
        assert np.abs(a.log_probs - b.log_probs).max() < 1e-4
    unframed = _direct(model, chain, [5])[0]  # canonical frame, as scoring feeds it
    raw = torch.from_numpy(chain_tokens(chain.sequence).copy())
    raw[5] = MASK
    with torch.no_grad():
        logits = model(raw[None], torch.from_numpy(coords)[None]).logits[0, 5, AA_OFFSET:][:20]
    assert np.abs(torch.log_softmax(logits, -1).numpy() - unframed).max() > 1e-3  # it mattered


def test_rotations_average_the_probabilities_of_fixed_frames():
    """``rotations=K`` runs each pass in the canonical frame and K - 1 fixed rotations of it and
    averages the probabilities: checked against direct forward passes in those frames; still
    independent of the file's frame; K times the passes; a sequence-only input is not rotated."""
    from coordformer.score.marginals import score_frames

    model = load_model("small-coords")[0]
    chain = read_structure(DATA / "1orc.pdb")[0]
    one = masked_marginals(model, [chain], ScoreConfig(), positions=[[5, 30]])[0]
    three = masked_marginals(model, [chain], ScoreConfig(rotations=3), positions=[[5, 30]])[0]
    assert three.n_passes == 3 * one.n_passes == 6
    frames = score_frames(3)
    assert frames[0] is None and len(frames) == 3
    assert all(torch.allclose(f @ f.T, torch.eye(3), atol=1e-5) for f in frames[1:])
    coords = torch.from_numpy(chain.coords)[None]
    tok = torch.from_numpy(chain_tokens(chain.sequence).copy())
    tok[5] = MASK
    per_frame = []
    with torch.no_grad():
        for f in frames:
            x = canonical_frame(coords)
            x = x if f is None else torch.einsum("blac,dc->blad", x, f)
            logits = model(tok[None], x).logits[0, 5, AA_OFFSET : AA_OFFSET + 20]
            per_frame.append(torch.log_softmax(logits, -1))
    want = torch.logsumexp(torch.stack(per_frame), 0) - np.log(3)
    np.testing.assert_allclose(three.log_probs[5], want.numpy(), atol=1e-5)
    np.testing.assert_allclose(one.log_probs[5], per_frame[0].numpy(), atol=1e-5)
    assert np.abs(three.log_probs[5] - one.log_probs[5]).max() > 1e-3
    rot = score_frames(2)[1].double().numpy()
    moved = Chain(
        id="m",
        sequence=chain.sequence,
        source="",
        coords=(chain.coords.astype(np.float64) @ rot.T + 5.0).astype(np.float32),
    )
    a, b = masked_marginals(model, [chain, moved], ScoreConfig(rotations=3), positions=[[5], [5]])
    assert np.abs(a.log_probs[5] - b.log_probs[5]).max() < 1e-4
    m = f"{chain.sequence[4]}5A:{chain.sequence[29]}30A"
    for multi in ("additive", "joint"):
        r = score_mutations(
            model,
            [chain],
            [m],
            ScoreConfig(rotations=3),
            multi=multi,
            numbering="index",
            strict=True,
        )
        assert r.n_passes == 6 if multi == "additive" else r.n_passes == 3
    seq_only = masked_marginals(model, [chain], ScoreConfig(rotations=3, use_coords=False))[0]
    assert seq_only.n_passes == len(chain.sequence)
    with pytest.raises(OptionError, match="rotations"):
        ScoreConfig(rotations=0)


def test_long_chains_are_scored_in_the_window_they_are_most_central_in(tiny):
    [c] = _chains(1, seed=7, min_len=100, max_len=101)
    cfg = ScoreConfig(window=40, overlap=16)
    [s] = masked_marginals(tiny, [c], cfg)
    from coordformer.data.windows import plan_windows

    plan = plan_windows(len(c.sequence), 40, 16)
    owner = plan.owner()
    for i in (0, 30, 55, len(c.sequence) - 1):
        start = int(plan.starts[owner[i]])
        np.testing.assert_allclose(s.log_probs[i], _direct(tiny, c, [i], start, 40)[0], atol=1e-5)
    # joint masking needs one window holding every mutated position
    far = f"{c.sequence[0]}1A:{c.sequence[95]}96A"
    res = score_mutations(
        tiny, [c], [far, f"{c.sequence[30]}31A:{c.sequence[40]}41A"], cfg, multi="joint"
    )
    assert len(res.scored) == 1 and res.skipped[0][0] == 0 and "one window" in res.skipped[0][2]


def test_parse_mutants():
    assert [str(s) for s in parse_mutant("A23G")] == ["A23G"]
    assert [str(s) for s in parse_mutant("A23G:K45R")] == ["A23G", "K45R"]
    assert [str(s) for s in parse_mutant("A:A23G:K45R")] == ["A:A23G", "A:K45R"]
    assert [str(s) for s in parse_mutant("A:A23G:B:K45R")] == ["A:A23G", "B:K45R"]
    s = parse_mutant("G100AK")[0]
    assert (s.wt, s.number, s.icode, s.mut) == ("G", 100, "A", "K")
    assert parse_mutant("g-3a")[0].position == "-3"
    assert parse_mutant(" wt ") == []
    for bad in ("A23", "23G", "A23G:", "A:", "A23G;K45R", "", "A23B", "B23A", "A:B:A23G"):
        with pytest.raises(MutationError) as e:
            parse_mutant(bad)
        assert e.value.mutant == bad.strip() and e.value.reason


def test_numbering_and_errors_on_a_real_structure(tiny):
    chains = read_structure(DATA / "1orc.pdb")
    c = chains[0]
    assert c.residue_ids[:3] == ["3", "4", "5"] and c.sequence[3] == "T"
    auto = score_mutations(tiny, chains, ["T6A"], strict=True).scored[0]
    assert score_mutations(tiny, chains, "T6A", strict=True).scored[0].score == auto.score
    idx = score_mutations(tiny, chains, ["T4A"], numbering="index", strict=True).scored[0]
    assert auto.substitutions == idx.substitutions and auto.substitutions[0].index == 3
    assert auto.score == idx.score
    cases = {
        "A6G": "wild type mismatch: chain 1ORC.A has T at author number 6 (index 4), not A",
        "T99A": "position 99 is not in chain 1ORC.A (author numbers 3-61)",
        "Z:T6A": "chain 'Z' is not among the scored chains (1ORC.A)",
        "T6A:T6G": "position 6 of chain 1ORC.A is mutated twice",
    }
    for m, why in cases.items():
        with pytest.raises(MutationError) as e:
            score_mutations(tiny, chains, [m], strict=True)
        assert e.value.reason == why and e.value.mutant == m
        assert str(e.value) == f"mutation {m!r}: {why}"
    with pytest.raises(MutationError, match="outside chain 1ORC.A"):
        score_mutations(tiny, chains, ["T99A"], numbering="index", strict=True)
    # residues put back from the deposited sequence (seqres gaps) carry no author number: a
    # position inside the numbered range can be missing, and the error says how to reach it
    put_back = Chain(
        id=c.id, sequence=c.sequence, coords=c.coords, source="x",
        residue_ids=[r if not 10 <= i < 16 else "" for i, r in enumerate(c.residue_ids)],
    )  # fmt: skip
    with pytest.raises(MutationError) as e:
        score_mutations(tiny, [put_back], [f"{c.sequence[12]}15A"], strict=True)
    assert e.value.reason == (
        "position 15 is not in chain 1ORC.A (author numbers 3-61); its 6 residues put back from "
        "the deposited sequence have no author number: use 1-based indices (`numbering=index`) "
        "to reach them"
    )
    assert "(--numbering index)" in e.value.flag_message()
    fasta_like = Chain(id="X.A", sequence=c.sequence, coords=c.coords, source="x")
    with pytest.raises(MutationError, match="no author residue numbers"):
        score_mutations(tiny, [fasta_like], ["T4A"], numbering="author", strict=True)
    # a batch: bad mutants skipped with reasons, the others scored
    res = score_mutations(tiny, chains, ["T6A", "A6G", "T99A", "Z:T6A", "I5V:L7A", "nonsense"])
    assert [r.mutant for r in res.scored] == ["T6A", "I5V:L7A"]
    assert [(r, m) for r, m, _ in res.skipped] == [
        (1, "A6G"),
        (2, "T99A"),
        (3, "Z:T6A"),
        (5, "nonsense"),
    ]


def test_missing_structure_warning_follows_the_models_record(tiny):
    [c] = _chains(1)
    gap = Chain(id=c.id, sequence=c.sequence, coords=c.coords.copy(), source="x")
    gap.coords[5:9] = np.nan
    never = {"learnt_missing_flag": False, "name": "small-coords"}
    note = missing_structure_warning(never, tiny, [gap])
    assert (
        note.startswith(f"4 of {len(c.sequence)} residues have no coordinates")
        and "-c small-coords-sd" in note
    )
    assert missing_structure_warning(never, tiny, [c]) is None  # full coordinates
    # coordinates withheld (--no-coords): every residue reads as missing, as from a FASTA file,
    # which the model never learnt (embed and evaluate warn here too)
    for chain in (gap, c):
        withheld = missing_structure_warning(never, tiny, [chain], use_coords=False)
        assert withheld.startswith(f"{len(c.sequence)} of {len(c.sequence)} residues have")
        assert "--no-coords" in withheld
    assert missing_structure_warning({"learnt_missing_flag": True}, tiny, [gap]) is None
    assert missing_structure_warning({}, tiny, [gap]) is None  # unknown: no claim


def test_structure_descriptors():
    [c] = read_structure(DATA / "1orc.pdb")
    ss = secondary_structure(c.coords, c.sequence)
    assert len(ss) == len(c.sequence) and set(ss) <= {"H", "E", "-"}
    # Cro repressor: three helices (about residues 7-36) and a three-stranded sheet (39-61)
    assert ss.count("H") >= 20 and ss.count("E") >= 12
    assert "HHHHHHH" in ss[5:20] and "EEEE" in ss[35:]
    n = ca_neighbour_counts(c.coords)
    ca = c.coords[:, 1]
    d = np.linalg.norm(ca[:, None] - ca[None], axis=-1)
    assert np.array_equal(n, (d < 10).sum(1) - 1)


def _read(path, delim="\t"):
    with open(path, newline="") as f:
        return list(csv.reader(f, delimiter=delim))


def test_cli_end_to_end_with_the_shipped_model(tmp_path, capsys):
    pdb = DATA / "1orc.pdb"
    out = tmp_path / "res.tsv"
    assert (
        main(
            [
                "score",
                str(pdb),
                "-c",
                "small-coords",
                "-o",
                str(out),
                "--plot",
                str(tmp_path / "res.png"),
                "--per-aa",
                "--quiet",
            ]
        )
        == 0
    )
    rows = _read(out)
    assert (
        rows[0][:7] == ["chain", "index", "residue", "wt", "has_ca", "logp_wt", "entropy"]
        and len(rows[0]) == 27
    )
    assert len(rows) == 65 and rows[1][:5] == ["1ORC.A", "1", "3", "Q", "1"]
    lp = np.array([float(r[5]) for r in rows[1:]])
    per_aa = np.array([[float(x) for x in r[7:]] for r in rows[1:]])
    assert np.allclose(np.exp(per_aa).sum(1), 1, atol=1e-3)
    chains = _read(str(out) + ".chains.tsv")
    assert float(chains[1][4]) == pytest.approx(np.exp(-lp.mean()), rel=1e-4)
    assert float(chains[1][4]) < 15  # a real structure model on a real protein: far better than 20
    assert (tmp_path / "res.png").stat().st_size > 1000
    assert "pseudo-perplexity" in capsys.readouterr().out

    table = tmp_path / "dms.csv"
    table.write_text(
        "mutant,DMS_score\nT6A,0.1\nA6G,2\nT6T,0.3\nT99A,1\nQ3A:R4G,-1\nI5V,0.5\nL7A,-0.2\n"
    )
    mout = tmp_path / "mut.csv"
    assert (
        main(
            [
                "score",
                str(pdb),
                "-c",
                "small-coords",
                "-o",
                str(mout),
                "--mutations",
                str(table),
                "--quiet",
                "--plot",
                str(tmp_path / "mut.png"),
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "scored 5 of 7 mutants" in text and "skipped 2" in text and "Spearman" in text
    rows = _read(mout, ",")
    assert rows[0] == ["mutant", "DMS_score", "coordformer_score", "coordformer_sites"]
    got = {r[0]: float(r[2]) for r in rows[1:]}
    assert set(got) == {"T6A", "T6T", "Q3A:R4G", "I5V", "L7A"} and got["T6T"] == 0
    assert [r[3] for r in rows[1:] if r[0] == "Q3A:R4G"] == ["1ORC.A/1;1ORC.A/2"]
    skipped = _read(str(mout) + ".skipped.tsv")
    assert skipped[0] == ["kind", "row", "item", "reason"]
    assert [r[:3] for r in skipped[1:]] == [["mutant", "2", "A6G"], ["mutant", "4", "T99A"]]
    assert "wild type mismatch" in skipped[1][3] and "not in chain" in skipped[2][3]
    # a single-mutant score is the difference of two masked-marginal log-probabilities
    [s] = masked_marginals(load_model("small-coords")[0], read_structure(pdb), positions=[[3]])
    assert got["T6A"] == pytest.approx(
        float(s.log_probs[3, AA["A"]] - s.log_probs[3, AA["T"]]), abs=1e-4
    )

    # strict single mutants: one line naming the mutation, exit 2
    assert (
        main(
            [
                "score",
                str(pdb),
                "-c",
                "small-coords",
                "-o",
                str(tmp_path / "x.tsv"),
                "-m",
                "A6G",
                "--quiet",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert (
        err == "error: mutation 'A6G': wild type mismatch: "
        "chain 1ORC.A has T at author number 6 (index 4), not A"
    )
    assert (
        main(
            [
                "score",
                str(pdb),
                "-c",
                "small-coords",
                "-o",
                str(tmp_path / "x.tsv"),
                "-m",
                "T4A",
                "--numbering",
                "index",
                "--quiet",
            ]
        )
        == 0
    )
    assert _read(tmp_path / "x.tsv")[1][0] == "T4A"


def test_cli_saves_what_produced_the_tables_beside_them(tmp_path, monkeypatch):
    """The tables did not record the checkpoint, --mode, --rotations, --numbering or --offset; the
    summary run_score built was only printed. OUT.json now holds it, and the tables stay plain."""
    import shlex
    import sys

    from coordformer import __version__

    pdb = str(DATA / "1orc.pdb")
    out = tmp_path / "res.tsv"
    argv = ["score", pdb, "-c", "small-coords", "-o", str(out), "--mode", "fast"]
    argv += ["--rotations", "2", "--device", "cpu", "--quiet"]
    monkeypatch.setattr(sys, "argv", ["coordformer", *argv])
    assert main(argv) == 0
    rec = json.loads((tmp_path / "res.tsv.json").read_text())
    assert rec["checkpoint"] == "small-coords" and rec["inputs"] == [pdb]
    assert rec["config"] == ScoreConfig(mode="fast", rotations=2).to_dict()
    assert rec["mode"] == "fast" and rec["rotations"] == 2 and rec["model_config"]["use_coords"]
    assert rec["command"] == "coordformer " + shlex.join(argv)
    assert rec["coordformer_version"] == __version__
    assert rec["chains"] == 1 and rec["chains_file"] == f"{out}.chains.tsv"
    rows = _read(out)
    assert rows[0][0] == "chain" and rec["residues"] == len(rows) - 1 == 64
    assert _read(f"{out}.chains.tsv")[0][0] == "chain"

    mout = tmp_path / "mut.csv"
    table = tmp_path / "dms.csv"
    table.write_text("mutant,DMS_score\nT4A,0.1\nA4G,2\n")
    argv = ["score", pdb, "-c", "small-coords", "-o", str(mout), "--mutations", str(table)]
    argv += ["--numbering", "index", "--offset", "0", "--device", "cpu", "--quiet"]
    monkeypatch.setattr(sys, "argv", ["coordformer", *argv])
    assert main(argv) == 0
    rec = json.loads((tmp_path / "mut.csv.json").read_text())
    assert rec["settings"]["numbering"] == "index" and rec["settings"]["offset"] == 0
    assert rec["settings"]["mutations"] == str(table) and rec["settings"]["multi"] == "additive"
    assert rec["config"]["mode"] == "exact" and rec["config"]["rotations"] == 1
    assert rec["scored"] == 1 and rec["skipped"] == 1 and rec["command"].endswith("--quiet")
    assert _read(mout, ",")[0] == ["mutant", "DMS_score", "coordformer_score", "coordformer_sites"]
    assert _read(f"{mout}.skipped.tsv")[0] == ["kind", "row", "item", "reason"]


def test_cli_fasta_warns_for_a_model_without_the_missing_flag(tmp_path, capsys):
    [c] = read_structure(DATA / "1orc.pdb")
    fa = tmp_path / "cro.fasta"
    fa.write_text(f">cro\n{c.sequence}\n")
    assert (
        main(["score", str(fa), "-c", "small-coords", "-o", str(tmp_path / "a.tsv"), "--quiet"])
        == 0
    )
    assert "never learnt the missing flag" in capsys.readouterr().err
    assert (
        main(["score", str(fa), "-c", "small-coords-sd", "-o", str(tmp_path / "b.tsv"), "--quiet"])
        == 0
    )
    assert "warning" not in capsys.readouterr().err
    rows = _read(tmp_path / "b.tsv")
    assert rows[1][2] == "" and rows[1][4] == "0"  # no author numbers, no CA given


def test_offset_numbering_and_a_batch_where_nothing_scores(tiny, tmp_path, capsys):
    chains = read_structure(DATA / "1orc.pdb")
    base = score_mutations(tiny, chains, ["T4A"], numbering="index", strict=True).scored[0]
    shifted = score_mutations(
        tiny, chains, ["T14A"], numbering="index", offset=10, strict=True
    ).scored[0]
    assert shifted.substitutions == base.substitutions and shifted.score == base.score
    with pytest.raises(MutationError, match=r"index 4 \(position 14 - offset 10\), not A"):
        score_mutations(tiny, chains, ["A14G"], numbering="index", offset=10, strict=True)
    with pytest.raises(MutationError, match="mutant positions 11-74 with offset 10"):
        score_mutations(tiny, chains, ["T4A"], numbering="index", offset=10, strict=True)
    table = tmp_path / "all_bad.csv"
    table.write_text("mutant\nA6G\nT99A\n")
    out = tmp_path / "o.tsv"
    assert (
        main(
            [
                "score",
                str(DATA / "1orc.pdb"),
                "-c",
                "small-coords",
                "-o",
                str(out),
                "--mutations",
                str(table),
                "--quiet",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert err.startswith(
        "error: none of the 2 mutants could be scored (first: row 1 A6G: wild type mismatch"
    )
    assert len(_read(str(out) + ".skipped.tsv")) == 3
    # the tables written before the error come with their record
    assert json.loads((tmp_path / "o.tsv.json").read_text())["skipped"] == 2
    assert (
        main(
            [
                "score",
                str(DATA / "1orc.pdb"),
                "-c",
                "small-coords",
                "-o",
                str(out),
                "-m",
                "T4A",
                "--offset",
                "1",
                "--quiet",
            ]
        )
        == 2
    )
    assert (
        capsys.readouterr().err
        == "error: --offset 1: applies to 1-based index numbering; add --numbering index\n"
    )
    # --per-aa has no place in a mutant table: refused, not silently ignored
    argv = ["score", str(DATA / "1orc.pdb"), "-c", "small-coords", "-o", str(out), "-m", "T6A"]
    assert main([*argv, "--per-aa", "--quiet"]) == 2
    assert capsys.readouterr().err == (
        "error: --per-aa adds columns to per-residue scores, and mutants are scored instead of "
        "those: drop --per-aa, or score the chains without mutants\n"
    )


def test_readme_python_example_runs_as_written(monkeypatch):
    import contextlib
    import io
    import re
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    m = re.search(
        r"<!-- python-score -->\s*```python\n(.*?)```", (repo / "README.md").read_text(), re.S
    )
    assert m, "README.md has no python block after <!-- python-score -->"
    monkeypatch.chdir(repo)
    ns, buf = {"__name__": "__readme__"}, io.StringIO()
    with contextlib.redirect_stdout(buf):
        exec(compile(m.group(1), "README.md", "exec"), ns)
    lines = buf.getvalue().splitlines()
    assert re.fullmatch(r"1ORC\.A: pseudo-perplexity \d+\.\d\d", lines[0]), lines
    assert re.fullmatch(r"T6A -?\d+\.\d+", lines[1]) and re.fullmatch(
        r"I5V:L7A -?\d+\.\d+", lines[2]
    )
    assert lines[3] == "skipped Q99A position 99 is not in chain 1ORC.A (author numbers 3-61)"
    assert ns["dms"].shape == (64, 20)


def test_inputs_prepared_dataset_chain_set_and_unreadable_files(
    tiny, tmp_path, prepared, synthetic_jsonl
):
    from coordformer.score import read_chains

    test_ids = [prepared.ids[i] for i in prepared.split_indices("test")]
    chains, skipped = read_chains([str(prepared.path)], split="test")
    assert [c.id for c in chains] == test_ids and skipped == []
    assert all(c.residue_ids is None for c in chains)
    k = prepared.index_of(chains[0].id)
    assert chains[0].sequence == prepared.sequence(k) and np.array_equal(
        chains[0].coords, prepared.coords(k), equal_nan=True
    )
    # chains that `chains` leaves out are handed back, by id, from every kind of input
    left_out: list[str] = []
    picked, _ = read_chains([str(DATA / "chain_set_small.jsonl")], chains=["A"], left_out=left_out)
    assert [c.id for c in picked] == ["1AIE.A", "1AJJ.A"] and left_out == ["1A2X.B"]
    left_out.clear()  # a structure file's other chains, by their full ids
    assert [
        c.id for c in read_chains([str(DATA / "1lzh.pdb.gz")], chains=["A"], left_out=left_out)[0]
    ] == ["1LZH.A"]
    assert left_out == ["1LZH.B"]
    # a string names chains as the CLI does ("A,B"), not by its letters
    assert [c.id for c in read_chains([str(DATA / "chain_set_small.jsonl")], chains="A")[0]] == [
        "1AIE.A",
        "1AJJ.A",
    ]
    # a structure file with none of them is an input skipped with its reason, as in prepare
    left_out.clear()
    none, why = read_chains([str(DATA / "1orc.pdb")], chains=["B"], left_out=left_out)
    assert none == [] and left_out == [] and len(why) == 1 and "B" in why[0][1]
    direct, _ = read_chains([str(synthetic_jsonl)])
    same = next(c for c in direct if c.id == chains[0].id)
    a, b = masked_marginals(tiny, [chains[0], same])
    np.testing.assert_allclose(
        a.log_probs, b.log_probs, atol=2e-5
    )  # a chain scores the same from either input
    bad = tmp_path / "broken.pdb"
    bad.write_text("ATOM  garbage\n")
    chains, skipped = read_chains([str(DATA / "1orc.pdb"), str(bad)])
    assert [c.id for c in chains] == ["1ORC.A"] and skipped and skipped[0][0] == str(bad)
    # the same chain in two files is scored once, and the copy is listed (as prepare does) ...
    (tmp_path / "copy").mkdir()
    (tmp_path / "copy" / "1orc.pdb").write_bytes((DATA / "1orc.pdb").read_bytes())
    chains, skipped = read_chains([str(DATA / "1orc.pdb"), str(tmp_path / "copy" / "1orc.pdb")])
    assert [c.id for c in chains] == ["1ORC.A"]
    assert skipped == [
        (
            str(tmp_path / "copy" / "1orc.pdb"),
            f"duplicate of 1ORC.A in {DATA / '1orc.pdb'} (same sequence and coordinates): "
            "scored once",
        )
    ]
    # ... while another chain under the same id is renamed, not lost
    text = (DATA / "1orc.pdb").read_text().splitlines(keepends=True)
    moved = [
        line[:30] + f"{float(line[30:38]) + 1.0:8.3f}" + line[38:]
        if line.startswith(("ATOM", "HETATM"))
        else line
        for line in text
    ]
    (tmp_path / "copy" / "1orc.pdb").write_text("".join(moved))
    chains, _ = read_chains([str(DATA / "1orc.pdb"), str(tmp_path / "copy" / "1orc.pdb")])
    assert [c.id for c in chains] == ["1ORC.A", "1ORC.A#2"]


def test_plddt_min_makes_low_confidence_residues_missing(tmp_path, capsys):
    # 1ORC as a predicted model would be: the same B-factor column, no experiment declared
    model = tmp_path / "1orc_model.pdb"
    text = (DATA / "1orc.pdb").read_text()
    model.write_text("".join(ln for ln in text.splitlines(True) if not ln.startswith("EXPDTA")))
    [raw] = read_structure(model)
    from coordformer.score import read_chains

    cut = float(np.nanmedian(raw.b_factors))
    [c], _ = read_chains([str(model)], plddt_min=cut)
    low = np.round(raw.b_factors, 4) < cut
    assert low.any() and np.array_equal(np.isnan(c.coords[:, 1, 0]), low)
    # the X-ray entry itself: B-factors are not pLDDT, so it stays whole
    [xray], _ = read_chains([str(DATA / "1orc.pdb")], plddt_min=cut)
    assert xray.experimental_method == "X-RAY DIFFRACTION"
    assert np.array_equal(np.isnan(xray.coords), np.isnan(raw.coords))
    out = tmp_path / "p.tsv"
    assert (
        main(
            [
                "score",
                str(DATA / "1orc.pdb"),
                "-c",
                "small-coords",
                "-o",
                str(tmp_path / "x.tsv"),
                "--plddt-min",
                str(cut),
                "--quiet",
            ]
        )
        == 0
    )
    assert "left 1 chain of experimental structures whole (1ORC.A)" in capsys.readouterr().err
    assert (
        main(
            [
                "score",
                str(model),
                "-c",
                "small-coords",
                "-o",
                str(out),
                "--plddt-min",
                str(cut),
                "--quiet",
            ]
        )
        == 0
    )
    assert f"{int(low.sum())} of 64 residues have no coordinates" in capsys.readouterr().err
    has_ca = [r[4] for r in _read(out)[1:]]
    assert has_ca == ["0" if x else "1" for x in low]


def test_cli_lists_the_chains_that_chains_leaves_out(tmp_path, capsys):
    out = tmp_path / "s.tsv"
    argv = ["score", str(DATA / "chain_set_small.jsonl"), "-c", "small-coords", "-o", str(out)]
    assert main([*argv, "--chains", "A", "--mode", "fast", "--quiet"]) == 0
    assert "1 chains not in --chains A" in capsys.readouterr().out
    rows = list(csv.reader(open(out.with_name(out.name + ".skipped.tsv")), delimiter="\t"))
    assert rows[1][:3] == ["chain", "", "1A2X.B"] and "--chains A" in rows[1][3]
    with open(out) as f:
        assert {r["chain"] for r in csv.DictReader(f, delimiter="\t")} == {"1AIE.A", "1AJJ.A"}
    # from Python, strings are a chain list and one mutant, not letters
    from coordformer.score.run import run_score

    res = run_score(
        "small-coords", [str(DATA / "chain_set_small.jsonl")], tmp_path / "m.tsv", chains="A,C",
        mutants="E1A", chain="1AIE.A", numbering="index", progress=False, echo=lambda _: None,
    )  # fmt: skip
    assert res["chains_not_selected"] == 1 and res["mutants"] == 1
    rows = list(csv.reader(open(tmp_path / "m.tsv.skipped.tsv"), delimiter="\t"))
    assert rows[1][3] == "not in --chains: chain B (--chains A,C)"


def test_scoring_runs_a_training_mode_model_in_eval_mode_and_leaves_its_mode(tiny):
    """Dropout made joint scores of a model in training mode change from call to call (only the
    additive path switched to eval, and then left the caller's model switched)."""
    torch.manual_seed(0)
    model = CoordFormer(preset("tiny-0.1m", dropout=0.3))  # training mode, as nn.Module starts
    [a] = _chains(1)
    pair = f"{a.sequence[4]}5A:{a.sequence[6]}7A"
    runs = [score_mutations(model, [a], [pair], multi="joint").scored[0].score for _ in range(2)]
    additive = score_mutations(model, [a], [pair]).scored[0].score
    assert model.training  # left as it came
    model.eval()
    assert runs == [score_mutations(model, [a], [pair], multi="joint").scored[0].score] * 2
    assert additive == score_mutations(model, [a], [pair]).scored[0].score


def test_ambiguous_author_numbers_chains_and_insertion_code_case(tiny):
    """An author number that names two residues, or an author chain that two inputs have (`#2`
    copies included), is an error rather than a silent pick of the first; an insertion code
    matches whatever its case."""
    from coordformer.score.mutations import ChainIndex, author_chain

    base = _chains(1, seed=2, min_len=40, max_len=41)[0]
    seq = "ACDG" + base.sequence[4:]
    ids = ["1", "2", "2", "3"] + [str(i) for i in range(4, len(seq))]
    dup = Chain(id="X.A", sequence=seq, coords=base.coords, source="", residue_ids=ids)
    with pytest.raises(MutationError, match=r"author number 2 names several residues .* 2, 3"):
        score_mutations(tiny, [dup], ["D2G"], numbering="author", strict=True)
    assert score_mutations(tiny, [dup], ["G3A"], numbering="author", strict=True).scored

    ins = ["99", "100", "100A", "101"] + [str(i) for i in range(102, len(seq) + 98)]
    c_ins = Chain(id="X.A", sequence=seq, coords=base.coords, source="", residue_ids=ins)
    [r] = score_mutations(tiny, [c_ins], ["D100aY"], numbering="author", strict=True).scored
    [lower] = score_mutations(tiny, [c_ins], ["D100AY"], numbering="author", strict=True).scored
    assert r.substitutions[0].index == 2 and r.score == lower.score

    assert author_chain("1ABC.A#2") == "A" and author_chain("1ABC.A") == "A"
    twins = [
        Chain(id=i, sequence=seq, coords=base.coords, source="") for i in ("1ABC.A", "1ABC.A#2")
    ]
    index = ChainIndex(twins)
    assert index.find("A") == -1 and index.find("1ABC.A#2") == 1
    with pytest.raises(MutationError, match="chain 'A' is ambiguous"):
        score_mutations(tiny, twins, ["A:A1G"], strict=True)
    # the same as the default chain: refused, not the last chain (index -1) picked quietly
    with pytest.raises(OptionError, match="is ambiguous"):
        ChainIndex(twins, default_chain="A")
    # the full id of the renamed copy works as a prefix and as the default chain
    [by_prefix] = score_mutations(tiny, twins, ["1ABC.A#2:A1G"], strict=True).scored
    [by_default] = score_mutations(
        tiny, twins, ["A1G"], default_chain="1ABC.A#2", strict=True
    ).scored
    assert by_prefix.substitutions[0].chain == by_default.substitutions[0].chain == 1
    assert by_prefix.score == by_default.score


def test_index_numbering_warns_past_a_gap_in_the_structure(tmp_path):
    """A structure that omits residues shifts 1-based indices past the gap; when a mutant's letters
    happen to agree the wild-type check cannot see it, so score warns: against ProteinGym's
    mutated_sequence column where the table has it, else from the chain's breaks."""
    import json

    from coordformer.score.run import run_score

    full = read_structure(DATA / "1orc.pdb")[0]
    keep = np.r_[0:20, 30 : len(full.sequence)]  # residues 21-30 unobserved
    seq = "".join(full.sequence[i] for i in keep)
    rec = {
        "name": "gap.A",
        "seq": seq,
        "coords": {a: full.coords[keep, k].tolist() for k, a in enumerate(("N", "CA", "C", "O"))},
    }
    (tmp_path / "gap.jsonl").write_text(json.dumps(rec) + "\n")
    whole = {
        **rec,
        "name": "whole.A",
        "seq": full.sequence,
        "coords": {a: full.coords[:, k].tolist() for k, a in enumerate(("N", "CA", "C", "O"))},
    }
    (tmp_path / "whole.jsonl").write_text(json.dumps(whole) + "\n")
    wt5 = full.sequence[4]
    mut5 = "A" if wt5 != "A" else "G"
    mutated = full.sequence[:4] + mut5 + full.sequence[5:]
    table = tmp_path / "dms.csv"
    table.write_text(f"mutant,mutated_sequence,DMS_score\n{wt5}5{mut5},{mutated},0.1\n")
    warned = []

    def run(inp, **kw):
        return run_score(
            "small-coords",
            [str(tmp_path / inp)],
            tmp_path / "o.tsv",
            progress=False,
            echo=lambda s: None,
            warn=warned.append,
            **kw,
        )

    s = run("gap.jsonl", mutations=table)
    assert len(s["numbering_warnings"]) == 1
    assert "matches the table's mutated_sequence (offset 0) at only" in warned[-1]
    assert "first mismatch at index 21" in warned[-1]
    assert run("whole.jsonl", mutations=table)["numbering_warnings"] == []
    s = run("gap.jsonl", mutants=[f"{wt5}5{mut5}"])  # no mutated_sequence: the break tells
    assert "1 chain break(s) (first after index 20" in s["numbering_warnings"][0]
    assert run("whole.jsonl", mutants=[f"{wt5}5{mut5}"])["numbering_warnings"] == []


def test_the_sidecar_json_is_strict_json(tmp_path):
    """A chain with no scored standard residue has pseudo-perplexity NaN: OUT.json writes null
    (json.dumps would write NaN, which strict JSON readers refuse)."""
    import json

    from coordformer.score.run import _write_json

    path = tmp_path / "s.tsv.json"
    _write_json(path, {"per_chain": [("X.A", 3, float("nan"))], "pseudo_perplexity": 9.5})
    text = path.read_text()
    assert "NaN" not in text
    assert json.loads(text) == {"per_chain": [["X.A", 3, None]], "pseudo_perplexity": 9.5}
