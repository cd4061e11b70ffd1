"""The trained weights shipped in save/ (each test skips where its file is absent).

These check that a trained model behaves like handwriting, against figures of the training data
that the checkpoint itself carries, not against stored outputs.
"""
import hashlib
import os
import sys

import numpy as np
import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # as conftest.py does, for `python tests/test_shipped_weights.py` (re-pinning)
from generate import Writer  # noqa: E402

SAVE = os.path.join(ROOT, "save")


def shipped(task):
    path = os.path.join(SAVE, f"{task}.pt")
    if not os.path.exists(path):
        pytest.skip(f"no shipped {path}")
    return Writer.load(path)


def test_shipped_synthesis_model_reads_each_text_to_its_end():
    texts = ["hello world", "a quick brown fox", "Graves 2013"]
    writing = shipped("synthesis").write(texts, bias=1.0, seed=0)
    assert not any(writing.capped), "a line ran into the step cap: the window never left its text"
    for text, line, phi in zip(texts, writing.lines, writing.phis):
        # IAM-OnDB lines have about 25 points per character
        assert 8 <= (len(line) - 1) / len(text) <= 60, (text, len(line))
        assert set(np.unique(line[:, 0])) == {0.0, 1.0}  # it lifts the pen, and not always
        # the window walks through the text: the most-read character moves from the start to the end
        read = phi.argmax(axis=1)
        quarter = len(read) // 4
        assert read[:quarter].mean() < len(text) / 3 < 2 * len(text) / 3 < read[-quarter:].mean(), (text, read)


def test_shipped_synthesis_model_takes_longer_over_wide_letters():
    """An untrained window moves at a fixed pace; a trained one lingers on a wide letter like m
    (three arches) and passes a narrow i (one down-stroke and a dot) quickly."""
    texts = ["mmmmmmmm", "iiiiiiii"] * 4
    # a capped line is cut short, so caps can only shrink the differences asserted below
    lines = shipped("synthesis").write(texts, bias=1.0, seed=0).lines
    points = {text: np.mean([len(line) for t, line in zip(texts, lines) if t == text]) for text in texts[:2]}
    width = {text: np.mean([np.ptp(np.cumsum(line[:, 1])) for t, line in zip(texts, lines) if t == text])
             for text in texts[:2]}
    assert points["mmmmmmmm"] > 1.5 * points["iiiiiiii"], points
    assert width["mmmmmmmm"] > 2 * width["iiiiiiii"], width


def test_shipped_unconditional_model_writes_like_its_training_data():
    writer = shipped("rand_write")
    points = np.concatenate(writer.sample(4, 600, seed=0).lines)[1:]
    mean, std = writer.normalisation.mean, writer.normalisation.std
    assert 0.02 < points[:, 0].mean() < 0.3  # pen lifts: strokes of a few to tens of points
    # written left to right, at the data's scale
    assert 0.3 * mean[0] < points[:, 1].mean() < 3 * mean[0]
    assert np.all((0.3 * std < points[:, 1:].std(0)) & (points[:, 1:].std(0) < 3 * std))


PINNED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "pinned_strokes.npz")


def write_pin_strokes(writer):
    """What the pin holds: lines written in float64, so that a CPU's rounding cannot flip a
    sampled pen lift and send the rest of a line elsewhere."""
    writer.model.double()
    if writer.task == "synthesis":
        return writer.write(["pinned strokes", "of the shipped model"], bias=0.5, seed=7).lines
    return writer.sample(2, 150, bias=0.5, seed=7).lines


def weights_sha256(writer):
    with open(writer.path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


@pytest.mark.parametrize("task", ["synthesis", "rand_write"])
def test_shipped_weights_write_the_pinned_strokes(task):
    """Reshaping the code must not change what the shipped model writes for a seed.

    tests/data/pinned_strokes.npz holds strokes the shipped weights wrote before the code was last
    reshaped. When the shipped weights change, the pin fails by design: check the new model, then
    re-pin with `python tests/test_shipped_weights.py`.
    """
    writer = shipped(task)
    pinned = np.load(PINNED)
    assert weights_sha256(writer) == str(pinned[f"{task}_weights_sha256"]), \
        f"{writer.path} is not the file the strokes were pinned with: re-pin them"
    for i, line in enumerate(write_pin_strokes(writer)):
        np.testing.assert_allclose(line, pinned[f"{task}_line_{i}"], rtol=1e-9, atol=1e-9)


if __name__ == "__main__":  # re-pin after shipping new weights
    torch.set_num_threads(1)
    pin = {}
    for task in ["synthesis", "rand_write"]:
        writer = Writer.load(os.path.join(SAVE, f"{task}.pt"))
        pin[f"{task}_weights_sha256"] = np.array(weights_sha256(writer))
        pin.update({f"{task}_line_{i}": line for i, line in enumerate(write_pin_strokes(writer))})
    np.savez(PINNED, **pin)
    print(f"wrote {PINNED}")
