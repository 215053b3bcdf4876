"""A site broker bridged to the aggregator's broker, without a regional aggregator
(docs/operations.md, "Outgrowing one broker", bullet "Bridging"): the site's Mosquitto
carries its boxes' updates and statuses out to the aggregator's broker and brings the
federation's announce, acks, result chunks and model pointer in. Both are real Mosquitto
processes; the aggregator is the real ``fedface-aggregator serve``.

Shown: two boxes at the site and one at the aggregator's broker take part in the same
round; every box gets its ack; the site sees the same result as the root, and it
decrypts to the flat plaintext weighted average; a box that connects to the site later
finds the current round's announce and model pointer retained there (the bridge keeps
the retain flag); each site box gets its ack exactly once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from federation import topics
from federation.crypto.keys import PUBLIC_CONTEXT_NAME, SECRET_CONTEXT_NAME, load_secret_context
from federation.crypto.packing import plain_weighted_average
from tests.support.aggregator_boxes import decrypt_result
from tests.support.broker import MosquittoBroker
from tests.support.hierarchy_mqtt import (
    BrokerWatcher,
    Serve,
    connected_box,
    register_box,
    run_cli,
    send_update,
)

pytestmark = pytest.mark.mosquitto

FED = "bridged"
LENGTH = 3000
COUNT_SCALE = 64.0


def site_bridge_config(fed: str, aggregator_broker: MosquittoBroker) -> str:
    """The bridge section of the site's mosquitto.conf, as docs/operations.md gives it."""
    p = topics.prefix(fed)
    return "\n".join([
        "connection fedface-aggregator",
        f"address 127.0.0.1:{aggregator_broker.port}",
        "bridge_protocol_version mqttv50",
        "cleansession false",  # QoS 1 messages queue while the link is down
        f"topic {p}/update/# out 1",
        f"topic {p}/status/# out 1",
        f"topic {p}/announce in 1",
        f"topic {p}/ack/# in 1",
        f"topic {p}/result/# in 1",
        f"topic {p}/model/# in 1",
    ])


def test_a_bridged_site_takes_part_in_the_round(
    tmp_path: Path, mosquitto_factory: Callable[..., MosquittoBroker]
) -> None:
    central = mosquitto_factory()
    site = mosquitto_factory(extra_config=site_bridge_config(FED, central))
    keys, state = tmp_path / "keys", tmp_path / "state"
    run_cli("keys", "create", "--out", str(keys))
    secret = load_secret_context(keys / SECRET_CONTEXT_NAME)
    run_cli("init", "--fed", FED, "--state", str(state), "--public-context",
            str(keys / PUBLIC_CONTEXT_NAME), "--count-scale", str(COUNT_SCALE))
    site_boxes = [connected_box(site.url, f"site-box{i}", secret, FED) for i in range(2)]
    central_box = connected_box(central.url, "hq-box", secret, FED)
    boxes = [*site_boxes, central_box]
    for box in boxes:
        register_box(tmp_path, state, box)
    central_watch = BrokerWatcher(central.url, "watch-central", FED)
    site_watch = BrokerWatcher(site.url, "watch-site", FED)
    serve = Serve(tmp_path / "serve.log", [
        "--state", str(state), "--broker", central.url, "--quorum", "3",
        "--round-deadline", "60", "--rounds", "1", "--chunk-size", "65536"])
    late: BrokerWatcher | None = None
    try:
        for watch, where in ((site_watch, "site"), (central_watch, "aggregator's broker")):
            watch.wait(f"round 1 announced at the {where}", watch.open_round(1), 30,
                       serve.text)
        ann = site_watch.announce()
        assert ann is not None and ann == central_watch.announce()
        rng = np.random.default_rng(7)
        vecs = [rng.normal(0, 0.4, LENGTH).astype(np.float32) for _ in boxes]
        counts = [120, 260, 410]
        for box, vec, n in zip(boxes, vecs, counts, strict=True):
            send_update(box, ann, vec, n)  # several 64 kB chunks each
        for box in boxes:
            acks = box.wait_acks(1, 30)
            assert len(acks) == 1 and acks[0]["accepted"], f"{box.device_id}: {acks}\n" \
                f"{serve.text()[-3000:]}"
        site_watch.wait("the result at the site", site_watch.result_of(1), 60, serve.text)
        central_watch.wait("the result at the root", central_watch.result_of(1), 60,
                           serve.text)
        site_pointer, site_blob = site_watch.result()
        central_pointer, central_blob = central_watch.result()
        assert site_blob == central_blob and site_pointer == central_pointer
        assert site_pointer["contributors"] == 3
        got = decrypt_result(secret, site_blob)
        err = float(np.max(np.abs(got - plain_weighted_average(vecs, counts))))
        print(f"bridged round: max |result - plaintext average| {err:.2e}")
        assert err < 1e-5

        # The service's last message, round 1 closed, crosses the bridge live; a box
        # connecting to the site afterwards finds it (and the pointer) retained there.
        def closed() -> bool:
            live = site_watch.announce()
            return live is not None and live["round"] == 1 and live["state"] == "closed"

        site_watch.wait("round 1 closed at the site", closed, 30, serve.text)
        assert serve.wait_exit(30) == 0
        late = BrokerWatcher(site.url, "watch-site-late", FED)
        late.wait("retained pointer at the site", late.result_of(1), 10, serve.text)
        late.wait("retained announce at the site", lambda: late.announce() is not None, 10,
                  serve.text)
        assert late.announce() == site_watch.announce()
        # Each site box got its ack once: the bridge does not loop messages back.
        time.sleep(0.5)
        assert [len(b.acks) for b in site_boxes] == [1, 1]
    finally:
        serve.stop(kill=True)
        for box in boxes:
            box.transport.close()
        for watcher in (central_watch, site_watch, late):
            if watcher is not None:
                watcher.close()
