"""Intake: chunks off the broker to spooled, authenticated updates.

``delivery`` (the delivery thread: parse, rate-limit, verify the signature against a
snapshot of device keys, spool), ``verdicts`` (the boxes' verdicts on rounds, from
their signed statuses), ``presence`` (each box's last online status and when its stale
last will came, recorded in a thread of its own), ``spool`` (reassembly on disk),
``ratelimit`` (per-device token buckets), ``unknown`` (unregistered senders: counted,
sampled, one shared budget, never answered), ``shards`` and ``shard_main`` (the same
work in K processes for bursts).

May import: aggregator.state, aggregator.rounds, federation.
"""
