"""cuda_probe: without a GPU, Adam's per-step CUDA check stops loading NVML every step."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from helpers.paths import PROJECT_ROOT

# Runs in a fresh interpreter: the variable and torch's CUDA state are per process.
PROBE = """
import ctypes, os
import lightning, torch
from vae_lightning.cuda_probe import skip_nvml_probe_without_gpu

loads = []
real_init = ctypes.CDLL.__init__
def counting_init(self, name, *args, **kwargs):
    loads.append(name)
    return real_init(self, name, *args, **kwargs)
ctypes.CDLL.__init__ = counting_init

param = torch.nn.Parameter(torch.ones(3))
optimizer = torch.optim.Adam([param])
def adam_step():
    param.grad = torch.ones(3)
    optimizer.step()

print(os.environ.get("PYTORCH_NVML_BASED_CUDA_CHECK"))
adam_step()
print(sum("nvidia-ml" in str(name) for name in loads))
print(skip_nvml_probe_without_gpu())
loads.clear()
for _ in range(5):
    adam_step()
print(sum("nvidia-ml" in str(name) for name in loads), torch.cuda.is_available())
"""


@pytest.mark.skipif(
    not torch.backends.cuda.is_built(), reason="a CPU build of torch has no NVML check"
)
@pytest.mark.skipif(
    torch.cuda.device_count() > 0, reason="this machine has a GPU: the check is kept"
)
def test_without_gpu_adam_steps_stop_probing_nvml() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE],
        capture_output=True,
        text=True,
        check=True,
        cwd=PROJECT_ROOT,
    ).stdout.split()
    assert out[0] == "1"  # set by Lightning at import
    assert int(out[1]) >= 1  # an Adam step asked NVML (and failed to load it)
    assert out[2] == "True"
    assert out[3:] == ["0", "False"]  # five more steps: no NVML load, and still no CUDA
