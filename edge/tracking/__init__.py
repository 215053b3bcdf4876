"""Tracking: recognise once per visit instead of once per frame.

``tracker`` (a small IoU tracker with constant-velocity prediction; the optimal
assignment comes from ``lap``), ``quality`` (how good a view of a face is: size,
sharpness, frontal pose from the five landmarks), ``visits`` (the per-visit engine:
detect every k-th frame, embed only new tracks and clearly better views, fuse the
attempts, check that a visit's face is still one person's, emit started / identified /
ended), ``same_person`` (whether a new view is the visit's person: same, someone else,
unsure; the bounds and their SFace figures), ``visit_events`` (those events as JSON
lines and the best crop saved on the box), ``mqtt_events`` (the events over MQTT and
the Home Assistant discovery messages).

May import: edge.errors, edge.vision, edge.gallery, edge.serving, federation.
"""
