"""``fedface-edge run`` recognises once per visit: a generated kiosk video (held-out LFW
photos walking in front of the camera) through the real models, three events per visit."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from bench.common.kiosk_video import KioskVideo, kiosk_videos
from edge.cli import app
from tests.support.broker import MosquittoBroker, free_port
from tests.support.kiosk_video_file import write_video
from tests.support.mqtt_listener import Listener


@pytest.fixture
def kiosk_box(tmp_path: Path, lfw_dir: Path) -> tuple[Path, KioskVideo]:
    """A box with the 'three' scenario's enrolled visitor (photo 1; the video shows a
    later photo), and that scenario, 4 s long: two strangers come and go beside them."""
    video = next(v for v in kiosk_videos(lfw_dir, seed=0, seconds=4.0) if v.name == "three")
    data_dir = tmp_path / "box"
    for person in video.enrolled_people():
        photo = lfw_dir / person / f"{person}_0001.jpg"
        result = CliRunner().invoke(app, ["--data-dir", str(data_dir), "enroll", person,
                                          str(photo)])
        assert result.exit_code == 0, result.output
    return data_dir, video


def test_run_writes_three_events_per_visit_with_the_best_crop(
        kiosk_box: tuple[Path, KioskVideo], tmp_path: Path) -> None:
    data_dir, video = kiosk_box
    source = write_video(video, tmp_path / "kiosk.avi")
    events_file = tmp_path / "visits.jsonl"
    result = CliRunner().invoke(app, ["--data-dir", str(data_dir), "run", "--source",
                                      str(source), "--events", str(events_file)])
    assert result.exit_code == 0, result.output
    events = [json.loads(line) for line in events_file.read_text().splitlines()]
    by_visit: dict[str, list[dict[str, object]]] = {}
    for event in events:
        by_visit.setdefault(str(event["visit"]), []).append(event)
    for visit_events in by_visit.values():  # each visit: started, identified, ended
        assert [e["event"] for e in visit_events] == ["visit_started", "visit_identified",
                                                      "visit_ended"]
        ended = visit_events[-1]
        assert 1 <= int(ended["attempts"]) <= 6  # type: ignore[call-overload]
        crop = Path(str(ended["best_crop"]))
        assert crop.parent == data_dir / "visits"
        assert stat.S_IMODE(os.stat(crop).st_mode) == 0o600
        assert cv2.imread(str(crop)).shape == (112, 112, 3)
    names = {str(v[-1]["name"]) for v in by_visit.values()}
    truth = {p.person if p.enrolled else "unknown" for p in video.visits}
    assert names == truth, (names, truth)  # the enrolled visitor, and the strangers
    # the summary counts what staff see: visits, and how many were named (it used to
    # count frames' faces, which per visit are never named one by one: "0 known")
    named = sum(1 for v in by_visit.values() if v[-1]["name"] != "unknown")
    assert f"{len(by_visit)} visits ({named} named as someone enrolled)" in result.stderr, \
        result.stderr
    assert named >= 1
    assert len(by_visit) <= len(video.visits) + 1  # a visit split in two at most once


def _box_and_frames(tmp_path: Path, lfw_dir: Path, enrolled: list[str],
                    photos: list[tuple[str, int]]) -> tuple[Path, Path]:
    """A box with ``enrolled`` (each from their 10th LFW photo) and a folder of ``photos``
    (person, LFW photo number) in that order."""
    data_dir, frames = tmp_path / "box", tmp_path / "frames"
    frames.mkdir()
    for person in enrolled:
        result = CliRunner().invoke(app, ["--data-dir", str(data_dir), "enroll", person,
                                          str(lfw_dir / person / f"{person}_0010.jpg")])
        assert result.exit_code == 0, result.output
    for index, (person, photo) in enumerate(photos):
        (frames / f"{index:02d}.jpg").write_bytes(
            (lfw_dir / person / f"{person}_{photo:04d}.jpg").read_bytes())
    return data_dir, frames


def test_a_folder_of_photos_of_different_people_is_a_visit_per_person(
        tmp_path: Path, lfw_dir: Path) -> None:
    """docs/operations.md: a `dir:` folder is played as a video; consecutive photos of one
    person are one visit and a photo of someone else starts a new one. Three people one
    after the other at the same place (LFW centres its faces), a stranger's five photos
    between two enrolled people's three: three visits, the stranger one of them, with
    one alert's worth of "unknown" (it was one visit for all three, and then, with a
    single view deciding, the stranger's five photos were two visits)."""
    sequence = [("Colin_Powell", 3), ("Jennifer_Capriati", 5), ("Tony_Blair", 3)]
    enrolled = ["Colin_Powell", "Tony_Blair"]
    photos = [(person, k) for person, count in sequence for k in range(1, count + 1)]
    data_dir, frames = _box_and_frames(tmp_path, lfw_dir, enrolled, photos)
    events_file = tmp_path / "visits.jsonl"
    result = CliRunner().invoke(app, ["--data-dir", str(data_dir), "run", "--source",
                                      f"dir:{frames}", "--events", str(events_file)])
    assert result.exit_code == 0, result.output
    events = [json.loads(line) for line in events_file.read_text().splitlines()]
    ended = [e for e in events if e["event"] == "visit_ended"]
    assert [e["name"] for e in ended] == ["Colin_Powell", "unknown", "Tony_Blair"], ended
    assert [e["event"] for e in events] == ["visit_started", "visit_identified",
                                            "visit_ended"] * 3
    assert "Jennifer_Capriati" not in events_file.read_text()
    # every photo's face counts, also the first of each visit, before it is announced
    # (the summary said 10 faces: those drawn on a started visit)
    assert f"{len(photos)} frames, {len(photos)} faces, 3 visits (2 named as someone " \
        "enrolled)" in result.stderr, result.stderr


