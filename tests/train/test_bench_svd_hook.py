"""The bench's rank-r bound (bench/bench_train.py `lowrank-svd`): truncated SVD of the averaged gradient with
PowerSGD's error feedback, checked against numpy's SVD in a one-process gloo group."""
import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import bench_train  # noqa: E402


class _Bucket:
    def __init__(self, buf, views):
        self._buf, self._views = buf, views

    def buffer(self):
        return self._buf

    def gradients(self):
        return self._views

    def index(self):
        return 0

    def is_last(self):
        return True


def _rank_r(m: np.ndarray, r: int) -> np.ndarray:
    u, s, vh = np.linalg.svd(m, full_matrices=False)
    return (u[:, :r] * s[:r]) @ vh[:r]


def test_svd_bound_is_truncated_svd_with_error_feedback(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        gen = torch.Generator().manual_seed(0)
        state = bench_train._SvdState(rank=2, start=1)
        buf = torch.empty(20 * 30 + 7, dtype=torch.float64)
        views = [buf[:600].view(20, 30), buf[600:]]
        grads = [torch.randn(607, generator=gen, dtype=torch.float64) for _ in range(3)]
        error = np.zeros((20, 30))
        for step, g in enumerate(grads):
            buf.copy_(g)
            bench_train.svd_lowrank_hook(state, _Bucket(buf, views)).wait()
            m = g[:600].view(20, 30).numpy()
            if step < 1:  # before `start`: plain average, no error kept
                np.testing.assert_allclose(buf.numpy(), g.numpy())
                continue
            want = _rank_r(m + error, 2)
            np.testing.assert_allclose(views[0].numpy(), want, atol=1e-10)
            assert np.linalg.matrix_rank(views[0].numpy()) == 2
            np.testing.assert_allclose(views[1].numpy(), g[600:].numpy())  # 1-D: sent as is
            error = m + error - want
            assert np.linalg.norm(error) > 1  # a rank-2 approximation of a random 20x30 matrix loses a lot
    finally:
        dist.destroy_process_group()
