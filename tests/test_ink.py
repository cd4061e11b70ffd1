"""ink.py: a line of ink from each file it may come in (IAM-OnDB stroke XML, InkML, JSON,
strokes.npy), its offsets and cleaning worked out by hand, and the pace it is read at."""
from types import SimpleNamespace

import numpy as np
import pytest

import ink
import utils
from fixtures import (EXPECTED_OFFSETS, IAM_XML, INKML, JSON, LINE_A, LINE_B, LINE_C, OFFSETS_A, OFFSETS_C,
                      stroke_xml, write_file)


def cleaning_counts():
    """What clean_line counts into (data_preprocessing.Summary has these fields)."""
    return SimpleNamespace(points_interpolated=0, steps_removed=0, repeated_points_removed=0)


# ----------------------------------------------------------------------------- files

@pytest.mark.parametrize("name, content, text", [
    ("line.xml", IAM_XML, None),   # IAM-OnDB stroke files hold no text
    ("line.inkml", INKML, "ab"),   # its transcription annotation; time is the first channel here
    ("line.json", JSON, "ab"),
])
def test_each_ink_format_gives_the_hand_computed_offsets(tmp_path, name, content, text):
    offsets, read_text = ink.read_ink_file(write_file(tmp_path, name, content))
    assert read_text == text and offsets.dtype == np.float64
    np.testing.assert_array_equal(offsets, EXPECTED_OFFSETS)


def test_inkml_without_namespace_or_trace_format_reads_x_then_y(tmp_path):
    plain = "<ink><trace>10 100, 13 96, 13 92</trace><trace>20 100, 21 100</trace></ink>"
    offsets, _ = ink.read_ink_file(write_file(tmp_path, "plain.xml", plain))
    np.testing.assert_array_equal(offsets, EXPECTED_OFFSETS)


@pytest.mark.parametrize("name, content, error", [
    ("a.xml", "<WhiteboardCaptureSession><StrokeSet>", "not well-formed XML"),
    ("a.xml", "<svg><path/></svg>", "<svg> is neither an IAM-OnDB stroke file"),
    ("a.xml", IAM_XML.replace('y="96"', 'y="far"'), "lacks a numeric x, y or time"),
    ("a.inkml", "<ink><trace>10 100, '3 -4</trace></ink>", "trace> 1 holds a point that is not plain numbers"),
    ("a.inkml", "<ink><trace>10 100</trace><trace>12 100</trace></ink>", "no stroke moves the pen"),
    ("a.inkml", "<ink><annotation type='transcription'>a</annotation></ink>", "holds no pen strokes"),
    ("a.json", "{'text': 'ab'}", "not JSON"),
    ("a.json", '[[[1, 2], [3, 4]]]', "expected {\"text\""),
    ("a.json", '{"text": "ab", "strokes": [[[1, 2], [3, 4]], [1, 2]]}', "stroke 2 is not a list of \\[x, y\\]"),
    ("a.json", '{"text": "ab", "strokes": [[[1, 2], [3, NaN]]]}', "not a finite number"),
    ("a.json", '{"text": 7, "strokes": [[[1, 2], [3, 4]]]}', '"text" is not a string'),
])
def test_a_bad_ink_file_is_refused_with_its_name_and_what_is_wrong(tmp_path, name, content, error):
    path = write_file(tmp_path, name, content)
    with pytest.raises(ink.BadFile, match=error) as refused:
        ink.read_ink_file(path)
    message = str(refused.value)
    assert message.startswith(f"{path}: ") and "\n" not in message


def test_a_missing_ink_file_is_refused(tmp_path):
    with pytest.raises(ink.BadFile, match="missing.json: No such file"):
        ink.read_ink_file(str(tmp_path / "missing.json"))



def test_parse_stroke_xml_fast_and_slow_paths_agree():
    xml = stroke_xml(LINE_A).encode()
    fast = ink.parse_stroke_xml(xml)
    slow = ink._parse_stroke_xml_slow(xml)
    # Another attribute order misses the fast pattern and must still be read (by ElementTree).
    reordered = ink.parse_stroke_xml(stroke_xml(LINE_A, attribute_order=("time", "y", "x")).encode())
    for strokes in (fast, slow, reordered):
        assert [len(s) for s in strokes] == [5, 5]
        np.testing.assert_allclose(strokes[1][2], [161, 500, 1000.53])
        np.testing.assert_allclose(strokes[0][0], [100, 500, 1000.00])


