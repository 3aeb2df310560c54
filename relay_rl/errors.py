"""The errors every role raises. How each reaches a person (one message, an exit code, the traceback in the run
folder) is the control plane's ``relay_rl.cluster.report``."""

from __future__ import annotations


class ConfigError(ValueError):
    """A run file that cannot be used. The message names the file, the field and what is allowed."""


class RunError(RuntimeError):
    """The run started and cannot go on. The message says what happened, where, and what to do."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C / SIGTERM during a run, after the pools were stopped. The message says at which step."""
