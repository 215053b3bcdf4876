"""Issue 17: the CompreFace-compatible API of ``fedface-edge serve-api``, driven by the
unmodified official client (``compreface-sdk`` from PyPI) against the real server process
over HTTP, on real LFW photos; its names and scores are ``fedface-edge identify``'s."""

from __future__ import annotations

import http.client
import json
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import requests
from compreface import CompreFace
from typer.testing import CliRunner

from edge.cli import app
from tests.support.api_server import create_key, edge_cli, running_api
from tests.support.vision import group_photo

PEOPLE = ("Colin_Powell", "Hugo_Chavez", "Tony_Blair")
STRANGER = "Serena_Williams"


def photo(lfw_dir: Path, person: str, number: int) -> str:
    return str(lfw_dir / person / f"{person}_{number:04d}.jpg")


def client(url: str, key: str):  # type: ignore[no-untyped-def]
    parts = urlsplit(url)
    return CompreFace(f"{parts.scheme}://{parts.hostname}", str(parts.port)) \
        .init_face_recognition(key)


def identify(data_dir: Path, images: list[str]) -> dict[str, dict[str, object]]:
    result = CliRunner().invoke(app, ["--data-dir", str(data_dir), "identify", "--json",
                                      *images])
    assert result.exit_code == 0, result.output
    return {r["image"]: r for r in map(json.loads, result.stdout.splitlines())}


def test_compreface_sdk_enrols_and_recognises_like_identify(tmp_path: Path,
                                                            lfw_dir: Path) -> None:
    box = tmp_path / "box"
    key = create_key(box, "double-take")
    assert key not in (box / "api_keys.json").read_text()  # only its hash is kept
    assert (box / "api_keys.json").stat().st_mode & 0o777 == 0o600
    with running_api(box) as server:
        url = server.url
        recognition = client(url, key)
        subjects, collection = recognition.get_subjects(), recognition.get_face_collection()
        assert subjects.add("Colin") == {"subject": "Colin"}
        assert subjects.update("Colin", PEOPLE[0]) == {"updated": True}
        image_ids = {}
        for person in PEOPLE:
            for n in (1, 2):
                added = collection.add(image_path=photo(lfw_dir, person, n), subject=person)
                assert added["subject"] == person and added["warnings"] == [], added
                image_ids.setdefault(person, []).append(added["image_id"])
        assert subjects.list() == {"subjects": sorted(PEOPLE)}
        # the same photo again adds nothing: its example's id comes back (helper-47 got
        # a second example of it, where enroll and the kiosk add nothing)
        again = collection.add(image_path=photo(lfw_dir, PEOPLE[0], 1), subject=PEOPLE[0])
        assert again["image_id"] == image_ids[PEOPLE[0]][0], again
        # someone else's face under an enrolled subject is refused (helper-53: the CLI
        # and the kiosk added it, and its owner was named as the subject from then on)
        other = collection.add(image_path=photo(lfw_dir, STRANGER, 2), subject=PEOPLE[0])
        assert other["code"] == 26 and f"does not look like {PEOPLE[0]}" in other["message"], \
            other
        listed = collection.list()
        assert listed["total_elements"] == 6
        assert {f["subject"] for f in listed["faces"]} == set(PEOPLE)

        probes = [photo(lfw_dir, p, 10) for p in PEOPLE] + [photo(lfw_dir, STRANGER, 1)]
        answers = {p: recognition.recognize(image_path=p, options={"prediction_count": 2})
                   for p in probes}
        reference = identify(box, probes)  # the CLI on the same gallery, meanwhile
        threshold = float(reference[probes[0]]["threshold"])  # type: ignore[arg-type]
        for probe in probes:
            faces = answers[probe]["result"]
            expected = reference[probe]["faces"]
            assert len(faces) == len(expected), (probe, faces)  # type: ignore[arg-type]
            for got, want in zip(faces, expected, strict=True):  # type: ignore[call-overload]
                best = got["subjects"][0]
                assert best["similarity"] == want["score"], (probe, got, want)
                named = best["subject"] if best["similarity"] >= threshold else "unknown"
                assert named == want["name"], (probe, got, want)
                assert len(got["subjects"]) == 2
                assert got["subjects"][0]["similarity"] >= got["subjects"][1]["similarity"]
        for person, probe in zip(PEOPLE, probes, strict=False):
            assert reference[probe]["faces"][0]["name"] == person  # type: ignore[index]
        assert reference[probes[-1]]["faces"][0]["name"] == "unknown"  # type: ignore[index]

        # verification against a stored example, deletion of one, of a whole subject
        verified = collection.verify(probes[0], image_ids[PEOPLE[0]][0])
        assert verified["result"][0]["similarity"] >= threshold, verified
        assert collection.delete(image_ids[PEOPLE[1]][0])["subject"] == PEOPLE[1]
        assert subjects.delete(PEOPLE[2]) == {"subject": PEOPLE[2]}
        assert subjects.list() == {"subjects": sorted(PEOPLE[:2])}
        assert collection.list()["total_elements"] == 3
        # a rename onto an existing subject merges the two, as CompreFace documents it
        # (it answered "already exists": helper-47), when they are one person's faces
        twin = collection.add(image_path=photo(lfw_dir, PEOPLE[0], 3), subject="C. Powell")
        assert twin["subject"] == "C. Powell", twin
        # said, as enroll and the kiosk say it (helper-57: the API said nothing)
        assert len(twin["warnings"]) == 1, twin
        assert twin["warnings"][0].startswith(f"this face looks like {PEOPLE[0]}, who is "
                                              "already enrolled (similarity 0."), twin
        # a group photo: the largest face is taken, and the answer says so
        pair = group_photo(lfw_dir, tmp_path / "pair.jpg", beside=PEOPLE[1], largest=STRANGER)
        grouped = collection.add(image_path=str(pair), subject=STRANGER)
        assert grouped["warnings"] == ["the photo has 2 faces: the largest was taken"], grouped
        assert subjects.delete(STRANGER) == {"subject": STRANGER}
        assert subjects.update("C. Powell", PEOPLE[0]) == {"updated": True}
        assert subjects.list() == {"subjects": sorted(PEOPLE[:2])}
        merged = collection.list()
        assert merged["total_elements"] == 4, merged
        assert [f["subject"] for f in merged["faces"]].count(PEOPLE[0]) == 3, merged
        # someone else's faces are not (helper-58: Amelie renamed onto Tiger_Woods was
        # named Tiger from then on), nor a name the gallery has in other capitals
        refused = subjects.update(PEOPLE[1], PEOPLE[0])
        assert refused["code"] == 26 and f"the faces of {PEOPLE[1]} do not look like " \
            f"{PEOPLE[0]}" in refused["message"], refused
        assert subjects.list() == {"subjects": sorted(PEOPLE[:2])}
        hugo = recognition.recognize(image_path=photo(lfw_dir, PEOPLE[1], 10))
        assert hugo["result"][0]["subjects"][0]["subject"] == PEOPLE[1], hugo
        lower = subjects.add(PEOPLE[0].lower())
        assert lower["code"] == 26 and "differs only in capitals" in lower["message"], lower
        renamed = subjects.update(PEOPLE[1], PEOPLE[0].upper())
        assert renamed["code"] == 26 and "differs only in capitals" in renamed["message"], \
            renamed
        assert subjects.update(PEOPLE[1], PEOPLE[1].upper()) == {"updated": True}  # its own
        assert subjects.update(PEOPLE[1].upper(), PEOPLE[1]) == {"updated": True}

        # keys: a wrong one is refused; revoking through the CLI applies at once
        assert client(url, "ffk_wrong").get_subjects().list()["code"] == 20
        assert edge_cli(box, "api-key", "revoke", "double-take").returncode == 0
        assert recognition.get_subjects().list()["code"] == 20
    # nothing that identifies a face in the server's log (no names, no request lines)
    log = "".join(server.log)
    assert not [p for p in (*PEOPLE, "Colin") if p in log], log


