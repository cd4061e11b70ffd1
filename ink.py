"""Reading ink: a line of handwriting from any file that holds one, cleaned and at the data's pace.

One owner for what a line of ink is and how it is read. data_preprocessing.py reads the IAM-OnDB,
strokes.npy and your own lines (--ink_dir) with it; generate.py reads primes with it.

A line of ink is a float array of rows [end_of_stroke, dx, dy] in pen units, y growing upwards:
* Offsets. Row t holds point[t] - point[t-1]; row 0 holds [0, 0] (the line's first point is
  the origin), so a line of T points gives T rows and the pen-up jumps between strokes are
  ordinary rows. end_of_stroke is 1 on the last point of every stroke. y is negated: the
  files' y grows downwards, ours upwards.

Cleaning, each rule measured on the 11,842 lines of IAM-OnDB:
* Missing readings (Graves 2013, section 4.2). The pen is sampled every ~15 ms (time stamps
  have 10 ms resolution and alternate +0.01 / +0.02 s). A gap of 0.03 s or more inside a
  stroke is a lost reading: such steps are ~2.4x longer (99th percentile 147 vs 61 units).
  A gap dt with 1.5 * 0.015 s < dt <= MAX_INTERPOLATED_GAP = 0.2 s gets round(dt / 0.015) - 1
  linearly interpolated points (149,825 points added to the 7.44M of the kept lines). Longer
  gaps (about 665, up to 6,400 s, plus 106 negative ones) are pauses or clock glitches, not
  lost samples: left alone.
* Implausible steps. After interpolation, 99.99% of the in-stroke steps are below 180 raw
  units (median 18). Their count falls 75-fold from the 50-100 to the 100-150 unit bin, then
  only ~3-fold per 50 units: a long tail of sensor glitches (e.g. ink jumping 500 units
  sideways within 10 ms and back). An in-stroke step longer than MAX_STEP = 300 units (105
  in the kept lines, 0.0014%) is removed from the offsets, i.e. the rest of the stroke is
  shifted back by it; a glitch that jumps away and back thus cancels. Pen-up jumps between
  strokes are never removed: crossing a t or dotting an i may span the whole line.
* Repeated points. 1.45% of the in-stroke steps (96,910 in the training lines) have length 0:
  the tablet reported the pen where it already was. They are removed, as glitches are. Kept,
  they teach the network that a resting pen goes on resting, and sampling with a bias (Graves
  section 5.2), which narrows every Gaussian, falls into that state and stays: the pen stands
  while the window crawls, and the line runs to the step cap. A model trained 8 epochs on data
  with them stalled in 9 of 24 validation texts at bias 1; 40 further steps on data without
  them, 0 of 24. Primes and your own lines lose theirs the same way.

Pace. A line written elsewhere (draw.html's JSON, a tablet's InkML) is in anyone's units: the
network knows the data's pace, not its units, so such a line is rescaled until its median
in-stroke step is IAM-OnDB's (`as_read`).

Files: IAM-OnDB line XML, InkML and JSON (read_ink_file), and the circulated strokes.npy, a
pickle read by an unpickler that makes numpy arrays and nothing else (load_object_npy): it is a
file of ink like the others, and whoever reads ink from files reads it safely here.

Limits (docs/reliability.md): a file is read only if it is a regular file (never a pipe, device
or folder, which would block or never end) of at most MAX_FILE_BYTES; a line has at most
MAX_POINTS points, coordinates that are 0 or of a magnitude in [MIN_COORDINATE, MAX_COORDINATE]
(so that float32 offsets hold them), steps within MAX_STEP_RATIO of its median; JSON is of the
documented shape, numbers only, nested at most MAX_JSON_DEPTH deep. BadFile says which rule broke.
"""
import json
import math
import os
import pickle
import re
import stat
import xml.etree.ElementTree as ET

import numpy as np

