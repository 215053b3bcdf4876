"""The federation's TLS PKI and the broker it configures.

``authority`` (create and load the CA), ``files`` (the CA directory and the naming
rule), ``issue`` (broker, aggregator and box certificates), ``crl`` (revocation list),
``live`` (revoking a live session: notice, CRL reload, kick through Mosquitto's dynamic
security) and ``broker_config`` (the Mosquitto drop-in: TLS listener, CRL, per-device ACL).

May import: aggregator.state, federation.
"""
