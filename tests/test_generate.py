"""generate.py: the Writer API (lines, primes, pages and their retries) and the command line, and
the model's generate() as the Writer drives it, on tiny checkpoints trained here (CPU, seconds)."""
import json
import math
import os
import warnings

import matplotlib.image
import numpy as np
import pytest
import torch

import dataset
import generate
import ink
import model as model_module
import utils
from fixtures import (EXPECTED_OFFSETS, IAM_XML, INKML, JSON, make_handwriting_data, svg_paths, train_tiny,
                      write_data_dir, write_file)
from generate import Prime, PrimeError, Writer, wrap_words
from model import finished, sequence_nll


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


# ----------------------------------------------------------------------------- the normalisation

def test_the_writer_carries_its_checkpoints_normalisation_and_starts_at_the_zero_offset(writer):
    mean, std = np.array([0.5, -0.2]), np.array([2.0, 3.0])  # the fixture data's statistics
    assert writer.normalisation == dataset.Normalisation(np.float32(mean), np.float32(std))
    raw = np.array([[0, 3.0, -1.0], [1, -2.0, 4.0]])
    normalised = raw.copy()
    normalised[:, 1:] = (raw[:, 1:] - mean) / std
    np.testing.assert_allclose(writer.normalisation.to_pen_units(normalised), raw, rtol=1e-6)
    # the start row is the zero pen offset
    np.testing.assert_allclose(writer.normalisation.to_pen_units(writer.start_row(2).numpy()), 0, atol=1e-6)


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
    """The step generate() writes with (the fast model's GenerationStep packs the weights its own
    way) must compute what forward() does, and read the window one position past each text as
    Graves' formula gives it."""
    model = Writer.load(checkpoints[task]).model
    text, mask = Writer.load(checkpoints["synthesis"]).encode(["abc ab", "ca"]) if task == "synthesis" else (None, None)
    step = model.generation_step(text, mask)
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
    """In place of the generation step's sample: the most likely component's mean, pen lifted when
    more likely than not; no randomness (sample_deterministically)."""
    mix = model_module.split_mixture(torch.from_numpy(y), bias)
    component = mix.log_weights.argmax(-1, keepdim=True)
    pick = lambda t: t.gather(-1, component).squeeze(-1)
    eos = (mix.eos_logit > 0).to(mix.mu_x.dtype)
    return torch.stack([eos, pick(mix.mu_x), pick(mix.mu_y)], dim=-1).numpy()


def sample_deterministically(monkeypatch, writer):
    """Make the step the writer's model generates with sample by deterministic_sample."""
    step = writer.model.generation_step(*writer.encode(["a"]))
    monkeypatch.setattr(type(step), "sample", staticmethod(deterministic_sample))


def test_a_batch_writes_each_line_as_if_alone(writer, monkeypatch):
    """Padding and finished lines must not leak into the other lines of a batch."""
    sample_deterministically(monkeypatch, writer)
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


# ----------------------------------------------------------------------------- primes

@pytest.mark.parametrize("name, content, text", [
    ("line.xml", IAM_XML, "ab"),  # IAM-OnDB stroke files hold no text: --prime_text gives it
    ("line.inkml", INKML, None),  # its transcription annotation; time is the first channel here
    ("line.json", JSON, None),
])
def test_each_prime_format_gives_the_hand_computed_offsets(tmp_path, name, content, text):
    prime = Prime.read(write_file(tmp_path, name, content), text)
    assert prime.text == "ab"
    np.testing.assert_array_equal(prime.offsets, EXPECTED_OFFSETS)


def test_prime_text_wins_over_the_text_in_the_file(tmp_path):
    assert Prime.read(write_file(tmp_path, "line.json", JSON), "a b").text == "a b"
    assert Prime.read(write_file(tmp_path, "line.inkml", INKML), "ba").text == "ba"


@pytest.mark.parametrize("name, content, error", [
    ("a.xml", IAM_XML, "does not say what is written; pass its text"),
    ("a.json", '{"text": " ", "strokes": [[[1, 2], [3, 4]]]}', "does not say what is written"),
    ("a.json", '{"text": 7, "strokes": [[[1, 2], [3, 4]]]}', '"text" is not a string'),  # ink.py's words
])
def test_a_bad_prime_file_is_refused_with_its_name_and_what_is_wrong(tmp_path, name, content, error):
    path = write_file(tmp_path, name, content)
    with pytest.raises(PrimeError, match=error) as refused:
        Prime.read(path)
    message = str(refused.value)
    assert message.startswith(f"{path}: ") and "\n" not in message


