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
from fixtures import make_handwriting_data, train_tiny
from generate import Writer
from model import MAX_POINTS_PER_CHAR, adapted, sequence_nll

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


# ----------------------------------------------------------------------------- priming fidelity

def test_style_statistics_by_hand():
    # stroke 1: (0,0) (2,10) (4,20), leaning right by atan(2/10); stroke 2: (9,20) down to (9,10), upright
    offsets = np.array([[0, 0, 0], [0, 2, 10], [1, 2, 10], [0, 5, 0], [1, 0, -10]], float)
    s = evaluate.style(offsets, "ab")
    assert s["width per character"] == pytest.approx(9 / 2)
    # the axis through x 0 2 4 9 9, y 0 10 20 20 10 (means 4.8, 12): slope Sxy / Sxx = 82 / 66.8
    climb = 82 / 66.8
    about_axis = sorted(y - 12 - climb * (x - 4.8) for x, y in [(0, 0), (2, 10), (4, 20), (9, 20), (9, 10)])
    # the 5th and 95th percentiles of five values: a fifth of the way from the first to the second,
    # and from the fourth to the fifth
    height = (about_axis[3] + 0.8 * (about_axis[4] - about_axis[3])) - (about_axis[0] + 0.2 * (about_axis[1] - about_axis[0]))
    assert s["height"] == pytest.approx(height)
    assert s["width per character / height"] == pytest.approx(4.5 / height)
    assert s["line tilt"] == pytest.approx(np.degrees(np.arctan(climb)))
    lean, length = np.degrees(np.arctan(0.2)), np.hypot(2, 10)
    assert s["slant"] == pytest.approx(lean * 2 * length / (2 * length + 10))
    assert s["strokes per character"] == 1.0
    assert s["points per character"] == 5 / 2
    # ten times larger: the ratio, slant, strokes and pace stay, width and height grow tenfold
    big = evaluate.style(offsets * [1, 10, 10], "ab")
    assert big["width per character / height"] == pytest.approx(s["width per character / height"])
    assert big["height"] == pytest.approx(10 * s["height"]) and big["slant"] == pytest.approx(s["slant"])
    assert evaluate.style_error(3.0, 2.0, "slant") == 1.0 and evaluate.style_error(3.0, 2.0, "height") == 0.5
    assert evaluate.style_error(3.0, 2.0, "line tilt") == 1.0


def test_a_line_that_climbs_is_as_tall_as_its_letters():
    """Two strokes 4 tall, the second 5 higher and 10 further on: the line climbs at 1 in 2 and is
    4 tall about its axis (y alone spans 0-9); a line of one vertical stroke has no axis to take."""
    offsets = np.array([[0, 0, 0], [1, 0, 4], [0, 10, 1], [1, 0, 4]], float)
    s = evaluate.style(offsets, "ab")
    assert s["line tilt"] == pytest.approx(np.degrees(np.arctan(0.5)))
    assert s["height"] == pytest.approx(4.0)  # about the axis: -2 -2 2 2 → 5th percentile -2, 95th 2
    assert s["width per character / height"] == pytest.approx(5 / 4)
    upright = evaluate.style(np.array([[0, 0, 0], [0, 0, 3], [1, 0, 3]], float), "i")
    assert upright["line tilt"] == 0.0 and upright["height"] == pytest.approx(5.7 - 0.3)  # y 0 3 6


def writers(data, forms):
    """data with its lines dealt round-robin to `forms` writers: line ids w0-01, w1-01, w0-02 ..."""
    return dataclasses.replace(data, line_ids=[f"w{i % forms}-{i // forms + 1:02d}" for i in range(len(data))])


