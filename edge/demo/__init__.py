"""``fedface-edge demo``: a whole federation on one machine, from a folder of faces.

``run`` (split the people over boxes, start a broker and an aggregator, run rounds,
print the accuracy before and after), ``box`` (one demo box: its data dir, laid out by
``edge.box.build_box`` exactly like a real box's) and ``broker`` (a Mosquitto on a free
port with its own config).

May import: edge.errors, edge.config, edge.box, edge.vision, edge.gallery,
edge.serving, edge.training, edge.federated, federation, models.
"""