def test_a_missing_prime_file_is_refused(tmp_path):
    with pytest.raises(PrimeError, match="missing.json: No such file"):
        Prime.read(str(tmp_path / "missing.json"))


def test_prime_line_comes_from_the_processed_data_in_pen_units(tmp_path):
    data_dir = write_data_dir(tmp_path / "data")
    validation = make_handwriting_data(8, seed=2)  # what write_data_dir wrote as validation.npz
    prime = Prime.from_data("line-3", data_dir)
    assert prime.text == validation.texts[3]
    expected = validation.offsets[3].astype(np.float64)
    expected[:, 1:] = expected[:, 1:] * [2.0, 3.0] + [0.5, -0.2]  # the fixture's std and mean
    np.testing.assert_allclose(prime.offsets, expected, rtol=1e-6)
    with pytest.raises(PrimeError, match="--prime_line b01-999-01: no line of that id .*ids look like line-0"):
        Prime.from_data("b01-999-01", data_dir)


def test_every_prime_is_scaled_to_the_step_the_checkpoint_implies(writer):
    # the fixture data's std is (2, 3): the median step is 0.46 * sqrt(2 * 3) pen units
    assert writer.median_step == pytest.approx(0.46 * math.sqrt(6))
    for scale in [0.01, 1, 300]:  # whatever its units, a prime reaches the network alike
        prime = Prime("ab", np.array(EXPECTED_OFFSETS, float) * [1, scale, scale])
        read = writer.normalisation.to_pen_units(writer.prime_offsets(prime).numpy())
        # steps 5, 4 and 1 in the prime's units: the median, 4, becomes the training data's
        np.testing.assert_allclose(read, np.array(EXPECTED_OFFSETS) * [1, writer.median_step / 4,
                                                                         writer.median_step / 4], atol=1e-9)


# ----------------------------------------------------------------------------- priming

def loops(num_points, turn=0.8, seed=0):
    """A prime in pen units like the fixture data: loops, a pen lift every 8 points."""
    rng = np.random.default_rng(seed)
    t = np.arange(num_points)
    offsets = np.stack([np.zeros(num_points), 2 * np.cos(t * turn) + 0.5, 3 * np.sin(t * turn) - 0.2], 1)
    offsets += 0.1 * rng.standard_normal(offsets.shape) * [0, 1, 1]
    offsets[7::8, 0] = 1
    offsets[0] = 0
    return offsets


def test_priming_changes_the_strokes_reproducibly(writer):
    prime = Prime("abc", loops(24))
    write = lambda seed, prime: writer.write(["ab ca"], 0.5, seed, 10, prime=prime).lines[0]
    first, again = write(1, prime), write(1, prime)
    np.testing.assert_array_equal(first, again)
    unprimed = write(1, None)
    assert first.shape != unprimed.shape or not np.array_equal(first, unprimed)
    other = write(1, Prime("abc", loops(24, turn=1.3)))
    assert first.shape != other.shape or not np.array_equal(first, other)
    np.testing.assert_array_equal(first[0], [first[0, 0], 0, 0])  # it starts at the origin


def test_after_priming_the_window_has_moved_over_the_prime_text(writer):
    # alpha = beta = 1 and kappa moves a quarter character per point read, so after reading the
    # 9 rows of a prime, kappa = 2.25 and phi(u) = K exp(-(2.25 - u)^2); unprimed, after the
    # start row alone, kappa = 0.25
    set_window(writer.model, 0.0, 0.0, math.log(0.25))
    K = writer.model.config.K
    text, mask = writer.encode([dataset.joined_text("abc", "ab")])  # "abc ab"
    generate_first_window = lambda **primed: writer.model.generate(
        text=text, text_mask=mask, generator=torch.Generator().manual_seed(0), **primed)[1][0][0]
    primed = generate_first_window(start=None, prime=[writer.prime_offsets(Prime("abc", loops(9)))],
                                   prime_chars=[4])
    unprimed = generate_first_window(start=writer.start_row(1))
    np.testing.assert_allclose(primed, [K * math.exp(-(2.25 - u) ** 2) for u in range(6)], rtol=1e-5)
    np.testing.assert_allclose(unprimed, [K * math.exp(-(0.25 - u) ** 2) for u in range(6)], rtol=1e-5)


