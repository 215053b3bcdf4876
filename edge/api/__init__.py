"""The box's recognition service over HTTP, speaking CompreFace's REST API.

``fedface-edge serve-api`` runs it (its own process, see docs/operations.md for why not
a part of the kiosk): one engine loaded at start and shared by every request, following
the federation's hot swaps and the gallery's enrolments like ``run`` and the kiosk do.
``keys`` (API keys per service, stored hashed), ``limits`` (request rate per key and per
address), ``faces`` (recognise, detect, verify and enrol on the shared engine),
``compreface`` (the JSON shapes CompreFace clients read), ``uploads`` (the image
bytes of a request), ``app`` (the Flask routes) and
``server`` (the HTTP(S) server).

May import: edge.errors, edge.http_thread, edge.vision, edge.gallery, edge.serving,
federation, models.
"""
