"""The trained weights shipped in save/ (each test skips where its file is absent).

These check that a trained model behaves like handwriting, against figures of the training data
that the checkpoint itself carries, not against stored outputs.
"""
import os

import numpy as np
import pytest
import torch

import generate

SAVE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "save")


def shipped(task):
    path = os.path.join(SAVE, f"{task}.pt")
    if not os.path.exists(path):
        pytest.skip(f"no shipped {path}")
    return generate.load_model(path)


def test_shipped_synthesis_model_reads_each_text_to_its_end():
    model, checkpoint = shipped("synthesis")
    texts = ["hello world", "a quick brown fox", "Graves 2013"]
    offsets, phis, capped = generate.generate_text(
        model, texts, checkpoint["alphabet"], bias=1.0, generator=torch.Generator().manual_seed(0),
        start=generate.start_row(checkpoint))
    assert not any(capped), "a line ran into the step cap: the window never left its text"
    for text, line, phi in zip(texts, offsets, phis):
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
    model, checkpoint = shipped("synthesis")
    texts = ["mmmmmmmm", "iiiiiiii"] * 4
    offsets, _, _ = generate.generate_text(
        model, texts, checkpoint["alphabet"], bias=1.0, generator=torch.Generator().manual_seed(0),
        start=generate.start_row(checkpoint))
    # a capped line is cut short, so caps can only shrink the differences asserted below
    lines = generate.to_pen_units(offsets, checkpoint)
    points = {text: np.mean([len(line) for t, line in zip(texts, lines) if t == text]) for text in texts[:2]}
    width = {text: np.mean([np.ptp(np.cumsum(line[:, 1])) for t, line in zip(texts, lines) if t == text])
             for text in texts[:2]}
    assert points["mmmmmmmm"] > 1.5 * points["iiiiiiii"], points
    assert width["mmmmmmmm"] > 2 * width["iiiiiiii"], width


def test_shipped_unconditional_model_writes_like_its_training_data():
    model, checkpoint = shipped("rand_write")
    lines = generate.generate_unconditional(model, 4, 600, generator=torch.Generator().manual_seed(0),
                                            start=generate.start_row(checkpoint))
    points = np.concatenate(generate.to_pen_units(lines, checkpoint))[1:]
    mean, std = np.asarray(checkpoint["offset_mean"]), np.asarray(checkpoint["offset_std"])
    assert 0.02 < points[:, 0].mean() < 0.3  # pen lifts: strokes of a few to tens of points
    # written left to right, at the data's scale
    assert 0.3 * mean[0] < points[:, 1].mean() < 3 * mean[0]
    assert np.all((0.3 * std < points[:, 1:].std(0)) & (points[:, 1:].std(0) < 3 * std))
