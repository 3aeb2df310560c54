"""``relay-rl``: validate a run file, train it, or build the quickstart kit.

    relay-rl validate RUN.yaml [OVERLAY.yaml | key.path=value ...] [--offline]
    relay-rl train    RUN.yaml [OVERLAY.yaml | key.path=value ...] [--output DIR] [--overwrite] [--debug]
                      [--resume DIR|auto]
    relay-rl kit      RUN.yaml                       (build the quickstart kit only)
    relay-rl scale    RUN_FOLDER POOL N              (resize a rollout/reward/environment/teacher pool of a running run)
    relay-rl --version

Overrides apply in order: an overlay file merges section by section (deploy/overlays/kit.yaml runs any paper
recipe on the quickstart kit), a key.path=value sets one field (the value is YAML). Options and overrides may come
in any order. Relative paths resolve from the folder of the file that names them (the current directory for
command-line overrides).

Exit codes: 0 done, 2 bad input (nothing trained), 3 run-time failure, 130 interrupted. A failure prints one
``relay-rl:`` line; the traceback goes to <run folder>/error.log (--debug prints it too).
"""

from __future__ import annotations

import argparse
import signal
import sys


def _parser() -> tuple[argparse.ArgumentParser, dict]:
    from relay_rl import __version__

    ap = argparse.ArgumentParser(
        prog="relay-rl", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--version", action="version", version=f"relay-rl {__version__}")
    sub = ap.add_subparsers(dest="cmd", required=True)
    subs = {}
    for name, help_ in (
        ("validate", "check a run file (and overrides) without starting anything"),
        ("train", "run a recipe: on $RAY_ADDRESS / cluster.address, or a new local Ray cluster"),
        ("kit", "build (or find) the quickstart kit of a run file"),
    ):
        p = subs[name] = sub.add_parser(name, help=help_)
        p.add_argument("run_file")
        p.add_argument(
            "overrides",
            nargs="*",
            help="overlay .yaml files and key.path=value settings (YAML values), "
            "in order, e.g. deploy/overlays/kit.yaml train.max_steps=20",
        )
        p.add_argument("--debug", action="store_true", help="print full tracebacks (they always go to error.log)")
        if name == "validate":
            p.add_argument(
                "--offline",
                action="store_true",
                help="do not reach the Hugging Face hub: hub model and dataset ids are noted as not checked "
                "(without it, the same happens when the hub cannot be reached from here)",
            )
        if name == "train":
            p.add_argument("--output", "-o", default=None, help="run folder (default runs/<name>-<timestamp>)")
            p.add_argument("--overwrite", action="store_true", help="replace the run an existing --output holds")
            p.add_argument(
                "--resume",
                default=None,
                metavar="DIR|auto",
                help="continue from a checkpoint-<step> folder, a run folder (its newest checkpoint), or "
                "auto (the newest checkpoint of --output)",
            )
    return ap, subs


def parse(argv: list[str] | None) -> argparse.Namespace:
    """Options and overrides in any order: what argparse leaves over after the options is more overrides."""
    ap, subs = _parser()
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["scale"]:  # relay-rl scale RUN POOL N [--address A]
        p = argparse.ArgumentParser(
            prog="relay-rl scale", description="resize a pool of a running run at its next step boundary"
        )
        p.add_argument("run", help="the run's folder (holds run.json) or its name (printed when its pools are up)")
        p.add_argument("pool", help="rollout, reward, environment, reference or teacher")
        p.add_argument("replicas", type=int)
        p.add_argument("--address", default=None, help="Ray address (default: run.json's, $RAY_ADDRESS, or auto)")
        p.add_argument("--namespace", default="relay-rl")
        p.add_argument("--debug", action="store_true")
        args = p.parse_args(argv[1:])
        args.cmd = "scale"
        return args
    args, rest = ap.parse_known_args(argv)
    unknown = [a for a in rest if a.startswith("-")]
    if unknown:
        subs[args.cmd].error(f"unknown option(s) {' '.join(unknown)}")
    args.overrides = [*args.overrides, *rest]
    return args


def main(argv: list[str] | None = None) -> int:
    from .report import EXIT_BAD_INPUT, EXIT_OK, STOP_REQUESTED, report, stop_on_signal

    args = parse(argv)
    out_dir = None
    STOP_REQUESTED.clear()
    # Ctrl-C, `ray job stop`, kill: stop cleanly, at once or at the next step boundary. A signal the process was told
    # to ignore (SIGINT of a background job, nohup) stays ignored, as Python leaves it.
    previous = {
        s: signal.getsignal(s)
        for s in (signal.SIGINT, signal.SIGTERM)
        if signal.getsignal(s) not in (signal.SIG_IGN, None)
    }
    try:
        for s in previous:
            signal.signal(s, stop_on_signal)
    except ValueError:  # not the main thread
        previous = {}
    try:
        if args.cmd == "scale":
            from .control import scale

            answer = scale(args.run, args.pool, args.replicas, address=args.address, namespace=args.namespace)
            print(f"relay-rl: {answer}", file=sys.stderr if answer.startswith("refused") else sys.stdout)
            return EXIT_BAD_INPUT if answer.startswith("refused") else EXIT_OK
        from .config import StagedConfig, load_config
        from .runner import output_folder, train
        from .stages import train_stages

        cfg = load_config(args.run_file, args.overrides)
        runs = [s.cfg for s in cfg.stages] if isinstance(cfg, StagedConfig) else [cfg]
        if args.cmd == "validate":
            return _validate(cfg, runs, offline=True if args.offline else None)
        if args.cmd == "kit":
            from .kit.build import ensure_kit
            from .kit.paths import parts_for

            if cfg.kit is None:
                print("relay-rl: this run file has no kit section", file=sys.stderr)
                return EXIT_BAD_INPUT
            print(ensure_kit(cfg.kit, train, parts=parts_for(runs)))
            return EXIT_OK
        out_dir = output_folder(cfg, args.output)
        explicit = args.output or cfg.output_dir
        run = train_stages if isinstance(cfg, StagedConfig) else train
        run(
            cfg,
            output_dir=str(out_dir) if explicit or not args.resume else None,
            overwrite=args.overwrite,
            resume=args.resume,
        )  # the summary table is its last output
        return EXIT_OK
    except BaseException as e:  # noqa: BLE001  (every failure: one message, one exit code)
        if isinstance(e, SystemExit):
            raise
        return report(e, out_dir if out_dir is not None and out_dir.is_dir() else None, debug=args.debug)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        STOP_REQUESTED.clear()  # the next run in this process (tests, notebooks) starts unflagged


def _validate(cfg, runs: list, offline: bool | None = None) -> int:
    """Pre-flight every run (a staged file: every stage), print the resolved file and one line per run. ``offline``:
    the pre-flight's (None: hub ids are left unchecked, with a note, where the hub cannot be reached)."""
    import os

    from .config import StagedConfig, dump, dump_config, resolve_schedule
    from .preflight import preflight
    from .runtime import check_reachable

    checked = [preflight(c, offline=offline) for c in runs]
    address = runs[0].cluster.address or os.environ.get("RAY_ADDRESS")
    if address:
        check_reachable(address)
    print(dump(cfg) if isinstance(cfg, StagedConfig) else dump_config(cfg), end="")
    for note in dict.fromkeys(n for c in checked for n in c.notes):
        print(f"# note: {note}")
    names = [s.name for s in cfg.stages] if isinstance(cfg, StagedConfig) else [None]
    for name, c in zip(names, runs):
        s = resolve_schedule(c)
        pools = ", ".join(
            sorted({spec.pool for spec in c.needs.teachers} | ({"frozen_rollout"} if c.needs.frozen_rollout else set()))
        )
        print(
            "# valid. " + (f"stage {name}: " if name else "") + f"algorithm {c.algorithm.name}; generation batch "
            f"{s.generation_batch_size} completions ({s.prompts_per_generation} prompts x {s.G}); {s.K:g} "
            f"optimizer steps per generation batch; learner ranks {s.P}; max_staleness {s.k}"
            + (f"; scoring pools: {pools}" if pools else "")
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
