"""The files beside ``state.db``: the result (summed) blob of each closed round under
``blobs/``, the accepted update blobs of the open round under ``accepted/round-<r>/``,
and the removal on open of whatever no committed row points at. The rows naming these
files are aggregator.state.db's; aggregator.state.store says in which order both are written."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from aggregator.state.db import StateDB
from federation.files import write_atomic

_ROUND_DIR = re.compile(r"^round-(\d+)$")


class StoreFiles(StateDB):
    """Result blobs and accepted update blobs of the state directory."""

    def blob_path(self, name: str) -> Path:
        return self.blob_dir / name

    def write_blob(self, name: str, data: bytes) -> None:
        write_atomic(self.blob_dir / name, data, mode=0o644)  # a sum, encrypted

    def read_blob(self, name: str) -> bytes:
        return (self.blob_dir / name).read_bytes()

    def result_blob_names(self) -> set[str]:
        """File names of the result blobs committed rows point at."""
        return {str(r[0]) for r in self.db.execute(
            "SELECT sum_blob FROM rounds WHERE sum_blob IS NOT NULL")}

    def live_rounds(self) -> list[int]:
        """Rounds still open or closing: their accepted update blobs are kept."""
        return [int(r[0]) for r in self.db.execute(
            "SELECT round FROM rounds WHERE status IN ('open', 'closed') ORDER BY round")]

    def remove_stale_files(self) -> int:
        """Remove what no committed row points at: result blobs of a write interrupted
        before its commit, accepted blobs renamed into place before a crash prevented
        their commit, and accepted blobs of rounds already published or failed."""
        keep = self.result_blob_names()
        removed = 0
        for path in self.blob_dir.iterdir():
            if path.name not in keep:
                path.unlink(missing_ok=True)
                removed += 1
        live = set(self.live_rounds())
        for path in self.accepted_dir.iterdir():
            m = _ROUND_DIR.match(path.name)
            if m is None or int(m.group(1)) not in live:
                shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink()
                removed += 1
                continue
            wanted = {Path(name).name for _, name in self.accepted_blobs(int(m.group(1)))}
            for f in path.iterdir():
                if f.name not in wanted:
                    f.unlink(missing_ok=True)
                    removed += 1
        return removed

    # --- accepted update blobs ----------------------------------------------------------
    def accepted_path(self, name: str) -> Path:
        return self.accepted_dir / name

    def accepted_blobs(self, round_no: int) -> list[tuple[str, str]]:
        """(device, file name) of the round's stored accepted updates, in acceptance order."""
        rows = self.db.execute(
            "SELECT device_id, blob FROM contributions WHERE round=? AND blob IS NOT NULL"
            " ORDER BY seq", (round_no,))
        return [(str(r[0]), str(r[1])) for r in rows]

    def legacy_contributions(self, round_no: int) -> int:
        """Contributions held only in a running sum blob written by an older version."""
        row = self.db.execute(
            "SELECT COUNT(*) FROM contributions WHERE round=? AND blob IS NULL", (round_no,)
        ).fetchone()
        return int(row[0])

    def drop_accepted(self, round_no: int) -> None:
        """The round's accepted blobs are no longer needed (result published, or failed)."""
        shutil.rmtree(self.accepted_dir / f"round-{round_no}", ignore_errors=True)