SAMPLE_INTERVAL = 0.015       # seconds between pen readings
MAX_INTERPOLATED_GAP = 0.2    # seconds; a longer gap is a pause, not lost readings
MAX_STEP = 300.0              # raw units; a longer in-stroke step is a glitch
# IAM-OnDB's median in-stroke step (17.9 raw units over the 10,379 training lines) in units of its
# offset_std, geometric mean of x and y (41.3 and 36.5): a line from elsewhere is scaled to this step.
MEDIAN_STEP_PER_STD = 0.46

# What a file of ink may hold (docs/reliability.md). IAM-OnDB's longest line has 1,940 points in a
# 105,268-byte file (~54 bytes a point), its largest step is 200 times its line's median in-stroke step.
MAX_FILE_BYTES = 4 * 2 ** 20    # a line's file (XML, InkML, JSON): 40 times IAM-OnDB's largest
MAX_POINTS = 20_000             # points in a line: 10 times IAM-OnDB's longest
MAX_COORDINATE = 1e9            # |coordinate| in any unit; the offsets, differences, stay finite in float32
MIN_COORDINATE = float(np.finfo(np.float32).tiny)  # 1.2e-38: a nonzero coordinate below is 0 in float32
MAX_STEP_RATIO = 10_000         # a step over this many median in-stroke steps: units gone wrong
MAX_JSON_DEPTH = 16             # nesting; the documented shape has 4, the web page's extra "lines" 6
MAX_NPY_BYTES = 2 ** 31         # strokes.npy, a whole data set (the circulated one is ~100 MB)


class BadFile(ValueError):
    """A file (or one line of a file) that cannot be read as ink; the message says what is wrong."""


# ----------------------------------------------------------------------------- offsets

def points_to_offsets(strokes):
    """Strokes ((n, >=2) arrays of x, y with y downwards) -> float32 (T, 3) [end_of_stroke, dx, dy].

    Row 0 is [eos, 0, 0]; row t is point[t] - point[t-1], with dy negated so y grows upwards.
    """
    return _offsets(np.concatenate([s[:, :2] for s in strokes]), np.cumsum([len(s) for s in strokes]) - 1)


def _offsets(points, stroke_ends):
    offsets = np.zeros((len(points), 3), dtype=np.float32)
    offsets[stroke_ends, 0] = 1.0
    offsets[1:, 1] = np.diff(points[:, 0])
    offsets[1:, 2] = -np.diff(points[:, 1])
    return offsets


def pen_down_rows(offsets):
    """Rows the pen moves to while down: those after a row that did not end a stroke (bool (T,))."""
    pen_down = np.zeros(len(offsets), dtype=bool)
    pen_down[1:] = offsets[:-1, 0] < 0.5
    return pen_down


def in_stroke_steps(offsets):
    """Lengths of the steps the pen takes while down: the rows after a row that did not end a stroke."""
    pen_down = pen_down_rows(offsets)
    return np.hypot(offsets[pen_down, 1], offsets[pen_down, 2])


# ----------------------------------------------------------------------------- cleaning

def interpolate_missing(points, interval=SAMPLE_INTERVAL, max_gap=MAX_INTERPOLATED_GAP):
    """Fill lost readings with linearly interpolated points.

    points: (n, 3) [x, y, time] of one stroke, or (n, 4) [x, y, time, stroke number] of a whole
    line (gaps are then filled only between points of the same stroke). A time step dt with
    1.5 * interval < dt <= max_gap stands for round(dt / interval) steps: round(dt / interval) - 1
    points are inserted, evenly spaced between its ends.
    """
    dt = np.diff(points[:, 2])
    fill = (dt > 1.5 * interval) & (dt <= max_gap)
    if points.shape[1] > 3:
        fill &= np.diff(points[:, 3]) == 0
    if not fill.any():
        return points
    missing = np.where(fill, np.rint(dt / interval).astype(np.int64) - 1, 0)
    # Step i becomes missing[i] + 1 sub-steps ending at fractions 1/(m+1), ..., 1 of the way.
    parts = missing + 1
    step_of_row = np.repeat(np.arange(len(dt)), parts)
    last_row = np.cumsum(parts) - 1
    fraction = (np.arange(parts.sum()) - (last_row - parts + 1)[step_of_row] + 1) / parts[step_of_row]
    start, end = points[:-1][step_of_row], points[1:][step_of_row]
    filled = start + fraction[:, None] * (end - start)
    filled[last_row] = points[1:]  # the recorded points themselves, exactly
    return np.concatenate([points[:1], filled])


