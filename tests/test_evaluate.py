"""evaluate.py: the character error rate against hand-worked strings, the rendering the reader sees,
and the judge end to end on a tiny checkpoint (with a stand-in reader where Tesseract is absent)."""
import csv
import dataclasses
import os

import numpy as np
import pytest
import torch
from PIL import Image

import dataset
import evaluate
from fixtures import train_tiny, write_data_dir
from generate import Writer
from model import MAX_POINTS_PER_CHAR

needs_tesseract = pytest.mark.skipif(not evaluate.tesseract_available(),
                                     reason="Tesseract OCR is not installed (apt-get install tesseract-ocr)")


@pytest.mark.parametrize("a, b, distance", [
    ("kitten", "sitting", 3),  # k->s, e->i, +g
    ("flaw", "lawn", 2),       # -f, +n
    ("", "abc", 3),
    ("abc", "", 3),
    ("same", "same", 0),
    ("ab", "ba", 2),           # no transpositions in Levenshtein's distance
])
def test_edit_distance_by_hand(a, b, distance):
    assert evaluate.edit_distance(a, b) == distance == evaluate.edit_distance(b, a)


def test_character_error_rate_sums_distances_over_all_characters():
    # "helo  world" -> "helo world" (whitespace collapsed) is 1 edit from "hello world" (11 characters);
    # "x" is 3 edits from "abc" (3 characters): 4 edits over 14 characters
    assert evaluate.character_error_rate(["helo  world", "x"], ["hello world", " abc\n"]) == pytest.approx(4 / 14)
    assert evaluate.character_error_rate([""], ["abcd"]) == 1.0


def test_render_line_draws_strokes_at_the_fixed_scale_with_a_gap_at_the_pen_lift(tmp_path):
    # two horizontal strokes of 200 pen units each, 200 units apart: 30 px of ink, 30 px gap, 30 px ink
    offsets = np.array([[0, 0, 0], [1, 200, 0], [0, 200, 0], [1, 200, 0]], float)
    path = tmp_path / "line.png"
    evaluate.render_line(offsets, path)
    ink = np.asarray(Image.open(path)) < 128
    scale, margin = evaluate.PIXELS_PER_UNIT, evaluate.MARGIN
    assert ink.shape[1] == pytest.approx(600 * scale + 2 * margin, abs=2)
    columns = ink.any(axis=0)
    assert columns[margin + 5:margin + 25].all()        # the first stroke
    assert not columns[margin + 35:margin + 55].any()   # the pen was up here
    assert columns[margin + 65:margin + 85].all()       # the second stroke
    assert ink.any(axis=1).sum() <= evaluate.PEN_WIDTH + 2  # a horizontal line, one pen wide


def text_as_strokes(text, size=400):
    """Pen offsets that trace the outline of `text` in a font: strokes any reader can read."""
    from matplotlib.textpath import TextPath
    points, ends = [], []
    for polygon in TextPath((0, 0), text, size=size).to_polygons():
        points += list(polygon)
        ends += [0] * (len(polygon) - 1) + [1]
    offsets = np.zeros((len(points), 3))
    offsets[:, 0] = ends
    offsets[1:, 1:] = np.diff(np.array(points), axis=0)
    return offsets


@needs_tesseract
def test_tesseract_reads_rendered_font_outlines(tmp_path):
    """The rendering and the reader together: clearly drawn letters are read back exactly."""
    paths = []
    for i, text in enumerate(["hello world", "Graves 2013"]):
        paths.append(str(tmp_path / f"{i}.png"))
        evaluate.render_line(text_as_strokes(text), paths[-1])
    assert evaluate.character_error_rate(evaluate.read_with_tesseract(paths), ["hello world", "Graves 2013"]) < 0.1


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    best = train_tiny(str(root), "synthesis", "--max_steps", "1")
    return os.path.join(os.path.dirname(best), "synthesis_last.pt"), os.path.join(root, "data")