def test_draw_plan_primes_each_held_out_line_with_the_line_before_and_rivals_from_other_forms(tiny):
    _, data_dir = tiny
    data = writers(dataset.load_data(os.path.join(data_dir, "validation.npz")), 3)  # w0: lines 0 3 6; w1: 1 4 7 ...
    plan = evaluate.draw_plan(data)
    assert plan.writers == ["w0", "w1", "w2"]
    assert plan.held_out == [(0, 3), (3, 6), (1, 4), (4, 7), (2, 5)]
    for (_, line), others in zip(plan.held_out, plan.others):
        forms = [data.line_ids[i][:2] for i in others]
        assert len(others) == 2 and len(set(forms)) == 2 and data.line_ids[line][:2] not in forms
    assert [plan.held_out[i][1] % 3 for i in plan.identified] == [0, 1, 2]  # one line of each writer
    assert plan == evaluate.draw_plan(data) and plan.pages == []  # fixed draws; no form holds a page
    with pytest.raises(ValueError, match="two writers"):
        evaluate.draw_plan(writers(data, 1))


def line_nll_by_hand(model, data, prime, line, rows):
    """NLL of the line's points 1 .. rows-1 read after `prime` (None: alone): the network is causal, so
    it is what the sequence cut there scores, less its prime part (the prime and the move) if primed."""
    if prime is None:
        offsets, codes, start = data.offsets[line], data.text_codes[line], 0
    else:
        (offsets, codes), start = dataset.joined(data, prime, line), len(data.offsets[prime])
    x, text = torch.from_numpy(offsets)[None], torch.from_numpy(codes)[None]
    with torch.no_grad():
        nll = lambda n: sequence_nll(model, x[:, :n], torch.ones(1, n), text, torch.ones(text.shape))[0].item()
        return nll(start + rows) - (nll(start + 1) if start else 0.0)


def test_primed_nll_is_the_joined_sequence_minus_its_prime_part_by_hand(tiny):
    """A held-out line's NLL after a prime is the model's NLL of the two lines joined (dataset.joined:
    texts joined by a space, the pen moved on) less that of the joined sequence's prime part (the
    prime and the move to the line's start): the line read on from the state the prime left. The
    judge's per-line figures are the means of these, for the own prime and for the control."""
    path, data_dir = tiny
    data = writers(dataset.load_data(os.path.join(data_dir, "validation.npz")), 2)
    model = Writer.load(path).model

    by_hand = lambda prime, line: line_nll_by_hand(model, data, prime, line, len(data.offsets[line]))

    primed, alone = evaluate.primed_nll(model, data, 0, 2)
    assert primed == pytest.approx(by_hand(0, 2), rel=1e-5)
    one_line = dataclasses.replace(data, offsets=[data.offsets[2]], text_codes=[data.text_codes[2]],
                                   texts=[data.texts[2]], line_ids=["x"])
    assert alone == pytest.approx(dataset.dataset_nll(model, one_line, 1)[0], rel=1e-5)
    plan = evaluate.draw_plan(data)
    figures, _ = evaluate.likelihood_figures(model, data, plan, batch_size=3)
    own = [by_hand(prime, line) for prime, line in plan.held_out]
    other = [by_hand(others[0], line) for (_, line), others in zip(plan.held_out, plan.others)]
    points = sum(len(data.offsets[line]) - 1 for _, line in plan.held_out)
    assert figures["nll_own_per_line"] == pytest.approx(np.mean(own), rel=1e-5)
    assert figures["nll_other_per_line"] == pytest.approx(np.mean(other), rel=1e-5)
    assert figures["nll_own_per_point"] == pytest.approx(np.sum(own) / points, rel=1e-5)
    assert figures["nll_own_per_line"] != pytest.approx(figures["nll_other_per_line"], rel=1e-3)


def test_points_are_scored_apart_by_where_they_are_in_the_line(tiny, monkeypatch):
    """The NLL of a line's points 1-2, 3-9 and 10 on, alone and after a prime: the network is causal,
    so points 1..j of the line score what the line's first j + 1 rows score by themselves (alone),
    or what the joined sequence cut j rows into the line scores less its prime part (primed)."""
    path, data_dir = tiny
    monkeypatch.setattr(evaluate, "POSITIONS", (1, 3, 10))
    data = writers(dataset.load_data(os.path.join(data_dir, "validation.npz")), 2)
    model = Writer.load(path).model

    for prime in (None, 0):
        [nats], [points] = evaluate.pair_nlls(model, data, [(prime, 2)])
        rows = len(data.offsets[2])
        assert points.tolist() == [2, 7, rows - 10]
        cumulative = [line_nll_by_hand(model, data, prime, 2, n) for n in (3, 10, rows)]
        np.testing.assert_allclose(np.cumsum(nats), cumulative, rtol=1e-5)