def test_a_folder_of_separate_photos_with_stills_is_a_visit_per_photo(
        tmp_path: Path, lfw_dir: Path) -> None:
    """One photo per person, each of someone else (a walkthrough's folder of 20 people
    gave 10 visits: as video frames, one view of someone else is taken for a glitch and
    waits for a second, so every second person vanished into the previous visit).
    `?stills=1` says the folder holds separate photos: a visit per photo, each named."""
    enrolled = ["Colin_Powell", "Tony_Blair", "Hugo_Chavez", "Gerhard_Schroeder",
                "Donald_Rumsfeld", "Ariel_Sharon"]
    sequence = ["Colin_Powell", "Tony_Blair", "Jennifer_Capriati", "Hugo_Chavez",
                "Gerhard_Schroeder", "Serena_Williams", "Donald_Rumsfeld", "Ariel_Sharon"]
    data_dir, frames = _box_and_frames(tmp_path, lfw_dir, enrolled,
                                       [(person, 1) for person in sequence])

    def names(options: str) -> list[str]:
        events_file = tmp_path / f"visits{options}.jsonl"
        result = CliRunner().invoke(app, ["--data-dir", str(data_dir), "run", "--source",
                                          f"dir:{frames}{options}", "--events",
                                          str(events_file)])
        assert result.exit_code == 0, result.output
        events = [json.loads(line) for line in events_file.read_text().splitlines()]
        started = {e["visit"]: e for e in events if e["event"] == "visit_started"}
        ended = [e for e in events if e["event"] == "visit_ended"]
        # a visit ends on its own last photo's frame, before the next visit starts, and a
        # one-photo visit on its photo's box (a visit ended by the next photo carried that
        # photo's frame and box)
        starts = sorted(e["frame"] for e in started.values())
        for e in ended:
            first = started[e["visit"]]
            assert first["frame"] <= e["frame"] < min(
                (f for f in starts if f > first["frame"]), default=len(sequence)), (e, first)
            if e["frame"] == first["frame"]:
                assert e["box"] == first["box"], (e, first)
        return [str(e["name"]) for e in ended]

    expected = [p if p in enrolled else "unknown" for p in sequence]
    assert names("?stills=1") == expected
    assert len(names("")) < len(sequence)  # played as a clip's frames: what it was
    # look-alikes (found by scoring 250 LFW people's first photos: 0.48 and 0.42 between
    # them, each naming their own enrolled person): a photo that alone names another
    # enrolled person starts their visit (they were one visit each pair: a walkthrough's
    # Heidi_Klum and Holly_Hunter)
    alike = ["Vanessa_Williams", "Kelly_Clarkson", "Sam_Bith", "Milo_Maestrecampo"]
    for person in alike:
        assert CliRunner().invoke(app, ["--data-dir", str(data_dir), "enroll", person, str(
            lfw_dir / person / f"{person}_0002.jpg")]).exit_code == 0
    for index, person in enumerate(alike):
        (frames / f"{index:02d}.jpg").write_bytes(
            (lfw_dir / person / f"{person}_0001.jpg").read_bytes())
    for stale in sorted(frames.iterdir())[len(alike):]:
        stale.unlink()
    assert names("?stills=1&loop=0") == alike
    # and one person's photos in a row are still one visit
    for index in range(len(sequence)):
        (frames / f"{index:02d}.jpg").write_bytes(
            (lfw_dir / "Tony_Blair" / f"Tony_Blair_{index + 1:04d}.jpg").read_bytes())
    assert names("?stills=1&fps=5") == ["Tony_Blair"]


