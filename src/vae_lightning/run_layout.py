"""The layout of a run directory: every file name that vae-train writes and others read.

train, eval, report, resume and the callbacks all find files through :class:`RunLayout`, so
a name is spelled once. A run dir is self-contained: paths are derived from its root, so a
run dir that was moved or copied (scratch to home) still finds its own files.

    <run dir>/
      .hydra/config.yaml  hydra.yaml  overrides.yaml   the run record (run_dir.save_run_record)
      checkpoints/last.ckpt  epoch_XXX.ckpt           ModelCheckpoint's files
      tensorboard/[<sweep job name>/]events.out.tfevents.*
      report/                                         vae-report's output
      failure.txt                                     a failed job of a sweep
      train.log
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

RECORD_DIR = ".hydra"
CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT_NAME = "last.ckpt"
TENSORBOARD_DIR = "tensorboard"
EVENT_GLOB = "events.out.tfevents.*"
REPORT_DIR = "report"
FAILURE_FILE = "failure.txt"
EVAL_RESULTS = "eval.json"


def _under_root(*parts: str) -> property:
    """A read-only attribute: ``<root>/<parts>``."""
    return property(lambda layout: layout.root.joinpath(*parts))


@dataclass(frozen=True)
class RunLayout:
    """Paths inside one run dir (``root``)."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @classmethod
    def of_checkpoint(cls, checkpoint: str | Path) -> RunLayout:
        """The run a checkpoint belongs to: ``<run dir>/checkpoints/<name>.ckpt``; a checkpoint
        elsewhere is taken to live in its run dir's root."""
        folder = Path(checkpoint).parent
        return cls(folder.parent if folder.name == CHECKPOINT_DIR else folder)

    # Each a path under the run dir, spelled here only.
    record_dir = _under_root(RECORD_DIR)
    config_file = _under_root(RECORD_DIR, "config.yaml")  # the resolved config of the run
    hydra_file = _under_root(RECORD_DIR, "hydra.yaml")
    overrides_file = _under_root(RECORD_DIR, "overrides.yaml")  # replayed by resume=
    checkpoint_dir = _under_root(CHECKPOINT_DIR)
    last_checkpoint = _under_root(CHECKPOINT_DIR, LAST_CHECKPOINT_NAME)
    tensorboard_dir = _under_root(TENSORBOARD_DIR)
    report_dir = _under_root(REPORT_DIR)
    failure_file = _under_root(FAILURE_FILE)
    eval_results = _under_root(EVAL_RESULTS)

    def event_dirs(self) -> list[Path]:
        """Folders under the run dir holding TensorBoard event files, report/ excluded."""
        found = event_folders(self.root)
        return [d for d in found if REPORT_DIR not in d.relative_to(self.root).parts]


def event_folders(root: Path) -> list[Path]:
    """Folders at or under ``root`` that hold TensorBoard event files, sorted; [] if none."""
    return sorted({path.parent for path in Path(root).rglob(EVENT_GLOB)})
