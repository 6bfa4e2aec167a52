#!/usr/bin/env bash
# The device checks of model.train_step=cuda_graph, as one script for a machine with one CUDA
# GPU (about 5 minutes on an H200): the GPU tests (graph vs automatic bit for bit, graphed
# resume, checkpoints), then benchmarks/gpu_step.py side by side. Needs the project's
# dependencies importable (hydra-core, omegaconf: see the device notes) and Fashion-MNIST's
# four .gz files in $DATA_ROOT. Writes gpu_step.json into $OUT (default: here).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="src:tests${PYTHONPATH:+:$PYTHONPATH}"
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU visible'"
python -m pytest -q -p no:cacheprovider -rs tests/test_static_step.py tests/test_fast_path.py \
    -k "cuda or gpu"
python benchmarks/gpu_step.py --epochs "${EPOCHS:-4}" \
    --data-root "${DATA_ROOT:-/usr/share/datasets/fashion-mnist}" --json "${OUT:-.}/gpu_step.json"
