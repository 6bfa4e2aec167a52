"""The run directory: its config record, and ``vae-train resume=<run dir or checkpoint>``.

Hydra normally writes ``.hydra/`` into the run dir before the task starts. Here it is told not
to (``hydra.output_subdir: null``) and ``save_run_record`` writes the same three files once the
config and the data have passed their checks, so a failed launch into an existing run dir
(a bad override on ``resume=``, two runs started in the same second) never replaces the
record of the run whose checkpoints live there.

``resume=`` is expanded on the command line, before Hydra composes anything: the run's own
overrides (``.hydra/overrides.yaml``) come first, then any new ones, then
``hydra.run.dir=<run dir>`` and ``ckpt_path=<checkpoint>``. The resumed run therefore has the
same config, writes into the same folder and continues the same TensorBoard run.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from vae_lightning.errors import UserError, report_user_errors
from vae_lightning.run_layout import RunLayout

RESUME_KEY = "resume"
# Overrides that describe one launch rather than the run; a resume sets them anew.
PER_LAUNCH_KEYS = ("ckpt_path", RESUME_KEY, "hydra.run.dir")


class ResumeError(UserError, ValueError):
    """``resume=`` points to something that cannot be resumed."""


@rank_zero_only
def save_run_record(cfg: DictConfig) -> None:
    """Write ``.hydra/{config,hydra,overrides}.yaml`` into the run dir, as Hydra would."""
    if not HydraConfig.initialized():
        return  # train(cfg) called without Hydra: there is no run record to keep
    hydra_cfg = HydraConfig.get()
    layout = RunLayout(cfg.paths.output_dir)  # the run dir, ${hydra:runtime.output_dir}
    layout.record_dir.mkdir(parents=True, exist_ok=True)
    layout.config_file.write_text(OmegaConf.to_yaml(cfg))
    layout.hydra_file.write_text(OmegaConf.to_yaml({"hydra": hydra_cfg}))
    layout.overrides_file.write_text(OmegaConf.to_yaml(hydra_cfg.overrides.task))


def resolve_resume(target: str | Path) -> tuple[Path, Path]:
    """(run dir, checkpoint) for ``resume=<run dir>`` or ``resume=<checkpoint file>``."""
    target = Path(target).expanduser().resolve()
    if target.is_dir():
        layout = RunLayout(target)
        checkpoint = layout.last_checkpoint
        if not checkpoint.is_file():
            raise ResumeError(
                f"resume={target}: no {checkpoint.relative_to(target)} in this folder, so "
                "there is nothing to resume (the run saved no checkpoint, or this is not a run "
                "dir). Pass a checkpoint file instead: resume=<run dir>/checkpoints/<name>.ckpt."
            )
    elif target.is_file():
        layout, checkpoint = RunLayout.of_checkpoint(target), target
    else:
        raise ResumeError(f"resume={target}: no such run dir or checkpoint file.")
    run_dir = layout.root
    if not layout.overrides_file.is_file():
        raise ResumeError(
            f"resume={target}: {run_dir} has no {layout.overrides_file.relative_to(run_dir)}, "
            "so its config is unknown. To start a new run from this checkpoint with the config "
            f"given on the command line, use ckpt_path={checkpoint} instead."
        )
    return run_dir, checkpoint


def requeued_checkpoint(run_dir: str | Path) -> Path | None:
    """The run's ``last.ckpt`` when this process is a SLURM job started again after a requeue
    (pre-emption, ``scontrol requeue``, SaveOnInterrupt's own requeue), else None.

    A requeued batch job runs its script again with the same command line, hence the same
    ``hydra.run.dir`` (give one: the default is timestamped) and no ``ckpt_path``; SLURM sets
    ``SLURM_RESTART_COUNT`` (>= 1) only in such restarts. A restart before the first
    checkpoint was saved starts from scratch, as the first attempt did.
    """
    try:
        restarts = int(os.environ.get("SLURM_RESTART_COUNT", "0"))
    except ValueError:
        return None
    checkpoint = RunLayout(run_dir).last_checkpoint
    return checkpoint if restarts >= 1 and checkpoint.is_file() else None


def quote(value: str | Path) -> str:
    """A Hydra override value that survives spaces, colons and quotes in paths."""
    escaped = str(value).replace("\\", "\\\\").replace("'", "\\'")
    return f"'{escaped}'"


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _is_override(arg: str) -> bool:
    """``key=value``, ``+key=value``, ``~key``; flags and their values (``--cfg job``) are not."""
    return not arg.startswith("-") and ("=" in arg or arg.startswith("~"))


def expand_resume(args: list[str]) -> list[str]:
    """Command-line arguments with ``resume=X`` replaced by the run's own overrides + X.

    Arguments without ``resume=`` come back unchanged. The expanded list holds no
    ``resume=`` any more, so processes that re-run the command line (Lightning's DDP
    launcher) see a plain launch and do not expand it twice.
    """
    resume = [arg for arg in args if _is_override(arg) and _key(arg) == RESUME_KEY]
    if not resume:
        return args
    if len(resume) > 1:
        raise ResumeError("resume= is given more than once.")
    if any(arg in ("-m", "--multirun") for arg in args):
        raise ResumeError("resume= continues one run; run it without -m/--multirun.")
    target = resume[0].split("=", 1)[1].strip("'\"")
    run_dir, checkpoint = resolve_resume(target)

    from vae_lightning.checkpoints import CheckpointError, load_checkpoint

    try:
        load_checkpoint(checkpoint)  # a corrupt file fails here, before Hydra writes anything
    except CheckpointError as err:
        raise ResumeError(str(err)) from err

    saved = OmegaConf.load(RunLayout(run_dir).overrides_file)
    original = [str(o) for o in saved if _key(str(o)) not in PER_LAUNCH_KEYS]
    flags = [arg for arg in args if not _is_override(arg)]
    new = [arg for arg in args if _is_override(arg) and arg not in resume]
    # The run's overrides first, so that a new value for the same key wins. A job of a sweep
    # (hparams_search=optuna sets hydra.mode=MULTIRUN) is resumed as the single run it was.
    return [
        *flags,
        *original,
        *new,
        "hydra.mode=RUN",
        f"hydra.run.dir={quote(run_dir)}",
        f"ckpt_path={quote(checkpoint)}",
    ]


def accepts_resume(hydra_main: Callable[[], Any]) -> Callable[[], Any]:
    """Wrap a ``@hydra.main`` entry point so that ``resume=`` works on its command line."""

    @functools.wraps(hydra_main)
    def entry_point() -> Any:
        _expand_command_line()
        return hydra_main()

    return entry_point


@report_user_errors("vae-train")  # before Hydra starts, reported as any bad input is
def _expand_command_line() -> None:
    sys.argv[1:] = expand_resume(sys.argv[1:])
