"""Side-by-side tables and Markdown reports for masked-LM evaluations."""

from __future__ import annotations

from ..constants import AMINO_ACIDS


def gains(results: dict[str, dict], a: str, b: str) -> list[tuple[str, float, float, float]]:
    """Per-residue recovery of model a vs b, sorted by gain (a - b), largest first."""
    pa, pb = results[a]["per_residue_recovery"], results[b]["per_residue_recovery"]
    rows = [
        (aa, pa[aa], pb[aa], pa[aa] - pb[aa])
        for aa in AMINO_ACIDS
        if pa.get(aa) is not None and pb.get(aa) is not None
    ]
    return sorted(rows, key=lambda r: -r[3])


def comparison_rows(results: dict[str, dict], top: int = 5) -> tuple[list[str], list[list[str]]]:
    """Header and rows: overall perplexity/recovery per model, then (with two models or more) up to
    ``top`` residues whose recovery the first model raises most over the second, gains > 0 only."""
    labels = list(results)
    header = ["", *labels]
    rows = [
        ["perplexity", *[f"{results[m]['perplexity']:.2f}" for m in labels]],
        ["recovery", *[f"{results[m]['recovery']:.1%}" for m in labels]],
        ["masked residues", *[str(results[m]["n_masked"]) for m in labels]],
    ]
    # evaluate --hide-coords: the residues whose coordinates were withheld (a residue the structure
    # never had is not counted: its input is the same in every condition)
    if all(results[m].get("hidden") for m in labels):
        rows += [
            [
                "perplexity, coords withheld",
                *[f"{results[m]['hidden']['perplexity']:.2f}" for m in labels],
            ],
            [
                "recovery, coords withheld",
                *[f"{results[m]['hidden']['recovery']:.1%}" for m in labels],
            ],
            [
                "masked residues, coords withheld",
                *[str(results[m]["hidden"]["n_masked"]) for m in labels],
            ],
        ]
    hidden_mode = {results[m].get("settings", {}).get("hide_coords", "none") for m in labels}
    if hidden_mode <= {"span", "cut"} and all(results[m].get("outside") for m in labels):
        # the same residues in --hide-coords none / span / cut:
        # what the stretch's fate does to the rest
        rows += [
            [
                "perplexity, outside the stretch",
                *[f"{results[m]['outside']['perplexity']:.2f}" for m in labels],
            ],
            [
                "recovery, outside the stretch",
                *[f"{results[m]['outside']['recovery']:.1%}" for m in labels],
            ],
        ]
    if len(labels) >= 2:
        # only real gains, under a row that says whose over whose (the order of the models)
        best = [g for g in gains(results, labels[0], labels[1])[:top] if g[3] > 0]
        if best:
            rows.append(
                [f"largest recovery gains, {labels[0]} over {labels[1]}:"] + [""] * len(labels)
            )
        for aa, _, _, d in best:
            rows.append(
                [
                    f"recovery {aa} ({100 * d:+.1f} points)",
                    *[f"{results[m]['per_residue_recovery'][aa]:.1%}" for m in labels],
                ]
            )
    return header, rows


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def markdown_report(
    results: dict[str, dict],
    figure: str | None,
    data_desc: str,
    command: str | None,
    title: str | None = "# coordformer masked-LM evaluation",
) -> str:
    """A Markdown section: (title, data, command,) the comparison table, per-residue gains,
    figure."""
    header, rows = comparison_rows(results)
    labels = list(results)
    parts = [title, ""] if title else []
    parts += [f"Data: {data_desc}", ""]
    if command:
        parts += [f"Command: `{command}`", ""]
    parts += [markdown_table(header, rows), ""]
    if len(labels) >= 2:
        parts += [
            f"## Per-residue recovery, {labels[0]} minus {labels[1]}",
            "",
            markdown_table(
                ["residue", labels[0], labels[1], "difference", "n"],
                [
                    [
                        aa,
                        f"{x:.1%}",
                        f"{y:.1%}",
                        f"{d * 100:+.1f} pt",
                        str(results[labels[0]]["per_residue_count"][aa]),
                    ]
                    for aa, x, y, d in gains(results, labels[0], labels[1])
                ],
            ),
            "",
        ]
    if figure:
        parts += [f"![per-residue recovery]({figure})", ""]
    s = results[labels[0]]["settings"]
    parts += [
        f"Masking: {s['mask_prob']:.0%} of residues per chain ({s['masking']}), seed {s['seed']}; "
        + (
            f"whole chains in windows of {s['crop_length']} overlapping by at least "
            f"{s['windows']['overlap']}, each masked residue scored in the window it is most "
            "central in. "
            if s.get("windows")
            else f"chains cropped to their first {s['crop_length']} residues. "
        )
        + "Perplexity = exp(mean cross-entropy) "
        "on masked residues; recovery = argmax over the 20 amino acids.",
        "",
    ]
    return "\n".join(parts)
