"""The box's side of a federated round: MQTT in, sealed updates out.

``client`` (the round loop of ``join``), ``api`` (what a caller hands the client:
config, model sink, event callback), ``round_gate`` (sit out with nothing new),
``sealing`` (train, clip, encrypt with CKKS, sign, chunk), ``outbox`` and ``sender``
(keep an update until the aggregator acknowledges it), ``result_fetch`` (reassemble
and verify a published result), ``verdicts`` (what became of each round),
``revocation`` (the signed notice that this box was revoked) and ``status`` (the box
status message). A decrypted result goes to a model sink (``edge.serving.sink``)
handed in by ``edge.box``: this folder never opens a model itself.

May import: edge.errors, edge.priority, edge.training, federation, models.
"""
