"""``train``: one run from its run file to its final checkpoint. Before any actor starts: the kit (when the run file
names one), the pre-flight, the run folder; then Ray, the pools, the pipeline and the controller loop; at the end the
reward curve, the summary and the pools stopped (also on Ctrl-C or a failure)."""

from __future__ import annotations

import math
import os
import sys
import time
from datetime import datetime
from pathlib import Path

import ray
from tqdm import tqdm

from relay_rl.errors import ConfigError, Interrupted

from . import checkpoint as checkpoints
from .config import RunConfig, Schedule, dump_config, resolve_schedule
from .control import RunControl, write_run_file
from .controller import Controller
from .kit.build import ensure_kit, kit_summary
from .kit.paths import parts_for
from .metrics import MetricsLog, plot_reward_curve, summary_table
from .pipeline import Pipeline
from .pools import Pools, create_pools, get_all, shutdown_pools
from .preflight import preflight
from .runtime import ray_session
from .trackers import Trackers, resolve_report_to


def output_folder(run, output_dir: str | None = None) -> Path:
    """The run folder of ``run`` (a run file, or a staged one): ``output_dir`` (``--output``), else the run file's
    ``output_dir``, else runs/<name>-<timestamp>."""
    chosen = output_dir or run.output_dir or f"runs/{run.name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    return Path(os.path.expandvars(os.path.expanduser(chosen))).resolve()


RUN_FILES = (
    "config.yaml",
    "metrics.jsonl",
    "pipeline.json",
    "reward_curve.png",
    "error.log",
    "rejection_sampling.jsonl",
    "completions.jsonl",
    "tensorboard",
    "mlflow.db",
    "mlflow-artifacts",
    "wandb",
)


