"""Turn the IAM On-Line Handwriting Database into training arrays: data/train.npz, data/validation.npz.

    python data_preprocessing.py                        # reads data/, writes data/
    python data_preprocessing.py --data_dir ../shared/iam-ondb --out_dir data
    python data_preprocessing.py --strokes strokes.npy --sentences sentences.txt
    python data_preprocessing.py --ink_dir my_lines --like save/synthesis.pt --out_dir data/mine  # your own hand

Inputs (in --data_dir): lineStrokes-all.tar.gz and ascii-all.tar.gz (read straight from the
archives, or from the extracted lineStrokes/ and ascii/ folders) and the task split files
trainset.txt, testset_v.txt, testset_t.txt, testset_f.txt. Register at
https://fki.tic.heia-fr.ch/databases/iam-on-line-handwriting-database to download them.
Alternatively the widely circulated pre-processed pair strokes.npy + sentences.txt.

What comes out (format in dataset.HandwritingData): one line of handwriting = float32 rows
[end_of_stroke, dx, dy]. Choices made here, each measured on the 11,842 lines of IAM-OnDB:

* Offsets. Row t holds point[t] - point[t-1]; row 0 holds [0, 0] (the line's first point is
  the origin), so a line of T points gives T rows and the pen-up jumps between strokes are
  ordinary rows. end_of_stroke is 1 on the last point of every stroke. y is negated: IAM's y
  grows downwards, ours upwards.
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
  shifted back by it; a glitch that jumps away and back thus cancels. Pen-up jumps between strokes are
  never removed: crossing a t or dotting an i may span the whole line.
* Repeated points. 1.45% of the in-stroke steps (96,910 in the training lines) have length 0:
  the tablet reported the pen where it already was. They are removed, as glitches are. Kept,
  they teach the network that a resting pen goes on resting, and sampling with a bias (Graves
  section 5.2), which narrows every Gaussian, falls into that state and stays: the pen stands
  while the window crawls, and the line runs to the step cap. A model trained 8 epochs on data
  with them stalled in 9 of 24 validation texts at bias 1; 40 further steps on data without
  them, 0 of 24. Primes and your own lines lose theirs the same way.
* Lines are dropped when empty, shorter than MIN_POINTS points (a line of IAM-OnDB has
  at least 31), without a transcription, or when their form's transcription has fewer CSR
  lines than the form has stroke files (the k-th line pairing can no longer be trusted).
* Normalisation: dx and dy become (value - mean) / std with the mean and standard deviation
  of all training rows (row 0 and pen-up jumps included); both files store those statistics.
* Texts: the CSR lines are untokenised (see `untokenise`) and encoded with dataset.encode_text.
* Split (default "graves", Graves section 4.2): training = trainset + testset_t + testset_f,
  validation = testset_v. "official": training = trainset, validation = testset_v.
"""
import argparse
import json
import os
import pickle
import re
import sys
import tarfile
import time
import xml.etree.ElementTree as ET
import zlib
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

import arguments
import dataset
import utils

DATABASE_URL = "https://fki.tic.heia-fr.ch/databases/iam-on-line-handwriting-database"
STROKE_ARCHIVE, STROKE_FOLDER = "lineStrokes-all.tar.gz", "lineStrokes"
ASCII_ARCHIVE, ASCII_FOLDER = "ascii-all.tar.gz", "ascii"
SPLIT_FILES = ("trainset.txt", "testset_v.txt", "testset_t.txt", "testset_f.txt")
SPLITS = {  # split name -> which split files make up training and validation
    "graves": {"train": ("trainset.txt", "testset_t.txt", "testset_f.txt"), "validation": ("testset_v.txt",)},
    "official": {"train": ("trainset.txt",), "validation": ("testset_v.txt",)},
}

SAMPLE_INTERVAL = 0.015       # seconds between pen readings
MAX_INTERPOLATED_GAP = 0.2    # seconds; a longer gap is a pause, not lost readings
MAX_STEP = 300.0              # raw units; a longer in-stroke step is a glitch
MIN_POINTS = 10               # a line with fewer points cannot hold a written word
MAX_STEP_RATIO = 1000.0       # a pen movement this many times the line's median step is a glitch
TRANSCRIPTION_PLACEHOLDER = "Please Enter Transcription here"


class PreprocessingError(Exception):
    """A problem that stops preprocessing (missing or unreadable required input)."""


class BadFile(ValueError):
    """A single input file that cannot be used; it is skipped and counted."""


# ----------------------------------------------------------------------------- entry point

