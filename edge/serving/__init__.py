"""Serving: the engine that recognises faces, and the model versions it serves.

``engine`` (one immutable serving state swapped by a single assignment), ``current``
(open an engine on the version the swap pointer names; readers follow the pointer and
never move it), ``versions`` (the one store of model versions: pointer, N-1, weights and
part vector, refusals, history), ``hot_swap`` (check, re-embed, canary, commit, swap),
``swap_steps`` (a swap's named steps, their timings and the crash-test hook),
``assets`` / ``split_model`` / ``onnx_layout`` (the patched trainable tail of SFace),
``canary`` (leave-one-out accuracy on the box's own people), ``sink`` (opens the hot
swap the federation client hands results to), ``recognizer`` and ``events`` (frames to
recognition events).

May import: edge.errors, edge.priority, edge.vision, edge.gallery, federation, models.
"""
