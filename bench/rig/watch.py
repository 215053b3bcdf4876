"""A federation observer: times each round from its announce to its model pointer and
keeps the published result's chunks (to decrypt and check them)."""

from __future__ import annotations

import json
import threading
import time

from bench.rig.state import FED


class RoundWatcher:
    """Times each round: announce(r, open) seen -> model/latest(r) seen, one clock."""

    def __init__(self, url: str) -> None:
        from federation import topics
        from federation.transport.mqtt import MqttTransport

        self.topics = topics
        self.opened: dict[int, float] = {}
        self.published: dict[int, float] = {}
        self.result_bytes: dict[int, int] = {}
        self.cond = threading.Condition()
        self.t = MqttTransport(url, "bench-watcher", clean_start=True)
        self.t.subscribe(topics.announce(FED), self._on_announce)
        self.t.subscribe(topics.model_latest(FED), self._on_pointer)
        self.t.subscribe(topics.result_filter(FED), self._on_result)
        self.results: dict[tuple[int, int], bytes] = {}
        assert self.t.wait_connected(10)

    def _on_announce(self, topic: str, payload: bytes) -> None:
        from federation.envelope import decode

        body = json.loads(decode(payload).payload)
        with self.cond:
            if body["state"] == "open":
                self.opened.setdefault(body["round"], time.perf_counter())
            self.cond.notify_all()

    def _on_pointer(self, topic: str, payload: bytes) -> None:
        from federation.envelope import decode

        body = json.loads(decode(payload).payload)
        with self.cond:
            self.published.setdefault(body["round"], time.perf_counter())
            self.cond.notify_all()

    def _on_result(self, topic: str, payload: bytes) -> None:
        if not payload:
            return
        parsed = self.topics.parse(topic)
        assert parsed.round is not None and parsed.index is not None
        with self.cond:
            self.result_bytes[parsed.round] = self.result_bytes.get(parsed.round, 0) + len(payload)
            self.results[(parsed.round, parsed.index)] = payload

    def wait_opened(self, round_no: int, timeout: float) -> None:
        with self.cond:
            self.cond.wait_for(lambda: round_no in self.opened, timeout)

    def wait_published(self, round_no: int, timeout: float) -> float:
        with self.cond:
            ok = self.cond.wait_for(lambda: round_no in self.published, timeout)
        if not ok:
            raise TimeoutError(f"round {round_no} not published in {timeout} s")
        return self.published[round_no] - self.opened[round_no]

    def result_blob(self, round_no: int) -> bytes:
        from federation.envelope import decode

        parts = sorted((i, p) for (r, i), p in self.results.items() if r == round_no)
        return b"".join(decode(p).payload for _, p in parts)

    def close(self) -> None:
        self.t.close()
