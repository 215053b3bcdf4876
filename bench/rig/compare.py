"""One way to print a figure next to its baseline measured in the same run.

The machines the benches run on are shared and noisy (single timings vary by 15-25%
run to run), so a figure is only ever shown as the median of its runs, next to the
median of a baseline measured in the same run, with their ratio, the spread of the runs
and the command that reproduces it::

    round wall time, update only: CKKS 1.93 s vs plaintext 0.27 s: 7.15x
        (median of 6 rounds each; CKKS 1.80-2.10, plaintext 0.25-0.31) target <= 2x: NOT MET
    reproduce: .venv/bin/python -m bench.federation.he_overhead --no-train
"""

from __future__ import annotations

import math
import shlex
import statistics
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Measured:
    """A figure's runs (one value per run or per round, all from this run of the bench)."""

    name: str
    runs: tuple[float, ...]
    per: str = "runs"  # what one value is: a run, a round, ...

    @classmethod
    def of(cls, name: str, runs: Iterable[float], per: str = "runs") -> Measured:
        values = tuple(float(v) for v in runs)
        if not values:
            raise ValueError(f"{name}: no {per}")
        return cls(name, values, per)

    @property
    def median(self) -> float:
        return statistics.median(self.runs)


def ratio(figure: float, baseline: float) -> float:
    return figure / baseline if baseline else math.nan


def comparison(what: str, figure: Measured, baseline: Measured, unit: str = "",
               fmt: str = "{:.2f}", *, at_most: float | None = None,
               at_least: float | None = None, within: float | None = None,
               paired: bool = False) -> str:
    """``what: figure X unit vs baseline Y unit: R x (median of n runs ...)``, and the
    target's verdict: ``at_most``/``at_least`` for the ratio, ``within`` for |ratio - 1|.

    The ratio is of the two medians; ``paired``: the median of the runs' own ratios, for
    runs that measured figure and baseline together (drift then cancels in each pair)."""
    unit = f" {unit}" if unit not in ("", "%") else unit
    if paired:
        r = statistics.median(ratio(f, b) for f, b in zip(figure.runs, baseline.runs,
                                                           strict=True))
    else:
        r = ratio(figure.median, baseline.median)

    def spread(m: Measured) -> str:
        return f"{m.name} {fmt.format(min(m.runs))}-{fmt.format(max(m.runs))}"

    runs = (f"{len(figure.runs)} {figure.per} each" if len(figure.runs) == len(baseline.runs)
            else f"{len(figure.runs)} and {len(baseline.runs)} {figure.per}")
    how = " (median of paired ratios)" if paired else ""
    line = (f"{what}: {figure.name} {fmt.format(figure.median)}{unit} vs {baseline.name} "
            f"{fmt.format(baseline.median)}{unit}: {r:.2f}x{how}\n    (median of {runs}; "
            f"{spread(figure)}, {spread(baseline)})")
    if at_most is not None:
        line += f" target <= {at_most:.3g}x: {'MET' if r <= at_most else 'NOT MET'}"
    if at_least is not None:
        line += f" target >= {at_least:.3g}x: {'MET' if r >= at_least else 'NOT MET'}"
    if within is not None:
        line += (f" target within {within:.0%}: "
                 f"{'MET' if abs(r - 1) <= within else 'NOT MET'} ({r - 1:+.1%})")
    return line


def reproduce(module: str, argv: Sequence[str] | None = None) -> str:
    """The command that reproduces this run's figures (this run's own options)."""
    args = sys.argv[1:] if argv is None else list(argv)
    return f"reproduce: .venv/bin/python -m {module}" + (f" {shlex.join(args)}" if args else "")


def print_comparisons(module: str, lines: Iterable[str], title: str = "",
                      argv: Sequence[str] | None = None) -> None:
    """The block every comparing bench ends with: its comparisons, then the command."""
    print(f"\n{title or 'against the baseline measured in this run'}:")
    for line in lines:
        print(line)
    print(reproduce(module, argv))


# One row of an attack replay whose old behaviour is gone from the code: what is
# measured, its figure recorded in issue 15, its figure now, the target, whether met.
Target = tuple[str, str, str, str, bool]


def print_targets(module: str, rows: Sequence[Target],
                  argv: Sequence[str] | None = None) -> int:
    """Each row against issue 15's figure, then the command; 0 if every target is met."""
    for what, before, now, target, held in rows:
        print(f"  {what}: before (issue 15) {before}; now {now}; target {target}: "
              f"{'MET' if held else 'NOT MET'}")
    print(reproduce(module, argv))
    return 0 if all(held for *_, held in rows) else 1
