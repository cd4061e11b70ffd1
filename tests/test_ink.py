"""ink.py: a line of ink from each file it may come in (IAM-OnDB stroke XML, InkML, JSON,
strokes.npy), its offsets and cleaning worked out by hand, and the pace it is read at."""
import contextlib
import json
import os
import signal
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
    ("a.json", '{"text": "ab", "strokes": [[[1, 2], [3, 4]], [1, 2]]}', "stroke 2, point 1 is not a list of two or more numbers"),
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


# ----------------------------------------------------------------------------- what a file must be (issue 47)

@contextlib.contextmanager
def fails_after(seconds):
    """Raise TimeoutError where the block takes longer than `seconds` (a read that blocks)."""
    def stop(signum, frame):
        raise TimeoutError(f"still reading after {seconds} s")
    previous = signal.signal(signal.SIGALRM, stop)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def not_regular_files(tmp_path):
    """A folder, a pipe, a device and links to them, each under an ink file's name."""
    os.mkdir(tmp_path / "folder.json")
    os.mkfifo(tmp_path / "pipe.json")
    os.symlink(tmp_path / "pipe.json", tmp_path / "link_to_pipe.inkml")
    os.symlink("/dev/zero", tmp_path / "link_to_zero.xml")
    return [tmp_path / "folder.json", tmp_path / "pipe.json", tmp_path / "link_to_pipe.inkml",
            tmp_path / "link_to_zero.xml", "/dev/zero"]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes here")
def test_only_a_regular_file_is_read_never_a_pipe_a_device_or_a_folder(tmp_path):
    for path in not_regular_files(tmp_path):
        with fails_after(2), pytest.raises(ink.BadFile, match="not a regular file") as refused:
            ink.read_ink_file(str(path))
        assert str(refused.value).startswith(f"{path}: ")
        with fails_after(2), pytest.raises(ink.BadFile, match="not a regular file"):
            ink.load_object_npy(str(path))


def test_a_file_over_the_size_limit_is_refused_before_it_is_read(tmp_path):
    path = tmp_path / "huge.xml"
    with open(path, "wb") as f:  # sparse: no disk is used
        f.truncate(ink.MAX_FILE_BYTES + 1)
    with pytest.raises(ink.BadFile, match=f"{ink.MAX_FILE_BYTES + 1:,} bytes.*at most {ink.MAX_FILE_BYTES:,}"):
        ink.read_ink_file(str(path))
    # IAM-OnDB's largest line file (105,268 bytes, 1,940 points) is far inside the limit
    assert ink.MAX_FILE_BYTES >= 20 * 105_268 and ink.MAX_POINTS >= 5 * 1940


def json_line(points, text="ab"):
    return json.dumps({"text": text, "strokes": [points]})


def test_a_line_of_more_points_than_the_limit_is_refused(tmp_path):
    too_many = [[i % 7, i % 5] for i in range(ink.MAX_POINTS + 1)]
    for name, content in [("long.json", json_line(too_many)),
                          ("long.inkml", "<ink><trace>" + ", ".join(f"{x} {y}" for x, y in too_many) + "</trace></ink>"),
                          ("long.xml", stroke_xml([[(x, y, 0.015 * i) for i, (x, y) in enumerate(too_many)]]))]:
        with pytest.raises(ink.BadFile, match=f"{ink.MAX_POINTS + 1:,} points.*at most {ink.MAX_POINTS:,}"):
            ink.read_ink_file(write_file(tmp_path, name, content))
    offsets, _ = ink.read_ink_file(write_file(tmp_path, "limit.json", json_line(too_many[:-1])))
    assert len(offsets) == ink.MAX_POINTS


@pytest.mark.parametrize("coordinate, error", [
    ("1e39", "1e\\+39 is beyond"),                # finite in float64, inf in float32
    ("1e308", "1e\\+308 is beyond"), ("-1e308", "-1e\\+308 is beyond"),
    ("1e10", "10000000000.0 is beyond"),         # past the documented range
    ("1e-320", "1e-320 is not 0 but float32"),    # float32 would hold it as 0
    ("-1e-39", "-1e-39 is not 0 but float32"),    # float32 would hold it without precision
    ("Infinity", "not a finite number"),
    ("1" + "0" * 400, "not a finite number"),    # an integer no float holds
])
def test_a_coordinate_beyond_what_float32_holds_is_refused(tmp_path, coordinate, error):
    for name, content in [("a.json", f'{{"text": "ab", "strokes": [[[1, 2], [{coordinate}, 4]]]}}'),
                          ("a.inkml", f"<ink><trace>1 2, {coordinate} 4</trace></ink>")]:
        if coordinate == "Infinity" and name == "a.inkml":
            coordinate = "inf"
            content = f"<ink><trace>1 2, {coordinate} 4</trace></ink>"
        with pytest.raises(ink.BadFile, match=error):
            ink.read_ink_file(write_file(tmp_path, name, content))