def test_a_primed_line_ends_by_the_rule_at_the_end_of_the_joined_text(writer):
    # kappa moves 1 per point read; the window reads "ab abc" (U = 6). Reading the prime's 4 rows
    # takes kappa to 4; points are sampled at kappa 4 and 5, and at kappa 6 > 5.5 the position
    # after the text wins. Of those 2 points the first becomes the origin; the window behind the
    # second (kappa 5) is returned over the line's own text "abc", positions 3 to 5.
    set_window(writer.model, 0.0, 0.0, 0.0)
    writing = writer.write(["abc"], seed=0, prime=Prime("ab", loops(4)))
    assert writing.capped == [False] and writing.texts == ["abc"]
    assert writing.lines[0].shape == (2, 3)
    np.testing.assert_array_equal(writing.lines[0][0, 1:], [0, 0])
    K = writer.model.config.K
    np.testing.assert_allclose(writing.phis[0], [[K * math.exp(-(5 - u) ** 2) for u in range(3, 6)]], rtol=1e-5)


def test_the_step_cap_of_a_primed_line_counts_only_the_new_characters(writer):
    set_window(writer.model, 0.0, 0.0, -30.0)  # the window never moves
    with pytest.warns(UserWarning, match="step cap"):
        writing = writer.write(["abc"], seed=0, max_points_per_char=3, prime=Prime("ab", loops(4)))
    assert writing.capped == [True]
    # 3 points for each of " abc" and one more: 12 new points, all returned
    assert writing.lines[0].shape == (12, 3) and writing.phis[0].shape == (11, 3)


def test_primes_of_different_lengths_write_each_line_as_if_alone(writer, monkeypatch):
    sample_deterministically(monkeypatch, writer)
    set_window(writer.model, 0.0, 0.0, math.log(0.25))
    texts, primes = ["ab", "cab a"], [Prime("c", loops(5)), Prime("ba c", loops(17, seed=1))]
    batch = writer.write(texts, prime=primes, max_points_per_char=8)
    for b in range(2):
        alone = writer.write([texts[b]], prime=primes[b], max_points_per_char=8)
        np.testing.assert_allclose(batch.lines[b], alone.lines[0], atol=1e-5)
        np.testing.assert_allclose(batch.phis[b], alone.phis[0], atol=1e-5)


def test_unknown_characters_in_the_prime_text_are_written_as_spaces(writer):
    write = lambda prime_text: writer.write(["ab"], 0.0, 5, 10, prime=Prime(prime_text, loops(16))).lines[0]
    with pytest.warns(UserWarning, match="'€'"):
        unknown = write("a€b")
    np.testing.assert_array_equal(unknown, write("a b"))


def test_the_prime_text_is_spelled_with_look_alikes_like_a_text(writer):
    write = lambda prime_text: writer.write(["ab"], 0.0, 5, 10, prime=Prime(prime_text, loops(16))).lines[0]
    np.testing.assert_array_equal(write("café…"), write("cafe..."))
    assert writer.write_page(["café…", "naïve"], 0.0, 5, 10).texts == ["cafe...", "naive"]  # as written


def test_an_empty_text_is_refused_even_after_a_prime(writer):
    with pytest.raises(ValueError, match="empty"):
        writer.write([" "], prime=Prime("ab", loops(8)))


# ----------------------------------------------------------------------------- pages

@pytest.mark.parametrize("text, width, lines", [
    ("the quick brown fox jumps over the lazy dog", 10, ["the quick", "brown fox", "jumps over", "the lazy", "dog"]),
    ("ab cd", 5, ["ab cd"]),                      # exactly the width fits
    ("ab cd", 4, ["ab", "cd"]),
    ("a extraordinarily b c", 5, ["a", "extraordinarily", "b c"]),  # a long word alone
    ("  one\ntwo   three ", 7, ["one two", "three"]),                 # any whitespace breaks words
    (" ", 5, []),
])
def test_wrap_words_against_hand_worked_breaks(text, width, lines):
    assert wrap_words(text, width) == lines


def test_a_page_primes_each_line_with_the_line_before(writer):
    set_window(writer.model, 0.0, 0.0, math.log(0.25))  # every line reaches its end
    lines = ["ab c", "ba", "c a"]
    page = writer.write_page(lines, bias=0.5, seed=5)
    assert page.texts == lines and page.capped == [False] * 3 and page.seed == 5
    np.testing.assert_array_equal(page.lines[0], writer.write([lines[0]], 0.5, 5).lines[0])
    for i in [1, 2]:  # line i: seed 5 + i, primed by line i - 1 as written
        alone = writer.write([lines[i]], 0.5, 5 + i, prime=Prime(lines[i - 1], page.lines[i - 1]))
        np.testing.assert_array_equal(page.lines[i], alone.lines[0])
        np.testing.assert_array_equal(page.phis[i], alone.phis[0])

    prime = Prime("cab", loops(24))  # with a prime, it primes every line
    page = writer.write_page(lines, bias=0.5, seed=5, prime=prime)
    for i in range(3):
        np.testing.assert_array_equal(page.lines[i], writer.write([lines[i]], 0.5, 5 + i, prime=prime).lines[0])