def test_parse_stroke_xml_malformed():
    with pytest.raises(ink.BadFile, match="malformed XML"):
        ink.parse_stroke_xml(stroke_xml(LINE_B)[:700].encode())
    with pytest.raises(ink.BadFile, match="numeric"):
        ink.parse_stroke_xml(stroke_xml(LINE_B).replace('x="220"', 'x="oops"').encode())


# ----------------------------------------------------------------------------- offsets and cleaning

def test_points_to_offsets_by_hand():
    strokes = [np.array(s, dtype=float) for s in LINE_A]
    np.testing.assert_array_equal(ink.points_to_offsets(strokes), np.array(OFFSETS_A, dtype=np.float32))


def test_interpolate_missing_reading():
    stroke = np.array([[0, 0, 0.00], [10, 20, 0.02], [40, -10, 0.05],  # 0.03 s: 1 lost reading
                       [40, -10, 0.06], [100, 0, 0.12],                 # 0.06 s: 3 lost readings
                       [0, 0, 5.00]])                                   # 4.88 s: a pause, no fill
    expected = [[0, 0, 0.00], [10, 20, 0.02], [25, 5, 0.035], [40, -10, 0.05], [40, -10, 0.06],
                [55, -7.5, 0.075], [70, -5, 0.09], [85, -2.5, 0.105], [100, 0, 0.12], [0, 0, 5.00]]
    np.testing.assert_allclose(ink.interpolate_missing(stroke), expected, atol=1e-9)


def test_interpolate_never_across_strokes():
    # [x, y, time, stroke number]: the 0.03 s gap between strokes 0 and 1 is a pen lift.
    points = np.array([[0, 0, 0.00, 0], [10, 0, 0.03, 1], [40, 0, 0.06, 1]])
    expected = [[0, 0, 0.00, 0], [10, 0, 0.03, 1], [25, 0, 0.045, 1], [40, 0, 0.06, 1]]
    np.testing.assert_allclose(ink.interpolate_missing(points), expected, atol=1e-9)


def test_remove_implausible_steps():
    offsets = np.array([[0, 0, 0], [0, 10, 0], [0, 400, 0], [1, 5, 5],  # 400: glitch; it ended the stroke
                        [0, 1000, -800],                                # pen-up jump: always kept
                        [0, 0, 301], [1, 3, 0]], dtype=np.float32)       # 301 > 300: removed
    cleaned, removed = ink.remove_implausible_steps(offsets)
    expected = [[0, 0, 0], [0, 10, 0], [1, 5, 5], [0, 1000, -800], [1, 3, 0]]
    assert removed == 2
    np.testing.assert_array_equal(cleaned, np.array(expected, dtype=np.float32))
    # The eos of a removed last row moves back to the row before.
    cleaned, removed = ink.remove_implausible_steps(np.array([[0, 0, 0], [0, 3, 4], [1, 0, 500]], np.float32))
    np.testing.assert_array_equal(cleaned, [[0, 0, 0], [1, 3, 4]])


def test_remove_repeated_points():
    offsets = np.array([[0, 0, 0], [0, 3, 4], [0, 0, 0], [0, 0, 0], [0, 5, 0],  # two readings of one place
                        [1, 0, 0],                  # a repeat that ended the stroke: eos moves to the row before
                        [0, 0, 0],                  # a pen-up move of length 0 (the pen went down where it rose): kept
                        [0, 2, 2], [1, 1, 0]], dtype=np.float32)
    cleaned, removed = ink.remove_repeated_points(offsets)
    assert removed == 3
    np.testing.assert_array_equal(cleaned, [[0, 0, 0], [0, 3, 4], [1, 5, 0], [0, 0, 0], [0, 2, 2], [1, 1, 0]])
    # the pen still draws the same points, stroke by stroke
    assert [s.tolist() for s in utils.offsets_to_strokes(cleaned)] == [
        [[0, 0], [3, 4], [8, 4]], [[8, 4], [10, 6], [11, 6]]]