def test_a_part_of_the_line_no_line_reaches_is_left_unjudged(tiny, monkeypatch):
    """No held-out line has a millionth point: that part has no NLL (not 0 nats) and the table shows
    it as unjudged, while the line's whole NLL is unchanged."""
    path, data_dir = tiny
    data = writers(dataset.load_data(os.path.join(data_dir, "validation.npz")), 3)
    model = Writer.load(path).model
    plan = evaluate.draw_plan(data)
    whole, _ = evaluate.likelihood_figures(model, data, plan, batch_size=4)
    monkeypatch.setattr(evaluate, "POSITIONS", (1, 10 ** 6))
    figures, _ = evaluate.likelihood_figures(model, data, plan, batch_size=4)
    assert np.isnan(figures["nll_own_per_point_from_1000000"])
    assert figures["nll_own_per_point_from_1"] == pytest.approx(whole["nll_own_per_point"], rel=1e-5)
    rows = {name: values for name, *values, target, met in evaluate.fidelity_table(figures)}
    assert rows["nats per point, the line's points 1000000 on"] == ["—", "—", "—"]


def test_an_adapted_judge_scores_each_line_from_its_start_after_learning_its_prime(tiny, monkeypatch):
    """With adapt_steps each line is scored as alone by the network fine-tuned on its prime's line
    (model.adapted by hand), one fine-tuning per prime; a line without a prime by the network."""
    path, data_dir = tiny
    data = writers(dataset.load_data(os.path.join(data_dir, "validation.npz")), 2)
    model = Writer.load(path).model
    calls = []
    monkeypatch.setattr(evaluate, "adapted", lambda *args: calls.append(args) or adapted(*args))
    pairs = [(None, 2), (0, 2), (0, 3), (1, 2)]
    nats, points = evaluate.scored_pairs(model, data, pairs, adapt_steps=2)
    assert len(calls) == 2
    for row, (prime, line) in enumerate(pairs):
        learner = model
        if prime is not None:
            offsets, _ = dataset.pad([data.offsets[prime]], np.float32)
            text, text_mask = dataset.pad([data.text_codes[prime]], np.int64)
            learner = adapted(model, offsets, text, text_mask, 2, evaluate.ADAPT_RATE)
        expected, _ = evaluate.pair_nlls(learner, data, [(None, line)])
        np.testing.assert_allclose(nats[row], expected[0], rtol=1e-5)
    assert nats[1].sum() != pytest.approx(nats[0].sum(), rel=1e-4)  # learning the prime changed the line's NLL


def test_writer_identification_is_the_brute_force_argmin(tiny):
    path, data_dir = tiny
    data = writers(dataset.load_data(os.path.join(data_dir, "validation.npz")), 3)
    model = Writer.load(path).model
    plan = evaluate.draw_plan(data)
    figures, scores = evaluate.likelihood_figures(model, data, plan, batch_size=4)
    for row, i in zip(scores, plan.identified):
        prime, line = plan.held_out[i]
        one_by_one = [evaluate.primed_nll(model, data, candidate, line)[0] for candidate in [prime] + plan.others[i]]
        assert row == pytest.approx(one_by_one, rel=1e-5)
    picks = [int(np.argmin(row)) for row in scores]
    assert evaluate.identify(scores).tolist() == picks
    assert figures["identification_top1"] == np.mean(np.array(picks) == 0)


class ScaleMemory(torch.nn.Module):
    """A stand-in network that knows one thing about a hand, its size, and carries it: each offset
    is predicted as a round Gaussian of mean 0 whose spread is the root mean square of all the
    offsets read so far, prime included."""

    def forward(self, offsets, text, text_mask, state=None):
        steps = torch.arange(1, offsets.shape[1] + 1)
        spread = torch.cumsum((offsets[..., 1:] ** 2).mean(-1), 1) / steps
        y = torch.zeros(*offsets.shape[:2], 7)  # one component: eos, weight, mu x y, log sigma x y, rho
        y[..., 4] = y[..., 5] = 0.5 * torch.log(spread + 1e-6)
        return y, None, None


