"""``vae-report run_dir=<dir>``: a PNG report of a finished run, or a comparison of a sweep.

For a run folder (``.hydra/`` and ``tensorboard/``) it writes ``<run_dir>/report/``:
``loss_curves.png``, ``samples.png``, ``reconstructions.png``, ``latent_pca.png`` and
``summary.md``. For a multirun folder (numbered job folders, each with
``.hydra/overrides.yaml``) it writes ``<run_dir>/report/comparison.md``, ``comparison.csv``
and ``val_elbo.png``, one row and one curve per job, and for every numeric hyperparameter
the sweep varied (``model.beta=1,2,4,8,16``) a figure of each metric against it and a table
(``sweep_axes.py``). Everything is read from the TensorBoard
event files with TensorBoard's ``EventAccumulator``; training calls the same code at its end
when ``report=true``.
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import numpy as np
from hydra.experimental.callback import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from omegaconf import DictConfig, OmegaConf
from PIL import Image
from tensorboard.backend.event_processing import event_accumulator

from vae_lightning.configs import CONFIG_PATH
from vae_lightning.errors import UserError, report_user_errors
from vae_lightning.run_layout import EVENT_GLOB, RunLayout
from vae_lightning.startup import freeze_imported_objects

log = logging.getLogger(__name__)

TERMS = ("loss", "rec", "kl")
# Validation only: a sweep is compared and picked on validation; test/* is for the pick.
# best/val/bound is the selection metric (vae-train writes it at the end: the best value of the
# objective's own bound, the checkpoint that is kept); the others are the last epoch's.
SELECTION_METRIC = "best/val/bound"
COMPARISON_METRICS = (SELECTION_METRIC, "val/elbo", "val/kl", "val/active_units")
# The report's images: file name -> (TensorBoard tag, title).
IMAGES = {
    "samples.png": ("val/samples", "Decoder means of fixed prior draws z ~ p(z)"),
    "reconstructions.png": (
        "val/reconstructions",
        "Validation images (top) and the decoder means of their posterior means (bottom)",
    ),
}
PCA_TAG, PCA_FILE = "val/latent_pca", "latent_pca.png"


class ReportError(UserError, ValueError):
    """The folder given to ``vae-report`` is not a finished run or a multirun folder."""


@dataclass
class RunEvents:
    """What a run logged: every scalar series and the last image of each image tag."""

    scalars: dict[str, tuple[list[int], list[float]]] = field(default_factory=dict)
    images: dict[str, tuple[int, bytes]] = field(default_factory=dict)  # tag -> (step, png)

    def last(self, tag: str) -> float | None:
        return self.scalars[tag][1][-1] if tag in self.scalars else None


def read_events(run_dir: Path) -> RunEvents:
    """All scalars and the latest images of a run, merged over its event folders.

    A value logged twice at the same step (a run resumed from a checkpoint repeats the steps
    after it) is kept once, the later write winning.
    """
    folders = RunLayout(run_dir).event_dirs()  # any logger name/version
    if not folders:
        raise ReportError(
            f"No TensorBoard event files under {run_dir}. vae-report reads the event files "
            "a run writes to <run dir>/tensorboard/: pass the folder of a run trained with "
            "the TensorBoard logger on (the default), e.g. run_dir=outputs/runs/<date>/<time>, "
            "or a multirun folder of numbered job folders."
        )
    with quiet_tensorboard():
        return _read_events(folders)


@contextlib.contextmanager
def quiet_tensorboard() -> Iterator[None]:
    """Hide the EventAccumulator's INFO lines ("Directory watcher advancing ...")."""
    logger = logging.getLogger("tensorboard")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def _read_events(folders: list[Path]) -> RunEvents:
    points: dict[str, dict[int, tuple[float, float]]] = {}
    images: dict[str, tuple[float, int, bytes]] = {}
    guidance = {event_accumulator.SCALARS: 0, event_accumulator.IMAGES: 1}
    for folder in folders:
        accumulator = event_accumulator.EventAccumulator(str(folder), size_guidance=guidance)
        accumulator.Reload()
        tags = accumulator.Tags()
        for tag in tags[event_accumulator.SCALARS]:
            series = points.setdefault(tag, {})
            for event in accumulator.Scalars(tag):
                if event.step not in series or series[event.step][0] <= event.wall_time:
                    series[event.step] = (event.wall_time, event.value)
        for tag in tags[event_accumulator.IMAGES]:
            event = accumulator.Images(tag)[-1]
            if tag not in images or images[tag][0] <= event.wall_time:
                images[tag] = (event.wall_time, event.step, event.encoded_image_string)
    scalars = {
        tag: (sorted(series), [series[step][1] for step in sorted(series)])
        for tag, series in points.items()
    }
    return RunEvents(scalars, {tag: (step, png) for tag, (_, step, png) in images.items()})


