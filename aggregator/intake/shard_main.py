"""Entry point of an intake shard process: ``python -m aggregator.intake.shard_main FD``,
started by ``aggregator.intake.shards.IntakeShards`` with FD its end of the connection."""

import sys

from aggregator.intake.shards import run_shard

if __name__ == "__main__":
    run_shard(int(sys.argv[1]))