def test_writer_identification_names_writers_whose_hands_differ_in_size():
    """Writers whose ink differs a hundredfold in size, and a network that carries size over from
    its prime: each line is likeliest after its own writer's prime."""
    data = writers(make_handwriting_data(16, seed=3), 4)
    data = dataclasses.replace(data, offsets=[o * np.float32([1, 0.1 * 10 ** (i % 4), 0.1 * 10 ** (i % 4)])
                                              for i, o in enumerate(data.offsets)])
    plan = evaluate.draw_plan(data)
    figures, scores = evaluate.likelihood_figures(ScaleMemory(), data, plan)
    assert scores.shape == (4, 4) and figures["candidates"] == 4
    assert figures["identification_top1"] == 1.0
    assert figures["nll_own_per_line"] < figures["nll_other_per_line"] - 100


def test_the_style_control_is_how_far_the_primes_themselves_are_from_the_held_out_lines(tiny):
    """Writer w1's lines are four copies of one line: its primes are its held-out lines, error 0.
    Writer w0's are three copies after a different first line, which is one of its three primes:
    its error is a third of that line's difference (slant in degrees, the rest relative)."""
    path, _ = tiny
    data = writers(make_handwriting_data(8, seed=4), 2)  # w0: lines 0, 2, 4, 6; w1: 1, 3, 5, 7
    copy_of = {4: 2, 6: 2, 3: 1, 5: 1, 7: 1}
    data = dataclasses.replace(data, **{field: [getattr(data, field)[copy_of.get(i, i)] for i in range(8)]
                                        for field in ("offsets", "text_codes", "texts")})
    writer = Writer.load(path)
    plan = evaluate.draw_plan(data)
    assert plan.held_out == [(0, 2), (2, 4), (4, 6), (1, 3), (3, 5), (5, 7)]
    figures = evaluate.written_figures(writer, data, plan, bias=1.0, seed=0)
    first, copied = (evaluate.style(evaluate.pen_units(data, i), data.texts[i]) for i in (0, 2))
    for statistic in evaluate.TARGETED_STYLE:  # free of scale, so rescaling to the pace leaves them be
        difference = abs(first[statistic] - copied[statistic])
        expected = (difference if statistic == "slant" else difference / abs(copied[statistic])) / 3 / 2
        assert figures[f"prime error: {statistic}"] == pytest.approx(expected, rel=1e-6), statistic
    assert figures["prime error: slant"] > 0


@pytest.mark.parametrize("adapt", [[], ["--adapt", "2"]])
def test_fidelity_end_to_end_logs_one_row_with_every_figure(tiny, tmp_path, monkeypatch, capsys, adapt):
    """Two writers of 6 lines each (pages of 4 lines), through the command line, primes read or
    learnt (--adapt): every figure of the table is there and finite; a stand-in reader that reads
    each image as the text it should say gives CER 0 for written and real lines alike (so the
    images come in the order of their texts); one row is logged."""
    path, _ = tiny
    data = writers(make_handwriting_data(12, seed=4), 2)  # w0: lines 0, 2, 4 ...; w1: 1, 3, 5 ...
    monkeypatch.setattr(evaluate, "PAGE_LINES", 4)
    dataset.save_data(tmp_path / "validation.npz", data)
    written_texts = [data.texts[i] for i in (2, 4, 6, 3, 5, 7)]  # the first 3 held-out lines of each
    calls = []

    def reader(paths):
        calls.append(len(paths))
        return written_texts

    monkeypatch.setattr(evaluate, "tesseract_available", lambda: True)
    monkeypatch.setattr(evaluate, "read_with_tesseract", reader)
    log = tmp_path / "judgements.csv"
    evaluate.main([path, "--data_dir", str(tmp_path), "--fidelity", "--log", str(log), *adapt])
    assert calls == [6, 6, 6]  # unprimed, primed, real
    with open(log, newline="") as f:
        [row] = list(csv.DictReader(f))
    assert row["checkpoint"] == path and row["judged"] == "fidelity"
    figures = {key[len("fidelity "):]: float(value) for key, value in row.items() if key.startswith("fidelity ")}
    assert figures["writers"] == 2 and figures["pages"] == 2 and figures["style_lines"] == 6
    assert figures["adapt_steps"] == (2 if adapt else 0)
    assert figures["unprimed cer"] == figures["primed cer"] == figures["human cer"] == 0.0
    rows = evaluate.fidelity_table(figures)
    for name, *values, target, met in rows:
        assert all(v == "—" or np.isfinite(float(v)) for v in values), name
    out = capsys.readouterr().out
    assert all(f"| {name} |" in out for name, *_ in rows)
    assert ("adapted to the writer's line (2 steps)" in out) == bool(adapt)