def remove_rows(offsets, remove):
    """offsets without the pen-down rows marked in `remove`; returns (offsets, number removed).

    A removed row that ended its stroke hands end_of_stroke to the row before it (in the same
    stroke, as the removed row was pen-down). Pen-up jumps and row 0 are never removed.
    """
    remove = remove & pen_down_rows(offsets)
    if not remove.any():
        return offsets, 0
    offsets = offsets.copy()
    for i in np.flatnonzero(remove)[::-1]:  # back to front: a run of removed rows passes eos down
        if offsets[i, 0]:
            offsets[i - 1, 0] = 1.0
    return offsets[~remove], int(remove.sum())


def remove_implausible_steps(offsets, max_step=MAX_STEP):
    """Drop in-stroke rows longer than max_step raw units; returns (offsets, number removed)."""
    return remove_rows(offsets, np.hypot(offsets[:, 1], offsets[:, 2]) > max_step)


def remove_repeated_points(offsets):
    """Drop in-stroke rows of length 0 (the pen reported where it already was); returns
    (offsets, number removed). Unit-free, so it applies to any ink, primes included."""
    return remove_rows(offsets, (offsets[:, 1] == 0) & (offsets[:, 2] == 0))


def clean_line(strokes, counts=None):
    """Parsed strokes of one line ((n, 3) arrays [x, y, time]) -> raw offsets: lost readings
    interpolated, glitch steps and repeated points removed (clean_offsets)."""
    if not strokes:
        return np.zeros((0, 3), dtype=np.float32)
    # One array for the whole line (with each point's stroke number) keeps this vectorised.
    points = np.concatenate(strokes)[:, :3]
    number = np.repeat(np.arange(len(strokes), dtype=np.float64), [len(s) for s in strokes])
    filled = interpolate_missing(np.column_stack([points, number]))
    stroke_ends = np.append(np.flatnonzero(np.diff(filled[:, 3])), len(filled) - 1)
    if counts is not None:
        counts.points_interpolated += len(filled) - len(points)
    return clean_offsets(_offsets(filled, stroke_ends), counts)


def clean_offsets(offsets, counts=None):
    """Offsets without their implausible steps and repeated points (no time stamps needed).

    counts, when given (data_preprocessing.Summary), has the rows removed added to its
    steps_removed and repeated_points_removed.
    """
    offsets, removed = remove_implausible_steps(offsets)
    offsets, repeated = remove_repeated_points(offsets)
    if counts is not None:
        counts.steps_removed += removed
        counts.repeated_points_removed += repeated
    return offsets


# ----------------------------------------------------------------------------- pace

def median_step(offset_std):
    """The median in-stroke step, in pen units, of data normalised with offset_std (IAM-OnDB's pace)."""
    return MEDIAN_STEP_PER_STD * float(np.sqrt(np.prod(np.asarray(offset_std, dtype=np.float64))))


def rescale_to_pace(offsets, median_step):
    """Offsets (pen units) scaled so that the median length of their in-stroke steps is median_step.

    The network knows the data's pace, not its units: a prime in pixels or millimetres must
    move like an IAM-OnDB line. Steps of length 0 (a resting pen) say nothing and are left out.
    """
    scaled = np.array(offsets, dtype=np.float64, copy=True)
    steps = in_stroke_steps(scaled)
    steps = steps[steps > 0]
    if len(steps):
        scaled[:, 1:] *= median_step / np.median(steps)
    return scaled