def test_a_stalled_page_line_is_retried_with_the_next_seed_then_reported(writer, monkeypatch):
    set_window(writer.model, 0.0, 0.0, math.log(0.25))
    stalls = {10, 12, 13, 14, 15}  # line 0 stalls once; line 1 on every attempt
    attempts = []
    real_write = Writer._write

    def write(self, texts, primes, bias, seed, max_points_per_char, uniforms=None):
        attempts.append((texts[0], seed, primes[0].text if primes is not None else None))
        writing = real_write(self, texts, primes, bias, seed, max_points_per_char, uniforms)
        writing.capped = [seed in stalls]
        return writing

    monkeypatch.setattr(Writer, "_write", write)
    with pytest.warns(UserWarning, match=r"page line 1 \('ba'\) stalled at the step cap .* seeds 12 to 15"):
        page = writer.write_page(["ab", "ba", "c"], seed=10)
    assert attempts == [("ab", 10, None), ("ab", 11, None),
                        ("ba", 12, "ab"), ("ba", 13, "ab"), ("ba", 14, "ab"), ("ba", 15, "ab"),
                        ("c", 16, "ab")]  # primed by the last line written to its end
    assert page.capped == [False, True, False] and len(page.lines) == 3
    monkeypatch.undo()
    set_window(writer.model, 0.0, 0.0, math.log(0.25))
    kept = writer.write(["ba"], 0.0, 15, prime=Prime("ab", page.lines[0])).lines[0]  # the last attempt
    np.testing.assert_array_equal(page.lines[1], kept)


def test_stalled_lines_of_a_batch_are_written_again_with_the_next_seeds(writer, monkeypatch):
    set_window(writer.model, 0.0, 0.0, math.log(0.25))
    texts, primes = ["ba", "ab", "cab"], [Prime("c", loops(5)), Prime("a", loops(6)), Prime("b", loops(7))]
    stalls = {("ab", 7), ("ab", 8)} | {("cab", seed) for seed in range(7, 11)}  # twice; on every attempt
    attempts = []
    real_write = Writer._write

    def write(self, texts, primes, bias, seed, max_points_per_char, uniforms=None):
        attempts.append((tuple(texts), seed, tuple(p.text for p in primes)))
        writing = real_write(self, texts, primes, bias, seed, max_points_per_char, uniforms)
        writing.capped = [(text, seed) in stalls for text in texts]
        return writing

    monkeypatch.setattr(Writer, "_write", write)
    with pytest.warns(UserWarning, match=r"^line 2 \('cab'\) stalled at the step cap .* seeds 7 to 10"):
        writing = writer.write(texts, 0.5, 7, prime=primes)
    # the stalled lines only, as one batch, each with its own prime, the seed one up each time
    assert attempts == [(("ba", "ab", "cab"), 7, ("c", "a", "b")), (("ab", "cab"), 8, ("a", "b")),
                        (("ab", "cab"), 9, ("a", "b")), (("cab",), 10, ("b",))]
    assert writing.capped == [False, False, True] and writing.seed == 7 and writing.texts == texts
    monkeypatch.undo()
    set_window(writer.model, 0.0, 0.0, math.log(0.25))
    kept = [writer.write(texts, 0.5, 7, prime=primes, retries=0).lines[0],
            writer.write(texts[1:], 0.5, 9, prime=primes[1:], retries=0).lines[0],
            writer.write(texts[2:], 0.5, 10, prime=primes[2:], retries=0).lines[0]]
    for line, expected in zip(writing.lines, kept):
        np.testing.assert_array_equal(line, expected)


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


# ----------------------------------------------------------------------------- the command line: primes and pages

def test_the_page_command_writes_what_the_api_writes(checkpoints, writer, tmp_path):
    out, strokes_out = tmp_path / "page.png", tmp_path / "page.npz"
    generate.main(["--checkpoint", checkpoints["synthesis"], "--text", "ab ba", "--text", "abc", "--width", "5",
                   "--seed", "3", "--bias", "0.5", "--max_points_per_char", "10",
                   "--out", str(out), "--strokes_out", str(strokes_out)])
    page = writer.write_page(["ab ba", "abc"], 0.5, 3, 10)
    with np.load(strokes_out) as saved:
        assert list(saved["texts"]) == ["ab ba", "abc"]
        for i, line in enumerate(page.lines):
            np.testing.assert_array_equal(saved[f"line_{i}"], line.astype(np.float32))
    assert matplotlib.image.imread(out).ndim == 3


