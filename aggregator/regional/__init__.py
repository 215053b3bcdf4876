"""The regional side of hierarchical aggregation: ``forwarder`` sends this region's
encrypted partial sum to the root aggregator and publishes the root's result to the
region's boxes (the root side, regions registered like devices, is
``aggregator.state.regions``).

May import: aggregator.state, aggregator.rounds, federation.
"""