def test_a_subscriber_receives_visit_events_and_home_assistant_discovery(
        kiosk_box: tuple[Path, KioskVideo], tmp_path: Path, mosquitto: MosquittoBroker) -> None:
    """`run` as its own process publishes to a real Mosquitto; a plain paho client (not the
    product's transport) receives the discovery configs, the state and the visits."""
    data_dir, video = kiosk_box
    source = write_video(video, tmp_path / "kiosk.avi")
    listener = Listener("127.0.0.1", mosquitto.port, ["fedface/acme/lobby-1/#",
                                                       "homeassistant/#"])
    try:
        run = subprocess.run(
            [sys.executable, "-m", "edge.cli", "--data-dir", str(data_dir), "run",
             "--source", str(source), "--events", str(tmp_path / "visits.jsonl"),
             "--mqtt-url", mosquitto.url, "--fed", "acme", "--box-id", "lobby-1"],
            capture_output=True, text=True, timeout=300, env=os.environ.copy())
        assert run.returncode == 0, run.stderr
        written = (tmp_path / "visits.jsonl").read_text().splitlines()

        def all_events(got: list[tuple[str, bytes, bool]]) -> bool:
            # every visit_ended is followed by the box's state: wait for the last one
            return (sum(t.endswith("/events") for t, _, _ in got) >= len(written)
                    and got[-1][0].endswith("/state"))

        got = listener.collect_until(all_events)
    finally:
        listener.close()
    on_wire = [json.loads(p) for t, p, _ in got if t == "fedface/acme/lobby-1/events"]
    assert on_wire == [json.loads(line) for line in written]  # same events, same order
    assert all("best_crop_png" not in e for e in on_wire)  # no face image unless allowed
    configs = {t: json.loads(p) for t, p, retained in got if t.startswith("homeassistant/")}
    assert set(configs) == {"homeassistant/sensor/fedface_lobby-1/last_person/config",
                            "homeassistant/binary_sensor/fedface_lobby-1/unknown_face/config",
                            "homeassistant/sensor/fedface_lobby-1/visits/config"}
    assert {c["state_topic"] for c in configs.values()} == {"fedface/acme/lobby-1/state"}
    states = [json.loads(p) for t, p, _ in got if t == "fedface/acme/lobby-1/state"]
    identified = [e for e in on_wire if e["event"] == "visit_identified"]
    assert states[-1]["visits"] == len(identified)
    assert states[-1]["last_person"] == identified[-1]["name"]
    # the stranger's visit raised the unknown-face sensor, and its end lowered it
    assert any(s["unknown_present"] for s in states) and not states[-1]["unknown_present"]


def test_a_box_in_no_federation_publishes_its_events_from_edge_toml(
        tmp_path: Path, lfw_dir: Path, mosquitto: MosquittoBroker) -> None:
    """helper-58: the documented [events] section of a box in no federation stopped every
    run ('MQTT events need the federation and box ids', and box.fed/device_id are refused
    there). Such a box publishes as fed 'local' and its host name."""
    import socket

    frames = tmp_path / "frames"
    frames.mkdir()
    for n in (1, 2):
        shutil.copy(lfw_dir / "Tony_Blair" / f"Tony_Blair_{n:04d}.jpg", frames / f"{n}.jpg")
    data_dir = tmp_path / "box"
    data_dir.mkdir()
    (data_dir / "edge.toml").write_text(f'[events]\nmqtt_url = "{mosquitto.url}"\n')
    host = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname())[:64].strip("-.") or "box"
    listener = Listener("127.0.0.1", mosquitto.port, [f"fedface/local/{host}/#"])
    try:
        run = subprocess.run(
            [sys.executable, "-m", "edge.cli", "--data-dir", str(data_dir), "run",
             "--source", f"dir:{frames}?stills=1"],
            capture_output=True, text=True, timeout=300, env=os.environ.copy())
        assert run.returncode == 0, run.stderr
        got = listener.collect_until(lambda got: sum(t.endswith("/events")
                                                     for t, _, _ in got) >= 3)
    finally:
        listener.close()
    ended = [json.loads(p) for t, p, _ in got if t == f"fedface/local/{host}/events"
             and json.loads(p)["event"] == "visit_ended"]
    assert len(ended) == 1, got


