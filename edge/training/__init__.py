"""Training on the box's own people (torch is imported only here, and only by ``trainer``).

``api`` (the ``LocalTrainer`` protocol and ``LocalUpdate``: what the federation client
needs, without torch), ``trainer`` (fine-tuning in a niced child process), ``loop``,
``feature_cache`` and ``augment`` (cached trunk features of augmented crops), ``local``
(``fedface-edge train``: train, measure, save; never swaps) and ``drift`` (a stand-in
that does not learn, for tests and boxes without torch).

May import: edge.errors, edge.priority, edge.lifetime, edge.serving, models, federation.
"""
