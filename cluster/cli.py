"""``relay-rl``: validate a run file, train it, or build the quickstart kit.

    relay-rl validate RUN.yaml [OVERLAY.yaml | key.path=value ...]
    relay-rl train    RUN.yaml [OVERLAY.yaml | key.path=value ...] [--output DIR]
    relay-rl kit      RUN.yaml                       (build the quickstart kit only)

Overrides apply in order: an overlay file merges section by section (deploy/overlays/kit.yaml runs any paper
recipe on the quickstart kit), a key.path=value sets one field (the value is YAML).
"""
from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str] | None = None) -> int:
    from .config import ConfigError, dump_config, load_config, resolve_schedule

    ap = argparse.ArgumentParser(prog="relay-rl", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name, help_ in (("validate", "check a run file (and overrides) without starting anything"),
                        ("train", "run a recipe: on $RAY_ADDRESS / cluster.address, or a new local Ray cluster"),
                        ("kit", "build (or find) the quickstart kit of a run file")):
        p = sub.add_parser(name, help=help_)
        p.add_argument("run_file")
        p.add_argument("overrides", nargs="*", help="overlay .yaml files and key.path=value settings (YAML values), "
                                                    "in order, e.g. deploy/overlays/kit.yaml train.max_steps=20")
        if name == "train":
            p.add_argument("--output", "-o", default=None, help="run folder (default runs/<name>-<timestamp>)")
    args = ap.parse_args(argv)
    try:
        cfg = load_config(args.run_file, args.overrides)
    except ConfigError as e:
        print(f"relay-rl: {e}", file=sys.stderr)
        return 2
    if args.cmd == "validate":
        s = resolve_schedule(cfg)
        print(dump_config(cfg), end="")
        pools = ", ".join(sorted({spec.pool for spec in cfg.needs.teachers} | ({"frozen_rollout"} if
                                                                                 cfg.needs.frozen_rollout else set())))
        print(f"# valid. algorithm {cfg.algorithm.name}; generation batch {s.generation_batch_size} completions "
              f"({s.prompts_per_generation} prompts x {s.G}); {s.K:g} optimizer steps per generation batch; learner "
              f"ranks {s.P}; max_staleness {s.k}" + (f"; scoring pools: {pools}" if pools else ""))
        return 0
    if args.cmd == "kit":
        from .kit import ensure_kit, kit_parts_needed
        if cfg.kit is None:
            print("relay-rl: this run file has no kit section", file=sys.stderr)
            return 2
        teacher = cfg.teacher.name_or_path if cfg.teacher is not None and cfg.needs.teacher_model else None
        print(ensure_kit(cfg.kit, parts=kit_parts_needed(cfg.model.name_or_path, teacher)))
        return 0
    from .controller import train
    try:
        result = train(cfg, output_dir=args.output)
    except ConfigError as e:  # found once the run starts: data that cannot load, pools the cluster cannot host
        print(f"relay-rl: {e}", file=sys.stderr)
        return 2
    print(json.dumps({k: v for k, v in result.items() if k.startswith(("eval/", "output_dir", "wall_s"))}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
