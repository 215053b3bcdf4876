"""Vision: frames in, aligned faces and embeddings out (no torch, no state).

``capture`` (camera, RTSP, video file, folder of images, picked by a URI, on the
``frame_source`` base: frames, reconnect schedule, the source error; ``stream_probe``
asks a network camera why its stream did not open), ``detect`` (YuNet),
``align`` (five-landmark similarity warp), ``embed`` (SFace through ONNX Runtime) and
``pipeline`` (detect -> align -> embed for one frame, with stage timings) and
``image_header`` (a photo's size read before it is decoded, and the pixel cap).

May import: edge.errors, models.
"""
