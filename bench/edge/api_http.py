"""Recognise over HTTP (``fedface-edge serve-api``) against the engine's own per-frame time.

    .venv/bin/python -m bench.edge.api_http [--lfw DIR] [--frames 40] [--repeats 3]

Frames: 640x480 JPEGs (quality 90), one LFW face each pasted on a noisy grey canvas;
half of the faces belong to the people enrolled in the box (2 photos each), half to
strangers. The server is the real ``serve-api`` process on loopback, reached with
``requests`` (one keep-alive session per client), as an integration would.

Per repeat: 1 client sending the frames one after another, each request right after
this process did the same frame's work, timed in two parts: the JPEG decode with the
header check, then the engine on the decoded frame (detect/align/embed/match). What the
server does per request is exactly that, so a frame's HTTP overhead is its request's
latency minus the two (target: median < 5 ms); the decode is printed on its own line,
and the overhead with it included (a CompreFace client sends JPEG: decoding is the
service's work, but a camera frame never needs it). Pairing frame by frame keeps the
shared machine's drift out of the difference; the server's ``Server-Timing`` header
splits the overhead between the transport and the handler. Then 4 clients at once: the
requests take turns on the one engine (YuNet is not thread-safe), so requests/s stays
the engine's and latency grows with the queue.
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import requests

from bench.common.lfw import default_lfw_dir
from bench.rig.broker import free_port
from bench.rig.compare import Measured, comparison, print_comparisons
from bench.rig.procs import spawn_module, stop, tmpdir
from edge.box import build_box
from edge.config import EdgeSettings
from edge.vision.image_header import decode_image
from edge.vision.pipeline import read_image

FRAME_W, FRAME_H = 640, 480
PEOPLE = 10
CLIENTS = (1, 4)


def edge_cli(data_dir: Path, *args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "edge.cli", "--data-dir", str(data_dir), *args],
                         capture_output=True, text=True, timeout=600, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"fedface-edge {args[0]} failed: {out.stderr}")
    return out.stdout


def make_box(lfw_dir: Path, work: Path) -> tuple[Path, list[Path], list[Path]]:
    """A box with PEOPLE people enrolled; (data dir, their unseen photos, strangers)."""
    people = sorted(p for p in lfw_dir.iterdir() if len(list(p.glob("*.jpg"))) >= 4)
    enrolled, strangers = people[:PEOPLE], people[PEOPLE:PEOPLE * 4]
    folder = work / "people"
    for person in enrolled:
        (folder / person.name).mkdir(parents=True)
        for photo in sorted(person.glob("*.jpg"))[:2]:
            shutil.copy(photo, folder / person.name)
    data_dir = work / "box"
    edge_cli(data_dir, "enroll", "--from-dir", str(folder))
    return (data_dir, [sorted(p.glob("*.jpg"))[3] for p in enrolled],
            [sorted(p.glob("*.jpg"))[0] for p in strangers])


def make_frames(photos: list[Path], count: int, seed: int = 0) -> list[bytes]:
    rng = np.random.default_rng(seed)
    frames = []
    for index in range(count):
        image = read_image(photos[index % len(photos)])
        frame = rng.normal(110, 12, (FRAME_H, FRAME_W, 3)).clip(0, 255).astype(np.uint8)
        y = int(rng.integers(0, FRAME_H - image.shape[0]))
        x = int(rng.integers(0, FRAME_W - image.shape[1]))
        frame[y:y + image.shape[0], x:x + image.shape[1]] = image
        ok, buf = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 90])
        assert ok
        frames.append(buf.tobytes())
    return frames


def start_server(data_dir: Path) -> tuple[subprocess.Popen[str], str]:
    proc = spawn_module("edge.cli", "--data-dir", str(data_dir), "serve-api", "--port",
                        str(free_port()), "--rate", "100000")
    assert proc.stderr is not None
    for line in proc.stderr:
        found = re.search(r"recognition API on (\S+)", line)
        if found:
            return proc, found.group(1)
    raise RuntimeError(f"serve-api exited before listening (exit {proc.wait()})")


def page_faults(pid: int) -> int:
    """Minor page faults of a process so far (/proc/PID/stat, field 10): a buffer freshly
    mmapped for each request faults every page in (federation.memory)."""
    with open(f"/proc/{pid}/stat") as stat:
        return int(stat.read().rsplit(")", 1)[1].split()[7])


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def engine_ms(recognizer: object, data: bytes) -> tuple[float, float]:
    """(JPEG decode ms with the header check, engine ms on the decoded frame): what the
    server does per request, timed apart (a CompreFace client sends JPEG, so decoding is
    the service's work, but no camera frame needs it)."""
    started = time.perf_counter()
    bgr = decode_image(data)
    decoded = time.perf_counter()
    recognizer.recognise(bgr)  # type: ignore[attr-defined]
    return (decoded - started) * 1e3, (time.perf_counter() - decoded) * 1e3


def server_timing(header: str) -> dict[str, float]:
    """``Server-Timing: app;dur=31.2, engine;dur=27.0`` -> {"app": 31.2, "engine": 27.0}
    (and ``decode`` when the server decoded an image)."""
    parts = (p.strip().split(";dur=") for p in header.split(",") if ";dur=" in p)
    return {name: float(value) for name, value in parts}


def paired_pass(recognizer: object, url: str, key: str, frames: list[bytes]
                ) -> tuple[list[float], list[float], list[float], list[dict[str, float]], float]:
    """Frame by frame: decode and engine ms in this process, HTTP ms, and the server's
    own times (``Server-Timing``: ``app`` the whole request, ``engine`` its share); then
    the 1-client requests/s."""
    session = requests.Session()
    session.headers["x-api-key"] = key
    decode: list[float] = []
    engine: list[float] = []
    http: list[float] = []
    in_server: list[dict[str, float]] = []
    busy = 0.0
    for data in frames:
        decode_ms, frame_ms = engine_ms(recognizer, data)
        decode.append(decode_ms)
        engine.append(frame_ms)
        started = time.perf_counter()
        answer = session.post(f"{url}/api/v1/recognition/recognize",
                              files={"file": ("frame.jpg", data)}, timeout=120)
        http.append((time.perf_counter() - started) * 1e3)
        if answer.status_code != 200:
            raise RuntimeError(f"recognise answered {answer.status_code}: {answer.text}")
        in_server.append(server_timing(answer.headers.get("Server-Timing", "")))
        busy += http[-1] / 1e3
    return decode, engine, http, in_server, len(frames) / busy


def http_pass(url: str, key: str, frames: list[bytes], clients: int) -> tuple[list[float], float]:
    """Latencies (ms) of every request and requests/s, ``clients`` sending at once."""
    endpoint = f"{url}/api/v1/recognition/recognize"

    def client(share: list[bytes]) -> list[float]:
        session = requests.Session()
        session.headers["x-api-key"] = key
        out = []
        for data in share:
            started = time.perf_counter()
            answer = session.post(endpoint, files={"file": ("frame.jpg", data)}, timeout=120)
            out.append((time.perf_counter() - started) * 1e3)
            if answer.status_code != 200:
                raise RuntimeError(f"recognise answered {answer.status_code}: {answer.text}")
        return out

    shares = [frames[i::clients] for i in range(clients)]
    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        latencies = [t for share in pool.map(client, shares) for t in share]
    return latencies, len(frames) / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lfw", type=Path, default=default_lfw_dir())
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    ns = parser.parse_args(argv)
    work = tmpdir("bench-api-")
    try:
        data_dir, known, strangers = make_box(ns.lfw, work)
        frames = make_frames([p for pair in zip(known, strangers, strict=False) for p in pair],
                             ns.frames)
        key = edge_cli(data_dir, "api-key", "create", "bench").strip()
        recognizer = build_box(EdgeSettings(data_dir=data_dir)).recognizer()
        proc, url = start_server(data_dir)
        try:
            paired_pass(recognizer, url, key, frames[:4])  # warm both sides
            engine_p50: list[float] = []  # on the decoded frame
            engine_p99: list[float] = []
            with_decode_p50: list[float] = []  # decode + engine, frame by frame
            decode_p50: list[float] = []
            overhead: list[float] = []  # latency minus the frame's decode and engine
            with_decode: list[float] = []  # latency minus the frame's engine only
            transport: list[float] = []  # client latency minus the server's own time
            handler: list[float] = []  # the server's request time minus its engine's
            server_decode: list[float] = []
            http_only: list[float] = []  # latency minus the server's own engine and decode
            server_engine: list[float] = []
            http: dict[int, dict[str, list[float]]] = {
                c: {"p50": [], "p99": [], "rps": []} for c in CLIENTS}
            faults_before = page_faults(proc.pid)
            for repeat in range(ns.repeats):
                decode, times, latencies, in_server, rps = paired_pass(recognizer, url, key,
                                                                       frames)
                transport.append(statistics.median(
                    h - t["app"] for h, t in zip(latencies, in_server, strict=True)))
                handler.append(statistics.median(t["app"] - t["engine"] for t in in_server))
                server_engine.append(statistics.median(t["engine"] for t in in_server))
                server_decode.append(statistics.median(t["decode"] for t in in_server))
                http_only.append(statistics.median(
                    h - t["engine"] - t["decode"] for h, t in zip(latencies, in_server,
                                                                  strict=True)))
                engine_p50.append(percentile(times, 50))
                engine_p99.append(percentile(times, 99))
                decode_p50.append(percentile(decode, 50))
                with_decode_p50.append(percentile([d + e for d, e in zip(decode, times,
                                                                         strict=True)], 50))
                overhead.append(statistics.median(
                    h - d - e for h, d, e in zip(latencies, decode, times, strict=True)))
                with_decode.append(statistics.median(
                    h - e for h, e in zip(latencies, times, strict=True)))
                for clients in CLIENTS:
                    if clients > 1:
                        latencies, rps = http_pass(url, key, frames, clients)
                    http[clients]["p50"].append(percentile(latencies, 50))
                    http[clients]["p99"].append(percentile(latencies, 99))
                    http[clients]["rps"].append(rps)
                print(f"repeat {repeat + 1}: engine p50 {engine_p50[-1]:.1f} ms, decode "
                      f"{decode_p50[-1]:.1f} ms; " + "; ".join(
                          f"{c} client(s) p50 {http[c]['p50'][-1]:.1f} ms p99 "
                          f"{http[c]['p99'][-1]:.1f} ms {http[c]['rps'][-1]:.1f} req/s"
                          for c in CLIENTS), flush=True)
            faults = (page_faults(proc.pid) - faults_before) / (ns.repeats * ns.frames * 2)
        finally:
            stop(proc)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    med = statistics.median
    print(f"\n{ns.frames} frames of 640x480 (JPEG), {ns.repeats} repeats; medians over repeats")
    print(f"{'':26s}{'p50 ms':>9s}{'p99 ms':>9s}{'req/s':>9s}")
    print(f"{'engine, decoded frame':26s}{med(engine_p50):9.1f}{med(engine_p99):9.1f}"
          f"{1e3 / med(engine_p50):9.1f}")
    print(f"{'JPEG decode, in process':26s}{med(decode_p50):9.1f}")
    for clients in CLIENTS:
        h = http[clients]
        print(f"{f'HTTP, {clients} client(s)':26s}{med(h['p50']):9.1f}{med(h['p99']):9.1f}"
              f"{med(h['rps']):9.1f}")
    print("HTTP overhead per request, 1 client, paired frame by frame (median over frames, "
          "then over repeats):")
    print(f"  beyond decode and engine: {med(overhead):.1f} ms (runs {min(overhead):.1f}-"
          f"{max(overhead):.1f}); target < 5 ms: {'MET' if med(overhead) < 5 else 'NOT MET'}")
    print(f"  JPEG decode on its own: {med(decode_p50):.1f} ms")
    print(f"  beyond the engine, decode included: {med(with_decode):.1f} ms (runs "
          f"{min(with_decode):.1f}-{max(with_decode):.1f}); under 5 ms: "
          f"{'yes' if med(with_decode) < 5 else 'no'}")
    print(f"  split by the server's Server-Timing (medians): transport (connection, HTTP "
          f"parsing and writing, the client's own work) {med(transport):.1f} ms; handler "
          f"around the engine (key check, multipart, JPEG decode, JSON) {med(handler):.1f} "
          f"ms, of which JPEG decode {med(server_decode):.1f} ms; the server's engine "
          f"{med(server_engine):.1f} ms vs {med(engine_p50):.1f} ms in this process")
    print(f"  by the server's own clocks, latency minus its engine and its decode: "
          f"{med(http_only):.1f} ms (runs {min(http_only):.1f}-{max(http_only):.1f}); under "
          f"5 ms: {'yes' if med(http_only) < 5 else 'no'}")
    print(f"  the server's minor page faults per request: {faults:.0f}")
    print_comparisons("bench.edge.api_http", [comparison(
        "recognise p50, 1 client", Measured.of("HTTP", http[1]["p50"], "repeats"),
        Measured.of("decode + engine", with_decode_p50, "repeats"), "ms", "{:.1f}",
        paired=True)])


if __name__ == "__main__":
    main()