def as_read(offsets, median_step):
    """A line of ink as the network reads it, in pen units: without its repeated points, rescaled
    to the data's pace (median_step: median_step(offset_std)), and ending with the pen lifted, as
    every line of the data does. A line written by the model may stop in mid-stroke (Graves' rule
    does not wait for the pen); read unlifted, the next line would first finish that stroke, a
    scribble before its first word. Returns (float64 (T, 3) offsets, repeated points removed);
    `offsets` is left alone. BadFile (without a file name: the caller knows it) for offsets that
    no line of ink has (checked_offsets), or whose steps span more than MAX_STEP_RATIO."""
    read, repeated = remove_repeated_points(checked_offsets(offsets))
    steps = in_stroke_steps(read)
    steps = steps[steps > 0]
    if len(steps):
        largest = np.hypot(read[:, 1], read[:, 2]).max() / np.median(steps)
        if largest > MAX_STEP_RATIO:
            raise BadFile(f"its largest step is {largest:,.0f} times its median in-stroke step (at most "
                          f"{MAX_STEP_RATIO:,}; IAM-OnDB's largest is about 200): its units are mixed up")
    read = rescale_to_pace(read, median_step)
    read[-1, 0] = 1.0
    return read, repeated


def checked_offsets(offsets):
    """offsets as float64 rows [end_of_stroke, dx, dy]: a line's worth of finite numbers within
    the coordinate range, else BadFile (without a file name)."""
    try:
        offsets = np.asarray(offsets, dtype=np.float64)
    except (TypeError, ValueError):
        raise BadFile("its offsets are not numbers") from None
    if offsets.ndim != 2 or offsets.shape[1] != 3:
        raise BadFile(f"its offsets have shape {offsets.shape}, not rows of [end_of_stroke, dx, dy]")
    if not len(offsets):
        raise BadFile("it has no points")
    check_point_count(len(offsets))
    check_coordinates(offsets)
    return offsets


def check_point_count(count):
    """BadFile (without a file name) for a line of more than MAX_POINTS points."""
    if count > MAX_POINTS:
        raise BadFile(f"{count:,} points; at most {MAX_POINTS:,} make a line of ink (IAM-OnDB's longest has "
                      "1,940): split it into lines")


def check_coordinates(values):
    """BadFile (without a file name) unless every value is finite and 0 or of a magnitude within
    [MIN_COORDINATE, MAX_COORDINATE], where float32, in which offsets are kept, holds it."""
    values = np.asarray(values, dtype=np.float64)
    if not np.isfinite(values).all():
        raise BadFile("a coordinate is not a finite number")
    magnitude = np.abs(values)
    beyond, tiny = magnitude > MAX_COORDINATE, (magnitude > 0) & (magnitude < MIN_COORDINATE)
    if beyond.any():
        raise BadFile(f"coordinate {float(values[beyond][0])!r} is beyond +-{MAX_COORDINATE:g}, the range ink "
                      "is read in (in any unit)")
    if tiny.any():
        raise BadFile(f"coordinate {float(values[tiny][0])!r} is not 0 but float32 (which offsets are kept in) "
                      f"would hold it as 0 or without precision: coordinates are 0 or of a magnitude between "
                      f"{MIN_COORDINATE:.1e} and {MAX_COORDINATE:g}")


# ----------------------------------------------------------------------------- files

def read_ink_file(path):
    """One line of ink from an IAM-OnDB line XML, an InkML or a JSON file (by extension, then root
    element): (offsets (T, 3) float64 in the file's units, y up; its text or None). BadFile, naming
    the file and what is wrong, when it cannot be used: not a regular file of at most
    MAX_FILE_BYTES, not of the format's shape, more than MAX_POINTS points, or a coordinate
    outside check_coordinates' range."""
    data = read_regular_file(path, MAX_FILE_BYTES)
    strokes, text = (json_strokes if os.fspath(path).lower().endswith(".json") else xml_strokes)(data, path)
    return points_to_offsets(checked_strokes(strokes, path)).astype(np.float64), text


