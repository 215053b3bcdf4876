"""A round, from announce to published sum: plain Python over typed records, no transport.

``coordinator`` (the round state machine: open, collect, close at quorum or deadline,
publish), ``admission`` (what an update must pass before it is summed; rebuilding an
open round's sum), ``accumulator`` and ``sumpool`` (the homomorphic running sum, in
worker processes), ``records`` (what the round's parts hand each other), ``schedule``
(when rounds open), ``pins`` (which published version the next round builds on),
``poison`` (a round the boxes refuse is marked poisoned; the next round builds on the
last good base), ``publisher`` (signed announce, ack, result chunks, model pointer),
``events`` (the service's handling of the coordinator's events) and ``epochs`` (a new
key epoch: the round left open under the old key fails, the sealed bundles are relayed).

May import: aggregator.state, federation.
"""
