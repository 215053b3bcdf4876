"""The box's side of a federated round: MQTT in, sealed updates out.

``client`` (the threads of ``join``'s round loop: delivery and worker), ``api`` (what a
caller hands the client: config, model sink, event callback), ``joining`` (whether to
join an announced round, and its training job), ``round_gate`` (sit out with nothing
new, or wait for the result a round builds on), ``sealing`` (train, clip, encrypt with
CKKS, sign, chunk), ``outbox`` and
``sender`` (keep an update until the aggregator acknowledges it), ``delivery`` (say
whether it went out or waits for the broker), ``acks`` (what an ack or a revocation
notice means), ``result_fetch`` (reassemble and verify a published result),
``result_apply`` (decrypt, check and apply it), ``verdicts`` (what became of each
round), ``revocation`` (the signed notice that this box was revoked), ``epochs`` (take
the next key epoch sealed to this box) and ``status`` (the box status message).
A decrypted result goes to a model sink (``edge.serving.sink``) handed in by
``edge.box``: this folder never opens a model itself.

May import: edge.errors, edge.priority, edge.training, federation, models.
"""
