"""The peak-RSS helper used for the edge's memory figure, on real child processes."""

from __future__ import annotations

import sys

from bench.common.peak_rss import peak_rss


def test_peak_rss_sees_a_short_lived_allocation() -> None:
    # 300 MiB held for a moment then freed: the peak must include it even though the
    # process ends small (and even when this test process is itself large, as it is
    # after the vision tests: its own high-water mark must not be reported).
    code = (
        "import time; b = bytearray(300 * 1024 * 1024); b[::4096] = b'x' * len(b[::4096]); "
        "time.sleep(0.3); del b; time.sleep(0.2)"
    )
    result = peak_rss([sys.executable, "-c", code], timeout=60)
    assert result.returncode == 0
    assert 300 <= result.peak_mib < 450, result


def test_peak_rss_ignores_the_parents_inherited_mark() -> None:
    ballast = bytearray(600 * 1024 * 1024)  # this process's high-water mark > 600 MiB
    ballast[::4096] = b"x" * len(ballast[::4096])
    try:
        result = peak_rss([sys.executable, "-c", "import time; time.sleep(0.3)"], timeout=60)
    finally:
        del ballast
    assert result.returncode == 0
    assert result.peak_mib < 100, result  # a bare interpreter, not the parent's 600 MiB


def test_peak_rss_reports_exit_code_and_stops_long_runs() -> None:
    failed = peak_rss([sys.executable, "-c", "raise SystemExit(3)"], timeout=60)
    assert failed.returncode == 3
    sleeper = peak_rss([sys.executable, "-c", "import time; time.sleep(60)"], stop_after=0.5)
    assert sleeper.returncode != 0 and sleeper.seconds < 10
