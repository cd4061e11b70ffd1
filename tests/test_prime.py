"""Style priming (Graves section 5.5) and pages: the prime file formats, the rescaling rule, the
window reading prime text + " " + text, word wrap, pages and their retries, and the command line,
on a tiny checkpoint trained here (CPU, seconds)."""
import json
import math
import os

import matplotlib.image
import numpy as np
import pytest
import torch

import data_preprocessing
import generate
import model as model_module
from fixtures import make_handwriting_data, train_tiny, write_data_dir
from generate import Prime, PrimeError, Writer, wrap_words
from test_generate import deterministic_sample, set_window


@pytest.fixture(scope="module")
def checkpoint_path(tmp_path_factory):
    best = train_tiny(str(tmp_path_factory.mktemp("tiny")), "synthesis", "--max_steps", "1")
    return os.path.join(os.path.dirname(best), "synthesis_last.pt")


@pytest.fixture
def writer(checkpoint_path):
    """A fresh Writer per test: tests change its window weights."""
    return Writer.load(checkpoint_path)


# ----------------------------------------------------------------------------- prime files
#
# The same two strokes in each format, y down: (10, 100) (13, 96) (13, 92), then (20, 100) (21, 100).
# As offsets, y up, row 0 the zero offset: the second stroke begins 7 right and 8 down of the
# first one's end.
EXPECTED_OFFSETS = [[0, 0, 0], [0, 3, 4], [1, 0, 4], [0, 7, -8], [1, 1, 0]]

IAM_XML = """<?xml version="1.0" encoding="ISO-8859-1"?>
<WhiteboardCaptureSession>
  <WhiteboardDescription><SensorLocation corner="top_left"/></WhiteboardDescription>
  <StrokeSet>
    <Stroke colour="black" start_time="1.00" end_time="1.03">
      <Point x="10" y="100" time="1.00"/>
      <Point x="13" y="96" time="1.02"/>
      <Point x="13" y="92" time="1.03"/>
    </Stroke>
    <Stroke colour="black" start_time="1.20" end_time="1.22">
      <Point x="20" y="100" time="1.20"/>
      <Point x="21" y="100" time="1.22"/>
    </Stroke>
  </StrokeSet>
</WhiteboardCaptureSession>
"""

INKML = """<?xml version="1.0" encoding="UTF-8"?>
<ink xmlns="http://www.w3.org/2003/InkML">
  <annotation type="transcription">ab</annotation>
  <definitions><context><traceFormat>
    <channel name="T" type="decimal"/><channel name="X" type="decimal"/><channel name="Y" type="decimal"/>
  </traceFormat></context></definitions>
  <traceGroup>
    <trace>0.00 10 100, 0.02 13 96, 0.03 13 92</trace>
    <trace>0.20 20 100,0.22 21 100</trace>
  </traceGroup>
</ink>
"""

JSON = json.dumps({"text": "ab", "strokes": [[[10, 100], [13, 96], [13, 92]], [[20, 100], [21, 100]]]})


