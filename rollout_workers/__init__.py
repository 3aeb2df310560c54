"""Generation: the ``RolloutEngine`` interface (``engine.py``), the transformers and vLLM engines, and the rollout actor
that wraps one."""