def preprocess(data_dir="data", out_dir="data", split="graves", strokes=None, sentences=None,
               validation_fraction=0.05, verbose=True, ink_dir=None, like=None):
    """Read the raw data in `data_dir`, write train.npz and validation.npz to `out_dir`.

    With ink_dir, the lines are your own (read_ink_dir). With `like` (required with ink_dir), the
    arrays get that checkpoint's alphabet and normalisation, so that it can be trained on with them.
    Returns a Summary (counts, drop reasons, statistics). Raises PreprocessingError,
    leaving any existing outputs untouched and no partial files, when it cannot finish.
    """
    start = time.perf_counter()
    if ink_dir is not None and like is None:
        raise PreprocessingError("--ink_dir needs --like CHECKPOINT: the model whose alphabet and "
                                 "normalisation the lines are made for (e.g. save/synthesis.pt)")
    if ink_dir is not None:
        inputs = {"ink_dir": ink_dir, "names": ink_files(ink_dir)}
    elif strokes is None and sentences is None:
        inputs = find_inputs(data_dir)
    else:
        if strokes is None or sentences is None:
            raise PreprocessingError("--strokes and --sentences must be given together.")
        inputs = {"strokes_npy": strokes, "sentences": sentences}
    normalisation = checkpoint_normalisation(like) if like is not None else None
    if "ink_dir" in inputs:
        lines, summary = read_ink_dir(ink_dir, inputs["names"], normalisation[2], validation_fraction)
    elif "strokes_npy" in inputs:
        lines, summary = read_strokes_npy(inputs["strokes_npy"], inputs["sentences"], validation_fraction)
    else:
        lines, summary = read_iam(inputs, split)
    own_split = "ink_dir" in inputs or "strokes_npy" in inputs  # no split files: the last lines validate
    summary.split = f"last {validation_fraction:.0%} as validation" if own_split else split

    train, validation = build_splits(lines, summary, normalisation)
    summary.seconds_before_saving = time.perf_counter() - start
    # Both outputs appear together or not at all: each is written to a temporary file and the
    # two are renamed only after both writes succeeded.
    with utils.atomic_path(os.path.join(out_dir, "train.npz")) as train_tmp, \
            utils.atomic_path(os.path.join(out_dir, "validation.npz")) as validation_tmp:
        dataset.save_data(train_tmp, train)
        dataset.save_data(validation_tmp, validation)
    summary.seconds = time.perf_counter() - start
    summary.out_dir = os.path.abspath(out_dir)
    if verbose:
        print(format_summary(summary))
    return summary


def find_inputs(data_dir):
    """Locate the IAM-OnDB files (archive or extracted folder) or the strokes.npy pair."""
    def either(archive, folder):
        for name in (archive, folder):
            if os.path.exists(os.path.join(data_dir, name)):
                return os.path.join(data_dir, name)
        return None

    found = {"strokes": either(STROKE_ARCHIVE, STROKE_FOLDER), "ascii": either(ASCII_ARCHIVE, ASCII_FOLDER)}
    found.update({name: os.path.join(data_dir, name) for name in SPLIT_FILES
                  if os.path.exists(os.path.join(data_dir, name))})
    if not any(found.values()):
        npy, txt = os.path.join(data_dir, "strokes.npy"), os.path.join(data_dir, "sentences.txt")
        if os.path.exists(npy) and os.path.exists(txt):
            return {"strokes_npy": npy, "sentences": txt}
    missing = [f"{a} (or the extracted folder {f}/)" for key, a, f in
               (("strokes", STROKE_ARCHIVE, STROKE_FOLDER), ("ascii", ASCII_ARCHIVE, ASCII_FOLDER))
               if not found[key]]
    missing += [name for name in SPLIT_FILES if name not in found]
    if missing:
        raise PreprocessingError(
            f"Missing input in {os.path.abspath(data_dir)}: {', '.join(missing)}.\n"
            f"Needed: {STROKE_ARCHIVE} and {ASCII_ARCHIVE} (or their extracted folders "
            f"{STROKE_FOLDER}/ and {ASCII_FOLDER}/) and the task split files {', '.join(SPLIT_FILES)}.\n"
            "They are the IAM On-Line Handwriting Database (IAM-OnDB) of the University of Bern, "
            f"free for non-commercial research after registering at {DATABASE_URL}.\n"
            f"Put them in {os.path.abspath(data_dir)} (or pass --data_dir), or put the pre-processed "
            "pair strokes.npy + sentences.txt there instead.")
    return found


# ----------------------------------------------------------------------------- IAM-OnDB

def read_iam(inputs, split):
    """All usable lines of the IAM-OnDB as dicts {line_id, split, offsets (raw), text}, and a Summary."""
    summary = Summary()
    form_split, split_forms = assign_splits({name: inputs[name] for name in SPLIT_FILES}, split)
    transcriptions = read_transcriptions(inputs["ascii"], summary)
    lines, max_line = read_stroke_files(inputs["strokes"], form_split, transcriptions, summary)
    kept = paired_lines(lines, max_line, transcriptions, form_split, summary)
    for name in SPLIT_FILES:
        missing = [form for form in split_forms[name] if form not in max_line]
        if missing:
            summary.missing_forms[name] = len(missing)
    return kept, summary


