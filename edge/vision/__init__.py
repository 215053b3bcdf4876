"""Vision: frames in, aligned faces and embeddings out (no torch, no state).

``capture`` (camera, RTSP, video file, folder of images), ``detect`` (YuNet),
``align`` (five-landmark similarity warp), ``embed`` (SFace through ONNX Runtime) and
``pipeline`` (detect -> align -> embed for one frame, with stage timings).

May import: edge.errors, models.
"""