def test_coordinates_within_the_range_are_read_exactly_as_float32_holds_them(tmp_path):
    # 0 is 0; the range's ends and a tiny normal float32 are kept as float32 holds them
    content = json_line([[0, 0], [1e9, -1e9], [2e-38, 1e-3]])
    offsets, _ = ink.read_ink_file(write_file(tmp_path, "edge.json", content))
    expected = np.float32([[0, 0, 0], [0, 1e9, 1e9], [1, 2e-38 - 1e9, -(1e-3 + 1e9)]])
    np.testing.assert_array_equal(offsets, expected)


@pytest.mark.parametrize("strokes, error", [
    ("[[[true, 2], [3, 4]]]", "stroke 1, point 1 holds true"),       # booleans are not numbers
    ("[[[1, 2], [3, false]]]", "stroke 1, point 2 holds false"),
    ('[[[1, 2], ["3", 4]]]', 'stroke 1, point 2 holds "3"'),
    ("[[[1, 2], [3, null]]]", "stroke 1, point 2 holds null"),
    ("[[[1, 2], [3]]]", "stroke 1, point 2 is not a list of two or more numbers"),
    ("[[[1, 2], 3]]", "stroke 1, point 2 is not a list of two or more numbers"),
    ("[[[1, 2], [[3, 4], 5]]]", "stroke 1, point 2 holds \\[3, 4\\]"),
    ("[[[1, 2]], {}]", "stroke 2 is not a list of \\[x, y\\] points"),
    ('{"a": [[1, 2]]}', 'expected {"text"'),
])
def test_json_of_another_shape_is_refused_in_a_sentence(tmp_path, strokes, error):
    path = write_file(tmp_path, "a.json", f'{{"text": "ab", "strokes": {strokes}}}')
    with pytest.raises(ink.BadFile, match=error):
        ink.read_ink_file(path)


def test_deeply_nested_json_is_refused_before_it_is_parsed(tmp_path):
    for nested in ["[" * 100_000 + "]" * 100_000, '{"a":' * 50_000 + "1" + "}" * 50_000]:
        path = write_file(tmp_path, "deep.json", f'{{"text": "ab", "strokes": {nested}}}')
        with pytest.raises(ink.BadFile, match=f"nested deeper than {ink.MAX_JSON_DEPTH}"):
            ink.read_ink_file(path)
    # brackets inside strings are text, not nesting; the web page's extra "lines" key (depth 6) is fine
    shallow = json.dumps({"text": "[[[[[[[[[[[[[[[[[[[[ab", "strokes": [[[1, 2], [3, 4]]],
                          "lines": [{"text": "ab", "strokes": [[[1, 2], [3, 4]]]}]})
    assert ink.read_ink_file(write_file(tmp_path, "web.json", shallow))[1] == "[[[[[[[[[[[[[[[[[[[[ab"


def test_a_line_whose_steps_span_too_many_orders_of_magnitude_is_refused():
    # in-stroke steps of 1 and a pen-up jump of 10^5: at the data's pace the jump would be
    # 10^5 median steps (IAM-OnDB's largest step is about 200 of its line's median)
    offsets = np.array([[0, 0, 0], [0, 1, 0], [1, 1, 0], [0, 1e5, 0], [1, 1, 0]], float)
    with pytest.raises(ink.BadFile, match="largest step is 100,000 times its median in-stroke step"):
        ink.as_read(offsets, median_step=3.0)
    offsets[3, 1] = 1e3
    assert ink.as_read(offsets, median_step=3.0)[0][3, 1] == pytest.approx(3e3)


@pytest.mark.parametrize("offsets, error", [
    (np.zeros((4, 2)), "not rows of \\[end_of_stroke, dx, dy\\]"),
    (np.zeros((0, 3)), "no points"),
    (np.array([[0, 0, 0], [1, np.nan, 0]]), "not a finite number"),
    (np.zeros((ink.MAX_POINTS + 1, 3)), "points; at most"),
])
def test_a_line_given_as_offsets_is_checked_like_a_file(offsets, error):
    with pytest.raises(ink.BadFile, match=error):
        ink.as_read(offsets, median_step=1.0)


def test_a_strokes_npy_sequence_beyond_the_limits_is_refused():
    for sequence, error in [(np.zeros((ink.MAX_POINTS + 1, 3)), "points; at most"),
                            (np.array([[0, 0, 0], [1, 1e39, 0]]), "1e\\+39 is beyond"),
                            (np.array([[0, 0, 0], [1, np.inf, 0]]), "not a finite number")]:
        with pytest.raises(ink.BadFile, match=error):
            ink.strokes_npy_line(sequence)
