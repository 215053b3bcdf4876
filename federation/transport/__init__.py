"""How the contract's messages move: ``base`` (the ``Transport`` port both sides code
against, and an in-memory bus for tests), ``mqtt`` (the paho-mqtt adapter: QoS 1,
persistent sessions, reconnect, its threads and locks) and ``mqtt_options`` (the
adapter's broker URL, TLS files, MQTT version and connection options). The coordinator
and the federation client never see a transport's type, only the port.
"""
