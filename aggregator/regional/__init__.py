"""The regional side of hierarchical aggregation: ``forwarder`` sends this region's
encrypted partial sum to the root aggregator and publishes the root's result to the
region's boxes (the root side, regions registered like devices, is
``aggregator.state.regions``); ``records`` holds what a region keeps and says beside
its partial sums (``regional.json``, its status on the root's broker).

May import: aggregator.state, aggregator.rounds, federation.
"""
