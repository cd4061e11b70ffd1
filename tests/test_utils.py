"""utils.py's promises: pen offsets become strokes, SVG paths and pictures with the pen lifted
where it was; a failed write leaves the old file and no stray temporary file; set_threads limits
both thread pools."""
import os
import re

import matplotlib.image
import numpy as np
import pytest

import utils
from fixtures import svg_paths

LINE = np.array([[0, 0, 0], [0, 5, 5], [1, 5, -5], [0, 3, 0], [1, 5, 5]], float)


# ----------------------------------------------------------------------------- strokes and drawings

def path_points(d):
    numbers = [float(v) for v in re.findall(r"-?\d+\.?\d*", d)]
    return np.array(numbers).reshape(-1, 2)


def test_offsets_to_strokes_splits_after_each_pen_lift():
    offsets = np.array([[0, 1, 0], [1, 1, 1],             # stroke 1 ends on its 2nd point
                        [0, 0, 2], [0, 1, 0], [1, 0, -1],  # stroke 2
                        [0, 5, 5]])                        # unfinished last stroke, still drawn
    strokes = utils.offsets_to_strokes(offsets)
    assert len(strokes) == 3
    np.testing.assert_array_equal(strokes[0], [[1, 0], [2, 1]])
    np.testing.assert_array_equal(strokes[1], [[2, 3], [3, 3], [3, 2]])
    np.testing.assert_array_equal(strokes[2], [[8, 7]])
    # a lift on the very last point leaves no empty stroke behind
    assert len(utils.offsets_to_strokes(offsets[:5])) == 2


def test_svg_has_one_path_per_stroke_with_y_flipped(tmp_path):
    line1 = np.array([[0, 0, 0], [0, 1, 2], [1, 1, 0], [0, 1, 0], [1, 0, 1]], float)  # 2 strokes
    line2 = np.array([[1, 0, 0], [1, 2, 0], [0, 0, 1]], float)                        # 3 strokes
    path = tmp_path / "lines.svg"
    utils.write_svg([line1, line2], path)
    paths = svg_paths(path)
    assert len(paths) == 5
    first = path_points(paths[0].get("d"))
    assert len(first) == 3
    # the pen went up by 2 between the first two points: SVG's y grows downwards
    assert first[1, 1] - first[0, 1] == pytest.approx(-2)
    assert first[1, 0] - first[0, 0] == pytest.approx(1)
    # line 2 lies below line 1 (larger SVG y everywhere)
    line1_y = np.concatenate([path_points(p.get("d"))[:, 1] for p in paths[:2]])
    line2_y = np.concatenate([path_points(p.get("d"))[:, 1] for p in paths[2:]])
    assert line2_y.min() > line1_y.max()


def test_png_shows_ink(tmp_path):
    path = tmp_path / "line.png"
    utils.plot_strokes([LINE, LINE], path)
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 10 and image.shape[1] > 10
    dark = image[..., :3].mean(-1) < 0.5
    assert 0 < dark.mean() < 0.5


# ----------------------------------------------------------------------------- files and threads

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


def test_same_file_goes_by_the_file_not_the_spelling(tmp_path):
    (tmp_path / "a.pt").write_text("a")
    os.link(tmp_path / "a.pt", tmp_path / "hard.pt")
    os.symlink(tmp_path / "a.pt", tmp_path / "soft.pt")
    (tmp_path / "b.pt").write_text("a")  # the same content is not the same file
    a = str(tmp_path / "a.pt")
    for other in [str(tmp_path / "." / "a.pt"), str(tmp_path / "hard.pt"), str(tmp_path / "soft.pt"),
                  os.path.relpath(a)]:
        assert utils.same_file(a, other)
    assert not utils.same_file(a, tmp_path / "b.pt")
    assert utils.same_file(tmp_path / "new.png", str(tmp_path / "sub" / ".." / "new.png"))  # neither exists yet
    assert not utils.same_file(tmp_path / "new.png", tmp_path / "new.svg")


def test_overwritten_input_names_the_first_output_that_is_an_input_or_another_output(tmp_path):
    (tmp_path / "prime.json").write_text("{}")
    inputs = {"--prime": str(tmp_path / "prime.json"), "--text_file": None}
    assert utils.overwritten_input({"--out": str(tmp_path / "a.png"), "--attention_out": None}, inputs) is None
    assert utils.overwritten_input({"--out": str(tmp_path / "a.png"), "--attention_out": str(tmp_path / "./a.png")},
                                   inputs) == ("--attention_out", "--out")
    assert utils.overwritten_input({"--strokes_out": str(tmp_path / "prime.json")}, inputs) == ("--strokes_out", "--prime")


def test_a_lock_is_held_by_one_holder_at_a_time_and_says_by_whom(tmp_path):
    held = utils.hold_lock(tmp_path / "x.lock")
    try:
        with pytest.raises(utils.LockHeld) as error:
            utils.hold_lock(tmp_path / "x.lock")  # another open file: flock refuses it, even in this process
        assert error.value.holder == str(os.getpid())
    finally:
        held.close()
    utils.hold_lock(tmp_path / "x.lock").close()  # closed (as at a process's end): free again


def test_atomic_path_names_its_temporary_with_the_writers_pid(tmp_path):
    with utils.atomic_path(tmp_path / "a.pt") as tmp:
        assert os.path.basename(tmp).startswith(f".tmp-{os.getpid()}-") and tmp.endswith(".pt")
        open(tmp, "w").write("x")
        assert utils.remove_stale_temporaries(tmp_path) == []  # its writer (this process) is alive
    assert os.listdir(tmp_path) == ["a.pt"]
