"""Startup speed (issue #16): the console scripts' GC freeze, debug=fast's cheap settings, and
benchmarks/startup.py itself."""

import gc
import importlib.metadata
import subprocess
import sys
import weakref

import pytest

from helpers.data import idx_data
from helpers.paths import PROJECT_ROOT
from vae_lightning.startup import freeze_imported_objects


class Cycle:
    """An object in a reference cycle, with a finalizer that says it ran."""

    finalized: list[str] = []

    def __init__(self, name: str) -> None:
        self.name, self.me = name, self

    def __del__(self) -> None:
        Cycle.finalized.append(self.name)


@pytest.fixture
def unfrozen():
    gc.unfreeze()
    yield
    gc.unfreeze()  # the test process's objects go back to the collected generations


def test_the_entry_point_runs_after_a_freeze_and_returns_its_value(unfrozen):
    made_before = Cycle("before")
    seen = {}

    @freeze_imported_objects
    def entry_point(value: int) -> int:
        seen["frozen"] = gc.get_freeze_count()
        return value + 1

    assert entry_point(41) == 42 and entry_point.__name__ == "entry_point"
    assert seen["frozen"] > 0  # everything alive before the command, made_before included
    before = weakref.ref(made_before)
    del made_before
    gc.collect()
    assert before() is not None  # frozen: never scanned, so its cycle is kept until exit


def test_what_the_command_makes_is_collected_and_finalized_as_usual(unfrozen):
    @freeze_imported_objects
    def entry_point() -> weakref.ref:
        return weakref.ref(Cycle("during"))

    made = entry_point()
    gc.collect()
    assert made() is None and "during" in Cycle.finalized


def test_every_console_script_freezes_the_imported_objects():
    scripts = [
        script
        for script in importlib.metadata.entry_points(group="console_scripts")
        if script.module.startswith("vae_lightning.")
    ]
    assert {script.name for script in scripts} >= {"vae-train", "vae-eval", "vae-report"}
    freezing_code = freeze_imported_objects(lambda: None).__code__  # every such wrapper's
    for script in scripts:
        assert script.load().__code__ is freezing_code, f"{script.name} does not gc.freeze()"


def test_debug_fast_runs_every_phase_with_cheaper_settings(compose_train):
    cfg = compose_train(["debug=fast"])
    assert cfg.test and cfg.report and cfg.hparams_tab  # test, report and HParams tab still run
    assert 1 <= cfg.test_iwae_k <= 10  # the IWAE NLL is still estimated
    latent = cfg.callbacks.latent_space
    assert latent.projector and latent.pca and latent.num_images <= 200


def test_debug_fast_composes_without_callbacks(compose_train):
    # debug=fast sets callbacks.latent_space.num_images: with the group removed, the node it
    # leaves has no _target_ and instantiates nothing.
    from vae_lightning.train import instantiate_named

    cfg = compose_train(["debug=fast", "~callbacks"])
    assert instantiate_named(cfg.get("callbacks")) == []


@pytest.mark.slow  # two interpreter starts with the full imports and one training run: ~20 s
def test_startup_benchmark_runs_and_reports_the_ratio(idx_root, tmp_path):
    script = PROJECT_ROOT / "benchmarks" / "startup.py"
    command = [sys.executable, str(script), "--repeats", "1", "--phases", "--data", "mnist"]
    done = subprocess.run(
        [*command, "--", *idx_data(idx_root), "~callbacks.progress_bar"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "ratio of medians" in done.stdout
    assert "imports of vae_lightning.train" in done.stdout and "  IWAE" in done.stdout
