"""generate.py (the Writer API and the command line), the model's generate() and the drawing
helpers of utils.py, on tiny checkpoints trained here (CPU, seconds)."""
import math
import os
import re
import xml.etree.ElementTree as ET

import matplotlib.image
import numpy as np
import pytest
import torch

import checkpoint
import generate
import model as model_module
import utils
from fixtures import train_tiny
from generate import Writer
from model import finished

SVG = "{http://www.w3.org/2000/svg}"


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Tiny checkpoints written by train.py after one step: the real format, made in a blink.

    Generation does not need a good model; the tests fix what they need (e.g. the window) by hand.
    """
    root = str(tmp_path_factory.mktemp("tiny"))
    paths = {}
    for task in ["rand_write", "synthesis"]:
        best = train_tiny(root, task, "--max_steps", "1")  # stops before any epoch ends: only _last.pt
        paths[task] = os.path.join(os.path.dirname(best), f"{task}_last.pt")
    return paths


@pytest.fixture
def writer(checkpoints):
    """A fresh synthesis Writer per test: tests change its window weights."""
    return Writer.load(checkpoints["synthesis"])


def svg_paths(path):
    root = ET.parse(path).getroot()
    assert root.tag == SVG + "svg"
    return root.findall(f".//{SVG}path")


def path_points(d):
    numbers = [float(v) for v in re.findall(r"-?\d+\.?\d*", d)]
    return np.array(numbers).reshape(-1, 2)


# ----------------------------------------------------------------------------- coordinates and drawings

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


def test_to_pen_units_inverts_the_normalisation(writer):
    raw = np.array([[0, 3.0, -1.0], [1, -2.0, 4.0]])
    mean, std = np.array([0.5, -0.2]), np.array([2.0, 3.0])  # the fixture data's statistics
    np.testing.assert_allclose(writer.offset_mean, mean) and np.testing.assert_allclose(writer.offset_std, std)
    normalised = raw.copy()
    normalised[:, 1:] = (raw[:, 1:] - mean) / std
    np.testing.assert_allclose(writer.to_pen_units(normalised), raw, rtol=1e-6)
    assert normalised[0, 1] == (3.0 - 0.5) / 2.0  # the input is left alone
    # the start row is the zero pen offset
    np.testing.assert_allclose(writer.to_pen_units(writer.start_row(2).numpy()), 0, atol=1e-6)


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
    line = np.array([[0, 0, 0], [0, 5, 5], [1, 5, -5], [0, 3, 0], [1, 5, 5]], float)
    path = tmp_path / "line.png"
    utils.plot_strokes([line, line], path)
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 10 and image.shape[1] > 10
    dark = image[..., :3].mean(-1) < 0.5
    assert 0 < dark.mean() < 0.5


# ----------------------------------------------------------------------------- the stopping rule

def test_finished_when_the_position_after_the_text_wins():
    phi_text = np.array([[0.1, 0.7, 0.2],    # still on character 1
                         [0.0, 0.1, 0.3],    # past the text: 0.4 > every character
                         [0.0, 0.5, 0.5],    # a tie is not a win
                         [0.2, 0.0, 0.0]])   # padding (zeros) never wins
    phi_after = np.array([0.05, 0.4, 0.5, 0.1])
    assert finished(phi_text, phi_after).tolist() == [False, True, False, False]


@pytest.mark.parametrize("task", ["synthesis", "rand_write"])
def test_generation_step_is_forward_one_point_at_a_time(checkpoints, task):
    """GenerationStep packs the weights its own way; it must compute what forward() does, and read
    the window one position past each text as Graves' formula gives it."""
    model = Writer.load(checkpoints[task]).model
    text, mask = Writer.load(checkpoints["synthesis"]).encode(["abc ab", "ca"]) if task == "synthesis" else (None, None)
    step = model_module.GenerationStep(model, text, mask)
    by_forward = model.initial_state(2)
    by_step = model_module.State(*(None if s is None else s.numpy() for s in by_forward))
    close = lambda array, tensor, msg=None: np.testing.assert_allclose(array, tensor.numpy(), rtol=1e-5,
                                                                       atol=1e-6, err_msg=msg or "")
    torch.manual_seed(0)
    with torch.inference_mode():
        for _ in range(6):
            x = torch.randn(2, 3)
            kappa_prev = torch.from_numpy(by_step.kappa) if task == "synthesis" else None
            y, by_forward, phi = model(x[:, None], text, mask, state=by_forward, return_phi=task == "synthesis")
            y_step, by_step, phi_step, phi_after = step(x.numpy(), by_step)
            close(y_step, y[:, 0])
            for field, a, b in zip(model_module.State._fields, by_step, by_forward):
                assert (a is None) == (b is None), field
                if a is not None:
                    close(a, b, field)
            if task == "rand_write":
                assert phi_step is None and phi_after is None
                continue
            close(phi_step, phi[:, 0])
            # Graves eq. 46 at u = U_b (6 and 2), from the window layer's output by hand
            alpha, beta, kappa_step = model.window_layer(by_forward.h1).exp().chunk(3, dim=1)
            kappa = kappa_prev + kappa_step
            for b, past_text in enumerate([6, 2]):
                expected = (alpha[b] * torch.exp(-beta[b] * (kappa[b] - past_text) ** 2)).sum()
                close(phi_after[b], expected)