def test_legibility_reads_generated_and_human_lines_of_the_same_texts(tiny):
    """A stand-in reader sees every image: it reads the human lines right and the generated lines as
    nothing, so the figures must be exactly 1 and 0; and a window that never moves stalls every line."""
    path, data_dir = tiny
    data = dataset.load_data(os.path.join(data_dir, "validation.npz"))
    writer = Writer.load(path)
    K = writer.model.config.K
    with torch.no_grad():
        writer.model.window_layer.weight.zero_()
        writer.model.window_layer.bias[2 * K:] = -30.0  # kappa never moves: every line hits the cap
    subset = evaluate.legibility_subset(data, 5)
    seen = []

    def reader(paths):
        assert all(Image.open(p).size[0] > 2 * evaluate.MARGIN for p in paths)
        seen.append([os.path.basename(p) for p in paths])
        human = "human" in os.path.basename(paths[0])
        return [data.texts[i] if human else "" for i in subset]

    with pytest.warns(UserWarning, match="step cap"):
        figures = evaluate.legibility(writer, data, 5, bias=1.0, seed=0, batch_size=2, read=reader)
    # every line ran to the cap, MAX_POINTS_PER_CHAR points per character (+1) and its first row
    capped_pace = np.median([(MAX_POINTS_PER_CHAR * (len(data.texts[i]) + 1) + 1) / (len(data.texts[i]) + 1)
                             for i in subset])
    human_pace = np.median([len(data.offsets[i]) / (len(data.texts[i]) + 1) for i in subset])
    assert figures == {"lines": 5, "cer_generated": 1.0, "cer_human": 0.0, "cer_ratio": pytest.approx(1e9),
                       "stalled": 5, "step_cap": MAX_POINTS_PER_CHAR,
                       "points_per_char_generated": pytest.approx(capped_pace),
                       "points_per_char_human": pytest.approx(human_pace)}
    assert seen == [[f"{kind}_{i}.png" for i in range(5)] for kind in ["generated", "human"]]
    assert subset == evaluate.legibility_subset(data, 5) == sorted(subset)  # fixed, whatever the checkpoint


def test_stall_trial_counts_capped_lines_per_bias(tiny):
    """A stand-in writer caps line i exactly when seed == i at bias 1, and every line at bias 2."""
    path, data_dir = tiny
    data = dataset.load_data(os.path.join(data_dir, "validation.npz"))
    texts = [data.texts[i] for i in evaluate.legibility_subset(data, 3)]
    calls = []

    class StandIn:
        def write(self, written, bias, seed, retries):
            assert retries == 0  # the trial counts first attempts
            calls.append((tuple(written), bias, seed))
            return type("Writing", (), {"capped": [bias == 2.0 or (bias == 1.0 and seed == i) for i in range(3)]})

    stalled = evaluate.stall_trial(StandIn(), data)
    assert stalled == {0.5: 0, 1.0: 3, 2.0: 12}  # seeds 0, 1, 2 cap one line each; seed 3 none
    assert calls == [(tuple(texts), bias, seed) for bias in (0.5, 1.0, 2.0) for seed in range(4)]
    # and a real tiny model whose window never moves stalls every trial line
    writer = Writer.load(path)
    with torch.no_grad():
        writer.model.window_layer.weight.zero_()
        writer.model.window_layer.bias[2 * writer.model.config.K:] = -30.0
    assert evaluate.stall_trial(writer, data, seeds=1, biases=(1.0,)) == {1.0: 3}


