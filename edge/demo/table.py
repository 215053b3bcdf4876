"""The demo's closing table: each box's held-out identification before and after the
federation, one column per round, and the mean gain over the boxes."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BoxHistory:
    box: str
    camera: str
    people: int
    heldout: int  # held-out photos in which the detector found a face
    pretrained: float | None  # share named right, before any round
    rounds: list[float | None]  # the same after each round, in order
    strangers_before: float | None = None  # share of strangers named, pretrained model
    strangers_after: float | None = None  # the same after the last round

    @property
    def final(self) -> float | None:
        return self.rounds[-1] if self.rounds else None

    @property
    def gain(self) -> float | None:
        if self.pretrained is None or self.final is None:
            return None
        return self.final - self.pretrained


def pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def mean_gain(rows: list[BoxHistory]) -> float | None:
    """Mean over the boxes that have both figures (points as a share, 0.05 = 5 points)."""
    gains = [r.gain for r in rows if r.gain is not None]
    return sum(gains) / len(gains) if gains else None


def before_after_table(rows: list[BoxHistory], rounds: list[int]) -> list[str]:
    """Fixed-width lines, one column per finished round (a round abandoned because its
    base was poisoned has none); the last line is the mean gain."""
    header = ["box", "camera", "people", "held-out", "pretrained",
              *[f"round {r}" for r in rounds], "gain", "strangers named"]
    body = []
    for row in rows:
        after = [pct(a) for a in row.rounds] + ["n/a"] * (len(rounds) - len(row.rounds))
        gain = "n/a" if row.gain is None else f"{100 * row.gain:+.1f}"
        named = ("n/a" if row.strangers_before is None or row.strangers_after is None else
                 f"{pct(row.strangers_before)} -> {pct(row.strangers_after)}")
        body.append([row.box, row.camera, str(row.people), str(row.heldout),
                     pct(row.pretrained), *after, gain, named])
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]

    def fmt(cells: list[str]) -> str:
        return "  " + " | ".join(c.ljust(w) if i < 2 else c.rjust(w)
                                 for i, (c, w) in enumerate(zip(cells, widths, strict=True)))

    lines = ["held-out identification before and after the federation:", fmt(header),
             "  " + "-+-".join("-" * w for w in widths)]
    lines += [fmt(cells) for cells in body]
    mean = mean_gain(rows)
    lines.append("mean gain over the boxes: "
                 + ("n/a" if mean is None else f"{100 * mean:+.1f} points"))
    pairs = [(r.strangers_before, r.strangers_after) for r in rows
             if r.strangers_before is not None and r.strangers_after is not None]
    if pairs:
        first = sum(b for b, _ in pairs) / len(pairs)
        last = sum(a for _, a in pairs) / len(pairs)
        lines.append(f"strangers named as someone, mean over the boxes: {pct(first)} -> "
                     f"{pct(last)} (each model at its own threshold)")
    return lines
