"""One way errors reach a person: Ray's wrappers unwrapped to the cause, one exit code per kind, one console line,
the traceback in error.log."""

import io

import ray.exceptions as rex

from relay_rl.cluster.report import EXIT_BAD_INPUT, EXIT_INTERRUPTED, EXIT_RUN_FAILED, describe, report
from relay_rl.errors import ConfigError, Interrupted, RunError


def _raised(e):
    try:
        raise e
    except BaseException as caught:  # noqa: BLE001
        return caught


def test_exit_codes_per_kind_and_ray_wrappers_unwrapped():
    assert describe(ConfigError("data.train: no rows")) == (EXIT_BAD_INPUT, "data.train: no rows")
    wrapped = rex.RayTaskError("RewardWorker.score", "Traceback ...", ConfigError("reward.reward_funcs[0]: bad"))
    assert describe(wrapped) == (EXIT_BAD_INPUT, "reward.reward_funcs[0]: bad")
    assert describe(rex.RayTaskError("f", "tb", RunError("nothing was learned"))) == (
        EXIT_RUN_FAILED,
        "nothing was learned",
    )
    assert describe(Interrupted("interrupted at step 3 of 9")) == (EXIT_INTERRUPTED, "interrupted at step 3 of 9")
    assert describe(KeyboardInterrupt())[0] == EXIT_INTERRUPTED
    code, msg = describe(ValueError("shapes do not match\nmore detail"))
    assert code == EXIT_RUN_FAILED and msg == "run-time failure: ValueError: shapes do not match"


def test_an_actor_that_could_not_start_names_itself_and_the_cause():
    msg = (
        "The actor died because of an error raised in its creation task, ray::RewardWorker.__init__() "
        "(pid=1, ip=1.2.3.4)\n  File \"x.py\", line 3, in __init__\nValueError: reward function 'm:f' cannot be "
        "imported"
    )
    e = rex.RayActorError(actor_id=None, error_msg=msg, actor_init_failed=True)
    code, text = describe(e)
    assert code == EXIT_RUN_FAILED
    assert text == "RewardWorker could not start: ValueError: reward function 'm:f' cannot be imported"


def test_report_prints_one_line_and_keeps_the_traceback(tmp_path):
    out = io.StringIO()
    code = report(_raised(ValueError("boom")), tmp_path, stream=out)
    printed = out.getvalue()
    assert code == EXIT_RUN_FAILED and "Traceback" not in printed
    assert printed.splitlines()[0] == "relay-rl: run-time failure: ValueError: boom"
    assert "error.log" in printed and "Traceback" in (tmp_path / "error.log").read_text()
    out = io.StringIO()
    assert report(_raised(ValueError("boom")), tmp_path, debug=True, stream=out) == EXIT_RUN_FAILED
    assert "Traceback" in out.getvalue()  # --debug
    out = io.StringIO()
    assert report(ConfigError("model.name_or_path: no such folder /x"), None, stream=out) == EXIT_BAD_INPUT
    assert out.getvalue() == "relay-rl: model.name_or_path: no such folder /x\n"
