"""The operator's, technicians' and security staff's journey, exactly as documented.

Runs the bash blocks of docs/operations.md's "Walkthrough" section in order, each as a
real process in one work directory: keys, init, certificates, a TLS Mosquitto with CRL
and per-device ACL, ``serve``, two boxes provisioned from the key bundle and signed with
``devices add``, ``doctor``, ``enroll --from-dir``, ``join``, a federated round, then
``identify``, ``run`` and ``kiosk serve`` on a box, a revocation, and a round held below
the quorum. Markers in the doc (HTML comments before a block) say how a block runs:
``background NAME`` (a service, its output in NAME.log), ``retry SECONDS`` (repeat
until it succeeds), ``variables`` (the values this test supplies). After the walk, the
test checks what the issue asks the journey to show, beyond each command's exit code.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.broker import free_port
from tests.support.paths import REPO_ROOT

pytestmark = [pytest.mark.mosquitto, pytest.mark.slow]

SECTION = "## Walkthrough: a whole federation on one machine"
MARKER = re.compile(r"<!-- journey: (\w+)(?: ([\w-]+))? -->")
PEOPLE_A = ("George_W_Bush", "Colin_Powell")
PEOPLE_B = ("Tony_Blair", "Donald_Rumsfeld")
NEWCOMER_A = "Gerhard_Schroeder"
PHOTOS = 6


@dataclass
class Block:
    script: str
    mode: str = "run"  # run | background | retry | variables
    arg: str | None = None


def walkthrough_blocks(doc: Path) -> list[Block]:
    text = doc.read_text()
    start = text.index(SECTION)
    end = text.index("\n## ", start + len(SECTION))
    blocks: list[Block] = []
    marker: re.Match[str] | None = None
    lines = iter(text[start:end].splitlines())
    for line in lines:
        if (m := MARKER.fullmatch(line.strip())) is not None:
            marker = m
        elif line.strip() == "```bash":
            body = []
            for inner in lines:
                if inner.strip() == "```":
                    break
                body.append(inner)
            mode, arg = (marker.group(1), marker.group(2)) if marker else ("run", None)
            blocks.append(Block("\n".join(body), mode, arg))
            marker = None
        elif line.strip():
            marker = None  # a marker applies only to the block right after it
    return blocks


def copy_people(lfw: Path, dest: Path, people: tuple[str, ...], skip: int = 0) -> Path:
    for person in people:
        (dest / person).mkdir(parents=True)
        for photo in sorted((lfw / person).glob("*.jpg"))[skip:skip + PHOTOS]:
            shutil.copy(photo, dest / person / photo.name)
    return dest


@dataclass
class Walk:
    work: Path
    env: dict[str, str]
    services: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    transcript: list[str] = field(default_factory=list)

    def log(self, name: str) -> str:
        path = self.work / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def diagnosis(self) -> str:
        parts = [f"--- {name}.log (last 3000)\n{self.log(name)[-3000:]}"
                 for name in self.services]
        return "\n".join(["transcript:", *self.transcript[-12:], *parts])

    def run(self, script: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=self.work,
                              env=self.env, capture_output=True, text=True, timeout=timeout)
        self.transcript.append(f"$ {script.strip()[:200]}\n-> {proc.returncode}\n"
                               f"{proc.stdout[-1500:]}{proc.stderr[-1500:]}")
        return proc

    def start(self, name: str, script: str) -> None:
        with (self.work / f"{name}.log").open("wb") as out:
            self.services[name] = subprocess.Popen(
                ["bash", "-euo", "pipefail", "-c", f"exec {script.strip()}"], cwd=self.work,
                env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def check_services(self, allowed_to_end: set[str]) -> None:
        for name, proc in self.services.items():
            if proc.poll() is not None and name not in allowed_to_end:
                raise AssertionError(f"{name} exited with {proc.returncode}\n"
                                     + self.diagnosis())

    def retry(self, script: str, seconds: float, allowed_to_end: set[str]) -> None:
        deadline = time.monotonic() + seconds
        while True:
            if self.run(script, timeout=120).returncode == 0:
                return
            self.check_services(allowed_to_end)
            if time.monotonic() > deadline:
                raise AssertionError(f"not true after {seconds:.0f} s: {script}\n"
                                     + self.diagnosis())
            time.sleep(1.0)

    def stop_all(self) -> None:
        for proc in self.services.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.services.values():
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        pid_file = self.work / "broker" / "mosquitto.pid"
        if pid_file.exists():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid_file.read_text().strip()), signal.SIGTERM)

    def json_of(self, *command: str) -> object:
        proc = self.run(" ".join(command) + " --json")
        assert proc.returncode == 0, self.diagnosis()
        return json.loads(proc.stdout)


@pytest.fixture
def walk(tmp_path: Path, lfw_dir: Path) -> Iterator[Walk]:
    work = tmp_path / "walk"
    work.mkdir()
    faces_a = copy_people(lfw_dir, tmp_path / "site-a", PEOPLE_A)
    faces_b = copy_people(lfw_dir, tmp_path / "site-b", PEOPLE_B)
    newcomers = copy_people(lfw_dir, tmp_path / "newcomers-a", (NEWCOMER_A,))
    camera_a = copy_people(lfw_dir, tmp_path / "camera-a", PEOPLE_A[:1], skip=PHOTOS)
    camera_b = copy_people(lfw_dir, tmp_path / "camera-b", PEOPLE_B[:1], skip=PHOTOS)
    probe = sorted((lfw_dir / PEOPLE_A[0]).glob("*.jpg"))[PHOTOS + 3]
    from tests.support.provisioning import model_dir

    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}"
           f"{os.environ.get('PATH', '')}", "HOME": str(tmp_path / "home"),
           "FEDFACE_MODEL_DIR": str(model_dir()), "COLUMNS": "200",
           "PORT": str(free_port()), "KIOSK_PORT": str(free_port()),
           "FACES_A": str(faces_a), "FACES_B": str(faces_b), "NEWCOMERS_A": str(newcomers),
           "CAMERA_A": f"dir:{camera_a / PEOPLE_A[0]}",
           "CAMERA_B": f"dir:{camera_b / PEOPLE_B[0]}", "PROBE_A": str(probe)}
    for name in ("FEDFACE_DATA_DIR", "FEDFACE_CONFIG", "FEDFACE_AGGREGATOR_STATE"):
        env.pop(name, None)
    w = Walk(work, env)
    yield w
    w.stop_all()


def test_the_documented_journey_holds_end_to_end(walk: Walk) -> None:
    blocks = walkthrough_blocks(REPO_ROOT / "docs" / "operations.md")
    declared = [b for b in blocks if b.mode == "variables"]
    assert len(declared) == 1
    names = set(re.findall(r"^(\w+)=", declared[0].script, re.M))
    assert names and names <= set(walk.env), names - set(walk.env)

    ended: set[str] = set()  # services the walk itself ends (the revoked box's join)
    revoked_at = 0.0
    for block in blocks:
        if block.mode == "variables":
            continue
        if block.mode == "background":
            assert block.arg is not None
            walk.start(block.arg, block.script)
        elif block.mode == "retry":
            walk.retry(block.script, float(block.arg or 60), ended)
        else:
            revoking = "devices revoke box-b" in block.script
            if revoking:
                revoked_at = time.monotonic()
                ended.add("join-b")
            proc = walk.run(block.script)
            assert proc.returncode == 0, walk.diagnosis()
            if revoking:  # the live session is cut and the box told within 10 s
                while "revoked" not in walk.log("join-b").lower():
                    assert time.monotonic() < revoked_at + 10, walk.diagnosis()
                    time.sleep(0.2)
        walk.check_services(ended)

    # The federated model survived identify, run and the kiosk: still served, weights on
    # disk, no fallback in the box's history.
    status = walk.json_of("fedface-edge --data-dir box-a model status")
    assert isinstance(status, dict) and status["current"]["version"] == "round-1", status
    assert "fallback" not in [e["event"] for e in status["history"]]
    assert (walk.work / "box-a" / "models" / "sface-fed-round-1.weights.npz").is_file()

    # The quorum is a floor: every published round has at least two contributions, and
    # the round box-a sent to alone after the revocation stays open (every active
    # device has sent, but below the quorum: it used to close and publish at once).
    time.sleep(3)  # long enough for the old close-at-once to have happened
    rounds = walk.json_of("fedface-aggregator rounds list --state agg")
    assert isinstance(rounds, list)
    published = [r for r in rounds if r["status"] == "published"]
    assert published and all(r["contributions"] >= 2 for r in published), rounds
    lone = [r for r in rounds if r["contributions"] == 1]  # box-a's, after the revocation
    assert lone and all(r["status"] in ("open", "failed") for r in lone), rounds
    # ... and box-a's own record of that round says it sent (it used to keep the "sat
    # out" it said before the newcomers were enrolled)
    mine = {v["round"]: v["outcome"] for v in status["rounds"]}
    assert all(mine.get(r["round"]) in ("submitted", "no_result") for r in lone), mine

    # Revocation: box-b learnt it within 10 s (checked above) and no longer loops on
    # reconnecting to a broker that refuses it.
    assert revoked_at
    reconnects = walk.log("join-b").lower().count("reconnect")
    time.sleep(3)
    assert walk.log("join-b").lower().count("reconnect") == reconnects, walk.diagnosis()