def read_stroke_files(stroke_files, form_split, transcriptions, summary):
    """The lines of the forms in a split, cleaned and paired with their text (None where the form's
    transcription has no line k), and each form's highest line number k (form -> k)."""
    lines, max_line = [], defaultdict(int)
    for line_id, data in iter_stroke_files(stroke_files):
        match = re.fullmatch(r"(.+)-(\d+)", line_id)
        if match is None:
            summary.warn(f"{line_id}.xml: file name is not <form>-<line number>.xml; skipped")
            continue
        form, k = match.group(1), int(match.group(2))
        max_line[form] = max(max_line[form], k)
        which = form_split.get(form)
        if which is None:
            summary.lines_in_no_split += 1
            summary.forms_in_no_split.add(form)
            continue
        if which == "unused":
            summary.lines_unused_split += 1
            continue
        tic = time.perf_counter()
        try:
            strokes = parse_stroke_xml(data)
        except BadFile as e:
            summary.drop("malformed XML", which)
            summary.warn(f"{line_id}.xml: {e}; skipped")
            continue
        finally:
            summary.parse_seconds += time.perf_counter() - tic
        form_lines = transcriptions.get(form)
        text = form_lines[k - 1] if form_lines is not None and 0 < k <= len(form_lines) else None
        lines.append({"line_id": line_id, "form": form, "split": which, "offsets": clean_line(strokes, summary),
                      "text": text})
    return lines, max_line


def paired_lines(lines, max_line, transcriptions, form_split, summary):
    """The lines that can be trusted: paired with their transcription line, and usable (check_line).

    A form whose transcription has fewer CSR lines than stroke files cannot be paired line by
    line with confidence (a skipped line shifts all later ones): all its lines are dropped.
    """
    short_forms = {form for form, n in max_line.items()
                   if transcriptions.get(form) and n > len(transcriptions[form])}
    for form in sorted(short_forms):
        if form_split.get(form) in ("train", "validation"):
            summary.warn(f"{form}.txt: {len(transcriptions[form])} CSR lines but stroke files up to "
                         f"line {max_line[form]}; all lines of {form} skipped")
    kept, untranscribed = [], Counter()
    for line in lines:
        if line["form"] in short_forms:
            reason = "transcription shorter than strokes"
        elif line["text"] is None:
            reason = "missing transcription"
            untranscribed[line["form"]] += 1
        else:
            reason = check_line(line["offsets"], line["text"])
        if reason:
            summary.drop(reason, line["split"])
        else:
            kept.append(line)
    for form, n in sorted(untranscribed.items()):
        summary.warn(f"{form}: no CSR line for {n} stroke file(s) (no {form}.txt, or no transcription "
                     "in it); skipped")
    return kept


def read_split_file(path):
    """Form ids listed in a split file (one per line, leading spaces stripped)."""
    try:
        with open(path, encoding="ascii") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise PreprocessingError(f"Cannot read split file {path}: {e}") from None
    forms = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9-]*", line):
            raise PreprocessingError(f"Split file {path}, line {number}: {line[:40]!r} is not a form id "
                                     "(expected one id such as a01-000u per line)")
        forms.append(line)
    return forms


