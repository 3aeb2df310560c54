"""How a failure reaches a person: one ``relay-rl:`` message (what, where, what to do), one exit code per kind, the
full traceback in the run folder's ``error.log`` (on the console only with ``--debug``).

Exit codes:
    0    the run finished (or the file is valid)
    2    bad input: the run file, an override, the data, a model, a reward function, the cluster spec, the output
         folder, or a cluster address where nothing listens. Nothing was trained.
    3    run-time failure: the run started and could not go on (a reward function that keeps failing, a run with
         nothing to learn from, a worker that could not be restarted, an error inside a library)
    130  interrupted (Ctrl-C, SIGTERM, ``ray job stop``): the pools were stopped, what was written is kept
"""

from __future__ import annotations

import re
import sys
import threading
import traceback
from pathlib import Path

from relay_rl.errors import ConfigError, Interrupted, RunError

EXIT_OK, EXIT_BAD_INPUT, EXIT_RUN_FAILED, EXIT_INTERRUPTED = 0, 2, 3, 130


STOP_REQUESTED = threading.Event()
"""Set by the CLI's SIGINT / SIGTERM handler. Python raises KeyboardInterrupt wherever the main thread is, and there
it can be lost (inside a finalizer, or C code that clears it); the controller also checks this at every step
boundary, so a Ctrl-C always stops the run by the next step."""


def stop_on_signal(signum, frame):
    import signal

    STOP_REQUESTED.set()
    raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")


def unwrap(e: BaseException) -> BaseException:
    """The exception that caused ``e``: Ray's task and actor errors wrap the user's (or a library's) exception."""
    import ray.exceptions as rex

    seen = set()
    while id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, rex.RayTaskError) and e.cause is not None:
            e = e.cause
        elif isinstance(e, rex.RayActorError):
            return _ActorFailure(e)
        else:
            break
    return e


class _ActorFailure(RuntimeError):
    """A Ray actor that failed to start or died: its pool and the last line of its error."""

    def __init__(self, e):
        msg = getattr(e, "error_msg", None) or str(e)
        name = re.search(r"name: (\S+)", msg)
        cls = re.search(r"ray::(\w+)\.", msg) or re.search(r"class_name: (\w+)", msg)
        lines = [ln.strip() for ln in msg.splitlines() if ln.strip()]
        last = next(
            (ln for ln in reversed(lines) if re.match(r"[\w.]+(Error|Exception)\b", ln)),
            lines[-1] if lines else type(e).__name__,
        )
        who = name.group(1) if name else (cls.group(1) if cls else "an actor")
        if getattr(e, "actor_init_failed", False):
            text = f"{who} could not start: {last}"
        else:
            text = f"{who} died ({last}); Ray restarts it up to cluster.<pool>.max_restarts times, then the run stops"
        super().__init__(text)


def describe(e: BaseException) -> tuple[int, str]:
    """(exit code, the message after ``relay-rl:``) for any exception."""
    cause = unwrap(e)
    if isinstance(cause, (Interrupted, KeyboardInterrupt)):
        return EXIT_INTERRUPTED, str(cause) or "interrupted"
    if isinstance(cause, ConfigError):
        return EXIT_BAD_INPUT, str(cause)
    if isinstance(cause, (RunError, _ActorFailure)):
        return EXIT_RUN_FAILED, str(cause)
    if isinstance(cause, MemoryError):
        return EXIT_RUN_FAILED, (
            "out of memory: lower per_device_train_batch_size, max_completion_length or the number of replicas per node"
        )
    first = (str(cause).strip().splitlines() or [""])[0][:300]
    return EXIT_RUN_FAILED, f"run-time failure: {type(cause).__name__}: {first}"


def report(e: BaseException, out_dir: str | Path | None = None, debug: bool = False, stream=None) -> int:
    """Print one ``relay-rl:`` message for ``e``, keep the traceback in ``out_dir/error.log``; return the exit code."""
    stream = stream or sys.stderr
    code, msg = describe(e)
    tb = "".join(traceback.format_exception(type(e), e, e.__traceback__))
    log_path = None
    if code == EXIT_RUN_FAILED or debug:
        log_path = _write_log(tb, out_dir)
    print(f"relay-rl: {msg}", file=stream)
    if debug:
        print(tb, file=stream, end="")
    elif log_path is not None:
        print(f"relay-rl: the full traceback is in {log_path} (add --debug to print it here)", file=stream)
    return code


def _write_log(tb: str, out_dir) -> Path | None:
    import tempfile

    for folder in ([Path(out_dir)] if out_dir else []) + [Path(tempfile.gettempdir())]:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / ("error.log" if out_dir and folder == Path(out_dir) else "relay-rl-error.log")
            path.write_text(tb)
            return path
        except OSError:
            continue
    return None
