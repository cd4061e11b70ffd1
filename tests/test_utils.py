"""utils.py's promises: a failed write leaves the old file and no stray temporary file; set_threads
limits both thread pools."""
import os

import numpy as np
import pytest

import utils

LINE = np.array([[0, 0, 0], [0, 5, 5], [1, 5, -5], [0, 3, 0], [1, 5, 5]], float)


@pytest.mark.parametrize("draw", [
    lambda path: utils.plot_strokes([LINE], path),
    lambda path: utils.plot_attention(np.eye(3), "abc", path),
    lambda path: utils.plot_loss_curves([{"epoch": 1, "train_nats_per_sequence": 1.0,
                                          "validation_nats_per_sequence": 2.0}], path),
])
def test_a_picture_without_a_known_extension_is_refused_and_the_old_file_kept(tmp_path, draw):
    for name in ["picture", "picture.xyz"]:
        path = tmp_path / name
        path.write_text("precious")
        with pytest.raises(ValueError, match="the extension says the picture format; use one of .*\\.png"):
            draw(path)
        assert path.read_text() == "precious"
    assert sorted(os.listdir(tmp_path)) == ["picture", "picture.xyz"]  # no .tmp-* left behind


def test_atomic_path_keeps_the_old_file_when_the_write_fails(tmp_path):
    path = tmp_path / "data.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError):
        with utils.atomic_path(path) as tmp:
            with open(tmp, "w") as f:
                f.write("half")
            raise RuntimeError("disk full, say")
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["data.txt"]
    with utils.atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            f.write("new")
    assert path.read_text() == "new" and os.listdir(tmp_path) == ["data.txt"]


def test_set_threads_limits_pytorch_and_numpys_blas():
    import threadpoolctl
    import torch

    blas_threads = lambda: {pool["num_threads"] for pool in threadpoolctl.threadpool_info()
                            if pool["user_api"] == "blas"}
    torch_before = torch.get_num_threads()
    with threadpoolctl.threadpool_limits(None):  # puts NumPy's BLAS back afterwards
        utils.set_threads(1)
        try:
            assert torch.get_num_threads() == 1
            assert blas_threads() == {1}  # every BLAS NumPy loaded
        finally:
            torch.set_num_threads(torch_before)
