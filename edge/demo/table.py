"""The demo's closing table: each box's held-out identification before and after the
federation, one column per round, and the mean gain over the boxes."""

from __future__ import annotations

from dataclasses import dataclass

# fewer held-out photos than this on a box: one photo is more than 3 points of its figure
FEW_HELD_OUT = 30


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
    own_threshold: bool = True  # its models get their own threshold (else the deployed)

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
    with_gain = sum(r.gain is not None for r in rows)
    lines.append(f"mean gain over the {_boxes(with_gain, len(rows), 'with both figures')}: "
                 + ("n/a" if mean is None else f"{100 * mean:+.1f} points"))
    pairs = [(r.strangers_before, r.strangers_after) for r in rows
             if r.strangers_before is not None and r.strangers_after is not None]
    if pairs:
        first = sum(b for b, _ in pairs) / len(pairs)
        last = sum(a for _, a in pairs) / len(pairs)
        lines.append(f"strangers named as someone, mean over the "
                     f"{_boxes(len(pairs), len(rows), 'with strangers')}: {pct(first)} -> "
                     f"{pct(last)} ({_thresholds(rows)})")
    few = [r for r in rows if 0 < r.heldout < FEW_HELD_OUT]
    if few:
        lines.append(
            f"few held-out photos ({', '.join(f'{r.box} {r.heldout}' for r in few)}; one "
            f"photo is {100 / max(r.heldout for r in few):.1f} points or more): these "
            f"figures are too few to measure a gain (under {FEW_HELD_OUT} a box)")
    return lines


def _boxes(n: int, of: int, which: str) -> str:
    """"boxes" when every box counts, else how many of them do."""
    return "boxes" if n == of else f"{n} box{'es' * (n != 1)} {which} (of {of})"


def _thresholds(rows: list[BoxHistory]) -> str:
    deployed = [r.box for r in rows if not r.own_threshold]
    if not deployed:
        return "each model at its own threshold"
    if len(deployed) == len(rows):
        return "each model at the deployed threshold: too few people for its own"
    return f"each model at its own threshold; at the deployed one on {', '.join(deployed)}"
