"""Fetching a round's federated result: follow the model pointer, reassemble its chunks.

The aggregator retains one result at a time under ``result/<round>/#`` and points
``model/latest`` at it. The client's worker hands every verified pointer and result
chunk here: a pointer to a model the box does not serve yet subscribes to that round's
result topic (and drops any earlier subscription); chunks of exactly that result (same
message id, blob hash and model) are reassembled with bounded memory; the complete blob
comes back once and the subscription ends. Decrypting, validating and applying the
blob are ``edge.federated.result_apply``'s.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from federation import topics
from federation.chunking import Reassembler
from federation.envelope import Envelope
from federation.errors import FederationError
from federation.messages import ModelPointer

log = logging.getLogger(__name__)

# A result is the sum's ciphertexts: ~25 MB for the 1M-value part, far less by default.
MAX_RESULT_BYTES = 512 * 1024 * 1024


class ResultFetcher:
    def __init__(self, fed_id: str, subscribe: Callable[[str], None],
                 unsubscribe: Callable[[str], None]) -> None:
        self.fed_id = fed_id
        self._subscribe, self._unsubscribe = subscribe, unsubscribe
        self.wanted: ModelPointer | None = None
        self._filter: str | None = None
        self._reassembler = Reassembler(max_blob_bytes=MAX_RESULT_BYTES,
                                        max_inflight_bytes=MAX_RESULT_BYTES)

    def want(self, pointer: ModelPointer) -> None:
        """Fetch ``pointer``'s result (a re-delivered pointer of the same result: no-op)."""
        if self.wanted is not None and self.wanted.msg == pointer.msg:
            return
        self.wanted = pointer
        new_filter = topics.result_filter(self.fed_id, pointer.round)
        if self._filter and self._filter != new_filter:
            self._unsubscribe(self._filter)
        self._filter = new_filter
        log.info("fetching result of round %d (model %s, %d bytes in %d chunks)",
                 pointer.round, pointer.model, pointer.blob_size, pointer.chunks)
        self._subscribe(new_filter)

    def is_wanted(self, env: Envelope) -> bool:
        return self.wanted is not None and env.msg == self.wanted.msg

    def add(self, env: Envelope) -> tuple[ModelPointer, bytes] | None:
        """A verified chunk of the wanted result; the pointer and blob once complete."""
        wanted = self.wanted
        if wanted is None or env.msg != wanted.msg:
            return None
        if env.blob_sha256 != wanted.blob_sha256 or env.model != wanted.model:
            raise FederationError("integrity", "result chunk disagrees with the model pointer")
        blob = self._reassembler.add(env)
        if blob is None:
            return None
        if self._filter:
            self._unsubscribe(self._filter)
            self._filter = None
        self.wanted = None
        return wanted, blob
