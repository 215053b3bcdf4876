"""API keys of the recognition API (stored hashed, 0600, revocable while serving) and
its request rate limits (edge.api.keys, edge.api.limits)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge.api.keys import ApiKeyError, ApiKeys
from edge.api.limits import TokenBuckets


def test_keys_are_stored_hashed_and_revocation_applies_to_a_running_reader(tmp_path: Path) -> None:
    writer, server = ApiKeys(tmp_path), ApiKeys(tmp_path)  # the CLI and a running serve-api
    first = writer.create("double-take")
    second = writer.create("home-assistant")
    assert first != second and first.startswith("ffk_") and len(first) > 40
    stored = (tmp_path / "api_keys.json").read_text()
    assert first not in stored and second not in stored
    assert (tmp_path / "api_keys.json").stat().st_mode & 0o777 == 0o600
    assert [k["service"] for k in json.loads(stored)["keys"]] == ["double-take",
                                                                  "home-assistant"]
    assert server.service_of(first) == "double-take"
    assert server.service_of(first + "x") is None and server.service_of("") is None
    assert writer.revoke("double-take") == 1
    assert server.service_of(first) is None  # re-read on change: no restart needed
    assert server.service_of(second) == "home-assistant"
    with pytest.raises(ApiKeyError, match="no API key"):
        writer.revoke("double-take")
    with pytest.raises(ApiKeyError, match="service name"):
        writer.create("bad name/../x")


def test_token_bucket_allows_the_burst_then_the_rate_per_client() -> None:
    now = [0.0]
    buckets = TokenBuckets(rate=2.0, burst=3.0, clock=lambda: now[0])
    assert [buckets.allow("a") for _ in range(4)] == [True, True, True, False]
    assert buckets.allow("b")  # another client has its own bucket
    now[0] += 0.5  # one token back at 2 a second
    assert buckets.allow("a") and not buckets.allow("a")
