"""The federation contract both the edge boxes and the aggregator speak.

Modules: ``errors`` (FederationError + reason codes), ``ckks`` (parameters, contexts),
``packing`` (encrypted updates, streaming sum, decrypt), ``keys`` (key files),
``signing`` (Ed25519, KeyRing), ``envelope`` (signed messages), ``chunking`` (split and
reassemble blobs), ``topics`` (MQTT topic names), ``transport`` (Transport protocol,
in-memory bus), ``mqtt`` (paho adapter). Never imports cv2, torch, onnxruntime, edge,
aggregator or models.
"""