def open_regular_file(path, max_bytes):
    """`path` open for reading in binary, once it is known to be a regular file of at most max_bytes:
    a pipe, a device (/dev/zero), a folder or a link to one is refused before a byte is read (opened
    without blocking, then looked at). BadFile, naming the file, otherwise."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except OSError as e:
        raise BadFile(f"{path}: {e.strerror}") from None
    info = os.fstat(fd)
    if stat.S_ISREG(info.st_mode) and info.st_size <= max_bytes:
        return os.fdopen(fd, "rb")
    os.close(fd)
    if stat.S_ISREG(info.st_mode):
        raise BadFile(f"{path}: {info.st_size:,} bytes; at most {max_bytes:,} are read from such a file")
    kind = next((name for test, name in [(stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a pipe"),
                                         (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device"),
                                         (stat.S_ISSOCK, "a socket")] if test(info.st_mode)), "not a file")
    raise BadFile(f"{path}: not a regular file ({kind}); name a file")


def read_regular_file(path, max_bytes):
    """The bytes of `path`, a regular file of at most max_bytes (open_regular_file); BadFile otherwise."""
    with open_regular_file(path, max_bytes) as f:
        try:
            data = f.read(max_bytes + 1)
        except OSError as e:
            raise BadFile(f"{path}: {e.strerror}") from None
    if len(data) > max_bytes:  # it grew while being read
        raise BadFile(f"{path}: over {max_bytes:,} bytes; at most {max_bytes:,} are read from such a file")
    return data


def xml_strokes(data, path):
    """Strokes ((n, 2) arrays, y down) and text (or None) of an IAM-OnDB line XML or an InkML file."""
    try:
        root = ET.fromstring(data)
    except ET.ParseError as e:
        raise BadFile(f"{path}: not well-formed XML ({e})") from None
    kind = local_name(root.tag)
    if kind == "ink":
        return inkml_strokes(root, path)
    if kind != "WhiteboardCaptureSession":
        raise BadFile(f"{path}: <{kind}> is neither an IAM-OnDB stroke file (<WhiteboardCaptureSession>) "
                      "nor InkML (<ink>)")
    try:
        return [s[:, :2] for s in parse_stroke_xml(data)], None
    except BadFile as e:
        raise BadFile(f"{path}: {e}") from None


def local_name(tag):
    """An XML tag without its namespace: '{http://www.w3.org/2003/InkML}trace' -> 'trace'."""
    return tag.rsplit("}", 1)[-1]


def inkml_strokes(root, path):
    """Strokes and transcription of an InkML document (W3C Ink Markup Language).

    Each <trace> is one stroke, "x y, x y, ...", y down; X and Y are found by name in the first
    <traceFormat> (first and second by default), further channels (time, pressure) are ignored.
    The text is the <ink>'s own <annotation type="transcription"> (or "truth", or "text").
    """
    x, y = inkml_xy_columns(root)
    strokes = []
    for number, trace in enumerate(e for e in root.iter() if local_name(e.tag) == "trace"):
        points = [point.split() for point in (trace.text or "").split(",") if point.strip()]
        try:
            strokes.append(np.array([[float(p[x]), float(p[y])] for p in points]).reshape(-1, 2))
        except (ValueError, IndexError):
            raise BadFile(f"{path}: <trace> {number + 1} holds a point that is not plain numbers \"x y\" "
                          "(difference-encoded traces, with ' or \" before values, are not read)") from None
    text = next((e.text for e in root if local_name(e.tag) == "annotation"
                 and e.get("type") in ("transcription", "truth", "text")), None)
    return strokes, text


def inkml_xy_columns(root):
    """Where X and Y are among the values of a trace's points."""
    trace_format = next((e for e in root.iter() if local_name(e.tag) == "traceFormat"), [])
    names = [channel.get("name") for channel in trace_format if local_name(channel.tag) == "channel"]
    return (names.index("X"), names.index("Y")) if {"X", "Y"} <= set(names) else (0, 1)