def assign_splits(split_paths, split):
    """form -> "train" / "validation" / "unused" (listed by a split file the chosen split leaves out)."""
    if split not in SPLITS:
        raise PreprocessingError(f"Unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    split_forms = {name: read_split_file(path) for name, path in split_paths.items()}
    role = {name: which for which, names in SPLITS[split].items() for name in names}
    form_split, listed_in = {}, {}
    for name, forms in split_forms.items():
        for form in forms:
            if form in listed_in and listed_in[form] != name:
                raise PreprocessingError(f"Form {form} is listed in both {listed_in[form]} and {name}")
            listed_in[form] = name
            form_split[form] = role.get(name, "unused")
    return form_split, split_forms


def iter_stroke_files(path):
    """Yield (line id, XML bytes) for every stroke file, streaming through the archive."""
    if os.path.isdir(path):
        for root, dirs, files in os.walk(path):
            dirs.sort()
            for name in sorted(files):
                if name.endswith(".xml"):
                    with open(os.path.join(root, name), "rb") as f:
                        yield name[:-4], f.read()
        return
    for name, data in iter_archive(path, ".xml"):
        yield os.path.basename(name)[:-4], data


def iter_archive(path, suffix):
    """Yield (member name, bytes) of the archive's files ending in `suffix`, in stream mode."""
    count = 0
    try:
        with tarfile.open(path, "r|*") as archive:
            for member in archive:
                if member.isfile() and member.name.endswith(suffix):
                    data = archive.extractfile(member).read()
                    count += 1
                    yield member.name, data
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        # A truncated archive would silently lose part of the data set: stop instead.
        raise PreprocessingError(
            f"{path} is truncated or corrupt (read {count} files, then: {e}). "
            f"Download it again from {DATABASE_URL}") from None


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


def read_transcriptions(path, summary=None):
    """form id -> list of untokenised CSR lines; a form without a usable CSR section is absent."""
    if os.path.isdir(path):
        def files():
            for root, dirs, names in os.walk(path):
                for name in names:
                    if name.endswith(".txt"):
                        with open(os.path.join(root, name), "rb") as f:
                            yield name, f.read()
        source = files()
    else:
        source = iter_archive(path, ".txt")
    transcriptions = {}
    for name, data in source:
        form = os.path.basename(name)[:-4]
        csr = csr_lines(data.decode("latin-1"))  # latin-1 decodes any byte: no file is lost to it
        if csr is None:
            if summary is not None:
                summary.warn(f"{name}: no 'CSR:' section; its lines count as missing transcription")
            continue
        if csr:
            transcriptions[form] = untokenise_lines(csr)
    return transcriptions


def csr_lines(text):
    """The non-empty lines after 'CSR:' (None when there is no CSR section; [] for a placeholder)."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.strip() == "CSR:":
            body = [l.strip() for l in lines[i + 1:] if l.strip()]
            return [] if body == [TRANSCRIPTION_PLACEHOLDER] else body
    return None


# ----------------------------------------------------------------------------- text

_CLOSERS = set(".,;:?!)]")
_PUNCTUATION = _CLOSERS | set("([\"'")
_CLITICS = {"s", "t", "d", "m", "ll", "re", "ve"}  # what follows the apostrophe in it's, don't, I'd ...


def untokenise(text):
    """Undo the CSR tokenisation of one line so it reads as written.

    `Mr . Foot ' s line , ( he said ) " Abolish Lords " .` -> `Mr. Foot's line, (he said) "Abolish Lords".`

    Rules, applied to whitespace-separated tokens (a token made only of punctuation is first
    split into single marks, keeping runs such as `...` together):
      * `. , ; : ? ! ) ]` attach to the token before; `( [` to the token after.
      * `n't 's 'd 'm 'll 're 've` attach to the token before (`do n't` -> `don't`).
      * a lone `'` followed by s, t, d, m, ll, re or ve joins both neighbours (`it ' s` -> `it's`).
      * a lone `"` alternates between opening (attach after) and closing (attach before); the
        count carries over all the quotes of the text, attached ones included. Two cases
        override the count: a lone `"` starting a line opens, and one ending a line after
        . , ; : ? or ! closes (transcriptions open each quoted paragraph anew).
      * a lone `'` that is no apostrophe alternates the same way, except after a word ending in
        s and before a lower-case word, where it is a plural possessive (`neutrals ' conference`).
    Everything else (hyphens, `#`, words) keeps its spacing. The CSR is not always tokenised,
    and already written text passes through unchanged.
    """
    return _untokenise(text, [False, False])


def untokenise_lines(lines):
    """untokenise() every line of a form, carrying open quotes from one line to the next."""
    state = [False, False]
    return [_untokenise(line, state) for line in lines]


def _untokenise(text, state):
    """state = [double quote open, single quote open], updated in place."""
    tokens = _split_marks(text.split())
    glue_left, glue_right = [False] * len(tokens), [False] * len(tokens)
    for i, token in enumerate(tokens):
        after = tokens[i + 1] if i + 1 < len(tokens) else ""
        before = tokens[i - 1] if i > 0 else ""
        if token[0] in _CLOSERS and set(token) <= _CLOSERS:
            glue_left[i] = True
        elif token in ("(", "["):
            glue_right[i] = True
        elif token == '"':
            if i == 0:  # a quote opening a line opens (also a new quoted paragraph's)
                state[0] = False
            elif i == len(tokens) - 1 and before[-1] in ".,;:?!":
                state[0] = True
            glue_right[i], glue_left[i] = not state[0], state[0]
            state[0] = not state[0]
        elif token == "'":
            if after.lower() in _CLITICS:
                glue_left[i] = glue_right[i] = True
            elif state[1]:
                glue_left[i], state[1] = True, False
            elif before[-1:] in ("s", "S") and after[:1].islower():
                glue_left[i] = True
            else:
                glue_right[i], state[1] = True, True
        elif token.lower() in ("n't", "'s", "'t", "'d", "'m", "'ll", "'re", "'ve"):
            glue_left[i] = True
        else:
            if token.count('"') % 2:
                state[0] = not state[0]
            if token[0] == "'" and token[1:2].isalpha():
                state[1] = True
            elif token[-1] == "'" and len(token) > 1:
                state[1] = False
    out = tokens[:1]
    for i in range(1, len(tokens)):
        if not (glue_right[i - 1] or glue_left[i]):
            out.append(" ")
        out.append(tokens[i])
    return "".join(out)


def _split_marks(tokens):
    """Split tokens made only of punctuation into single marks (runs like `...` stay whole)."""
    out = []
    for token in tokens:
        if set(token) <= _PUNCTUATION:
            out += [m.group() for m in re.finditer(r"([.,;:?!])\1*|.", token)]
        else:
            out.append(token)
    return out


# ----------------------------------------------------------------------------- strokes

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


def clean_line(strokes, summary=None):
    """Parsed strokes of one line -> raw offsets: interpolate lost readings, drop glitch steps."""
    if not strokes:
        return np.zeros((0, 3), dtype=np.float32)
    # One array for the whole line (with each point's stroke number) keeps this vectorised.
    points = np.concatenate(strokes)[:, :3]
    number = np.repeat(np.arange(len(strokes), dtype=np.float64), [len(s) for s in strokes])
    filled = interpolate_missing(np.column_stack([points, number]))
    stroke_ends = np.append(np.flatnonzero(np.diff(filled[:, 3])), len(filled) - 1)
    offsets, removed = remove_implausible_steps(_offsets(filled, stroke_ends))
    offsets, repeated = remove_repeated_points(offsets)
    if summary is not None:
        summary.points_interpolated += len(filled) - len(points)
        summary.steps_removed += removed
        summary.repeated_points_removed += repeated
    return offsets


def check_line(offsets, text):
    """The reason to drop a line, or None to keep it."""
    if len(offsets) == 0:
        return "empty"
    if len(offsets) < MIN_POINTS:
        return f"fewer than {MIN_POINTS} points"
    if not np.isfinite(offsets).all():
        return "non-finite coordinates"  # one NaN would turn every statistic, and so every line, into NaN
    # A glitch (a reading of 1e9, say) would inflate the normalisation for all lines. Real lines'
    # longest movement, pen-up jumps included, is at most 270 times their median step.
    steps = np.hypot(offsets[1:, 1], offsets[1:, 2])
    if steps.max() > MAX_STEP_RATIO * max(np.median(steps), 1e-6):
        return f"a pen movement over {MAX_STEP_RATIO:g} times the median step"
    if not text.strip():
        return "missing transcription"
    return None


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
    with open(path, "rb") as f:
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


def read_strokes_npy(strokes_path, sentences_path, validation_fraction=0.05):
    """The pre-processed pair: strokes.npy (object array of raw (T, 3) [eos, dx, dy], y downwards)
    and sentences.txt (one text per sequence). The last `validation_fraction` is validation.

    Row 0 is set to [eos, 0, 0] as for IAM input; in-stroke steps over MAX_STEP are removed.
    Texts are used as they are (they are not CSR-tokenised). No time stamps: no interpolation.
    """
    summary = Summary()
    for path in (strokes_path, sentences_path):
        if not os.path.exists(path):
            raise PreprocessingError(f"{path} does not exist (--strokes and --sentences name the "
                                     "pre-processed pair strokes.npy + sentences.txt)")
    try:
        sequences = load_object_npy(strokes_path)
    except pickle.UnpicklingError as e:
        raise PreprocessingError(f"{strokes_path} was not read: {e}") from None
    except Exception as e:
        raise PreprocessingError(f"Cannot read {strokes_path}: {e}") from None
    try:
        with open(sentences_path, encoding="utf-8", errors="replace") as f:
            texts = f.read().splitlines()
    except OSError as e:
        raise PreprocessingError(f"Cannot read {sentences_path}: {e}") from None
    if len(texts) != len(sequences):
        raise PreprocessingError(f"{strokes_path} holds {len(sequences)} sequences but {sentences_path} "
                                 f"{len(texts)} lines; they must pair one to one")
    if not 0 <= validation_fraction < 1:
        raise PreprocessingError("--validation_fraction must lie in [0, 1)")
    n_validation = int(round(len(sequences) * validation_fraction))
    lines = []
    for i, (sequence, text) in enumerate(zip(sequences, texts)):
        which = "train" if i < len(sequences) - n_validation else "validation"
        sequence = np.asarray(sequence, dtype=np.float64) if np.ndim(sequence) else np.zeros((0, 3))
        if sequence.ndim != 2 or sequence.shape[1] != 3:
            summary.drop("malformed sequence", which)
            summary.warn(f"{strokes_path}: sequence {i} has shape {sequence.shape}, not (T, 3); skipped")
            continue
        offsets = sequence.astype(np.float32)
        offsets[:, 0] = offsets[:, 0] > 0.5
        offsets[:, 2] *= -1.0
        if len(offsets):
            offsets[0, 1:] = 0.0
        offsets, removed = remove_implausible_steps(offsets)
        offsets, repeated = remove_repeated_points(offsets)
        summary.steps_removed += removed
        summary.repeated_points_removed += repeated
        reason = check_line(offsets, text)
        if reason:
            summary.drop(reason, which)
            continue
        lines.append({"line_id": f"strokes-{i:05d}", "split": which, "offsets": offsets, "text": text.strip()})
    return lines, summary


# ----------------------------------------------------------------------------- one line of ink (your own)
#
# A line written elsewhere (draw.html's JSON, a tablet's InkML, an IAM-OnDB stroke file) for style
# priming (generate.py --prime) or for fine-tuning (--ink_dir). Its units are anyone's: it is
# rescaled so that its pen moves at IAM-OnDB's pace.

# IAM-OnDB's median in-stroke step (17.9 raw units over the 10,379 training lines) in units of its
# offset_std, geometric mean of x and y (41.3 and 36.5): a prime is scaled to this step length.
MEDIAN_STEP_PER_STD = 0.46


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
    """Strokes and text of a JSON prime: {"text": "...", "strokes": [[[x, y], ...], ...]}, y down, any units."""
    try:
        document = json.loads(data)
    except ValueError as e:  # bad JSON or bad UTF-8
        raise BadFile(f"{path}: not JSON ({e})") from None
    if not isinstance(document, dict) or not isinstance(document.get("strokes"), list):
        raise BadFile(f'{path}: expected {{"text": "...", "strokes": [[[x, y], ...], ...]}}')
    strokes = []
    for number, stroke in enumerate(document["strokes"]):
        try:
            points = np.array(stroke, dtype=np.float64)
        except (TypeError, ValueError):
            points = None
        if points is None or points.ndim != 2 or points.shape[1] < 2:
            raise BadFile(f"{path}: stroke {number + 1} is not a list of [x, y] points")
        strokes.append(points[:, :2])
    text = document.get("text")
    if text is not None and not isinstance(text, str):
        raise BadFile(f'{path}: "text" is not a string')
    return strokes, text


def checked_strokes(strokes, path):
    """The strokes that have points; BadFile if they cannot show a hand."""
    strokes = [s for s in strokes if len(s)]
    if not strokes:
        raise BadFile(f"{path}: holds no pen strokes")
    if not all(np.isfinite(s).all() for s in strokes):
        raise BadFile(f"{path}: a coordinate is not a finite number")
    if not any(np.any(np.diff(s, axis=0)) for s in strokes):
        raise BadFile(f"{path}: no stroke moves the pen (a prime needs strokes of two or more "
                         "distinct points)")
    return strokes


def read_ink_file(path):
    """One line of ink from an IAM-OnDB line XML, an InkML or a JSON file (by extension, then root
    element): (offsets (T, 3) float64 in the file's units, y up; its text or None). BadFile, naming
    the file and what is wrong, when it cannot be used."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise BadFile(f"{path}: {e.strerror}") from None
    strokes, text = (json_strokes if os.fspath(path).lower().endswith(".json") else xml_strokes)(data, path)
    return points_to_offsets(checked_strokes(strokes, path)).astype(np.float64), text


def in_stroke_steps(offsets):
    """Lengths of the steps the pen takes while down: the rows after a row that did not end a stroke."""
    pen_down = pen_down_rows(offsets)
    return np.hypot(offsets[pen_down, 1], offsets[pen_down, 2])


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


def ink_files(folder):
    """The .json, .inkml and .xml files in `folder`, by name; at least two (one line to validate on)."""
    if not os.path.isdir(folder):
        raise PreprocessingError(f"--ink_dir {folder} is not a folder")
    names = sorted(n for n in os.listdir(folder) if n.lower().endswith((".json", ".inkml", ".xml")))
    if len(names) < 2:
        raise PreprocessingError(f"--ink_dir {folder}: {len(names)} .json, .inkml or .xml file(s); at least "
                                 "two lines are needed, one to train on and one to validate on (draw.html writes them)")
    return names


def read_ink_dir(folder, names, offset_std, validation_fraction=0.05):
    """Your own lines for fine-tuning: the files `names` in `folder`, one line each with its text
    (JSON's "text", InkML's transcription, or for IAM-OnDB XML a .txt file of the same name). Each is
    rescaled to the pace of data normalised with offset_std and ends with the pen lifted. The last
    validation_fraction of the files (at least one) is validation."""
    n_validation = max(1, int(round(len(names) * validation_fraction)))
    summary, lines, pace = Summary(), [], median_step(offset_std)
    for i, name in enumerate(names):
        which = "train" if i < len(names) - n_validation else "validation"
        path = os.path.join(folder, name)
        try:
            offsets, text = read_ink_file(path)
            if text is None and os.path.exists(os.path.splitext(path)[0] + ".txt"):
                with open(os.path.splitext(path)[0] + ".txt", encoding="utf-8") as f:
                    text = f.read().strip()
        except (BadFile, OSError, UnicodeDecodeError) as e:
            summary.drop("unreadable file", which)
            summary.warn(f"{e}; skipped")
            continue
        offsets, repeated = remove_repeated_points(offsets)
        summary.repeated_points_removed += repeated
        offsets = rescale_to_pace(offsets, pace)
        offsets[-1, 0] = 1.0  # every line of the data ends with the pen lifted
        reason = check_line(offsets, text or "")
        if reason:
            summary.drop(reason, which)
            summary.warn(f"{path}: {reason}; skipped")
            continue
        lines.append({"line_id": os.path.splitext(name)[0], "split": which,
                      "offsets": offsets.astype(np.float32), "text": text.strip()})
    return lines, summary


def checkpoint_normalisation(path):
    """(alphabet, offset_mean, offset_std) of a checkpoint: what a fine-tuning split must use."""
    import checkpoint  # torch is needed only here

    try:
        saved = checkpoint.load(path)
    except (FileNotFoundError, checkpoint.CheckpointError) as e:
        raise PreprocessingError(f"--like: {e}") from None
    return (saved["alphabet"], np.asarray(saved["offset_mean"], dtype=np.float64),
            np.asarray(saved["offset_std"], dtype=np.float64))


# ----------------------------------------------------------------------------- output

def offset_stats(offsets):
    """Mean and standard deviation (float64, raw units) of dx, dy over a list of (T, 3) arrays."""
    values = np.concatenate([o[:, 1:] for o in offsets]).astype(np.float64)
    return values.mean(axis=0), values.std(axis=0)


def normalise(offsets, mean, std):
    out = offsets.astype(np.float32).copy()
    out[:, 1:] = (out[:, 1:] - mean) / std
    return out


def build_splits(lines, summary, normalisation=None):
    """Raw lines -> (train, validation) HandwritingData, normalised with training statistics, or
    with normalisation = (alphabet, mean, std) when given (a checkpoint's, for fine-tuning)."""
    by_split = {"train": [l for l in lines if l["split"] == "train"],
                "validation": [l for l in lines if l["split"] == "validation"]}
    if not by_split["train"]:
        raise PreprocessingError("No usable training line was found; nothing written. " + (
            "Problems: " + "; ".join(summary.warnings[:5]) if summary.warnings else ""))
    if normalisation is None:
        alphabet = dataset.ALPHABET
        mean, std = offset_stats([l["offsets"] for l in by_split["train"]])
    else:
        alphabet, mean, std = normalisation
    summary.offset_mean, summary.offset_std = mean, std
    characters, unknown = Counter(), Counter()
    result = []
    for which in ("train", "validation"):
        group = by_split[which]
        for line in group:
            characters.update(line["text"])
            unknown.update(ch for ch in line["text"] if ch not in alphabet)
        result.append(dataset.HandwritingData(
            offsets=[normalise(l["offsets"], mean, std) for l in group],
            text_codes=[dataset.encode_text(l["text"], alphabet) for l in group],
            texts=[l["text"] for l in group],
            line_ids=[l["line_id"] for l in group],
            alphabet=alphabet,
            offset_mean=mean.astype(np.float32),
            offset_std=std.astype(np.float32)))
        lengths = np.array([len(l["offsets"]) for l in group])
        summary.lines[which] = len(group)
        summary.points[which] = (int(lengths.min()), float(np.median(lengths)), int(lengths.max()),
                                    int(lengths.sum())) if len(group) else (0, 0.0, 0, 0)
    summary.characters, summary.unknown_characters = characters, unknown
    return result[0], result[1]


@dataclass
class Summary:
    """What preprocessing read, kept and dropped, and why; format_summary prints it."""
    lines: dict = field(default_factory=dict)    # split -> lines kept
    points: dict = field(default_factory=dict)   # split -> (min, median, max, total) points per line
    dropped: Counter = field(default_factory=Counter)  # reason -> lines dropped
    dropped_by_split: defaultdict = field(default_factory=lambda: defaultdict(Counter))
    missing_forms: dict = field(default_factory=dict)  # split file -> forms it names that the data lacks
    lines_in_no_split: int = 0
    forms_in_no_split: set = field(default_factory=set)
    lines_unused_split: int = 0                  # lines of split files the chosen split leaves out
    points_interpolated: int = 0
    steps_removed: int = 0
    repeated_points_removed: int = 0
    warnings: list = field(default_factory=list)
    # known once the splits are built and written
    split: str = ""
    offset_mean: Optional[np.ndarray] = None
    offset_std: Optional[np.ndarray] = None
    characters: Counter = field(default_factory=Counter)
    unknown_characters: Counter = field(default_factory=Counter)
    parse_seconds: float = 0.0
    seconds_before_saving: float = 0.0
    seconds: float = 0.0
    out_dir: str = ""

    def drop(self, reason, which):
        self.dropped[reason] += 1
        self.dropped_by_split[which][reason] += 1

    def warn(self, message):
        self.warnings.append(message)


def format_summary(s):
    out = [f"Preprocessed in {s.seconds:.1f} s (XML parsing {s.parse_seconds:.1f} s), "
           f"split: {s.split}; wrote {s.out_dir}/train.npz and validation.npz"]
    for which in ("train", "validation"):
        lo, median, hi, total = s.points[which]
        dropped = sum(s.dropped_by_split[which].values())
        out.append(f"  {which:<10} {s.lines[which]:6,d} lines kept, {dropped:,d} dropped; "
                   f"points per line min {lo} / median {median:.0f} / max {hi} ({total:,d} in all)")
    out.append("  dropped: " + (", ".join(f"{r} {n}" for r, n in sorted(s.dropped.items())) or "none"))
    if s.missing_forms:
        out.append("  forms named by a split file but absent from the data (skipped): " +
                   ", ".join(f"{name} {n}" for name, n in s.missing_forms.items()))
    if s.lines_in_no_split:
        out.append(f"  lines in no split (not used): {s.lines_in_no_split} "
                   f"(forms {', '.join(sorted(s.forms_in_no_split))})")
    if s.lines_unused_split:
        out.append(f"  lines of split files this split leaves out: {s.lines_unused_split}")
    out.append(f"  cleaning: {s.points_interpolated:,d} points interpolated, "
               f"{s.steps_removed:,d} implausible steps and {s.repeated_points_removed:,d} "
               "repeated points removed")
    out.append(f"  offset mean (dx, dy) {np.round(s.offset_mean, 3).tolist()}, "
               f"std {np.round(s.offset_std, 3).tolist()} (raw units, training split)")
    chars = s.characters
    common = ", ".join(f"{ch!r} {n}" for ch, n in chars.most_common(8))
    rare = ", ".join(f"{ch!r} {n}" for ch, n in sorted(chars.items(), key=lambda kv: (kv[1], kv[0])) if n <= 10)
    out.append(f"  characters: {len(chars)} distinct; most common {common}")
    out.append(f"  rare (<= 10 uses): {rare or 'none'}")
    unknown = s.unknown_characters
    out.append("  characters outside the alphabet, written as "
               f"{dataset.UNKNOWN_REPLACEMENT!r}: " +
               (", ".join(f"{ch!r} {n}" for ch, n in unknown.most_common()) if unknown else "none"))
    for message in s.warnings:
        out.append(f"  warning: {message}")
    return "\n".join(out)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", default="data", help="where the IAM-OnDB files are (default: data)")
    parser.add_argument("--out_dir", default="data", help="where train.npz and validation.npz go (default: data)")
    parser.add_argument("--split", default="graves", choices=sorted(SPLITS),
                        help="graves: train = trainset+testset_t+testset_f, validation = testset_v; "
                             "official: train = trainset, validation = testset_v")
    parser.add_argument("--strokes", help="pre-processed strokes.npy to use instead of IAM-OnDB")
    parser.add_argument("--sentences", help="the sentences.txt that goes with --strokes")
    parser.add_argument("--validation_fraction", type=arguments.FRACTION, default=0.05,
                        help="with strokes.npy or --ink_dir: the last this fraction of lines is validation")
    parser.add_argument("--ink_dir", help="a folder of your own lines (draw.html's .json, .inkml, IAM-OnDB "
                                          ".xml) to fine-tune on, instead of IAM-OnDB")
    parser.add_argument("--like", metavar="CHECKPOINT",
                        help="make the split with this model's alphabet and normalisation, to train it "
                             "on (e.g. save/synthesis.pt); required with --ink_dir")
    args = arguments.parse(parser, argv)
    try:
        preprocess(args.data_dir, args.out_dir, args.split, args.strokes, args.sentences,
                   args.validation_fraction, ink_dir=args.ink_dir, like=args.like)
    except PreprocessingError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
