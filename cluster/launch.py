"""Job entry point: ``python -m cluster.launch RUN.yaml [key.path=value ...] [--output DIR]``.

The same as ``relay-rl train``; this is the form ``ray job submit`` runs. Inside a Ray job, $RAY_ADDRESS points at
the cluster and the pools are created there.
"""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