def set_window(model, alpha_hat, beta_hat, kappa_hat):
    """Make the window ignore layer 1: fixed alpha, beta and kappa step for every Gaussian."""
    K = model.config.K
    with torch.no_grad():
        model.window_layer.weight.zero_()
        model.window_layer.bias[:K] = alpha_hat
        model.window_layer.bias[K:2 * K] = beta_hat
        model.window_layer.bias[2 * K:] = kappa_hat


def test_line_ends_by_the_rule_at_the_hand_computed_step(writer):
    # alpha = beta = 1, kappa advances exactly 1 per step: after step t (from 0) kappa = t + 1 and
    # phi(t, u) = K exp(-(t + 1 - u)^2). For U = 3, position 3 beats position 2 once t + 1 > 2.5,
    # i.e. at t = 2: two points are generated (at t = 0 and 1), then the line ends.
    set_window(writer.model, 0.0, 0.0, 0.0)
    writing = writer.write(["abc"], seed=0)
    assert writing.capped == [False]
    assert writing.lines[0].shape == (3, 3) and writing.phis[0].shape == (2, 3)
    phis = writing.phis
    K = writer.model.config.K
    expected = [[K * math.exp(-(t + 1 - u) ** 2) for u in range(3)] for t in range(2)]
    np.testing.assert_allclose(phis[0], expected, rtol=1e-5)


def test_step_cap_ends_a_line_that_never_reaches_the_end(writer):
    set_window(writer.model, 0.0, 0.0, -30.0)  # kappa moves by e^-30 per step: it never gets there
    with pytest.warns(UserWarning, match="step cap"):
        writing = writer.write(["ab", "abc"], seed=0, max_points_per_char=3)
    assert writing.capped == [True, True]
    assert [len(o) for o in writing.lines] == [3 * 3 + 1, 3 * 4 + 1]  # the start row + the cap
    assert [p.shape for p in writing.phis] == [(9, 2), (12, 3)]


# ----------------------------------------------------------------------------- generation

def test_same_seed_same_strokes_other_seed_other_strokes(checkpoints, writer):
    run = lambda seed: writer.write(["abc ab", "ba"], 0.5, seed, 10).lines
    first, again, other = run(1), run(1), run(2)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert any(a.shape != c.shape or not np.array_equal(a, c) for a, c in zip(first, other))

    unconditional = Writer.load(checkpoints["rand_write"])
    run = lambda seed: np.stack(unconditional.sample(2, 30, 0.0, seed).lines)
    np.testing.assert_array_equal(run(3), run(3))
    assert not np.array_equal(run(3), run(4))
    assert writer.write("ab").seed != writer.write("ab").seed  # no seed: a fresh one, reported


def test_each_writer_does_only_its_own_task(checkpoints, writer):
    with pytest.raises(ValueError, match="synthesis model: it writes texts"):
        writer.sample(1, 10)
    with pytest.raises(ValueError, match="rand_write model: it writes no text"):
        Writer.load(checkpoints["rand_write"]).write(["ab"])


def test_unknown_characters_are_named_and_written_as_spaces(writer):
    write = lambda text: writer.write([text], 0.0, 5, 10)
    with pytest.warns(UserWarning, match="'€'.*'☃'"):
        unknown = write("a€b☃")
    known = write("a b ")
    np.testing.assert_array_equal(unknown.lines[0], known.lines[0])
    np.testing.assert_array_equal(unknown.phis[0], known.phis[0])