def test_clean_line_removes_a_repeated_reading():
    summary = cleaning_counts()
    stroke = np.array([[0, 0, 0.0], [10, 0, 0.015], [10, 0, 0.03], [10, 10, 0.045]])  # the pen rests once
    offsets = ink.clean_line([stroke], summary)
    np.testing.assert_array_equal(offsets, np.array([[0, 0, 0], [0, 10, 0], [1, 0, -10]], dtype=np.float32))
    assert summary.repeated_points_removed == 1 and summary.points_interpolated == 0


def test_clean_line_interpolates_and_removes_glitch():
    summary = cleaning_counts()
    offsets = ink.clean_line([np.array(s, dtype=float) for s in LINE_C], summary)
    np.testing.assert_array_equal(offsets, np.array(OFFSETS_C, dtype=np.float32))
    assert summary.points_interpolated == 1 and summary.steps_removed == 2


def test_a_strokes_npy_sequence_becomes_offsets_from_the_origin_with_y_up():
    # rows [eos, dx, dy], y down; row 0 is where the pen starts (a position), eos anything > 0.5
    sequence = np.array([[0, 250, 130], [0, 3, -4], [0.9, 4, -6], [0, 20, 5]])
    np.testing.assert_array_equal(ink.strokes_npy_line(sequence), [[0, 0, 0], [0, 3, 4], [1, 4, 6], [0, 20, -5]])
    assert ink.strokes_npy_line(sequence).dtype == np.float32
    assert ink.strokes_npy_line(np.float64(3.0)).shape == (0, 3)  # no sequence: an empty line, dropped later
    for malformed in [np.zeros((4, 2)), np.zeros(5)]:
        with pytest.raises(ink.BadFile, match="not \\(T, 3\\)"):
            ink.strokes_npy_line(malformed)


# ----------------------------------------------------------------------------- the pace

def test_rescale_to_pace_sets_the_median_in_stroke_step():
    # in-stroke steps 1, 0 (a resting pen: left out), 2, 3 and 2: median 2; the pen-up jump of 100
    # (after a row that ends a stroke) is no in-stroke step but is scaled with the rest
    offsets = np.array([[0, 0, 0], [0, 1, 0], [0, 0, 0], [0, 0, 2], [1, 3, 0], [0, 60, 80], [1, 0, 2]], float)
    scaled = ink.rescale_to_pace(offsets, median_step=5.0)
    np.testing.assert_allclose(scaled[:, 1:], offsets[:, 1:] * 2.5)
    np.testing.assert_array_equal(scaled[:, 0], offsets[:, 0])
    assert offsets[5, 1] == 60  # the input is left alone


def test_the_data_pace_follows_from_the_normalisation():
    # IAM-OnDB's median in-stroke step is 0.46 of its std, geometric mean of x and y
    assert ink.median_step([2.0, 3.0]) == pytest.approx(0.46 * np.sqrt(6))


def test_a_line_is_read_with_the_pen_lifted_at_its_end():
    # a written line may stop in mid-stroke; every line of the data ends with a pen lift
    offsets = np.array([[0, 0, 0], [0, 1, 1], [1, 1, 0], [0, 5, 0], [0, 1, 1]], float)
    read, _ = ink.as_read(offsets, median_step=1.0)
    np.testing.assert_array_equal(read[:, 0], [0, 0, 1, 0, 1])
    assert offsets[-1, 0] == 0  # the line itself is left alone


def test_a_line_is_read_without_its_repeated_points_at_the_data_pace():
    # as in the data: a pen reporting where it already was says nothing
    offsets = np.array([[0, 0, 0], [0, 1, 1], [0, 0, 0], [1, 1, 0], [0, 5, 0], [1, 0, 0]], float)
    without = np.array([[0, 0, 0], [0, 1, 1], [1, 1, 0], [1, 5, 0]], float)
    read, repeated = ink.as_read(offsets, median_step=3.0)
    np.testing.assert_allclose(read, ink.as_read(without, median_step=3.0)[0])
    assert len(read) == 4 and repeated == 2
    # in-stroke steps sqrt(2) and 1: median (sqrt(2) + 1) / 2 becomes 3
    np.testing.assert_allclose(read[:, 1:], without[:, 1:] * 3.0 / ((np.sqrt(2) + 1) / 2))
