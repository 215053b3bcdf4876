"""``fedface-aggregator``: the operator's command line.

``main`` (the app: ``serve``, ``status``, ``rounds``; ``main()`` is the console script),
``operator`` (init, devices, keys bundle), ``models`` (published versions, pin,
rollback), ``pki`` (CA, certificates, broker config), ``regional`` (regions and the
fleet options of ``serve``) and ``common`` (the one-line error contract, options,
tables).

May import: aggregator.state, aggregator.rounds, aggregator.intake, aggregator.pki,
aggregator.regional, aggregator.operator, aggregator.runner, aggregator.service, federation.
"""