def json_strokes(data, path):
    """Strokes and text of a JSON line, as the web page writes them: {"text": "...", "strokes":
    [[[x, y], ...], ...]}, y down, any units; a point's further values (time, pressure) and other
    keys are left alone. Numbers only: true and false are no coordinates. Nesting deeper than
    MAX_JSON_DEPTH is refused before parsing (Python's parser recurses), as are more than MAX_POINTS points."""
    depth = json_depth(data)
    if depth > MAX_JSON_DEPTH:
        raise BadFile(f"{path}: JSON nested deeper than {MAX_JSON_DEPTH} levels ({depth:,}); expected "
                      '{"text": "...", "strokes": [[[x, y], ...], ...]}')
    try:
        document = json.loads(data)
    except ValueError as e:  # bad JSON or bad UTF-8
        raise BadFile(f"{path}: not JSON ({e})") from None
    if not isinstance(document, dict) or not isinstance(document.get("strokes"), list):
        raise BadFile(f'{path}: expected {{"text": "...", "strokes": [[[x, y], ...], ...]}}')
    for number, stroke in enumerate(document["strokes"], 1):
        if not isinstance(stroke, list):
            raise BadFile(f"{path}: stroke {number} is not a list of [x, y] points")
    try:
        check_point_count(sum(len(stroke) for stroke in document["strokes"]))
    except BadFile as e:
        raise BadFile(f"{path}: {e}") from None
    strokes = [json_points(stroke, number, path) for number, stroke in enumerate(document["strokes"], 1)]
    text = document.get("text")
    if text is not None and not isinstance(text, str):
        raise BadFile(f'{path}: "text" is not a string')
    return strokes, text


def json_points(stroke, number, path):
    """A JSON stroke [[x, y, ...], ...] as a float64 (n, 2) array; BadFile for any other shape."""
    points = []
    for i, point in enumerate(stroke, 1):
        if not isinstance(point, list) or len(point) < 2:
            raise BadFile(f"{path}: stroke {number}, point {i} is not a list of two or more numbers [x, y]")
        for value in point:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise BadFile(f"{path}: stroke {number}, point {i} holds {json.dumps(value)}, not a number")
        points.append([as_float(point[0]), as_float(point[1])])
    return np.array(points, dtype=np.float64).reshape(-1, 2)


def as_float(number):
    """A JSON number as a float; an integer too large for any float as an infinity."""
    try:
        return float(number)
    except OverflowError:
        return math.inf if number > 0 else -math.inf


_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')


def json_depth(data):
    """How deeply JSON bytes nest, counted without parsing: brackets and braces outside strings."""
    codes = np.frombuffer(_JSON_STRING.sub(b'""', data), dtype=np.uint8)
    opens = (codes == ord("[")) | (codes == ord("{"))
    closes = (codes == ord("]")) | (codes == ord("}"))
    return int(np.cumsum(opens.astype(np.int64) - closes).max(initial=0))


def checked_strokes(strokes, path):
    """The strokes that have points; BadFile if they cannot show a hand or break a limit."""
    strokes = [s for s in strokes if len(s)]
    if not strokes:
        raise BadFile(f"{path}: holds no pen strokes")
    try:
        check_point_count(sum(len(s) for s in strokes))
        check_coordinates(np.concatenate([s[:, :2] for s in strokes]))
    except BadFile as e:
        raise BadFile(f"{path}: {e}") from None
    if not any(np.any(np.diff(s, axis=0)) for s in strokes):
        raise BadFile(f"{path}: no stroke moves the pen (a prime needs strokes of two or more "
                      "distinct points)")
    return strokes