def test_a_bad_events_section_is_a_configuration_error(tmp_path: Path) -> None:
    """helper-61: a missing [events] password_file stopped run with exit 2 (usage) and
    'check --mqtt-url / --fed / --box-id'; it is edge.toml's: exit 7, naming it."""
    frames = tmp_path / "frames"
    frames.mkdir()
    cv2.imwrite(str(frames / "0.png"), np.zeros((48, 64, 3), np.uint8))
    data_dir = tmp_path / "box"
    data_dir.mkdir()
    missing = tmp_path / "missing"
    (data_dir / "edge.toml").write_text(
        '[events]\nmqtt_url = "mqtt://127.0.0.1:1"\nusername = "kiosk"\n'
        f'password_file = "{missing}"\n')
    result = CliRunner().invoke(app, ["--data-dir", str(data_dir), "run", "--source",
                                      f"dir:{frames}"])
    assert result.exit_code == 7, result.output
    assert f"cannot read the MQTT password file {missing}" in result.stderr
    assert f"hint: fix [events] in {data_dir / 'edge.toml'}" in result.stderr, result.stderr


@pytest.mark.parametrize(("args", "expected"), [
    (["--mqtt-url", "mqtt://127.0.0.1:1", "--fed", "acme", "--box-id", "lobby/1"],
     "box id 'lobby/1' must be"),
    (["--mqtt-url", "http://127.0.0.1:1", "--fed", "acme", "--box-id", "lobby"],
     "cannot publish visit events"),
    # per-visit options with --per-frame were silently ignored
    (["--per-frame", "--detect-every", "2"], "are per-visit options"),
    (["--per-frame", "--max-attempts", "3"], "are per-visit options"),
])
def test_bad_mqtt_options_are_one_clear_error(tmp_path: Path, args: list[str],
                                              expected: str) -> None:
    frames = tmp_path / "frames"
    frames.mkdir()
    cv2.imwrite(str(frames / "0.png"), np.zeros((48, 64, 3), np.uint8))
    result = CliRunner().invoke(app, ["--data-dir", str(tmp_path / "box"), "run", "--source",
                                      f"dir:{frames}", *args])
    assert result.exit_code == 2, result.output
    assert expected in result.stderr
    assert not (tmp_path / "box" / "visits").exists()  # failed before any frame


def test_run_s_per_visit_defaults_are_the_visit_engine_s() -> None:
    from edge.cli.run import DEFAULT_DETECT_EVERY, DEFAULT_MAX_ATTEMPTS
    from edge.tracking.visits import VisitSettings

    defaults = VisitSettings()
    assert defaults.detect_every == DEFAULT_DETECT_EVERY
    assert defaults.max_attempts == DEFAULT_MAX_ATTEMPTS