def decode_png(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


# ------------------------------------------------------------------------------ one run
def write_run_report(run_dir: Path) -> Path:
    """Write ``<run_dir>/report/`` for a finished run; return the path of ``summary.md``."""
    from vae_lightning import plots  # matplotlib only when a report is written

    events = read_events(run_dir)
    out = RunLayout(run_dir).report_dir
    out.mkdir(parents=True, exist_ok=True)
    figures: dict[str, str] = {}

    train = {t: events.scalars[f"train/{t}"] for t in TERMS if f"train/{t}" in events.scalars}
    val = {t: events.scalars[f"val/{t}"] for t in TERMS if f"val/{t}" in events.scalars}
    if train or val:
        plots.save_png(plots.loss_curves(train, val), out / "loss_curves.png")
        figures["loss_curves.png"] = "Training curves"
    for name, (tag, title) in IMAGES.items():
        if tag in events.images:
            step, png = events.images[tag]
            figure = plots.image_figure(decode_png(png), f"{title}, step {step}")
            plots.save_png(figure, out / name)
            figures[name] = title
    if PCA_TAG in events.images:
        (out / PCA_FILE).write_bytes(events.images[PCA_TAG][1])  # already a titled figure
        figures[PCA_FILE] = "Posterior means, first two principal components"

    summary = out / "summary.md"
    summary.write_text(run_summary(run_dir, events, figures))
    return summary


def run_summary(run_dir: Path, events: RunEvents, figures: dict[str, str]) -> str:
    """summary.md: overrides, final metrics, figures and the resolved config."""
    lines = [f"# Run report: `{run_dir.name}`", "", f"Run dir: `{run_dir.resolve()}`", ""]
    overrides = read_overrides(run_dir)
    if overrides is not None:
        lines += [f"Overrides: `{' '.join(overrides) or '(none)'}`", ""]
    lines += [
        "## Final metrics (nats per image)",
        "",
        "| metric | final | step |",
        "| --- | ---: | ---: |",
    ]
    for tag in sorted(t for t in events.scalars if t.split("/")[0] in ("val", "test")):
        steps, values = events.scalars[tag]
        lines.append(f"| {tag} | {values[-1]:.2f} | {steps[-1]} |")
    if "val/elbo" in events.scalars:
        steps, values = events.scalars["val/elbo"]
        best = int(np.argmax(values))
        lines += ["", f"Best val/elbo: {values[best]:.2f} at step {steps[best]}."]
    for name, title in figures.items():
        lines += ["", f"## {title}", "", f"![{title}]({name})"]
    missing = [name for name in ("loss_curves.png", *IMAGES, PCA_FILE) if name not in figures]
    if missing:
        lines += [
            "",
            f"Not drawn: {', '.join(missing)} (the run logged no such TensorBoard data: "
            "its callback was off or never ran).",
        ]
    config = RunLayout(run_dir).config_file
    if config.is_file():
        lines += ["", "## Config", "", "```yaml", config.read_text().rstrip(), "```"]
    return "\n".join(lines) + "\n"


def read_overrides(run_dir: Path) -> list[str] | None:
    path = RunLayout(run_dir).overrides_file
    return [str(o) for o in OmegaConf.load(path)] if path.is_file() else None


# ------------------------------------------------------------------------- a multirun
def find_jobs(sweep_dir: Path) -> list[Path]:
    """Hydra's numbered job folders of a multirun, in job order."""
    jobs = [
        path
        for path in sweep_dir.iterdir()
        if path.is_dir() and path.name.isdigit() and RunLayout(path).overrides_file.is_file()
    ]
    return sorted(jobs, key=lambda path: int(path.name))


@dataclass
class JobRow:
    """One job of a sweep in the comparison table."""

    name: str
    status: str  # ok | failed (the job wrote failure.txt) | no events (never logged)
    overrides: list[str]
    varying: list[str]  # the overrides not shared by every job
    values: list[float | None]


def write_multirun_report(sweep_dir: Path, metrics: Sequence[str] = COMPARISON_METRICS) -> Path:
    """One row per job (its overrides, final metrics) as markdown and CSV; return the .md."""
    from vae_lightning import plots
    from vae_lightning.sweep_axes import SweptJob, override_items, write_axis_reports

    jobs = find_jobs(sweep_dir)
    if not jobs:
        raise ReportError(
            f"{sweep_dir} holds no job folders (0/, 1/, ... with .hydra/overrides.yaml): pass "
            "the folder of a multirun, e.g. run_dir=outputs/multirun/<date>/<time>."
        )
    overrides = {job.name: read_overrides(job) or [] for job in jobs}
    common = [o for o in overrides[jobs[0].name] if all(o in v for v in overrides.values())]
    rows, curves, finished = [], {}, []
    for job in jobs:
        try:
            events, status = read_events(job), "ok"
        except ReportError:
            events, status = RunEvents(), "no events"  # failed early or still starting
        if RunLayout(job).failure_file.is_file():
            status = "failed"
        if status == "ok":
            finished.append(SweptJob(job.name, override_items(overrides[job.name]), events))
        varying = [o for o in overrides[job.name] if o not in common]
        values = [events.last(name) for name in metrics]
        rows.append(JobRow(job.name, status, overrides[job.name], varying, values))
        if "val/elbo" in events.scalars:
            curves[f"{job.name}: {' '.join(varying)}"] = events.scalars["val/elbo"]

    out = RunLayout(sweep_dir).report_dir
    out.mkdir(parents=True, exist_ok=True)
    with (out / "comparison.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["job", "status", "overrides", *metrics])
        for row in rows:
            cells = ["" if value is None else f"{value:.6g}" for value in row.values]
            writer.writerow([row.name, row.status, " ".join(row.overrides), *cells])
    if curves:
        plots.save_png(plots.comparison_curves(curves, "val/elbo"), out / "val_elbo.png")
    against = write_axis_reports(out, finished)  # metrics against a swept number (beta)
    markdown = out / "comparison.md"
    text = comparison_markdown(sweep_dir, common, rows, metrics, bool(curves))
    markdown.write_text(text + "\n".join(against) + ("\n" if against else ""))
    return markdown


def comparison_markdown(
    sweep_dir: Path,
    common: list[str],
    rows: list[JobRow],
    metrics: Sequence[str],
    with_curves: bool,
) -> str:
    lines = [
        f"# Sweep comparison: `{sweep_dir.name}`",
        "",
        f"Multirun dir: `{sweep_dir.resolve()}`",
        "",
        f"Overrides shared by every job: `{' '.join(common) or '(none)'}`",
        "",
        f"Validation values, nats per image: {SELECTION_METRIC} is the best epoch's (the "
        "kept checkpoint's), the others the last epoch's. Test metrics are left out on "
        "purpose: pick on validation, then evaluate the pick's best checkpoint with vae-eval.",
        "",
        "| job | overrides | " + " | ".join(metrics) + " |",
        "| --- | --- | " + " | ".join("---:" for _ in metrics) + " |",
    ]
    for row in rows:
        job = row.name if row.status == "ok" else f"{row.name} ({row.status})"
        cells = ["—" if value is None else f"{value:.2f}" for value in row.values]
        lines.append(f"| {job} | `{' '.join(row.varying)}` | " + " | ".join(cells) + " |")
    if SELECTION_METRIC in metrics:
        index = list(metrics).index(SELECTION_METRIC)
        scored = [(row.values[index], row.name) for row in rows if row.values[index] is not None]
        if scored:
            value, job = max(scored)
            lines += ["", f"Selected by {SELECTION_METRIC}: job {job} ({value:.2f})."]
    if with_curves:
        lines += ["", "![val/elbo of every job](val_elbo.png)"]
    return "\n".join(lines) + "\n"


# -------------------------------------------------------------------------- entry points
def write_report_after_training(trainer: L.Trainer, run_dir: Path) -> Path | None:
    """The report at the end of ``train()``: rank 0, and only when TensorBoard logged.

    The run itself has succeeded by then (checkpoints and event files are written), so a
    failure here is a warning that says how to retry, not an error that fails the job.
    """
    if not trainer.is_global_zero or not any(
        isinstance(logger, TensorBoardLogger) for logger in trainer.loggers
    ):
        return None
    try:
        summary = write_run_report(run_dir)
    except Exception as error:  # noqa: BLE001 - see the docstring
        rank_zero_warn(
            f"The report could not be written ({type(error).__name__}: {error}). The run is "
            f"complete; retry with `vae-report run_dir={run_dir}`."
        )
        return None
    rank_zero_info(f"Report:           {summary}")
    return summary


def write_report(run_dir: Path) -> Path:
    """A run report or a multirun comparison, whichever ``run_dir`` is."""
    if not run_dir.is_dir():
        raise ReportError(
            f"run_dir={run_dir} is not a folder. Pass the folder of a finished run (it holds "
            ".hydra/ and tensorboard/, e.g. outputs/runs/<date>/<time>) or of a multirun "
            "(numbered job folders, e.g. outputs/multirun/<date>/<time>)."
        )
    is_single_run = RunLayout(run_dir).record_dir.is_dir() or bool(event_dirs_shallow(run_dir))
    if not is_single_run and find_jobs(run_dir):
        return write_multirun_report(run_dir)
    return write_run_report(run_dir)


def event_dirs_shallow(run_dir: Path) -> list[Path]:
    """Event files directly in the run dir or its tensorboard/ tree (not in job folders)."""
    tensorboard = RunLayout(run_dir).tensorboard_dir
    return [*run_dir.glob(EVENT_GLOB), *tensorboard.glob(f"**/{EVENT_GLOB}")]


class CompareJobsAfterMultirun(Callback):
    """After ``vae-train -m``: the sweep's comparison table, when ``report=true``.

    A Hydra callback (conf/hydra/default.yaml). Hydra calls end hooks in reverse order, so
    listed after ``report_failed_jobs`` it runs before that one may exit with status 1: a
    sweep with failed jobs still gets its table (the failed jobs' rows are marked).
    """

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if not config.get("report"):
            return
        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            log.info("Comparison of the sweep's jobs: %s", write_multirun_report(sweep_dir))
        except Exception as error:  # noqa: BLE001 - the jobs are done; say how to retry
            log.warning(
                "The sweep's comparison could not be written (%s: %s); retry with "
                "`vae-report run_dir=%s`.",
                type(error).__name__,
                error,
                sweep_dir,
            )


@freeze_imported_objects  # the imports' objects: not scanned by the GC, not freed at exit
@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="report")
@report_user_errors("vae-report")  # bad input: its paragraph on stderr, exit status 2
def main(cfg: DictConfig) -> None:
    log.info("Report: %s", write_report(Path(cfg.run_dir)))


if __name__ == "__main__":
    main()
