"""benchmarks/throughput.py --interleaved (issue #16): paths a and b alternate in one process."""

import json
import subprocess
import sys

from helpers.paths import PROJECT_ROOT


def test_interleaved_blocks_time_the_same_work_on_both_paths(idx_root, tmp_path):
    # idx_root: 600 training images, 100 of them held out -> 25 batches of 20 per epoch, so
    # 5 blocks of 5 batches per epoch; 2 epochs (the first is warm-up).
    raw = tmp_path / "raw.json"
    command = [
        sys.executable,
        str(PROJECT_ROOT / "benchmarks" / "throughput.py"),
        *("--models", "mlp", "--batch-sizes", "20", "--epochs", "2", "--interleaved", "5"),
        *("--data-root", str(idx_root), "--val-size", "100", "--threads", "1"),
        *("--json", str(raw), "--override=~callbacks.progress_bar"),
        "--override=data.steps_per_batch=1",  # blocks of 5 Lightning batches, 5 per epoch
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]

    (result,) = json.loads(raw.read_text())
    pairs = result["pairs"]
    assert [pair[0] for pair in pairs] == [0] * 5 + [1] * 5  # epoch of each block
    for _, lightning_s, lightning_images, pure_s, pure_images in pairs:
        assert lightning_images == pure_images == 5 * 20
        assert lightning_s > 0 and pure_s > 0
    # Epoch 1's blocks give the reported ratio: us per image of b over that of a.
    measured = pairs[5:]
    ratio = sum(p[1] for p in measured) / sum(p[3] for p in measured)
    table_row = next(line for line in done.stdout.splitlines() if line.startswith("| mlp | 20 |"))
    assert f"**{ratio:.3f} [{ratio:.3f}-{ratio:.3f}]**" in table_row
