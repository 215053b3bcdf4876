"""Issue 15, attack 8: under ``umask 000`` keys/, the aggregator's state dir, accepted/ and
blobs/ were created 0777 and the public context 0666. The setup commands and a served
round, as real processes under umask 000: nothing they create is group/world-writable,
secrets are 0600 in 0700 directories (``bench.attacks.file_modes`` prints the figures)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from bench.rig.umask import created, problems, provision, serve_one_update
from tests.support.broker import MosquittoBroker
from tests.support.provisioning import model_dir

pytestmark = pytest.mark.mosquitto

REPO = Path(__file__).resolve().parents[2]
PRODUCT = ("edge", "aggregator", "federation", "models")


def test_setup_and_a_round_under_umask_000_leave_nothing_writable_by_others(
    tmp_path: Path, mosquitto: MosquittoBroker,
) -> None:
    paths = provision(tmp_path, 0o000, model_dir())
    during = serve_one_update(paths, mosquitto.url, 0o000)
    items = created(tmp_path)
    items += [c for c in during if not c.path.exists()]  # the open round's, gone since
    names = {c.path.relative_to(tmp_path).as_posix(): c for c in items}
    # what serving made is there and was checked too
    accepted = [n for n in names if n.startswith("agg-state/accepted/round-1/")]
    assert accepted, sorted(names)
    assert names["agg-state/accepted/round-1"].mode == 0o700
    assert names["agg-state/spool"].mode == 0o700
    for secret in ("commissioner/federation-secret.tenseal", "agg-state/aggregator.key",
                   "ca/ca.key", "box1/keys/device.key", "box1/tls/device-tls.key"):
        assert names[secret].secret and names[secret].mode == 0o600, secret
    assert names["agg-state/federation-public.tenseal"].mode == 0o644
    for d in ("commissioner", "agg-state", "agg-state/accepted", "agg-state/blobs", "ca"):
        assert names[d].mode == 0o700, (d, oct(names[d].mode))
    bad = problems(items, {tmp_path / "passphrase", tmp_path / "kiosk-pw"})
    assert not bad, "\n".join(bad)


def test_the_product_creates_no_directory_with_a_bare_mkdir() -> None:
    """A backstop: ``Path.mkdir``/``os.mkdir``/``os.makedirs`` leave the mode to the umask;
    the product creates directories with federation.files.make_dirs (which chmods)."""
    bare = []
    for top in PRODUCT:
        for path in sorted((REPO / top).rglob("*.py")):
            tree = ast.parse(path.read_text(), filename=str(path))
            for node in ast.walk(tree):
                if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                        and node.func.attr in ("mkdir", "makedirs", "touch", "copyfile",
                                               "write_text", "write_bytes")
                        and path != REPO / "federation" / "files.py"):
                    bare.append(f"{path.relative_to(REPO)}:{node.lineno} {node.func.attr}")
    assert not bare, "\n".join(bare)
