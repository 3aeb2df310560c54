"""The driver's Ray session: join a cluster (checked to answer first) or start a local one for the run."""

from __future__ import annotations

import os
from contextlib import contextmanager

from relay_rl.errors import ConfigError
from relay_rl.process import configure_worker


def check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """A cluster address where nothing listens fails here within seconds (Ray itself retries for minutes)."""
    import socket
    from urllib.parse import urlparse

    if address in ("auto", "local"):
        return
    parsed = urlparse(address if "://" in address else f"ray://{address}")
    host, port = parsed.hostname, parsed.port
    if not host or not port:
        raise ConfigError(
            f"cluster.address (or $RAY_ADDRESS) {address!r}: expected host:port (the head's GCS port, "
            "6379 by default), ray://host:10001, or auto"
        )
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            pass
    except OSError as e:
        raise ConfigError(
            f"cluster.address (or $RAY_ADDRESS) {address}: nothing answers at {host}:{port} "
            f"({e.strerror or type(e).__name__} within {timeout_s:.0f}s). Start the cluster "
            "(`ray start --head`), fix the address, or unset it (and $RAY_ADDRESS) to run on a new "
            "local cluster"
        ) from None


LOOPBACK = ("127.", "::1", "localhost")


def on_loopback(host: str | None) -> bool:
    return bool(host) and host.strip("[]").startswith(LOOPBACK)


def token_auth() -> bool:
    """This process talks to Ray with token authentication (Ray >= 2.52: RAY_AUTH_MODE=token and a token)."""
    return os.environ.get("RAY_AUTH_MODE", "").lower() == "token"


def check_dashboard_auth(dashboard: str | None, allow_unauthenticated: bool = False) -> None:
    """Refuse a cluster whose dashboard (which serves the job API) listens beyond loopback without token
    authentication: anyone who reaches that port can run code on every node. ``dashboard``: host:port as the cluster
    publishes it (loopback when it was started with --dashboard-host=127.0.0.1, else the head's address)."""
    if not dashboard or allow_unauthenticated or token_auth():
        return
    from urllib.parse import urlparse

    if not on_loopback(urlparse(dashboard if "://" in dashboard else f"http://{dashboard}").hostname):
        raise ConfigError(
            f"the cluster's dashboard and job API listen at {dashboard}, beyond loopback, and RAY_AUTH_MODE is "
            f"{os.environ.get('RAY_AUTH_MODE') or 'unset'}: without Ray's token authentication anyone who reaches "
            "that port can run code on every node. Start the cluster with token auth (`ray get-auth-token "
            "--generate`, then `RAY_AUTH_MODE=token ray start ...`, as the files in deploy/ do) and export "
            "RAY_AUTH_MODE=token here; or bind the dashboard to loopback (`ray start --dashboard-host=127.0.0.1`, "
            "reach it through `ray dashboard` or an SSH tunnel); or, on a network nobody else can reach, set "
            "cluster.allow_unauthenticated: true"
        )


# With more actors than CPUs (the pools on a laptop), Ray kills any task worker idle for 1 s, and the next task (the
# batch assembly) waits for a new worker to start and import torch: steps of about 1 s every few steps
# (ray-project/ray#27863). The local cluster keeps idle workers for a minute.
LOCAL_SYSTEM_CONFIG = {"idle_worker_killing_time_threshold_ms": 60_000}


def init_ray(address: str | None, namespace: str, log=print, allow_unauthenticated: bool = False):
    """Join ``address`` (or $RAY_ADDRESS, which ``ray job submit`` sets); otherwise start a local cluster."""
    import ray

    configure_worker()
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    # Forward the user's settings to every actor. DS_ACCELERATOR is left to each actor (configure_worker): the driver
    # may sit on a CPU-only head while the actors have GPUs. Inside `ray job submit`, the job's own runtime env
    # already holds most of these; let Ray merge the two instead of refusing.
    forwarded = {k: v for k, v in os.environ.items() if k.startswith(("HF_", "TRANSFORMERS_", "VLLM_", "RELAY_RL_"))}
    runtime_env = {"env_vars": {"TOKENIZERS_PARALLELISM": "false", **forwarded}}
    os.environ.setdefault("RAY_OVERRIDE_JOB_RUNTIME_ENV", "1")
    if address:
        check_reachable(address)
        ray.init(address=address, namespace=namespace, runtime_env=runtime_env, log_to_driver=True)
        try:  # before any actor starts
            check_dashboard_auth(ray._private.worker.get_dashboard_url(), allow_unauthenticated)
        except ConfigError:
            ray.shutdown()
            raise
        log(f"[relay-rl] joined Ray cluster at {address}")
    else:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a private cluster on loopback
        ray.init(
            address="local",
            namespace=namespace,
            runtime_env=runtime_env,
            include_dashboard=True,
            dashboard_host="127.0.0.1",
            log_to_driver=True,
            _system_config=LOCAL_SYSTEM_CONFIG,
        )
        ctx = ray.get_runtime_context()
        dash = ray._private.worker.get_dashboard_url() if hasattr(ray, "_private") else None
        log(
            f"[relay-rl] started a local Ray cluster ({int(ray.cluster_resources().get('CPU', 0))} CPUs"
            + (f", dashboard http://{dash}" if dash else "")
            + f", node {ctx.get_node_id()[:8]})"
        )


@contextmanager
def ray_session(cluster, log=print):
    """Ray for one run (``cluster``: the run file's ``cluster:`` section): join ``cluster.address`` (or $RAY_ADDRESS),
    else start a local cluster, which is shut down when the run ends. Yields whether the cluster was started here
    (its size is then fixed: pools that do not fit are a config error, not a wait for an autoscaler)."""
    import ray

    started = not ray.is_initialized() and not (cluster.address or os.environ.get("RAY_ADDRESS"))
    init_ray(cluster.address, cluster.namespace, log, cluster.allow_unauthenticated)
    try:
        yield started
    finally:
        if started:
            ray.shutdown()
