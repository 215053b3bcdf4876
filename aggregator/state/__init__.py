"""The aggregator's state directory: everything that must survive a crash.

``config`` (config, public CKKS context, signing key), ``store`` (the facade: group
commit of accepted updates), ``db`` (SQLite tables: rounds, updates, rejections, meta),
``files`` (blobs on disk), ``durable_io`` (the group commit's fsyncs), ``registry``
(devices and their keys), ``regions`` (regional aggregators, registered like devices)
``verdicts`` (the boxes' verdicts per round, and the rounds found poisoned),
``presence`` (each box's last online status, and when its stale last will came) and
``upgrade`` (blobs stored by a release of an earlier update format, re-encoded on start).

May import: federation.
"""