@pytest.mark.parametrize("name, content, flags", [
    ("prime.xml", IAM_XML, ["--prime_text", "ab"]),
    ("prime.json", JSON, []),
])
def test_the_prime_command_writes_what_the_api_writes(checkpoints, writer, tmp_path, name, content, flags):
    path, strokes_out = write_file(tmp_path, name, content), tmp_path / "primed.npz"
    generate.main(["--checkpoint", checkpoints["synthesis"], "--prime", path, *flags, "--text", "ba", "--text", "cab",
                   "--seed", "4", "--max_points_per_char", "10", "--out", str(tmp_path / "primed.svg"),
                   "--strokes_out", str(strokes_out)])
    writing = writer.write(["ba", "cab"], 0.0, 4, 10, prime=Prime.read(path, "ab"))
    with np.load(strokes_out) as saved:
        for i, line in enumerate(writing.lines):
            np.testing.assert_array_equal(saved[f"line_{i}"], line.astype(np.float32))


def test_the_prime_line_command_reads_the_processed_data(checkpoints, writer, tmp_path):
    data_dir, strokes_out = write_data_dir(tmp_path / "data"), tmp_path / "primed.npy"
    generate.main(["--checkpoint", checkpoints["synthesis"], "--prime_line", "line-2", "--data_dir", data_dir,
                   "--text", "ab", "--seed", "1", "--max_points_per_char", "10",
                   "--out", str(tmp_path / "primed.png"), "--strokes_out", str(strokes_out)])
    writing = writer.write(["ab"], 0.0, 1, 10, prime=Prime.from_data("line-2", data_dir))
    np.testing.assert_array_equal(np.load(strokes_out), writing.lines[0].astype(np.float32))


def test_the_adapt_command_writes_what_the_adapted_writer_writes(checkpoints, writer, tmp_path):
    data_dir, strokes_out = write_data_dir(tmp_path / "data"), tmp_path / "adapted.npz"
    generate.main(["--checkpoint", checkpoints["synthesis"], "--prime_line", "line-2", "--prime_line", "line-3",
                   "--data_dir", data_dir, "--adapt", "2", "--text", "ab", "--seed", "1", "--max_points_per_char", "10",
                   "--out", str(tmp_path / "adapted.png"), "--strokes_out", str(strokes_out)])
    with np.load(strokes_out) as saved:
        for i, line_id in enumerate(["line-2", "line-3"]):
            hand = writer.adapted(Prime.from_data(line_id, data_dir), 2)
            np.testing.assert_array_equal(saved[f"line_{i}"], hand.write(["ab"], 0.0, 1, 10).lines[0].astype(np.float32))


def test_a_bad_prime_stops_the_command_with_one_line(checkpoints, tmp_path):
    path = write_file(tmp_path, "bad.json", '{"strokes": []}')
    with pytest.raises(SystemExit, match=f"^{path}: holds no pen strokes$"):
        generate.main(["--checkpoint", checkpoints["synthesis"], "--prime", path, "--prime_text", "ab", "--text", "ab",
                       "--out", str(tmp_path / "x.png")])
    with pytest.raises(SystemExit, match="no line of that id"):
        generate.main(["--checkpoint", checkpoints["synthesis"], "--prime_line", "nope", "--text", "ab",
                       "--data_dir", write_data_dir(tmp_path / "data"), "--out", str(tmp_path / "x.png")])
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("flags, error", [
    (["--prime_text", "ab"], "--prime_text says what the --prime file says"),
    (["--prime", "a.json", "--prime_line", "a01-000u-01"], "give one"),
    (["--width", "0"], "--width must be >= 1"),
    (["--adapt", "3"], "--adapt learns the hand of a prime"),
])
def test_priming_and_page_options_are_checked(flags, error, capsys):
    with pytest.raises(SystemExit) as exit:
        generate.parse_args(["--text", "ab", *flags])
    assert exit.value.code == 2 and error in capsys.readouterr().err


