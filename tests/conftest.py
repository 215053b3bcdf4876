"""Fixtures shared by every level (tests/unit, integration, e2e, browser; rigs in tests/support).

- ``shared_data``: the LFW copy beside the checkout (``../shared/data``), or
  ``$FEDFACE_TEST_DATA``. Tests and benchmarks use it; the product never does.
- ``mosquitto``: a real Mosquitto broker started on a free loopback port with its own
  config file, torn down after the test. ``mosquitto_factory`` starts more (or restarts
  one on the same port, for broker-restart tests).
- ``secret_ctx``: a CKKS federation context with its secret key, one per test module
  (key generation is slow; a module's tests share it as the aggregator's
  operator would, and no two modules do).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from federation.crypto.ckks import FederationContext, new_secret_context
from tests.support.broker import MosquittoBroker, free_port
from tests.support.kiosk import kiosk_frames, kiosk_pipeline  # noqa: F401  (fixtures)

REPO_ROOT = Path(__file__).resolve().parents[1]

# The box runs training, sealing and hot-swap checks niced (edge.priority: nice 10), so
# the camera path keeps the CPU. Beside other CPU-bound work (CI runs the suite next to
# two busy processes) nice-10 work gets a few percent of a core and a federated round
# takes many minutes, so the tests' real boxes, and the processes they start, run it at
# normal priority. tests/unit/edge/test_priority.py checks the product default itself.
os.environ.setdefault("FEDFACE_BACKGROUND_NICENESS", "0")

# A whole run writes about 3 GB under the temp dir at its peak (each box the tests start
# keeps its own 38 MB split model, the demo tests three of them). On a disk with less
# free, hundreds of tests fail one after the other with ENOSPC deep in SQLite, ONNX or
# pip; one clear line before any test runs says what to do instead.
MIN_FREE_TMP_BYTES = 4 * 2**30


def pytest_sessionstart(session: pytest.Session) -> None:
    where = session.config.option.basetemp or tempfile.gettempdir()
    while not os.path.exists(where):
        where = os.path.dirname(where) or "."
    free = shutil.disk_usage(where).free
    if free < MIN_FREE_TMP_BYTES:
        raise pytest.UsageError(
            f"the tests need {MIN_FREE_TMP_BYTES / 2**30:.0f} GiB free under {where}, "
            f"{free / 2**30:.1f} GiB is: free space there (old /tmp/pytest-of-* runs) "
            "or point --basetemp at a disk with room")


@pytest.fixture(autouse=True)
def _root_logging_restored() -> Iterator[None]:
    """The CLIs configure the root logger (logging.basicConfig(force=True)); run in process
    (CliRunner) they bind it to a stream closed after the command, and every later test's
    log line printed a 'Logging error' traceback (on an xdist worker, into a heap
    measurement). Each test leaves the root logger as it found it."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def shared_data() -> Path:
    root = Path(os.environ.get("FEDFACE_TEST_DATA", REPO_ROOT.parent / "shared" / "data"))
    if not (root / "lfw").is_dir():
        pytest.fail(f"face data not found at {root} (set FEDFACE_TEST_DATA)")
    return root


@pytest.fixture(scope="session")
def lfw_dir(shared_data: Path) -> Path:
    return shared_data / "lfw"


@pytest.fixture(scope="session")
def template(tmp_path_factory: pytest.TempPathFactory, lfw_dir: Path) -> Path:
    """The session's enrolled box for the hot-swap tests (built on first use; each test
    copies it with ``tests.support.hot_swap.copy_box``)."""
    from tests.support.hot_swap import template_box  # edge.serving only when asked for

    return template_box(tmp_path_factory.getbasetemp(), lfw_dir)


@pytest.fixture
def mosquitto_factory(tmp_path: Path) -> Iterator[Callable[..., MosquittoBroker]]:
    brokers: list[MosquittoBroker] = []

    def start(extra_config: str = "", port: int | None = None) -> MosquittoBroker:
        b = MosquittoBroker(
            workdir=tmp_path / f"mosquitto-{len(brokers)}",
            port=port or free_port(),
            extra_config=extra_config,
        )
        brokers.append(b)
        return b.start()

    yield start
    for b in brokers:
        b.stop()


@pytest.fixture
def mosquitto(mosquitto_factory: Callable[..., MosquittoBroker]) -> MosquittoBroker:
    return mosquitto_factory()


@pytest.fixture(scope="module")
def secret_ctx() -> FederationContext:
    return new_secret_context()