@pytest.mark.parametrize("option", [["--adapt", "3"], ["--compile"]])
def test_adapt_and_compile_are_for_the_fidelity_judge(capsys, option):
    with pytest.raises(SystemExit) as exit:
        evaluate.parse_args(["save/synthesis.pt", *option])
    assert exit.value.code == 2 and f"{option[0]} is for --fidelity" in capsys.readouterr().err


def test_the_judge_compiles_the_network_it_loads_with_compile(tiny, tmp_path, monkeypatch):
    """--compile reaches the model (its recurrences compiled when first run), the weights the same."""
    path, data_dir = tiny
    data, loaded = dataset.load_data(os.path.join(data_dir, "validation.npz")), []
    monkeypatch.setattr(evaluate, "fidelity", lambda writer, *args, **kwargs: loaded.append(writer) or {})
    monkeypatch.setattr(evaluate, "fidelity_table", lambda figures: [])
    for compile in (False, True):
        evaluate.judge_fidelity(path, data, evaluate.parse_args(
            [path, "--fidelity", "--log", ""] + ["--compile"] * compile))
    assert [writer.model.compile_recurrence for writer in loaded] == [False, True]
    for a, b in zip(loaded[0].model.state_dict().values(), loaded[1].model.state_dict().values()):
        assert torch.equal(a, b)


def test_fidelity_with_skip_legibility_scores_the_likelihood_alone(tiny, tmp_path, monkeypatch):
    """The curve of a training run (likelihood and writer identification, per CPU hour) without
    writing a line: the same likelihood figures as the whole judge, and nothing written or read."""
    path, _ = tiny
    dataset.save_data(tmp_path / "validation.npz", writers(make_handwriting_data(12, seed=4), 2))
    monkeypatch.setattr(evaluate, "tesseract_available", lambda: True)
    monkeypatch.setattr(evaluate, "read_with_tesseract", lambda paths: pytest.fail("read a line"))
    monkeypatch.setattr(evaluate.Writer, "write", lambda *a, **k: pytest.fail("wrote a line"))
    [row] = evaluate.main([path, "--data_dir", str(tmp_path), "--fidelity", "--skip_legibility", "--log", ""])
    writer = Writer.load(path)
    data = evaluate.checkpoints_view(dataset.load_data(tmp_path / "validation.npz"), writer.normalisation, path)
    expected, _ = evaluate.likelihood_figures(writer.model, data, evaluate.draw_plan(data))
    for key, value in expected.items():
        assert row[f"fidelity {key}"] == pytest.approx(value, nan_ok=True), key
    assert not any("cer" in key or "error" in key or "drift" in key for key in row)


def test_the_fidelity_table_does_not_judge_figures_it_lacks():
    rows = {name: (values, met) for name, *values, target, met in evaluate.fidelity_table(
        {"nll_alone_per_line": -10.0, "nll_own_per_line": -40.0, "nll_other_per_line": -20.0,
         "identification_top1": 0.7})}
    assert rows["slant, error in degrees"] == (["—", "—", "—"], "—")
    assert rows["Tesseract CER (control: the real lines)"][1] == "—"
    assert rows["writer named by likelihood among 10 primes, top-1 (control: chance)"][1] == "yes"
    # the own line 30 nats better than alone, but only 20 better than the control (40 needed)
    assert rows["NLL of held-out lines, nats per line (control: after another writer's line)"][1] == "no"
