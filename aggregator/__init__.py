"""The third-party aggregator: sums encrypted updates it can never decrypt.

Folders, from the lowest floor up (each folder's docstring says what it owns and
what it may import; tests/unit/test_layout.py holds every import to those lines):

    state/                    the state directory: config, SQLite, blobs, devices
    rounds/                   the round state machine, the homomorphic sum, publishing
    intake/  pki/             chunks to spooled updates; the TLS PKI and broker config
    regional/                 a regional aggregator's forwarding to the root
    service, runner           the running service (MQTT threads) and its assembly
    operator, cli/            operator actions and ``fedface-aggregator``

May import: nothing of the project.
"""