def test_an_unreachable_events_broker_is_said_and_recognition_goes_on(
        kiosk_box: tuple[Path, KioskVideo], tmp_path: Path) -> None:
    """Nothing listens on the events broker's port: `run` says so at start, recognises
    every visit as without MQTT, and says at exit how many events were never delivered."""
    data_dir, video = kiosk_box
    source = write_video(video, tmp_path / "kiosk.avi")
    run = subprocess.run(
        [sys.executable, "-m", "edge.cli", "--data-dir", str(data_dir), "run", "--source",
         str(source), "--events", str(tmp_path / "visits.jsonl"), "--mqtt-url",
         f"mqtt://127.0.0.1:{free_port()}", "--fed", "acme", "--box-id", "lobby-1"],
        capture_output=True, text=True, timeout=300, env=os.environ.copy())
    assert run.returncode == 0, run.stderr
    assert "the events broker at mqtt://127.0.0.1:" in run.stderr
    assert "is not reachable yet" in run.stderr
    events = [json.loads(line) for line in (tmp_path / "visits.jsonl").read_text().splitlines()]
    names = {e["name"] for e in events if e["event"] == "visit_ended"}
    assert names == {p.person if p.enrolled else "unknown" for p in video.visits}
    # discovery (3 configs and the state), then per visit 3 events and 2 states: all lost
    undelivered = re.search(r"closing with (\d+) message\(s\) never delivered", run.stderr)
    assert undelivered is not None, run.stderr
    assert int(undelivered.group(1)) == 4 + len(events) + 2 * (len(events) // 3)


def test_annotate_per_visit_marks_the_named_visitor_and_the_strangers(
        kiosk_box: tuple[Path, KioskVideo], tmp_path: Path) -> None:
    """`run --annotate` in per-visit mode: one output frame per input frame; the enrolled
    visitor is boxed in the known colour once the visit is identified, never before, and
    the strangers in the unknown one. (When a visit is identified depends on the attempts
    and on time, so the frames are taken from the run's own events.)"""
    from edge.cli.run import KNOWN_COLOUR, UNKNOWN_COLOUR

    data_dir, video = kiosk_box
    source = write_video(video, tmp_path / "kiosk.avi")
    out, events_file = tmp_path / "annotated.avi", tmp_path / "visits.jsonl"
    result = CliRunner().invoke(app, ["--data-dir", str(data_dir), "run", "--source",
                                      str(source), "--annotate", str(out), "--events",
                                      str(events_file)])
    assert result.exit_code == 0, result.output
    capture = cv2.VideoCapture(str(out))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    assert len(frames) == video.length

    def shows(frame: np.ndarray, colour: tuple[int, int, int]) -> bool:  # JPEG-tolerant
        return bool(np.all(np.abs(frame.astype(int) - colour) <= 30, axis=2).sum() > 200)

    events = [json.loads(line) for line in events_file.read_text().splitlines()]
    named = [e for e in events if e["event"] == "visit_identified" and e["name"] != "unknown"]
    assert named, events  # the enrolled visitor was named
    first_named = min(int(e["frame"]) for e in named)
    known = [i for i, f in enumerate(frames) if shows(f, KNOWN_COLOUR)]
    assert len(known) >= 5
    assert min(known) >= first_named - 2  # no green box before anyone was named
    assert sum(shows(f, UNKNOWN_COLOUR) for f in frames) >= 5


def test_include_crop_from_the_config_file_puts_the_best_crop_on_the_wire(
        kiosk_box: tuple[Path, KioskVideo], tmp_path: Path, mosquitto: MosquittoBroker) -> None:
    """The `[events]` section of the box's edge.toml, not options: its broker, and
    include_crop = true, which attaches each visit's best crop (PNG) to its events."""
    from edge.config import BoxConfig
    from edge.provision import render_box_config

    data_dir, video = kiosk_box
    unused = str(tmp_path / "not-used-by-run")  # federation files: `run` never opens them
    config = BoxConfig.model_validate({
        "box": {"device_id": "lobby-2", "fed": "acme", "data_dir": str(data_dir)},
        "camera": {"source": str(write_video(video, tmp_path / "kiosk.avi"))},
        "broker": {"url": "mqtts://broker.invalid:8883", "ca_file": unused,
                   "cert_file": unused, "key_file": unused},
        "federation": {"key_id": "0" * 32, "secret_context": unused, "device_key": unused,
                       "aggregator_key": unused},
        "events": {"mqtt_url": mosquitto.url, "include_crop": True},
    })
    (data_dir / "edge.toml").write_text(render_box_config(config))
    listener = Listener("127.0.0.1", mosquitto.port, ["fedface/acme/lobby-2/events"])
    try:
        run = subprocess.run(
            [sys.executable, "-m", "edge.cli", "--data-dir", str(data_dir), "run",
             "--events", str(tmp_path / "visits.jsonl")],
            capture_output=True, text=True, timeout=300, env=os.environ.copy())
        assert run.returncode == 0, run.stderr
        written = (tmp_path / "visits.jsonl").read_text().splitlines()
        got = listener.collect_until(lambda got: len(got) >= len(written))
    finally:
        listener.close()
    identified = [json.loads(p) for _, p, _ in got
                  if json.loads(p)["event"] == "visit_identified"]
    assert identified
    for event in identified:
        png = base64.b64decode(event["best_crop_png"])
        crop = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
        assert crop.shape == (112, 112, 3)
        assert png == Path(event["best_crop"]).read_bytes()  # the crop kept on the box
