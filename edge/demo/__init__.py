"""``fedface-edge demo``: a whole federation on one machine, from a folder of faces.

``run`` (start a broker, an aggregator and the boxes, run rounds), ``faces`` (split the
people of the faces folder over the boxes, pick their photos and the strangers),
``camera`` (each box's camera look applied to its photos), ``progress`` (the boxes'
events, a block per round with each box's held-out identification before -> after),
``table`` (the closing per-box before/after table), ``box`` (one demo box: its data dir,
laid out by ``edge.box.build_box`` exactly like a real box's) and ``broker`` (an MQTT
broker embedded in the demo's process, on a free port, when no ``--broker`` is given).

May import: edge.errors, edge.lifetime, edge.config, edge.box, edge.vision, edge.gallery,
edge.serving, edge.training, edge.federated, federation, models.
"""

# The demo federates the part with the most headroom on harsh cameras (README, "Which
# part"): on the demo's three hardest kiosk looks, four rounds of conv14 gain +1.1 points
# of held-out identification where the box default embed_bn gains +0.6 (README, "The
# two commands"). A box's default stays embed_bn (models.federated_parts: gain per
# byte); --part embed_bn shows it.
DEMO_PART = "conv14"
DEMO_ROUNDS = 4
