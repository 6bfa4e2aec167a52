"""Whether a real SLURM controller answers here, for the cluster tests.

They skip with the reason when none does (a user's laptop), unless VAE_REQUIRE_SLURM=1, which
CI sets after `make slurm`, so a cluster that failed to start fails the tests instead.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess

import pytest


@functools.cache  # sinfo retries for about 9 s when no controller answers: ask once
def slurm_unavailable() -> str:
    """Why the cluster tests cannot run here ("" when a controller answers)."""
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return "no SLURM here (sinfo/sbatch not found): start a local cluster with `make slurm`"
    try:
        answer = subprocess.run(["sinfo", "-h"], capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return "the SLURM controller does not answer sinfo within 20 s"
    if answer.returncode != 0:
        return f"no SLURM controller answers (sinfo: {answer.stderr.strip()}): `make slurm`"
    return ""


def require_slurm() -> None:
    """Skip the calling test when no controller answers (fail with VAE_REQUIRE_SLURM=1)."""
    reason = slurm_unavailable()
    if reason and os.environ.get("VAE_REQUIRE_SLURM") == "1":
        pytest.fail(f"VAE_REQUIRE_SLURM=1 but {reason}")
    if reason:
        pytest.skip(reason)