def test_detect_verify_and_bad_input(tmp_path: Path, lfw_dir: Path) -> None:
    box = tmp_path / "box"
    key = create_key(box, "home-assistant")
    headers = {"x-api-key": key}
    with running_api(box, "--max-upload-mb", "1") as server:
        url = server.url
        one = Path(photo(lfw_dir, PEOPLE[0], 1)).read_bytes()
        same = Path(photo(lfw_dir, PEOPLE[0], 2)).read_bytes()
        other = Path(photo(lfw_dir, STRANGER, 1)).read_bytes()
        detected = requests.post(f"{url}/api/v1/detection/detect", headers=headers,
                                 files={"file": one}, timeout=60).json()
        box_ = detected["result"][0]["box"]
        assert box_["x_max"] > box_["x_min"] and 0 < box_["probability"] <= 1
        assert set(detected) == {"result"} and set(detected["result"][0]) == {"box"}
        # CompreFace's face_plugins and status: landmarks, the embedding, the times
        extra = requests.post(f"{url}/api/v1/detection/detect?face_plugins=landmarks,"
                              "calculator,age&status=true", headers=headers,
                              files={"file": one}, timeout=60).json()
        first = extra["result"][0]
        assert first["box"] == box_ and "age" not in first  # not on the box: ignored
        assert len(first["landmarks"]) == 5
        assert all(box_["x_min"] <= x <= box_["x_max"] and box_["y_min"] <= y <= box_["y_max"]
                   for x, y in first["landmarks"])
        assert len(first["embedding"]) == 128
        assert abs(np.linalg.norm(first["embedding"]) - 1) < 1e-3
        assert first["execution_time"]["detector"] > 0 and "subjects" not in first
        assert set(first["execution_time"]) == {"detector"}  # a detection embeds nothing
        assert extra["plugins_versions"]["detector"] == "yunet"
        scores = [requests.post(f"{url}/api/v1/verification/verify", headers=headers,
                                files={"source_image": one, "target_image": target},
                                timeout=60).json()["result"][0]["face_matches"][0]["similarity"]
                  for target in (same, other)]
        assert scores[0] > 0.4 > scores[1]
        # empty gallery: a face is found, with no subject to name
        answered = requests.post(f"{url}/api/v1/recognition/recognize", headers=headers,
                                 files={"file": one}, timeout=60)
        empty = answered.json()
        assert empty["result"][0]["subjects"] == []
        # the server's own times, as the API bench splits the HTTP overhead with them
        timing = dict(part.strip().split(";dur=")
                      for part in answered.headers["Server-Timing"].split(","))
        assert set(timing) == {"app", "engine", "decode"}, timing
        # (each rounded to 0.1 ms)
        assert float(timing["app"]) >= float(timing["engine"]) + float(timing["decode"]) - 0.2
        refused = {
            "not an image": requests.post(f"{url}/api/v1/recognition/recognize",
                                          headers=headers, files={"file": b"hello"}, timeout=60),
            "too large": requests.post(f"{url}/api/v1/recognition/recognize", headers=headers,
                                       files={"file": b"\xff" * 2**21}, timeout=60),
            "bad option": requests.post(f"{url}/api/v1/recognition/recognize?limit=-1",
                                        headers=headers, files={"file": one}, timeout=60),
            "no key": requests.get(f"{url}/api/v1/recognition/subjects", timeout=60),
        }
        assert {k: r.status_code for k, r in refused.items()} == {
            "not an image": 400, "too large": 413, "bad option": 400, "no key": 401}
        assert all("message" in r.json() for r in refused.values())
        # far past the cap the HTTP server refuses on the header alone, in the API's JSON
        # too (it was Cheroot's plain text: a walkthrough's 20 MB upload)
        host, port = url.removeprefix("http://").rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port), timeout=60)
        try:
            conn.putrequest("POST", "/api/v1/recognition/recognize")
            for name, value in headers.items():
                conn.putheader(name, value)
            conn.putheader("Content-Length", str(10**10))
            conn.endheaders()
            answer = conn.getresponse()
            assert answer.status == 413
            assert json.loads(answer.read())["code"] == refused["too large"].json()["code"]
        finally:
            conn.close()
        wall = requests.post(f"{url}/api/v1/recognition/recognize", headers=headers,
                             files={"file": _blank_png()}, timeout=60)
        assert wall.status_code == 400 and wall.json()["code"] == 28


