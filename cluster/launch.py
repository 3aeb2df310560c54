"""Job entry point: ``python -m cluster.launch RUN.yaml [key.path=value ...] [--output DIR]`` from a source checkout
(``ray job submit --working-dir .``), ``python -m relay_rl.cluster.launch ...`` where relay-rl is installed.

The same as ``relay-rl train``. Inside a Ray job, $RAY_ADDRESS points at the cluster and the pools are created there.
"""

import sys

from relay_rl.cluster.cli import main  # absolute: run as ``cluster.launch``, the rest still loads as relay_rl.cluster

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