def test_typed_characters_outside_the_alphabet_are_written_as_their_look_alikes(writer, recwarn):
    write = lambda text: writer.write([text], 0.0, 5, 10)
    typed, plain = write("don’t “Ærø” – café…"), write("don't \"AEro\" - cafe...")
    np.testing.assert_array_equal(typed.lines[0], plain.lines[0])
    np.testing.assert_array_equal(typed.phis[0], plain.phis[0])
    assert typed.texts == ["don't \"AEro\" - cafe..."]  # what was written, one label per window row
    assert not [w for w in recwarn if "alphabet" in str(w.message)]  # nothing was unknown


def test_empty_text_is_an_error(writer, checkpoints, capsys):
    with pytest.raises(ValueError, match="empty"):
        writer.write(["   "])
    with pytest.raises(SystemExit) as exit:
        generate.main(["--task", "synthesis", "--checkpoint", checkpoints["synthesis"], "--text", " "])
    assert exit.value.code == 2
    assert "empty" in capsys.readouterr().err


def deterministic_sample(y, bias, noise):
    """In place of GenerationStep.sample: the most likely component's mean, pen lifted when more
    likely than not; no randomness."""
    mix = model_module.split_mixture(torch.from_numpy(y), bias)
    component = mix.log_weights.argmax(-1, keepdim=True)
    pick = lambda t: t.gather(-1, component).squeeze(-1)
    eos = (mix.eos_logit > 0).to(mix.mu_x.dtype)
    return torch.stack([eos, pick(mix.mu_x), pick(mix.mu_y)], dim=-1).numpy()


def test_a_batch_writes_each_line_as_if_alone(writer, monkeypatch):
    """Padding and finished lines must not leak into the other lines of a batch."""
    monkeypatch.setattr(model_module.GenerationStep, "sample", staticmethod(deterministic_sample))
    set_window(writer.model, 0.0, 0.0, math.log(0.25))  # a quarter character per step: lines end in turn
    texts = ["abc", "a", "cab bac"]
    batch = writer.write(texts, max_points_per_char=8)
    assert len(batch.lines) == len(batch.phis) == len(batch.capped) == 3
    assert batch.capped == [False, False, False]  # all ended by the rule ...
    assert len({len(line) for line in batch.lines}) == 3  # ... each at its own step
    for b, text in enumerate(texts):
        alone = writer.write([text], max_points_per_char=8)
        assert batch.lines[b].shape == alone.lines[0].shape
        np.testing.assert_allclose(batch.lines[b], alone.lines[0], atol=1e-5)
        np.testing.assert_allclose(batch.phis[b], alone.phis[0], atol=1e-5)
        assert batch.phis[b].shape == (len(batch.lines[b]) - 1, len(text))


# ----------------------------------------------------------------------------- the command line

def test_unconditional_command_writes_svg_and_strokes(checkpoints, tmp_path):
    out, strokes_out = tmp_path / "r.svg", tmp_path / "r.npy"
    generate.main(["--task", "rand_write", "--checkpoint", checkpoints["rand_write"], "--num_samples", "3",
                   "--length", "40", "--seed", "0", "--out", str(out), "--strokes_out", str(strokes_out)])
    lines = np.load(strokes_out)
    assert lines.shape == (3, 40, 3)
    assert set(np.unique(lines[..., 0])) <= {0.0, 1.0}
    np.testing.assert_allclose(lines[:, 0], 0, atol=1e-5)  # every line starts at the zero offset
    assert len(svg_paths(out)) == sum(len(utils.offsets_to_strokes(line)) for line in lines)


def test_synthesis_command_writes_png_strokes_and_attention(checkpoints, tmp_path):
    out, strokes_out, attention = tmp_path / "s.png", tmp_path / "s.npz", tmp_path / "phi.png"
    generate.main(["--task", "synthesis", "--checkpoint", checkpoints["synthesis"], "--text", "abc",
                   "--text", "ba ab", "--seed", "0", "--bias", "1", "--max_points_per_char", "15",
                   "--out", str(out), "--strokes_out", str(strokes_out), "--attention_out", str(attention),
                   "--label"])
    with np.load(strokes_out) as f:
        assert list(f["texts"]) == ["abc", "ba ab"]
        for i in range(2):
            line = f[f"line_{i}"]
            assert line.ndim == 2 and line.shape[1] == 3 and 1 <= len(line) <= 15 * (len(f["texts"][i]) + 1) + 1
            assert set(np.unique(line[:, 0])) <= {0.0, 1.0}
    for png in [out, attention]:
        image = matplotlib.image.imread(png)
        assert image.ndim == 3 and min(image.shape[:2]) > 10