_POINT = re.compile(rb'<Point x="(-?\d+(?:\.\d*)?)" y="(-?\d+(?:\.\d*)?)" time="(-?\d+(?:\.\d*)?)"')


def parse_stroke_xml(data):
    """XML bytes of one line -> list of strokes, each a float64 (n, 3) array of [x, y, time].

    The files are machine-written with a fixed attribute order, so a regular expression reads
    them ~3x faster than an XML parser. Whenever the fast path's counts do not add up (another
    attribute order, a damaged file) the file goes through ElementTree, which either reads
    it or says what is wrong (BadFile).
    """
    points = _POINT.findall(data)
    chunks = data.split(b"</Stroke>")  # chunk i ends with stroke i; the last is the file's tail
    counts = [chunk.count(b"<Point ") for chunk in chunks]
    if (len(points) == sum(counts) and counts[-1] == 0
            and len(chunks) - 1 == data.count(b"<Stroke ") + data.count(b"<Stroke>")
            and data.rstrip().endswith(b"</WhiteboardCaptureSession>")):
        counts = counts[:-1]
        values = np.array(points, dtype=np.float64).reshape(-1, 3)
        return [s for s in np.split(values, np.cumsum(counts)[:-1]) if len(s)]
    return _parse_stroke_xml_slow(data)


def _parse_stroke_xml_slow(data):
    try:
        root = ET.fromstring(data)
    except ET.ParseError as e:
        raise BadFile(f"malformed XML ({e})") from None
    strokes = []
    for stroke in root.iter("Stroke"):
        try:
            rows = [(float(p.attrib["x"]), float(p.attrib["y"]), float(p.attrib["time"]))
                    for p in stroke.iter("Point")]
        except (KeyError, ValueError) as e:
            raise BadFile(f"a <Point> lacks a numeric x, y or time ({e})") from None
        if rows:
            strokes.append(np.array(rows, dtype=np.float64))
    return strokes


# ----------------------------------------------------------------------------- strokes.npy

class _ArraysOnly(pickle.Unpickler):
    """Unpickles numpy arrays and nothing else: np.load(allow_pickle=True) would run any call that
    a crafted file names."""
    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"it asks to run {module}.{name}; only numpy arrays are accepted")
        return super().find_class(module, name)


def load_object_npy(path):
    """An object array from a .npy file (the circulated strokes.npy, pickled by Python 2), safely."""
    with open_regular_file(path, MAX_NPY_BYTES) as f:
        version = np.lib.format.read_magic(f)
        read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                       (2, 0): np.lib.format.read_array_header_2_0}.get(version)
        if read_header is None:
            raise ValueError(f".npy format version {version} is not supported")
        _, _, dtype = read_header(f)
        if dtype != object:
            f.seek(0)
            return np.lib.format.read_array(f, allow_pickle=False)
        return _ArraysOnly(f, encoding="latin1").load()


def strokes_npy_line(sequence):
    """One sequence of the circulated strokes.npy (rows [end_of_stroke, dx, dy], y down, row 0 a
    position, not a step) as raw offsets: float32 (T, 3), y up, row 0 the zero offset. BadFile
    when it is no (T, 3) array."""
    sequence = np.asarray(sequence, dtype=np.float64) if np.ndim(sequence) else np.zeros((0, 3))
    if sequence.ndim != 2 or sequence.shape[1] != 3:
        raise BadFile(f"has shape {sequence.shape}, not (T, 3)")
    check_point_count(len(sequence))
    check_coordinates(sequence[:, 1:])
    offsets = sequence.astype(np.float32)
    offsets[:, 0] = offsets[:, 0] > 0.5
    offsets[:, 2] *= -1.0
    if len(offsets):
        offsets[0, 1:] = 0.0
    return offsets