def test_judge_logs_one_row_per_checkpoint_and_says_when_tesseract_is_missing(tiny, tmp_path, monkeypatch, capsys):
    path, data_dir = tiny
    monkeypatch.setattr(evaluate, "tesseract_available", lambda: False)
    log = tmp_path / "judgements.csv"
    for _ in range(2):
        evaluate.main([path, "--data_dir", data_dir, "--log", str(log)])
    out = capsys.readouterr().out
    assert "legibility skipped: Tesseract OCR is not installed (apt-get install tesseract-ocr)" in out
    with open(log, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and rows[0]["checkpoint"] == path and rows[0]["task"] == "synthesis"
    model = Writer.load(path).model
    data = dataset.load_data(os.path.join(data_dir, "validation.npz"))
    per_line, per_point = dataset.dataset_nll(model, data, 8)
    assert float(rows[1]["nats_per_line"]) == pytest.approx(per_line)
    assert float(rows[1]["nats_per_point"]) == pytest.approx(per_point)
    assert f"validation NLL {per_line:.1f} nats/line" in out


def test_the_judge_reads_data_normalised_otherwise_the_checkpoints_way(tiny, tmp_path, monkeypatch, capsys):
    """Validation arrays made with other statistics (no --like) give the same NLL once renormalised."""
    path, data_dir = tiny
    data = dataset.load_data(os.path.join(data_dir, "validation.npz"))
    other_mean, other_std = data.offset_mean + [1.5, -0.5], data.offset_std * [2.0, 0.5]
    moved = dataset.renormalised(data, dataset.Normalisation(other_mean, other_std))
    row0 = moved.offsets[0][3, 1:] * other_std + other_mean  # the raw offsets are the same ink
    np.testing.assert_allclose(row0, data.offsets[0][3, 1:] * data.offset_std + data.offset_mean, rtol=1e-5)
    assert not np.allclose(moved.offsets[0][3, 1:], data.offsets[0][3, 1:])
    (tmp_path / "other").mkdir()
    dataset.save_data(tmp_path / "other" / "validation.npz", moved)
    monkeypatch.setattr(evaluate, "tesseract_available", lambda: False)
    [own] = evaluate.main([path, "--data_dir", data_dir, "--log", ""])
    [other] = evaluate.main([path, "--data_dir", str(tmp_path / "other"), "--log", ""])
    assert other["nats_per_line"] == pytest.approx(own["nats_per_line"], rel=1e-4)
    assert "renormalised with the checkpoint's statistics" in capsys.readouterr().out


def test_style_statistics_by_hand():
    # stroke 1: (0,0) (2,10) (4,20), leaning right by atan(2/10); stroke 2: (9,20) down to (9,10), upright
    offsets = np.array([[0, 0, 0], [0, 2, 10], [1, 2, 10], [0, 5, 0], [1, 0, -10]], float)
    s = evaluate.style(offsets, "ab")
    assert s["width per character"] == pytest.approx(9 / 2)
    assert s["height"] == pytest.approx(20 - 2)  # y sorted 0 10 10 20 20: 5th percentile 2, 95th 20
    lean, length = np.degrees(np.arctan(0.2)), np.hypot(2, 10)
    assert s["slant"] == pytest.approx(lean * 2 * length / (2 * length + 10))
    assert s["strokes per character"] == 1.0


def test_primed_nll_is_the_line_read_on_from_the_state_the_prime_left(tiny):
    """The primed figure, computed over prime and line in one call, equals reading the prime first and
    the line from the state it left (the same joined text); the unprimed one is the line's own NLL."""
    from model import point_nll, split_mixture
    path, data_dir = tiny
    data = dataset.load_data(os.path.join(data_dir, "validation.npz"))
    model = Writer.load(path).model
    primed, alone = evaluate.primed_nll(model, data, 0, 1)
    joined = dataset.encode_text(f"{data.texts[0].rstrip()} {data.texts[1]}", data.alphabet)
    text, mask = torch.from_numpy(joined)[None], torch.ones(1, len(joined))
    prime, line = (torch.from_numpy(data.offsets[i])[None] for i in (0, 1))
    with torch.no_grad():
        _, state, _ = model(prime, text, mask)
        y, _, _ = model(line[:, :-1], text, mask, state=state)
        expected = point_nll(split_mixture(y), line[:, 1:]).sum().item()
    assert primed == pytest.approx(expected, rel=1e-5)
    one_line = dataset.HandwritingData([data.offsets[1]], [data.text_codes[1]], [data.texts[1]], ["x"],
                                       data.alphabet, data.offset_mean, data.offset_std)
    assert alone == pytest.approx(dataset.dataset_nll(model, one_line, 1)[0], rel=1e-5)


def test_fidelity_reports_each_statistic_unprimed_and_primed(tiny):
    path, data_dir = tiny
    data = dataset.load_data(os.path.join(data_dir, "validation.npz"))  # ids line-0 ... : one "form"
    rows = evaluate.fidelity(Writer.load(path), data, writers=20, lines_per_writer=2)
    assert [r[0] for r in rows] == ["width per character", "height", "slant", "strokes per character",
                                    "NLL of the held-out lines, nats per line",
                                    "the same, primed by another writer's line"]
    assert all(np.isfinite(r[1]) and np.isfinite(r[2]) for r in rows)
    model = Writer.load(path).model
    expected = np.mean([evaluate.primed_nll(model, data, 0, i) for i in (1, 2)], axis=0)
    assert rows[-2][1:] == pytest.approx((expected[1], expected[0]))
    # two writers: each one's held-out lines are also read after the other's line 1
    two = dataclasses.replace(data, line_ids=[f"{'ab'[i % 2]}-{i}" for i in range(len(data))])
    rows = evaluate.fidelity(Writer.load(path), two, writers=2, lines_per_writer=1)
    # form a holds lines 0, 2, ...; form b lines 1, 3, ...: a's line 2 after b's line 1, b's line 3 after a's line 0
    other = np.mean([evaluate.primed_nll(model, two, 1, 2)[0], evaluate.primed_nll(model, two, 0, 3)[0]])
    assert rows[-1][2] == pytest.approx(other)