def _blank_png() -> bytes:
    import cv2
    import numpy as np

    ok, buf = cv2.imencode(".png", np.full((240, 320, 3), 128, np.uint8))
    assert ok
    return buf.tobytes()


def test_https_rate_limit_and_no_plain_http_beyond_loopback(tmp_path: Path) -> None:
    from aggregator.pki import authority as pki
    from aggregator.pki import issue as pki_issue

    box = tmp_path / "box"
    key = create_key(box, "home-assistant")
    ca = pki.create_ca(tmp_path / "ca", "fed-api")
    server_cert = pki_issue.issue_server_cert(ca, ["127.0.0.1"], tmp_path / "tls")
    assert server_cert.key_path is not None
    with running_api(box, "--tls-cert", str(server_cert.cert_path),
                     "--tls-key", str(server_cert.key_path), "--rate", "0.2") as server:
        assert server.url.startswith("https://")
        answers = [requests.get(f"{server.url}/api/v1/recognition/subjects",
                                headers={"x-api-key": key}, verify=str(ca.cert_path),
                                timeout=60) for _ in range(3)]
        assert answers[0].json() == {"subjects": []}
        # 0.2 requests a second (burst 1): the next ones within seconds are refused
        assert [a.status_code for a in answers] == [200, 429, 429]
        assert answers[1].json()["code"] == 29
        # and when to come back: 1 token at 0.2 a second is at most 5 s away (helper-58)
        waits = [int(a.headers["Retry-After"]) for a in answers[1:]]
        assert all(1 <= w <= 5 for w in waits), waits
    refused = edge_cli(box, "serve-api", "--host", "0.0.0.0", "--port", "0")
    assert refused.returncode == 2, refused.stderr
    assert "refusing to serve plain HTTP on 0.0.0.0" in refused.stderr