def prepare_output(out: Path, overwrite: bool = False) -> None:
    """A run never writes into another run's folder: refuse one that holds a run that trained (metrics, checkpoints),
    unless ``overwrite`` (then that run's files go; other files stay). Nothing is written here."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output folder {out} is a file: give a folder (--output)")
    if not out.is_dir():
        return
    trained = [p.name for p in (out / "metrics.jsonl", out / "final", *sorted(out.glob("checkpoint-*"))) if p.exists()]
    if trained and not overwrite:
        raise ConfigError(
            f"output folder {out} already holds a run ({', '.join(trained[:4])}): give another "
            "--output, or add --overwrite to replace that run"
        )


def clear_run_files(out: Path) -> None:
    import shutil

    for p in [*(out / f for f in RUN_FILES), out / "final", *out.glob("checkpoint-*")]:
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


def train(
    cfg: RunConfig, output_dir: str | None = None, log=None, overwrite: bool = False, resume: str | None = None
) -> dict:
    """Run ``cfg`` end to end; returns the final metrics. Starts a local Ray cluster unless one is given.
    ``resume``: a checkpoint folder, a run folder or "auto" (the newest checkpoint of the output folder) to continue
    from. Ctrl-C (or SIGTERM) stops the pools and raises ``Interrupted`` naming the step; what was written is kept."""
    log = log or (lambda msg: tqdm.write(msg, file=sys.stderr))
    out, ckpt, state = output_folder(cfg, output_dir), None, None
    if resume:
        if resume == "auto" and not (output_dir or cfg.output_dir):
            raise ConfigError("--resume auto continues the newest checkpoint of the run folder: give it with --output")
        if resume != "auto" and not (output_dir or cfg.output_dir):
            out = checkpoints.find(resume, out).parent  # the run folder the checkpoint belongs to
        ckpt = checkpoints.find(resume, out)
        state = checkpoints.check_compatible(cfg, ckpt)
    else:
        prepare_output(out, overwrite)

    extra = {}
    if cfg.kit is not None:
        ensure_kit(cfg.kit, train, log=log, parts=parts_for([cfg]))
        if cfg.model.name_or_path == "kit:warm_start":
            ks = kit_summary(cfg.kit)
            extra["warm start (held-out greedy accuracy)"] = f"{ks['test_accuracy']:.3f} after {ks['steps']} SFT steps"
    checked = preflight(cfg, kit_built=True)  # before any actor: models, data, reward functions
    out.mkdir(parents=True, exist_ok=True)
    if ckpt is None:
        clear_run_files(
            out
        )  # an earlier run's files (refused above unless overwrite), or an attempt that never trained
    (out / "config.yaml").write_text(dump_config(cfg))
    log(
        f"[relay-rl] run {cfg.name}: output in {out}"
        + (f"; resuming {ckpt.name} (step {state['step']} of {cfg.train.max_steps})" if ckpt else "")
    )
    for note in checked.notes:
        log(f"[relay-rl] note: {note}")
    train_data, eval_data = checked.train_data, checked.eval_data

    fam = cfg.family
    with ray_session(cfg.cluster, log) as started_here:
        sched = resolve_schedule(cfg)
        for warning in fam.warnings(cfg):
            log(f"[relay-rl] warning: {warning}")
        run_name = f"{cfg.name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
        pools, metrics, ctl = None, None, None
        try:
            pools = create_pools(
                cfg,
                run_name,
                checked.model_path,
                log,
                fixed_cluster=started_here,
                teacher_path=checked.teacher_path,
                resume=ckpt,
            )
            trackers = Trackers(resolve_report_to(cfg.train.report_to), log)
            trackers.start(
                out, cfg.train.run_name or run_name, cfg.train.project, cfg.model_dump(mode="json"), dump_config(cfg)
            )
            metrics = MetricsLog(
                out, run_name, previous=checkpoints.saved_metrics(ckpt) if ckpt else None, trackers=trackers
            )
            pipe = Pipeline(cfg, sched, pools, train_data)
            made, prepared = fam.prepare(cfg, pipe, out, log)  # e.g. rejection sampling: the dataset it keeps
            if made is not None:
                pipe.use_data(made)
            if prepared:
                metrics.write({"step": 0, **prepared})
            cfg = with_epochs(cfg, sched, len(pipe.sampler.ds), pools, log)
            ctl = Controller(cfg, sched, pools, pipe, metrics, eval_data, out, log)
            ctl.control = (
                ray.remote(RunControl)
                .options(name=f"{run_name}/control", namespace=cfg.cluster.namespace, num_cpus=0)
                .remote()
            )
            write_run_file(out, run_name, cfg.cluster.namespace, cfg.cluster.address or os.environ.get("RAY_ADDRESS"))
            log(f"[relay-rl] run {run_name}: `relay-rl scale {out} rollout N` resizes a pool while it runs")
            if state is not None:
                ctl.restore(state)
            t0 = time.time()
            final = ctl.run()
            wall = time.time() - t0
            plot_reward_curve(metrics, out / "reward_curve.png", f"relay-rl {cfg.name}", fam.curve)
            extra["final checkpoint (HF format)"] = str(out / "final")
            log(summary_table(metrics, out, wall, extra, steps_per_batch=sched.K, curve=fam.curve))
            final["wall_s"] = wall
            final["output_dir"] = str(out)
            return final
        except KeyboardInterrupt:
            step = ctl.step if ctl is not None else 0
            raise Interrupted(
                f"interrupted at step {step} of {cfg.train.max_steps}: the pools were stopped; what was "
                f"written is kept in {out} (metrics.jsonl up to step {step}"
                + (", the last checkpoint" if cfg.train.save_steps and step >= cfg.train.save_steps else "")
                + ")"
            ) from None
        finally:
            if ctl is not None:
                ctl.ledger.write(out / "pipeline.json", sched.S * sched.mu)
            if metrics is not None:
                metrics.close()
                if ctl is not None and ctl.step and not (out / "reward_curve.png").exists():
                    plot_reward_curve(metrics, out / "reward_curve.png", f"relay-rl {cfg.name}", fam.curve)
            if ctl is not None and ctl.control is not None:
                ray.kill(ctl.control, no_restart=True)
            if pools is not None:
                shutdown_pools(pools)


def with_epochs(cfg: RunConfig, sched: Schedule, rows: int, pools: Pools, log) -> RunConfig:
    """``train.num_train_epochs`` as optimizer steps over ``rows`` training prompts (the learner ranks' schedules
    follow); ``cfg`` unchanged without it."""
    epochs = cfg.train.num_train_epochs
    if epochs is None:
        return cfg
    prompts_per_step = sched.prompts_per_generation / sched.K
    steps = max(1, math.ceil(epochs * rows / prompts_per_step))
    get_all([r.set_max_steps.remote(steps) for r in pools.trainers])
    log(
        f"[relay-rl] {epochs:g} epoch(s) over {rows} training prompts: {steps} optimizer steps "
        f"({prompts_per_step:g} prompts per step)"
    )
    return cfg.model_copy(update={"train": cfg.train.model_copy(update={"max_steps": steps})})
