"""relay-rl's control plane: config, CLI, pools, the controller loop, the object-store pipeline, metrics."""
