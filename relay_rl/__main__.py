"""``python -m relay_rl ...``: the ``relay-rl`` command (train, validate, kit, scale)."""

import sys

from relay_rl.cluster.cli import main

if __name__ == "__main__":
    sys.exit(main())