def test_several_prime_lines_write_the_texts_once_in_each_hand(checkpoints, writer, tmp_path):
    data_dir, strokes_out = write_data_dir(tmp_path / "data"), tmp_path / "hands.npz"
    generate.main(["--checkpoint", checkpoints["synthesis"], "--prime_line", "line-2", "--prime_line", "line-0",
                   "--data_dir", data_dir, "--text", "ab", "--text", "ca", "--seed", "3",
                   "--max_points_per_char", "10", "--out", str(tmp_path / "hands.svg"),
                   "--strokes_out", str(strokes_out),
                   "--prime_check", "off"])  # an untrained window says nothing of whether a prime's text is right
    hands = [Prime.from_data(line_id, data_dir) for line_id in ("line-2", "line-2", "line-0", "line-0")]
    writing = writer.write(["ab", "ca", "ab", "ca"], 0.0, 3, 10, prime=hands)
    with np.load(strokes_out) as saved:
        assert list(saved["texts"]) == ["ab", "ca", "ab", "ca"]
        for i, line in enumerate(writing.lines):
            np.testing.assert_array_equal(saved[f"line_{i}"], line.astype(np.float32))


def test_show_primes_puts_each_prime_as_read_above_its_lines(writer, tmp_path):
    data_dir = write_data_dir(tmp_path / "data")
    primes = [Prime.from_data("line-2", data_dir), Prime.from_data("line-0", data_dir)]
    writing = writer.write(["ab", "ab"], 0.0, 3, 10, prime=primes)
    shown = generate.with_primes(writing, primes, writer)
    assert shown.texts == [f"prime: {primes[0].text}", "ab", f"prime: {primes[1].text}", "ab"]
    assert shown.lines[1] is writing.lines[0] and shown.lines[3] is writing.lines[1]
    for prime, drawn in zip(primes, shown.lines[::2]):
        # the prime as the network reads it: the same steps, all scaled by one factor (to the data's pace)
        steps, _ = ink.remove_repeated_points(prime.offsets)
        scale = np.linalg.norm(drawn[:, 1:]) / np.linalg.norm(steps[:, 1:])
        np.testing.assert_allclose(drawn[:, 1:], scale * steps[:, 1:], rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(drawn[:-1, 0], steps[:-1, 0])
        assert drawn[-1, 0] == 1


@pytest.mark.parametrize("flags, error", [
    (["--show_primes"], "--show_primes draws the primes"),
    (["--width", "10", "--prime_line", "a", "--prime_line", "b"], "written in one hand"),
])
def test_several_hands_options_are_checked(flags, error, capsys):
    with pytest.raises(SystemExit) as exit:
        generate.parse_args(["--text", "ab", *flags])
    assert exit.value.code == 2 and error in capsys.readouterr().err


# ----------------------------------------------------------------------------- long work, bounded (issue 47)

def test_a_line_longer_than_the_bound_is_refused_with_a_hint_to_use_width(writer, capsys):
    too_long = "ab " * (generate.MAX_LINE_CHARS // 3) + "abc"
    assert len(too_long) == generate.MAX_LINE_CHARS + 1
    with pytest.raises(SystemExit) as exit:
        generate.parse_args(["--text", too_long])
    assert exit.value.code == 2
    assert f"{generate.MAX_LINE_CHARS + 1} characters" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        generate.parse_args(["--text", too_long, "--task", "synthesis"])
    assert "--width" in capsys.readouterr().err
    assert generate.parse_args(["--text", too_long, "--width", "60"]).texts[0] == "ab " * 19 + "ab"  # wrapped
    with pytest.raises(ValueError, match="write_page"):
        writer.write([too_long])
    with pytest.raises(PrimeError, match=f"prime's text.*{generate.MAX_LINE_CHARS}"):
        writer.write(["ab"], prime=Prime(too_long, loops(8)))


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes here")
def test_a_text_file_is_read_only_if_it_is_a_regular_file_within_the_limits(tmp_path, capsys):
    def refusal(path):
        with pytest.raises(SystemExit) as exit:
            generate.parse_args(["--text_file", str(path)])
        assert exit.value.code == 2
        return capsys.readouterr().err

    os.mkfifo(tmp_path / "pipe.txt")
    assert "not a regular file (a pipe)" in refusal(tmp_path / "pipe.txt")  # and it did not block
    with open(tmp_path / "huge.txt", "wb") as f:
        f.truncate(generate.MAX_TEXT_FILE_BYTES + 1)
    assert f"at most {generate.MAX_TEXT_FILE_BYTES:,}" in refusal(tmp_path / "huge.txt")
    many = tmp_path / "many.txt"
    many.write_text("ab\n" * (generate.MAX_TEXTS + 1))
    assert f"{generate.MAX_TEXTS + 1:,} lines to write; at most {generate.MAX_TEXTS:,}" in refusal(many)


def test_many_texts_are_written_in_batches_of_bounded_memory_with_a_progress_bar(writer, monkeypatch, capsys):
    texts = ["ab", "ba", "cb", "a", "bb", "c"]
    # a window budget that holds two lines of 2 characters: each records its window (2 characters,
    # float32) for up to 10 * (2 + 1) points of the step cap and its first row
    line_bytes = (10 * (2 + 1) + 1) * 2 * 4
    monkeypatch.setattr(generate, "BATCH_WINDOW_BYTES", 2 * line_bytes)
    batches = []
    original = Writer._write

    def spy(self, batch_texts, *rest):
        batches.append(list(batch_texts))
        return original(self, batch_texts, *rest)

    monkeypatch.setattr(Writer, "_write", spy)
    writing = writer.write(texts, 0.5, 7, 10, retries=0, progress=True)
    assert batches == [["ab", "ba"], ["cb", "a"], ["bb", "c"]]
    assert "6/6" in capsys.readouterr().err  # tqdm's bar, on stderr
    # each batch is written as write() writes it alone, batch after batch taking the next seed
    monkeypatch.setattr(generate, "BATCH_WINDOW_BYTES", 10 ** 9)
    for number, start in enumerate(range(0, 6, 2)):
        alone = writer.write(texts[start:start + 2], 0.5, 7 + number, 10, retries=0)
        for b in range(2):
            np.testing.assert_array_equal(writing.lines[start + b], alone.lines[b])
            np.testing.assert_array_equal(writing.phis[start + b], alone.phis[b])
    assert writing.seed == 7 and writing.texts == texts


def test_a_page_shows_its_progress_line_by_line(writer, capsys):
    writer.write_page(["ab", "ba", "c"], 0.5, 3, 10, progress=True)
    assert "3/3" in capsys.readouterr().err


# ----------------------------------------------------------------------------- a prime whose text and ink disagree (issue 47)

@pytest.mark.parametrize("prime_text, points, error", [
    ("abc", 4, None),            # the window at 4, one past the joined space at 3: the prime reads as said
    ("a", 4, None),              # 3 characters into the new text: the slack, still taken
    ("a", 5, "4 characters into the new text"),
    ("a", 30, "past the end of the whole text"),
    ("ab", 5, None), ("abcabca", 4, None),    # 3 characters of the prime's text unread: the slack
    ("abcabcab", 4, "4 characters of its text are still unread"),
])
def test_a_prime_whose_text_and_ink_disagree_is_caught_by_the_window_at_its_end(writer, prime_text, points, error):
    # kappa moves one character per point read: after a prime of T points the window reads character T
    # of "<prime text> <text>", where the joined space is character len(prime_text)
    set_window(writer.model, 0.0, 0.0, 0.0)
    prime = Prime(prime_text, loops(points), name="my.json")
    write = lambda **check: writer.write(["abcabc"], seed=0, max_points_per_char=3, prime=prime, retries=0, **check)
    if error is None:
        write(prime_check="stop")
        return
    with pytest.raises(PrimeError, match=f"^my.json \\({prime_text!r}\\): .*{error}.*--prime_text"):
        write(prime_check="stop")
    with pytest.warns(generate.PrimeWarning, match=error):  # the API's default: a warning
        write()
    with warnings.catch_warnings():
        warnings.simplefilter("error", generate.PrimeWarning)
        write(prime_check="off")


def test_a_page_checks_the_given_prime_not_the_lines_it_wrote_itself(writer):
    set_window(writer.model, 0.0, 0.0, 0.0)
    with pytest.raises(PrimeError, match="past the end"):
        writer.write_page(["ab", "ba"], seed=0, prime=Prime("a", loops(30)), prime_check="stop")
    writer.write_page(["ab", "ba", "abc"], seed=0, prime_check="stop")  # lines primed by the line before: not checked


def shipped_writer_and_validation_data():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path, data = os.path.join(root, "save", "synthesis.pt"), os.path.join(root, "data", "validation.npz")
    if not (os.path.exists(path) and os.path.exists(data)):
        pytest.skip("needs the shipped save/synthesis.pt and the processed data/validation.npz")
    return Writer.load(path), os.path.dirname(data)


def test_real_primes_pass_with_their_own_texts_and_are_caught_with_wrong_ones(recwarn):
    writer, data_dir = shipped_writer_and_validation_data()
    for line_id in ["a01-003-01", "g09-267z-04"]:
        prime = Prime.from_data(line_id, data_dir)
        quick = lambda p: writer.write(["hello world"], 1.0, 0, max_points_per_char=1, prime=p, retries=0,
                                       prime_check="stop")
        quick(prime)
        with pytest.raises(PrimeError, match="into the new text|past the end"):
            quick(Prime("A", prime.offsets, name=prime.name))
        with pytest.raises(PrimeError, match="still unread"):
            quick(Prime(f"{prime.text} {prime.text}", prime.offsets, name=prime.name))


def test_the_issue_prime_with_a_wrong_text_stops_the_command(tmp_path):
    writer, data_dir = shipped_writer_and_validation_data()
    prime = Prime.from_data("a01-003-01", data_dir)
    strokes = [s.tolist() for s in utils.offsets_to_strokes(prime.offsets * [1, 1, -1])]  # files' y is down
    path = write_file(tmp_path, "a01-003-01.json", json.dumps({"strokes": strokes}))
    with pytest.raises(SystemExit, match="a01-003-01.json \\('A'\\): .*--prime_text"):
        generate.main(["--prime", path, "--prime_text", "A", "--text", "hello world", "--seed", "0",
                       "--out", str(tmp_path / "x.png")])
    assert not (tmp_path / "x.png").exists()


def test_a_junk_validation_npz_behind_prime_line_is_a_sentence(tmp_path):
    (tmp_path / "validation.npz").write_bytes(b"PK\x03\x04 not a zip at all")
    with pytest.raises(PrimeError, match="validation.npz is not a split data_preprocessing.py wrote"):
        Prime.from_data("a01-003-01", str(tmp_path))
    np.savez(tmp_path / "validation.npz", points=np.zeros((3, 3)))  # a zip, but not of the split's arrays
    with pytest.raises(PrimeError, match="validation.npz is not a split data_preprocessing.py wrote"):
        Prime.from_data("a01-003-01", str(tmp_path))
    os.remove(tmp_path / "validation.npz")
    os.mkfifo(tmp_path / "validation.npz")
    with pytest.raises(PrimeError, match="not a regular file"):
        Prime.from_data("a01-003-01", str(tmp_path))


def test_write_from_uniforms_writes_what_the_seeds_draws_write_and_does_not_retry(writer, monkeypatch):
    """Writer.write(uniforms=...) takes the draws in place of the seed's: the seed's own draws
    (model.draw_noise) give the seed's lines. A stalled line is kept as it is, not written again."""
    texts = ["abc", "b a"]
    seeded = writer.write(texts, bias=0.5, seed=5, max_points_per_char=10, retries=0)  # one attempt, as below
    draws = model_module.draw_noise(model_module.NOISE_BLOCK, 2, torch.Generator().manual_seed(5)).numpy()
    given = writer.write(texts, bias=0.5, uniforms=draws, max_points_per_char=10)
    assert given.capped == seeded.capped
    for a, b in zip(given.lines + given.phis, seeded.lines + seeded.phis):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match=r"uniforms must be an array \(points, 2 lines, 4\)"):
        writer.write(texts, uniforms=draws[:, :1])
    set_window(writer.model, 0.0, 0.0, -30.0)  # the window never moves: every line stalls
    calls = []
    generate_once = writer.model.generate
    monkeypatch.setattr(writer.model, "generate", lambda *a, **k: calls.append(1) or generate_once(*a, **k))
    with pytest.warns(UserWarning, match="stalled"):
        stalled = writer.write(["ab"], uniforms=draws[:, :1], max_points_per_char=10)
    assert stalled.capped == [True] and len(calls) == 1


def test_an_adapted_writer_has_learnt_the_prime_and_leaves_the_writer_as_it_was(writer):
    """Writer.adapted fine-tunes a copy on the prime as the network reads it: the prime becomes
    likelier to the copy; with no steps the copy writes what the writer writes."""
    prime = Prime("abc", loops(24))
    before = [p.detach().clone() for p in writer.model.parameters()]
    same = writer.adapted(prime, steps=0)
    write = lambda w: w.write("ab ca", 0.5, 1, 10, retries=0).lines[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tiny network may stall: the same stall either way
        np.testing.assert_array_equal(write(same), write(writer))
    learner = writer.adapted(prime, steps=3, learning_rate=1e-2)
    offsets = writer.prime_offsets(prime).float()[None]
    text, text_mask = writer.encode(["abc"])
    nll = lambda w: sequence_nll(w.model, offsets, torch.ones(offsets.shape[:2]), text, text_mask)[0].item()
    assert nll(learner) < nll(writer)
    assert all(torch.equal(p.detach(), p0) for p, p0 in zip(writer.model.parameters(), before))
    assert learner.alphabet == writer.alphabet and learner.normalisation == writer.normalisation