def test_default_checkpoint_prefers_own_best_then_shipped_then_last(tmp_path):
    path = lambda name: str(tmp_path / name)
    assert checkpoint.default_path("synthesis", str(tmp_path)) == path("synthesis_best.pt")
    (tmp_path / "synthesis_last.pt").write_bytes(b"")
    assert checkpoint.default_path("synthesis", str(tmp_path)) == path("synthesis_last.pt")
    (tmp_path / "synthesis.pt").write_bytes(b"")
    assert checkpoint.default_path("synthesis", str(tmp_path)) == path("synthesis.pt")
    (tmp_path / "synthesis_best.pt").write_bytes(b"")
    assert checkpoint.default_path("synthesis", str(tmp_path)) == path("synthesis_best.pt")
    assert checkpoint.default_path("rand_write", str(tmp_path)) == path("rand_write_best.pt")


def test_exported_checkpoint_generates_the_same_strokes_without_resume_state(checkpoints, tmp_path):
    exported = str(tmp_path / "synthesis.pt")
    checkpoint.main(["export", checkpoints["synthesis"], exported])
    full = torch.load(checkpoints["synthesis"], map_location="cpu", weights_only=False)
    small = torch.load(exported, map_location="cpu", weights_only=False)
    assert "optimizer" not in small and "rng" not in small and "optimizer" in full
    assert small["exported_from"] == "synthesis_last.pt"
    for key in ["config", "alphabet", "offset_mean", "offset_std", "step", "history"]:
        assert small[key] == full[key]
    assert os.path.getsize(exported) < 0.5 * os.path.getsize(checkpoints["synthesis"])

    written = [Writer.load(path).write(["ab"], bias=0.5, seed=3, max_points_per_char=5).lines[0]
               for path in [checkpoints["synthesis"], exported]]
    np.testing.assert_array_equal(written[0], written[1])


def test_export_refuses_a_file_that_is_not_a_checkpoint(tmp_path):
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(SystemExit, match="not a train.py checkpoint"):
        checkpoint.main(["export", str(tmp_path / "other.pt"), str(tmp_path / "out.pt")])
    assert not (tmp_path / "out.pt").exists()


def test_missing_checkpoint_is_a_clear_error_not_a_traceback(tmp_path):
    with pytest.raises(SystemExit, match="no checkpoint at .*rand_write_best.pt: train one"):
        generate.main(["--task", "rand_write", "--model_dir", str(tmp_path), "--out", str(tmp_path / "x.png")])
    assert not (tmp_path / "x.png").exists()


def test_an_output_that_cannot_be_written_is_a_sentence(checkpoints, tmp_path):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(SystemExit, match="cannot write .*file/out.png: .*file is a file, not a folder"):
        generate.main(["--task", "rand_write", "--checkpoint", checkpoints["rand_write"], "--num_samples", "1",
                       "--length", "5", "--out", str(tmp_path / "file" / "out.png")])
    assert (tmp_path / "file").read_text() == "not a folder"


def test_average_writes_the_mean_of_the_weights_and_keeps_the_rest_of_the_newest(checkpoints, tmp_path):
    first = torch.load(checkpoints["synthesis"], map_location="cpu", weights_only=False)
    second = dict(first, model={name: tensor * 3 + 1 for name, tensor in first["model"].items()}, step=7)
    torch.save(second, tmp_path / "second.pt")
    out = str(tmp_path / "mean.pt")
    assert first["step"] < 7
    # the later checkpoint given first: the progress is still the later one's
    checkpoint.main(["average", out, str(tmp_path / "second.pt"), checkpoints["synthesis"]])
    mean = torch.load(out, map_location="cpu", weights_only=False)
    for name, tensor in first["model"].items():  # (w + 3w + 1) / 2 = 2w + 0.5
        torch.testing.assert_close(mean["model"][name], tensor * 2 + 0.5)
    assert mean["step"] == 7 and "optimizer" not in mean
    assert mean["averaged_from"] == ["second.pt", "synthesis_last.pt"]
    assert "the mean of 2 checkpoints" in checkpoint.describe(mean)
    Writer.load(out).write(["ab"], bias=0.5, seed=3, max_points_per_char=5)  # it is a usable model


def test_average_refuses_checkpoints_of_different_models(checkpoints, tmp_path):
    out = tmp_path / "mean.pt"
    with pytest.raises(SystemExit, match="differs from .* in its config: only checkpoints of one model"):
        checkpoint.main(["average", str(out), checkpoints["synthesis"], checkpoints["rand_write"]])
    assert not out.exists()
