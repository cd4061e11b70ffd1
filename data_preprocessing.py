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
[end_of_stroke, dx, dy]. The lines are read and cleaned by ink.py (offsets, lost readings
interpolated, glitch steps and repeated points removed: each rule measured on IAM-OnDB and
described there). Choices made here, for the data set as a whole:

* Lines are dropped when empty, shorter than MIN_POINTS points (a line of IAM-OnDB has
  at least 31), without a transcription, or when their form's transcription has fewer CSR
  lines than the form has stroke files (the k-th line pairing can no longer be trusted).
* Normalisation (dataset.Normalisation): dx and dy become (value - mean) / std with the mean and
  standard deviation of all training rows (row 0 and pen-up jumps included); both files store
  those statistics.
* Texts: the CSR lines are untokenised (see `untokenise`) and encoded with dataset.encode_text.
* Split (default "graves", Graves section 4.2): training = trainset + testset_t + testset_f,
  validation = testset_v. "official": training = trainset, validation = testset_v.
"""
import argparse
import os
import pickle
import re
import sys
import tarfile
import time
import zlib
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

import arguments
import dataset
import ink
import utils

DATABASE_URL = "https://fki.tic.heia-fr.ch/databases/iam-on-line-handwriting-database"
STROKE_ARCHIVE, STROKE_FOLDER = "lineStrokes-all.tar.gz", "lineStrokes"
ASCII_ARCHIVE, ASCII_FOLDER = "ascii-all.tar.gz", "ascii"
SPLIT_FILES = ("trainset.txt", "testset_v.txt", "testset_t.txt", "testset_f.txt")
SPLITS = {  # split name -> which split files make up training and validation
    "graves": {"train": ("trainset.txt", "testset_t.txt", "testset_f.txt"), "validation": ("testset_v.txt",)},
    "official": {"train": ("trainset.txt",), "validation": ("testset_v.txt",)},
}

MIN_POINTS = 10               # a line with fewer points cannot hold a written word
MAX_STEP_RATIO = 1000.0       # a pen movement this many times the line's median step is a glitch
TRANSCRIPTION_PLACEHOLDER = "Please Enter Transcription here"


class PreprocessingError(Exception):
    """A problem that stops preprocessing (missing or unreadable required input)."""


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
    like = checkpoint_normalisation(like) if like is not None else None
    if "ink_dir" in inputs:
        lines, summary = read_ink_dir(ink_dir, inputs["names"], ink.median_step(like[1].std), validation_fraction)
    elif "strokes_npy" in inputs:
        lines, summary = read_strokes_npy(inputs["strokes_npy"], inputs["sentences"], validation_fraction)
    else:
        lines, summary = read_iam(inputs, split)
    own_split = "ink_dir" in inputs or "strokes_npy" in inputs  # no split files: the last lines validate
    summary.split = f"last {validation_fraction:.0%} as validation" if own_split else split

    train, validation = build_splits(lines, summary, like)
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
            strokes = ink.parse_stroke_xml(data)
        except ink.BadFile as e:
            summary.drop("malformed XML", which)
            summary.warn(f"{line_id}.xml: {e}; skipped")
            continue
        finally:
            summary.parse_seconds += time.perf_counter() - tic
        form_lines = transcriptions.get(form)
        text = form_lines[k - 1] if form_lines is not None and 0 < k <= len(form_lines) else None
        lines.append({"line_id": line_id, "form": form, "split": which, "offsets": ink.clean_line(strokes, summary),
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


# ----------------------------------------------------------------------------- lines kept

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

def read_strokes_npy(strokes_path, sentences_path, validation_fraction=0.05):
    """The pre-processed pair: strokes.npy (object array of raw (T, 3) [eos, dx, dy], y downwards)
    and sentences.txt (one text per sequence). The last `validation_fraction` is validation.

    Row 0 is set to [eos, 0, 0] as for IAM input; implausible steps and repeated points are
    removed (ink.clean_offsets). Texts are used as they are (they are not CSR-tokenised). No time stamps: no interpolation.
    """
    summary = Summary()
    for path in (strokes_path, sentences_path):
        if not os.path.exists(path):
            raise PreprocessingError(f"{path} does not exist (--strokes and --sentences name the "
                                     "pre-processed pair strokes.npy + sentences.txt)")
    try:
        sequences = ink.load_object_npy(strokes_path)
    except pickle.UnpicklingError as e:
        raise PreprocessingError(f"{strokes_path} was not read: {e}") from None
    except ink.BadFile as e:
        raise PreprocessingError(str(e)) from None
    except Exception as e:
        raise PreprocessingError(f"Cannot read {strokes_path}: {e}") from None
    try:  # a regular file only: a pipe would block (the bound is ~100 times the real file's size)
        texts = ink.read_regular_file(sentences_path, 64 * 2 ** 20).decode("utf-8", errors="replace").splitlines()
    except ink.BadFile as e:
        raise PreprocessingError(f"Cannot read {e}") from None
    if len(texts) != len(sequences):
        raise PreprocessingError(f"{strokes_path} holds {len(sequences)} sequences but {sentences_path} "
                                 f"{len(texts)} lines; they must pair one to one")
    if not 0 <= validation_fraction < 1:
        raise PreprocessingError("--validation_fraction must lie in [0, 1)")
    n_validation = int(round(len(sequences) * validation_fraction))
    lines = []
    for i, (sequence, text) in enumerate(zip(sequences, texts)):
        which = "train" if i < len(sequences) - n_validation else "validation"
        try:
            offsets = ink.clean_offsets(ink.strokes_npy_line(sequence), summary)
        except ink.BadFile as e:
            summary.drop("malformed sequence", which)
            summary.warn(f"{strokes_path}: sequence {i} {e}; skipped")
            continue
        reason = check_line(offsets, text)
        if reason:
            summary.drop(reason, which)
            continue
        lines.append({"line_id": f"strokes-{i:05d}", "split": which, "offsets": offsets, "text": text.strip()})
    return lines, summary


# ----------------------------------------------------------------------------- your own lines (--ink_dir)

def ink_files(folder):
    """The .json, .inkml and .xml files in `folder`, by name; at least two (one line to validate on)."""
    if not os.path.isdir(folder):
        raise PreprocessingError(f"--ink_dir {folder} is not a folder")
    names = sorted(n for n in os.listdir(folder) if n.lower().endswith((".json", ".inkml", ".xml")))
    if len(names) < 2:
        raise PreprocessingError(f"--ink_dir {folder}: {len(names)} .json, .inkml or .xml file(s); at least "
                                 "two lines are needed, one to train on and one to validate on (draw.html writes them)")
    return names


def read_ink_dir(folder, names, median_step, validation_fraction=0.05):
    """Your own lines for fine-tuning: the files `names` in `folder`, one line each with its text
    (JSON's "text", InkML's transcription, or for IAM-OnDB XML a .txt file of the same name), each
    as the network reads a line of ink (ink.as_read: at the pace median_step, the pen lifted at
    its end). A file that cannot be used (ink.read_ink_file's rules: a regular file, within the
    limits of ink.py, of its format's shape) is skipped and named in the summary; the rest are
    read. The last validation_fraction of the lines read (at least one) is validation, so the
    splits are never empty; fewer than two usable lines stop with what was wrong."""
    summary, lines = Summary(), []
    for name, line_id in zip(names, ink_line_ids(names, summary)):
        path = os.path.join(folder, name)
        try:
            offsets, text = ink.read_ink_file(path)  # its errors name the file
            text = text if text is not None else sidecar_text(os.path.splitext(path)[0] + ".txt")
            try:
                offsets, repeated = ink.as_read(offsets, median_step)
            except ink.BadFile as e:
                raise ink.BadFile(f"{path}: {e}") from None
        except ink.BadFile as e:
            summary.drop("unreadable file", "unsplit")
            summary.warn(f"{e}; skipped")
            continue
        summary.repeated_points_removed += repeated
        reason = check_line(offsets, text or "")
        if reason:
            summary.drop(reason, "unsplit")
            summary.warn(f"{path}: {reason}; skipped")
            continue
        lines.append({"line_id": line_id, "offsets": offsets.astype(np.float32), "text": text.strip()})
    if len(lines) < 2:
        raise PreprocessingError(f"--ink_dir {folder}: {len(lines)} usable line{'' if len(lines) == 1 else 's'} of {len(names)} files; at least two "
                                 "are needed, one to train on and one to validate on. Problems: "
                                 + "; ".join(summary.warnings[:5]))
    n_validation = min(len(lines) - 1, max(1, int(round(len(lines) * validation_fraction))))
    for i, line in enumerate(lines):
        line["split"] = "train" if i < len(lines) - n_validation else "validation"
    return lines, summary


def ink_line_ids(names, summary):
    """A line id per file name: the name without its extension, or, where files of one name come in
    several formats (a.json, a.inkml), the whole name, so that neither takes the other's id."""
    stems = Counter(os.path.splitext(name)[0] for name in names)
    shared = sorted(name for name in names if stems[os.path.splitext(name)[0]] > 1)
    if shared:
        summary.warn(f"files of one name in several formats ({', '.join(shared)}): each is its own line, "
                     "named with its extension; remove the copies if they hold the same line")
    return [name if name in shared else os.path.splitext(name)[0] for name in names]


def sidecar_text(path):
    """The text in the .txt file `path` (beside an IAM-OnDB XML line), or None where there is none."""
    if not os.path.lexists(path):
        return None
    try:
        return ink.read_regular_file(path, ink.MAX_FILE_BYTES).decode("utf-8").strip()
    except UnicodeDecodeError as e:
        raise ink.BadFile(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def checkpoint_normalisation(path):
    """(alphabet, dataset.Normalisation) of a checkpoint: what a fine-tuning split must use."""
    import checkpoint  # the model's code is needed only here

    try:
        saved = checkpoint.load(path)
    except (FileNotFoundError, checkpoint.CheckpointError) as e:
        raise PreprocessingError(f"--like: {e}") from None
    return saved["alphabet"], dataset.Normalisation.of(saved)


# ----------------------------------------------------------------------------- output

def training_normalisation(offsets):
    """The Normalisation of a list of (T, 3) raw lines: the mean and standard deviation (float64)
    of their dx, dy over all rows."""
    values = np.concatenate([o[:, 1:] for o in offsets]).astype(np.float64)
    return dataset.Normalisation(values.mean(axis=0), values.std(axis=0))


def build_splits(lines, summary, like=None):
    """Raw lines -> (train, validation) HandwritingData, normalised with the training lines'
    statistics, or as like = (alphabet, Normalisation) says (a checkpoint's, for fine-tuning)."""
    by_split = {"train": [l for l in lines if l["split"] == "train"],
                "validation": [l for l in lines if l["split"] == "validation"]}
    if not by_split["train"]:
        raise PreprocessingError("No usable training line was found; nothing written. " + (
            "Problems: " + "; ".join(summary.warnings[:5]) if summary.warnings else ""))
    if not by_split["validation"]:
        raise PreprocessingError("No validation line; nothing written. With --strokes or --ink_dir, raise "
                                 "--validation_fraction (the last lines validate); with IAM-OnDB, check that the "
                                 "validation split's forms are in the data. " + (
                                     "Problems: " + "; ".join(summary.warnings[:5]) if summary.warnings else ""))
    if like is None:
        alphabet, normalisation = dataset.ALPHABET, training_normalisation([l["offsets"] for l in by_split["train"]])
    else:
        alphabet, normalisation = like
    summary.normalisation = normalisation
    characters, unknown = Counter(), Counter()
    result = []
    for which in ("train", "validation"):
        group = by_split[which]
        for line in group:
            characters.update(line["text"])
            unknown.update(ch for ch in line["text"] if ch not in alphabet)
        result.append(dataset.HandwritingData(
            offsets=[normalisation.from_pen_units(l["offsets"]).astype(np.float32) for l in group],
            text_codes=[dataset.encode_text(l["text"], alphabet) for l in group],
            texts=[l["text"] for l in group],
            line_ids=[l["line_id"] for l in group],
            alphabet=alphabet,
            offset_mean=normalisation.mean.astype(np.float32),  # as the .npz stores them
            offset_std=normalisation.std.astype(np.float32)))
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
    normalisation: Optional[dataset.Normalisation] = None
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
    out.append(f"  offset mean (dx, dy) {np.round(s.normalisation.mean, 3).tolist()}, "
               f"std {np.round(s.normalisation.std, 3).tolist()} (raw units, training split)")
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
