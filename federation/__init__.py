"""The federation contract both the edge boxes and the aggregator speak.

Directly here, the wire: ``errors`` (FederationError and its reason codes),
``messages`` (typed, strictly parsed control messages: announce, ack, model pointer,
box status, revocation notice), ``verdicts`` (what became of a round, per box),
``envelope`` (signed messages), ``chunking`` (split and reassemble blobs), ``topics``
(MQTT topic names), ``files`` (atomic writes with explicit modes), ``memory``,
``signals`` (SIGTERM/SIGINT stop a long-running command; no handler takes a lock),
``release`` (which release runs here) and ``cli_help`` (flags in both CLIs' help).
``crypto/``: CKKS, packing of encrypted updates, keys, signing, differential privacy.
``transport/``: the Transport port and its in-memory bus (``base``), the paho adapter
(``mqtt``, its connection options in ``mqtt_options``). Never imports cv2, torch,
onnxruntime, edge, aggregator or models.

May import: nothing of the project.
"""
