"""The gallery: who is enrolled, and the rule that names a face.

``store`` (SQLite: people, their photos embeddings per model version, enrolment crops),
``files`` (the private data directory, the database file and its schema, PNG crops),
``snapshot`` (an immutable in-memory copy a serving engine matches against) and
``match`` (the one pure matching rule both use: best cosine score over a person's
embeddings, named only at or above the threshold) and ``names`` (what a person's name
may contain: no control or text-direction characters, whichever way it comes in) and
``subjects`` (people and their stored crops as the recognition API names them) and
``holdout`` (the people federated rounds do not train on: each model's threshold is
measured on their faces).

May import: edge.errors, federation.
"""
