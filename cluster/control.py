"""Steering a running run from any shell that reaches its Ray cluster: ``relay-rl scale RUN POOL N``.

The run keeps a small named actor, ``<run>/control``, in its namespace. ``scale`` leaves a request there; the
controller takes the requests at the next step boundary, applies or refuses each (new replicas get the current
weights before they generate), and leaves the answer for ``scale`` to print.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

SCALABLE = ("rollout", "reward", "reference", "teacher")


class RunControl:
    """The run's mailbox (a Ray actor; no GPU, no CPU reserved)."""

    def __init__(self):
        self.requests: list[dict] = []
        self.answers: dict[int, str] = {}
        self.replicas: dict[str, int] = {}
        self.next_id = 0

    def request(self, pool: str, n: int) -> int:
        self.next_id += 1
        self.requests.append({"id": self.next_id, "pool": pool, "n": n})
        return self.next_id

    def take(self) -> list[dict]:
        out, self.requests = self.requests, []
        return out

    def answer(self, request_id: int, text: str, replicas: dict) -> None:
        self.answers[request_id] = text
        self.replicas = dict(replicas)

    def status(self, request_id: int) -> str | None:
        return self.answers.get(request_id)

    def pools(self) -> dict:
        return dict(self.replicas)


def write_run_file(out: Path, run_name: str, namespace: str, address: str | None) -> None:
    """``run.json`` in the run folder: what ``relay-rl scale <run folder>`` needs to find the run."""
    (out / "run.json").write_text(json.dumps({"run": run_name, "namespace": namespace, "address": address}))


def scale(
    run: str, pool: str, n: int, address: str | None = None, namespace: str = "relay-rl", timeout_s: float = 600.0
) -> str:
    """Ask run ``run`` (its name, or its run folder) to resize ``pool`` to ``n`` replicas; wait for the answer."""
    import os

    import ray

    from relay_rl.errors import ConfigError

    from .runtime import check_reachable

    folder = Path(os.path.expanduser(run))
    if (folder / "run.json").is_file():
        info = json.loads((folder / "run.json").read_text())
        run, namespace, address = info["run"], info["namespace"], address or info.get("address")
    if pool not in SCALABLE:
        raise ConfigError(
            f"scale: pool {pool!r} cannot be resized while a run goes on; scalable: {', '.join(SCALABLE)}"
            " (the learner's ranks hold the optimizer state: change cluster.learner.replicas and resume)"
        )
    if n < 1:
        raise ConfigError(f"scale: {pool} needs at least 1 replica (got {n})")
    address = address or os.environ.get("RAY_ADDRESS") or "auto"
    check_reachable(address)
    ray.init(address=address, namespace=namespace, log_to_driver=False, logging_level="error")
    try:
        try:
            control = ray.get_actor(f"{run}/control", namespace=namespace)
        except ValueError:
            raise ConfigError(
                f"scale: no run {run!r} in namespace {namespace!r} on {address} (is it still running? "
                "the run's name is printed when its pools are up, and kept in <run folder>/run.json)"
            ) from None
        request_id = ray.get(control.request.remote(pool, n))
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            answer = ray.get(control.status.remote(request_id))
            if answer is not None:
                return answer
            time.sleep(0.5)
        return f"requested {pool} -> {n}; the run has not reached a step boundary within {timeout_s:.0f}s"
    finally:
        ray.shutdown()