def write_file(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    return str(path)


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


def test_inkml_without_namespace_or_trace_format_reads_x_then_y(tmp_path):
    plain = "<ink><trace>10 100, 13 96, 13 92</trace><trace>20 100, 21 100</trace></ink>"
    prime = Prime.read(write_file(tmp_path, "plain.xml", plain), "ab")
    np.testing.assert_array_equal(prime.offsets, EXPECTED_OFFSETS)


@pytest.mark.parametrize("name, content, error", [
    ("a.xml", "<WhiteboardCaptureSession><StrokeSet>", "not well-formed XML"),
    ("a.xml", "<svg><path/></svg>", "<svg> is neither an IAM-OnDB stroke file"),
    ("a.xml", IAM_XML, "does not say what is written; pass its text"),
    ("a.xml", IAM_XML.replace('y="96"', 'y="far"'), "lacks a numeric x, y or time"),
    ("a.inkml", "<ink><trace>10 100, '3 -4</trace></ink>", "trace> 1 holds a point that is not plain numbers"),
    ("a.inkml", "<ink><trace>10 100</trace><trace>12 100</trace></ink>", "no stroke moves the pen"),
    ("a.inkml", "<ink><annotation type='transcription'>a</annotation></ink>", "holds no pen strokes"),
    ("a.json", "{'text': 'ab'}", "not JSON"),
    ("a.json", '[[[1, 2], [3, 4]]]', "expected {\"text\""),
    ("a.json", '{"text": "ab", "strokes": [[[1, 2], [3, 4]], [1, 2]]}', "stroke 2 is not a list of \\[x, y\\]"),
    ("a.json", '{"text": "ab", "strokes": [[[1, 2], [3, NaN]]]}', "not a finite number"),
    ("a.json", '{"text": 7, "strokes": [[[1, 2], [3, 4]]]}', '"text" is not a string'),
    ("a.json", '{"text": " ", "strokes": [[[1, 2], [3, 4]]]}', "does not say what is written"),
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


# ----------------------------------------------------------------------------- rescaling

def test_rescale_prime_sets_the_median_in_stroke_step():
    # in-stroke steps 1, 0 (a resting pen: left out), 2, 3 and 2: median 2; the pen-up jump of 100
    # (after a row that ends a stroke) is no in-stroke step but is scaled with the rest
    offsets = np.array([[0, 0, 0], [0, 1, 0], [0, 0, 0], [0, 0, 2], [1, 3, 0], [0, 60, 80], [1, 0, 2]], float)
    scaled = data_preprocessing.rescale_to_pace(offsets, median_step=5.0)
    np.testing.assert_allclose(scaled[:, 1:], offsets[:, 1:] * 2.5)
    np.testing.assert_array_equal(scaled[:, 0], offsets[:, 0])
    assert offsets[5, 1] == 60  # the input is left alone


def test_every_prime_is_scaled_to_the_step_the_checkpoint_implies(writer):
    # the fixture data's std is (2, 3): the median step is 0.46 * sqrt(2 * 3) pen units
    assert writer.median_step == pytest.approx(0.46 * math.sqrt(6))
    for scale in [0.01, 1, 300]:  # whatever its units, a prime reaches the network alike
        prime = Prime("ab", np.array(EXPECTED_OFFSETS, float) * [1, scale, scale])
        read = writer.to_pen_units(writer.prime_offsets(prime).numpy())
        # steps 5, 4 and 1 in the prime's units: the median, 4, becomes the training data's
        np.testing.assert_allclose(read, np.array(EXPECTED_OFFSETS) * [1, writer.median_step / 4,
                                                                         writer.median_step / 4], atol=1e-9)


def test_the_network_reads_a_prime_with_the_pen_lifted_at_its_end(writer):
    # a written line may stop in mid-stroke; every line of the data ends with a pen lift
    offsets = np.array([[0, 0, 0], [0, 1, 1], [1, 1, 0], [0, 5, 0], [0, 1, 1]], float)
    read = writer.prime_offsets(Prime("ab", offsets)).numpy()
    np.testing.assert_array_equal(read[:, 0], [0, 0, 1, 0, 1])
    assert offsets[-1, 0] == 0  # the prime itself is left alone


def test_a_prime_is_read_without_its_repeated_points(writer):
    # as in the data: a pen reporting where it already was says nothing (data_preprocessing)
    offsets = np.array([[0, 0, 0], [0, 1, 1], [0, 0, 0], [1, 1, 0], [0, 5, 0], [1, 0, 0]], float)
    without = np.array([[0, 0, 0], [0, 1, 1], [1, 1, 0], [1, 5, 0]], float)
    np.testing.assert_allclose(writer.prime_offsets(Prime("ab", offsets)).numpy(),
                               writer.prime_offsets(Prime("ab", without)).numpy())
    assert len(writer.prime_offsets(Prime("ab", offsets))) == 4


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
    text, mask = writer.encode([generate.joined_text("abc", "ab")])  # "abc ab"
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
    monkeypatch.setattr(model_module.GenerationStep, "sample", staticmethod(deterministic_sample))
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

    def write(self, texts, bias, seed, max_points_per_char, prime):
        attempts.append((texts[0], seed, prime.text if prime is not None else None))
        writing = real_write(self, texts, bias, seed, max_points_per_char, prime)
        writing.capped = [seed in stalls]
        return writing

    monkeypatch.setattr(Writer, "_write", write)
    with pytest.warns(UserWarning, match=r"page line 1 \('ba'\) stalled: .* seeds 12 to 15"):
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

    def write(self, texts, bias, seed, max_points_per_char, prime):
        attempts.append((tuple(texts), seed, tuple(p.text for p in prime)))
        writing = real_write(self, texts, bias, seed, max_points_per_char, prime)
        writing.capped = [(text, seed) in stalls for text in texts]
        return writing

    monkeypatch.setattr(Writer, "_write", write)
    with pytest.warns(UserWarning, match=r"line 2 \('cab'\) hit the step cap .* seeds 7 to 10"):
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

def test_the_page_command_writes_what_the_api_writes(checkpoint_path, writer, tmp_path):
    out, strokes_out = tmp_path / "page.png", tmp_path / "page.npz"
    generate.main(["--checkpoint", checkpoint_path, "--text", "ab ba", "--text", "abc", "--width", "5",
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
def test_the_prime_command_writes_what_the_api_writes(checkpoint_path, writer, tmp_path, name, content, flags):
    path, strokes_out = write_file(tmp_path, name, content), tmp_path / "primed.npz"
    generate.main(["--checkpoint", checkpoint_path, "--prime", path, *flags, "--text", "ba", "--text", "cab",
                   "--seed", "4", "--max_points_per_char", "10", "--out", str(tmp_path / "primed.svg"),
                   "--strokes_out", str(strokes_out)])
    writing = writer.write(["ba", "cab"], 0.0, 4, 10, prime=Prime.read(path, "ab"))
    with np.load(strokes_out) as saved:
        for i, line in enumerate(writing.lines):
            np.testing.assert_array_equal(saved[f"line_{i}"], line.astype(np.float32))


def test_the_prime_line_command_reads_the_processed_data(checkpoint_path, writer, tmp_path):
    data_dir, strokes_out = write_data_dir(tmp_path / "data"), tmp_path / "primed.npy"
    generate.main(["--checkpoint", checkpoint_path, "--prime_line", "line-2", "--data_dir", data_dir,
                   "--text", "ab", "--seed", "1", "--max_points_per_char", "10",
                   "--out", str(tmp_path / "primed.png"), "--strokes_out", str(strokes_out)])
    writing = writer.write(["ab"], 0.0, 1, 10, prime=Prime.from_data("line-2", data_dir))
    np.testing.assert_array_equal(np.load(strokes_out), writing.lines[0].astype(np.float32))


def test_a_bad_prime_stops_the_command_with_one_line(checkpoint_path, tmp_path):
    path = write_file(tmp_path, "bad.json", '{"strokes": []}')
    with pytest.raises(SystemExit, match=f"^{path}: holds no pen strokes$"):
        generate.main(["--checkpoint", checkpoint_path, "--prime", path, "--prime_text", "ab", "--text", "ab",
                       "--out", str(tmp_path / "x.png")])
    with pytest.raises(SystemExit, match="no line of that id"):
        generate.main(["--checkpoint", checkpoint_path, "--prime_line", "nope", "--text", "ab",
                       "--data_dir", write_data_dir(tmp_path / "data"), "--out", str(tmp_path / "x.png")])
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("flags, error", [
    (["--prime_text", "ab"], "--prime_text says what the --prime file says"),
    (["--prime", "a.json", "--prime_line", "a01-000u-01"], "give one"),
    (["--width", "0"], "--width must be >= 1"),
])
def test_priming_and_page_options_are_checked(flags, error, capsys):
    with pytest.raises(SystemExit) as exit:
        generate.parse_args(["--text", "ab", *flags])
    assert exit.value.code == 2 and error in capsys.readouterr().err


def test_several_prime_lines_write_the_texts_once_in_each_hand(checkpoint_path, writer, tmp_path):
    data_dir, strokes_out = write_data_dir(tmp_path / "data"), tmp_path / "hands.npz"
    generate.main(["--checkpoint", checkpoint_path, "--prime_line", "line-2", "--prime_line", "line-0",
                   "--data_dir", data_dir, "--text", "ab", "--text", "ca", "--seed", "3",
                   "--max_points_per_char", "10", "--out", str(tmp_path / "hands.svg"),
                   "--strokes_out", str(strokes_out)])
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
        steps, _ = data_preprocessing.remove_repeated_points(prime.offsets)
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
