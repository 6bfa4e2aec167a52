"""Ask the CUDA driver, not NVML, whether CUDA is available, once NVML has found no GPU.

Lightning sets ``PYTORCH_NVML_BASED_CUDA_CHECK=1`` when it is imported, so that asking whether
CUDA is available does not initialise CUDA in a process that may fork later. torch then asks
NVML afresh on every ``torch.cuda.is_available()``, without caching the answer until CUDA is
initialised, and ``Adam.step`` asks on every step (its CUDA-graph capture check). With a CUDA
build of torch on a machine without a GPU, CUDA is never initialised and every question is a
failed ``dlopen("libnvidia-ml.so.1")``: ~30 us, 1.5 % of a CPU step of the default MLP.
"""

from __future__ import annotations

import os

import torch

NVML_CHECK = "PYTORCH_NVML_BASED_CUDA_CHECK"


def skip_nvml_probe_without_gpu() -> bool:
    """Turn torch's NVML-based CUDA check off where it finds no GPU; return whether it did.

    With no GPU there is nothing a fork could break, and the driver's answer
    (``cudaGetDeviceCount``, asked once and cached by torch's C++ side) costs nothing per call.
    Where NVML sees a GPU, or the variable was not set to 1, nothing changes.
    """
    if os.environ.get(NVML_CHECK) != "1" or torch.cuda.device_count() > 0:
        return False
    os.environ[NVML_CHECK] = "0"
    return True
