"""How the contract's messages move: ``base`` (the ``Transport`` port both sides code
against, and an in-memory bus for tests) and ``mqtt`` (the paho-mqtt adapter: TLS,
QoS 1, persistent sessions, reconnect). The coordinator and the federation client never
see a transport's type, only the port.
"""
