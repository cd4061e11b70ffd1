"""Tests for data_preprocessing.py.

The unit tests build a tiny IAM-OnDB in the real file formats under tmp_path; every expected
array below was worked out by hand from the fixture's coordinates. The last test runs on the
real database in ../shared/iam-ondb when it is there.
"""
import json
import os
import re
import shutil
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

import data_preprocessing as dp
import dataset
from fixtures import (LINE_A, LINE_B, LINE_C, LINE_D, LINE_E, NORMAL_TIMES, OFFSETS_A, OFFSETS_B, OFFSETS_C,
                      OFFSETS_D, OFFSETS_E, stroke_xml)

# ----------------------------------------------------------------------------- fixture helpers
#
# stroke_xml and the lines A to E, with their offsets worked out by hand, are in fixtures.py.


def ascii_text(csr_lines, newline="\n"):
    """An IAM-OnDB transcription file: an OCR section, then the CSR lines."""
    ocr = " ".join(csr_lines)
    return newline.join(["OCR:", "", ocr, "", "CSR:", "", *csr_lines, ""])


TRAIN_IDS = ["a01-000u-01", "a01-000u-02", "b02-003-01", "c03-000-01"]
TRAIN_TEXTS = ["Mr. Foot's line,", "it isn't here.", '"Abolish Lords".', "café (2)"]
TRAIN_OFFSETS = [OFFSETS_A, OFFSETS_B, OFFSETS_C, OFFSETS_D]


def write(path, content):
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, str):
        content = content.encode("latin-1")
    path.write_bytes(content)


def form_folder(form):
    """a01-000u -> a01/a01-000 (the folder drops the form's trailing letter)."""
    return f"{form[:3]}/{form[:7]}"


def make_iam(root):
    """A small IAM-OnDB in extracted form (lineStrokes/, ascii/, split files) under root."""
    strokes = {
        "a01-000u-01": stroke_xml(LINE_A), "a01-000u-02": stroke_xml(LINE_B),
        "a01-001-01": stroke_xml(LINE_E),
        "b02-003-01": stroke_xml(LINE_C),
        "c03-000-01": stroke_xml(LINE_D),
        "d04-010-01": stroke_xml([]),                                   # empty
        "d04-010-02": stroke_xml([LINE_B[0][:5]]),                      # 5 points: too short
        "d04-010-03": stroke_xml(LINE_B)[:700],                         # cut off: malformed XML
        "e05-000-01": stroke_xml(LINE_B), "e05-000-02": stroke_xml(LINE_B),  # 1 CSR line only
        "f06-000-01": stroke_xml(LINE_B),                               # no transcription file
        "z00-001-01": stroke_xml(LINE_B),                               # in no split
    }
    for line_id, xml in strokes.items():
        form = line_id.rsplit("-", 1)[0]
        write(root / "lineStrokes" / form_folder(form) / f"{line_id}.xml", xml)
    transcriptions = {
        "a01-000u": ascii_text(["Mr . Foot ' s line ,", "it is n't here ."], newline="\r\n"),
        "a01-001": ascii_text(['He said : " yes " .']),
        "b02-003": ascii_text(['" Abolish Lords " .']),
        "c03-000": ascii_text(["café ( 2 )"]),
        "d04-010": ascii_text(["one", "two", "three"]),
        "e05-000": ascii_text(["only one line"]),
        "z00-001": "OCR: \r\n\r\nCSR: \r\n\r\nPlease Enter Transcription here \r\n",
    }
    for form, text in transcriptions.items():
        write(root / "ascii" / form_folder(form) / f"{form}.txt", text)
    splits = {"trainset.txt": ["a01-000u", "d04-010", "e05-000", "f06-000"], "testset_v.txt": ["a01-001"],
              "testset_t.txt": ["b02-003"], "testset_f.txt": ["c03-000", "c03-999"]}
    for name, forms in splits.items():
        write(root / name, "".join(f" {form}\n" for form in forms))
    return root


def make_archives(root):
    """Turn the extracted folders into lineStrokes-all.tar.gz and ascii-all.tar.gz."""
    for folder, archive in (("lineStrokes", "lineStrokes-all.tar.gz"), ("ascii", "ascii-all.tar.gz")):
        with tarfile.open(root / archive, "w:gz") as tar:
            tar.add(root / folder, arcname=folder)
        shutil.rmtree(root / folder)
    return root


def raw_offsets(data, i):
    """Undo the normalisation of line i."""
    o = data.offsets[i].astype(np.float64)
    return np.column_stack([o[:, 0], o[:, 1:] * data.offset_std + data.offset_mean])


def output_files(out_dir):
    return sorted(os.listdir(out_dir)) if os.path.isdir(out_dir) else []


# ----------------------------------------------------------------------------- transcriptions and splits


def test_csr_lines():
    text = "OCR:\r\n\r\nA MOVE to stop\r\nMr . Gaitskell\r\n\r\nCSR:\r\n\r\nA MOVE to\r\n\r\nstop Mr . Gaitskell \r\n"
    assert dp.csr_lines(text) == ["A MOVE to", "stop Mr . Gaitskell"]
    assert dp.csr_lines("OCR: \n\nCSR: \n\nPlease Enter Transcription here \n") == []
    assert dp.csr_lines("OCR:\n\nno csr section\n") is None


def test_read_split_file(tmp_path):
    path = tmp_path / "trainset.txt"
    path.write_text(" a01-000u\n d04-081\n\n z01-000z\n")
    assert dp.read_split_file(path) == ["a01-000u", "d04-081", "z01-000z"]


@pytest.mark.parametrize("content", [b"\x89PNG\r\n\x1a\n\x00\xff\xfe", b" a01-000u\n <html> oops\n"])
def test_unreadable_split_file(tmp_path, content):
    path = tmp_path / "testset_v.txt"
    path.write_bytes(content)
    with pytest.raises(dp.PreprocessingError, match="testset_v.txt"):
        dp.read_split_file(path)


# ----------------------------------------------------------------------------- text


@pytest.mark.parametrize("tokenised, written", [
    ("Mr . Foot has put down", "Mr. Foot has put down"),
    ("Mr . G . R . Bell ( Treasury ) .", "Mr. G. R. Bell (Treasury)."),
    ("it ' s", "it's"),
    ("Foot ' s line , he said", "Foot's line, he said"),
    ("do n't", "don't"),
    ("I 'm sure it 's there", "I'm sure it's there"),
    ("word ,", "word,"),
    ("what ? yes ! no ; maybe :", "what? yes! no; maybe:"),
    ('" Abolish Lords " .', '"Abolish Lords".'),
    ('went on :" We are', 'went on: "We are'),
    ("the Government were \" unsatisfactory . \"", 'the Government were "unsatisfactory."'),
    ("There is the ' swim ' fish", "There is the 'swim' fish"),
    ("neutrals ' conference", "neutrals' conference"),
    ("wait ... and see", "wait... and see"),
    ("[ the water ] here", "[the water] here"),
    ("No secret talks # - Macleod.", "No secret talks # - Macleod."),  # dashes and # keep spaces
    ("Already written, isn't it? \"Yes.\"", "Already written, isn't it? \"Yes.\""),
    ("  spaces   collapse  ", "spaces collapse"),
    ('Have you spoken to them? "', 'Have you spoken to them?"'),  # ends a line after ?: closes
])
def test_untokenise(tokenised, written):
    assert dp.untokenise(tokenised) == written


def test_untokenise_quote_carries_across_lines():
    assert dp.untokenise_lines(['picked a strong " brains', 'trust " team']) == \
        ['picked a strong "brains', 'trust" team']
    # A new quoted paragraph opens again although the last quote was never closed.
    assert dp.untokenise_lines(['conference: "The things are happening.', '" Fifty members will']) == \
        ['conference: "The things are happening.', '"Fifty members will']


# ----------------------------------------------------------------------------- whole runs


@pytest.fixture
def iam(tmp_path):
    return make_iam(tmp_path / "iam")


def check_fixture_output(out_dir, summary):
    train, validation = dataset.load_data(out_dir / "train.npz"), dataset.load_data(out_dir / "validation.npz")
    assert train.line_ids == TRAIN_IDS and train.texts == TRAIN_TEXTS
    assert validation.line_ids == ["a01-001-01"] and validation.texts == ['He said: "yes".']
    # Training statistics, from the hand-computed raw rows of the four training lines.
    rows = np.concatenate([np.array(o, dtype=np.float64)[:, 1:] for o in TRAIN_OFFSETS])
    for data in (train, validation):
        np.testing.assert_allclose(data.offset_mean, rows.mean(axis=0), rtol=1e-6)
        np.testing.assert_allclose(data.offset_std, rows.std(axis=0), rtol=1e-6)
        assert data.alphabet == dataset.ALPHABET
    for i, expected in enumerate(TRAIN_OFFSETS):
        assert train.offsets[i].dtype == np.float32
        np.testing.assert_allclose(raw_offsets(train, i), expected, atol=1e-4)
    np.testing.assert_allclose(raw_offsets(validation, 0), OFFSETS_E, atol=1e-4)
    # Normalised values, one checked by hand: line A row 1, dx = (3 - mean) / std.
    np.testing.assert_allclose(train.offsets[0][1, 1], (3 - rows[:, 0].mean()) / rows[:, 0].std(), rtol=1e-5)
    # Texts: é is not in the alphabet and is written as a space.
    assert dataset.decode_text(train.text_codes[3]) == "caf  (2)"
    np.testing.assert_array_equal(train.text_codes[0], [dataset.ALPHABET.index(c) for c in "Mr. Foot's line,"])
    assert summary.unknown_characters == Counter({"é": 1})
    assert summary.dropped == Counter({"empty": 1, "fewer than 10 points": 1, "malformed XML": 1,
                                          "transcription shorter than strokes": 2, "missing transcription": 1})
    assert sum(summary.dropped_by_split["validation"].values()) == 0
    assert summary.missing_forms == {"testset_f.txt": 1}
    assert summary.lines_in_no_split == 1 and summary.forms_in_no_split == {"z00-001"}
    assert summary.lines == {"train": 4, "validation": 1}
    assert summary.points_interpolated == 1 and summary.steps_removed == 2
    warnings = "\n".join(summary.warnings)
    assert "d04-010-03.xml: malformed XML" in warnings
    assert "e05-000.txt: 1 CSR lines but stroke files up to line 2" in warnings
    return train, validation


def test_preprocess_extracted_folders(iam, tmp_path):
    summary = dp.preprocess(iam, tmp_path / "out", verbose=False)
    check_fixture_output(tmp_path / "out", summary)
    assert output_files(tmp_path / "out") == ["train.npz", "validation.npz"]


def test_preprocess_archives_match_folders(iam, tmp_path, capsys):
    dp.preprocess(iam, tmp_path / "from_folders", verbose=False)
    make_archives(iam)
    assert not (iam / "lineStrokes").exists()
    summary = dp.preprocess(iam, tmp_path / "from_archives")
    train, _ = check_fixture_output(tmp_path / "from_archives", summary)
    reference = dataset.load_data(tmp_path / "from_folders" / "train.npz")
    for a, b in zip(train.offsets, reference.offsets):
        np.testing.assert_array_equal(a, b)
    printed = capsys.readouterr().out
    assert "train" in printed and "4 lines kept, 6 dropped" in printed
    assert "testset_f.txt 1" in printed and "lines in no split (not used): 1" in printed


def test_non_finite_and_glitch_coordinates_drop_their_line_not_the_statistics(iam, tmp_path):
    """One x="nan" would make every normalised value NaN, and one reading of 1e9 at a stroke's start
    (a pen-up jump, which is never removed as an in-stroke glitch) would inflate dx's std a
    thousandfold: each drops its own line, and the statistics stay those of the good lines."""
    nan_line = [[(float("nan") if i == 3 else 200 + 10 * i, 300, t) for i, t in enumerate(NORMAL_TIMES)]]
    jump_line = [LINE_B[0], [(1e9, 300, 0.5), (1e9 + 10, 300, 0.52)]]
    write(iam / "lineStrokes" / form_folder("g07-000") / "g07-000-01.xml", stroke_xml(nan_line))
    write(iam / "lineStrokes" / form_folder("g07-000") / "g07-000-02.xml", stroke_xml(jump_line))
    write(iam / "ascii" / form_folder("g07-000") / "g07-000.txt", ascii_text(["not a number", "far away"]))
    write(iam / "trainset.txt", (iam / "trainset.txt").read_text() + " g07-000\n")
    summary = dp.preprocess(iam, tmp_path / "out", verbose=False)
    assert summary.dropped["non-finite coordinates"] == 1
    assert summary.dropped["a pen movement over 1000 times the median step"] == 1
    train = dataset.load_data(tmp_path / "out" / "train.npz")
    assert train.line_ids == TRAIN_IDS
    rows = np.concatenate([np.array(o, dtype=np.float64)[:, 1:] for o in TRAIN_OFFSETS])
    np.testing.assert_allclose(train.offset_std, rows.std(axis=0), rtol=1e-6)
    assert all(np.isfinite(o).all() for o in train.offsets)


def test_like_makes_the_iam_split_with_the_checkpoints_normalisation(iam, tmp_path):
    """To go on training a model on freshly made arrays: its statistics, not the data's own."""
    from fixtures import train_tiny

    like = train_tiny(tmp_path / "model", "synthesis", "--max_steps", "1").replace("_best", "_last")
    dp.preprocess(iam, tmp_path / "own", verbose=False)
    dp.preprocess(iam, tmp_path / "like", like=like, verbose=False)
    own, alike = (dataset.load_data(tmp_path / d / "train.npz") for d in ("own", "like"))
    np.testing.assert_allclose(alike.offset_mean, [0.5, -0.2]) and np.testing.assert_allclose(alike.offset_std, [2, 3])
    assert alike.line_ids == own.line_ids
    for i in range(len(own)):  # the same raw offsets, normalised the checkpoint's way
        np.testing.assert_allclose(raw_offsets(alike, i), raw_offsets(own, i), atol=1e-3)


def test_official_split(iam, tmp_path):
    summary = dp.preprocess(iam, tmp_path / "out", split="official", verbose=False)
    train = dataset.load_data(tmp_path / "out" / "train.npz")
    assert train.line_ids == ["a01-000u-01", "a01-000u-02"]
    assert summary.lines_unused_split == 2  # b02-003-01 (testset_t), c03-000-01 (testset_f)


def test_main_defaults_to_data_folder(tmp_path, monkeypatch):
    make_iam(tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    assert dp.main([]) == 0
    assert output_files(tmp_path / "data").count("train.npz") == 1
    assert len(dataset.load_data(tmp_path / "data" / "validation.npz")) == 1


def test_missing_input_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "trainset.txt").write_text(" a01-000u\n")
    with pytest.raises(dp.PreprocessingError) as error:
        dp.preprocess(tmp_path / "data", tmp_path / "out", verbose=False)
    message = str(error.value)
    for needed in ("lineStrokes-all.tar.gz", "ascii-all.tar.gz", "testset_v.txt", "testset_t.txt",
                   "testset_f.txt", dp.DATABASE_URL, str(tmp_path / "data")):
        assert needed in message
    assert "Missing input in" in message and "trainset.txt," not in message.split("\n")[0]
    assert output_files(tmp_path / "out") == []
    assert dp.main(["--data_dir", str(tmp_path / "data"), "--out_dir", str(tmp_path / "out")]) == 1
    assert "lineStrokes-all.tar.gz" in capsys.readouterr().err
    assert output_files(tmp_path / "out") == []


def test_truncated_archive(iam, tmp_path):
    make_archives(iam)
    archive = iam / "lineStrokes-all.tar.gz"
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size * 2 // 3])
    with pytest.raises(dp.PreprocessingError, match=r"lineStrokes-all\.tar\.gz is truncated or corrupt"):
        dp.preprocess(iam, tmp_path / "out", verbose=False)
    assert output_files(tmp_path / "out") == []


def test_unreadable_split_file_stops_without_output(iam, tmp_path):
    (iam / "testset_t.txt").write_bytes(b"\x00\xff\xfe garbage")
    with pytest.raises(dp.PreprocessingError, match="testset_t.txt"):
        dp.preprocess(iam, tmp_path / "out", verbose=False)
    assert output_files(tmp_path / "out") == []


def test_failed_write_leaves_no_partial_output(iam, tmp_path, monkeypatch):
    calls = []
    real_save = dataset.save_data

    def failing_second_save(path, data):
        calls.append(path)
        if len(calls) == 2:
            raise OSError("disk full")
        real_save(path, data)

    monkeypatch.setattr(dataset, "save_data", failing_second_save)
    with pytest.raises(OSError, match="disk full"):
        dp.preprocess(iam, tmp_path / "out", verbose=False)
    assert output_files(tmp_path / "out") == []  # neither output nor any temporary file


# ----------------------------------------------------------------------------- strokes.npy input


def make_strokes_npy(folder, texts=("first line", "second line", "third line")):
    folder.mkdir(parents=True, exist_ok=True)
    sequences = np.empty(3, dtype=object)
    # [eos, dx, dy] with y downwards; row 0 of the first sequence is a position, not a step.
    sequences[0] = np.array([[0, 250, 130], [0, 3, -4], [1, 4, -6], [0, 20, 5], [0, 1, 1], [0, 2, 2],
                             [0, 3, 3], [0, 4, 4], [0, 5, 5], [1, 6, 6]], dtype=np.float32)
    sequences[1] = np.array([[0, 0, 0]] + [[0, 2, 1]] * 4 + [[0, 0, 350]] + [[0, 2, 1]] * 4 + [[1, 2, 1]],
                            dtype=np.float32)  # 350: an implausible in-stroke step
    sequences[2] = np.array([[0, 0, 0]] + [[0, 1, -1]] * 9 + [[1, 1, -1]], dtype=np.float32)
    np.save(folder / "strokes.npy", sequences, allow_pickle=True)
    (folder / "sentences.txt").write_text("\n".join(texts) + "\n")


def test_strokes_npy_input(tmp_path):
    make_strokes_npy(tmp_path / "data")
    summary = dp.preprocess(tmp_path / "data", tmp_path / "out", validation_fraction=1 / 3, verbose=False)
    train = dataset.load_data(tmp_path / "out" / "train.npz")
    validation = dataset.load_data(tmp_path / "out" / "validation.npz")
    assert train.texts == ["first line", "second line"] and validation.texts == ["third line"]
    assert train.line_ids == ["strokes-00000", "strokes-00001"]
    expected = [[[0, 0, 0], [0, 3, 4], [1, 4, 6], [0, 20, -5], [0, 1, -1], [0, 2, -2], [0, 3, -3],
                 [0, 4, -4], [0, 5, -5], [1, 6, -6]],
                [[0, 0, 0]] + [[0, 2, -1]] * 8 + [[1, 2, -1]]]
    for i in range(2):
        np.testing.assert_allclose(raw_offsets(train, i), expected[i], atol=1e-4)
    np.testing.assert_allclose(raw_offsets(validation, 0), [[0, 0, 0]] + [[0, 1, 1]] * 9 + [[1, 1, 1]], atol=1e-4)
    assert summary.steps_removed == 1


def test_a_strokes_npy_that_would_run_code_is_refused_not_run(tmp_path):
    """strokes.npy is a pickle; only numpy arrays may come out of it, never a call."""
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    make_strokes_npy(tmp_path / "data")
    sequences = np.load(tmp_path / "data" / "strokes.npy", allow_pickle=True)
    sequences[1] = Payload()
    np.save(tmp_path / "data" / "strokes.npy", sequences, allow_pickle=True)
    with pytest.raises(dp.PreprocessingError, match="strokes.npy was not read: it asks to run .*open"):
        dp.preprocess(tmp_path / "data", tmp_path / "out", verbose=False)
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_strokes_npy_explicit_paths_and_mismatch(tmp_path):
    make_strokes_npy(tmp_path / "pair", texts=("only", "two"))
    with pytest.raises(dp.PreprocessingError, match="3 sequences but .*sentences.txt 2 lines"):
        dp.preprocess(strokes=str(tmp_path / "pair" / "strokes.npy"),
                      sentences=str(tmp_path / "pair" / "sentences.txt"), out_dir=tmp_path / "out", verbose=False)
    assert output_files(tmp_path / "out") == []
    make_strokes_npy(tmp_path / "pair")
    dp.preprocess(strokes=str(tmp_path / "pair" / "strokes.npy"), sentences=str(tmp_path / "pair" / "sentences.txt"),
                  out_dir=tmp_path / "out", verbose=False, validation_fraction=0.34)
    assert len(dataset.load_data(tmp_path / "out" / "train.npz")) == 2
    assert len(dataset.load_data(tmp_path / "out" / "validation.npz")) == 1
    # the default 5% of 3 lines rounds to no validation line: an empty split is refused (issue 47)
    with pytest.raises(dp.PreprocessingError, match="No validation line.*raise --validation_fraction"):
        dp.preprocess(strokes=str(tmp_path / "pair" / "strokes.npy"),
                      sentences=str(tmp_path / "pair" / "sentences.txt"), out_dir=tmp_path / "empty", verbose=False)
    assert output_files(tmp_path / "empty") == []


# ----------------------------------------------------------------------------- the real database

IAM_ONDB = Path(__file__).resolve().parents[1] / ".." / "shared" / "iam-ondb"


@pytest.mark.skipif(not (IAM_ONDB / "lineStrokes-all.tar.gz").exists(), reason="IAM-OnDB not in ../shared/iam-ondb")
def test_real_iam_ondb(tmp_path):
    summary = dp.preprocess(IAM_ONDB, tmp_path, verbose=False)
    # README counts: trainset 5,364 + testset_t 1,518 + testset_f 3,506 (present) = 10,388 lines;
    # a08-551z (trainset, 9 stroke files, 8 CSR lines) is the only form dropped; every other
    # line has >= 31 points and a transcription.
    assert summary.dropped == Counter({"transcription shorter than strokes": 9})
    assert summary.lines == {"train": 5364 + 1518 + 3506 - 9, "validation": 1438}
    assert summary.missing_forms == {"testset_f.txt": 48}
    # z00-001 (1 line), z01-000 (7), z01-000z (8) are in no split.
    assert summary.forms_in_no_split == {"z00-001", "z01-000", "z01-000z"}
    assert summary.lines_in_no_split == 16
    assert summary.unknown_characters == Counter()

    train = dataset.load_data(tmp_path / "train.npz")
    assert not any(i.startswith("a08-551z") for i in train.line_ids)
    first = train.line_ids.index("a01-000u-01")
    assert train.texts[first] == "A MOVE to stop Mr. Gaitskell"
    line = train.line_ids.index("d01-001z-04")
    assert train.texts[line] == "be the key to all the others, and"
    # d01-001z-04.xml's first readings: (916,3112) (904,3119) (897,3123) (897,3127) (900,3123), all
    # ~15 ms apart (y flipped), then (966,2899) after a 0.10 s gap: round(0.10 / 0.015) = 7 steps
    # of (66/7, 224/7), i.e. 6 interpolated points.
    np.testing.assert_allclose(raw_offsets(train, line)[:12],
                               [[0, 0, 0], [0, -12, -7], [0, -7, -4], [0, 0, -4], [0, 3, 4]]
                               + [[0, 66 / 7, 224 / 7]] * 7, atol=1e-3)


# ----------------------------------------------------------------------------- your own lines (--ink_dir)

def own_line(text, shift=0.0):
    """A draw.html JSON line in pixels, y down: 8 points rightwards 10 px apart, then a stroke of 4
    points 5 px apart going down (up in our y)."""
    right = [[shift + 10.0 * i, 0.0] for i in range(8)]
    down = [[shift + 100.0, 20.0 + 5.0 * i] for i in range(4)]
    return json.dumps({"text": text, "strokes": [right, down]})


def test_own_lines_become_a_split_normalised_like_the_checkpoint(tmp_path):
    """--ink_dir --like: alphabet and normalisation are the checkpoint's, the last line validates,
    and each line is rescaled so its median in-stroke step is the data's (10 px here -> the pace
    0.46 * sqrt(2 * 3) of the tiny checkpoint's std [2, 3]); y flips to point up."""
    from fixtures import train_tiny

    like = train_tiny(tmp_path / "model", "synthesis", "--max_steps", "1").replace("_best", "_last")
    folder = tmp_path / "mine"
    folder.mkdir()
    for i, text in enumerate(["first", "second", "third"]):
        (folder / f"line{i}.json").write_text(own_line(text, shift=3.0 * i))
    (folder / "broken.json").write_text("{not json")
    (folder / "notes.md").write_text("not a line")
    summary = dp.preprocess(ink_dir=str(folder), like=like, out_dir=tmp_path / "out", validation_fraction=0.3,
                            verbose=False)
    train = dataset.load_data(tmp_path / "out" / "train.npz")
    validation = dataset.load_data(tmp_path / "out" / "validation.npz")
    assert train.texts == ["first", "second"] and validation.texts == ["third"]  # by file name; broken sorts first
    assert summary.dropped == Counter({"unreadable file": 1})
    np.testing.assert_allclose(train.offset_mean, [0.5, -0.2]) and np.testing.assert_allclose(train.offset_std, [2, 3])
    scale = 0.46 * np.sqrt(6.0) / 10.0
    expected = [[0, 0, 0]] + [[0, 10, 0]] * 6 + [[1, 10, 0], [0, 30, -20], [0, 0, -5], [0, 0, -5], [1, 0, -5]]
    expected = np.array(expected, dtype=np.float64) * [1, scale, scale]
    np.testing.assert_allclose(train.offsets[0][:, 1:] * [2, 3] + [0.5, -0.2], expected[:, 1:], atol=1e-5)
    np.testing.assert_array_equal(train.offsets[0][:, 0], expected[:, 0])

    # and train.py fine-tunes the checkpoint on it
    import train as train_module
    from fixtures import TINY_MODEL
    train_module.train(train_module.parse_args([
        "--task", "synthesis", "--data_dir", str(tmp_path / "out"), "--model_dir", str(tmp_path / "tuned"),
        "--init_from", like, "--max_steps", "3", "--precision", "fp32", *TINY_MODEL]))
    assert (tmp_path / "tuned" / "synthesis_last.pt").exists()


def test_own_lines_need_a_checkpoint_and_two_lines(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "only.json").write_text(own_line("one"))
    with pytest.raises(dp.PreprocessingError, match="--ink_dir needs --like CHECKPOINT"):
        dp.preprocess(ink_dir=str(folder), out_dir=tmp_path / "out", verbose=False)
    with pytest.raises(dp.PreprocessingError, match="1 .json, .inkml or .xml file.*at least two lines"):
        dp.preprocess(ink_dir=str(folder), like="unused.pt", out_dir=tmp_path / "out", verbose=False)


# ----------------------------------------------------------------------------- --ink_dir: a bad file is skipped, never fatal (issue 47)

@pytest.fixture(scope="module")
def tiny_like(tmp_path_factory):
    """A tiny synthesis checkpoint for --like (alphabet, normalisation std [2, 3])."""
    from fixtures import train_tiny

    return train_tiny(tmp_path_factory.mktemp("like"), "synthesis", "--max_steps", "1").replace("_best", "_last")


def own_lines_folder(tmp_path, texts):
    folder = tmp_path / "mine"
    folder.mkdir()
    for i, text in enumerate(texts):
        (folder / f"line{i}.json").write_text(own_line(text, shift=3.0 * i))
    return folder


def preprocess_own(folder, like, tmp_path, **options):
    summary = dp.preprocess(ink_dir=str(folder), like=like, out_dir=tmp_path / "out", verbose=False, **options)
    return (summary, dataset.load_data(tmp_path / "out" / "train.npz"),
            dataset.load_data(tmp_path / "out" / "validation.npz"))


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes here")
def test_a_bad_file_in_ink_dir_is_skipped_and_named_and_the_rest_are_read(tmp_path, tiny_like):
    folder = own_lines_folder(tmp_path, ["first", "second", "third"])
    os.mkfifo(folder / "a_pipe.json")
    os.symlink("/dev/zero", folder / "b_zero.inkml")
    (folder / "c_folder.json").mkdir()
    (folder / "d_deep.json").write_text('{"text": "x", "strokes": ' + "[" * 100_000 + "]" * 100_000 + "}")
    (folder / "e_huge.json").write_text(json.dumps({"text": "x", "strokes": [[[1e39, 0], [1, 1]]]}))
    (folder / "f_bool.json").write_text(json.dumps({"text": "x", "strokes": [[[True, 0], [1, 1]]]}))
    (folder / "line2.txt").write_text("not read: JSON holds its text")
    os.mkfifo(folder / "g_pipe_text.txt")
    (folder / "g_pipe_text.xml").write_text(stroke_xml(LINE_B))  # its text file is a pipe
    summary, train, validation = preprocess_own(folder, tiny_like, tmp_path, validation_fraction=0.3)
    assert train.texts == ["first", "second"] and validation.texts == ["third"]
    assert summary.dropped == Counter({"unreadable file": 7})
    for name, why in [("a_pipe.json", "not a regular file \\(a pipe\\)"), ("b_zero.inkml", "not a regular file \\(a device\\)"),
                      ("c_folder.json", "not a regular file \\(a folder\\)"), ("d_deep.json", "JSON nested deeper"),
                      ("e_huge.json", "coordinate 1e\\+39 is beyond"), ("f_bool.json", "holds true, not a number"),
                      ("g_pipe_text.txt", "not a regular file \\(a pipe\\)")]:
        assert any(re.search(f"{name}: (.*){why}.*skipped", warning) for warning in summary.warnings), (name, summary.warnings)


def test_bad_last_files_never_leave_the_validation_split_empty(tmp_path, tiny_like):
    # the last file by name is unreadable: the last line that is read validates instead
    folder = own_lines_folder(tmp_path, ["first", "second", "third"])
    (folder / "zz_broken.json").write_text("{not json")
    _, train, validation = preprocess_own(folder, tiny_like, tmp_path, validation_fraction=0.3)
    assert train.texts == ["first", "second"] and validation.texts == ["third"]
    # one usable line cannot make both splits: a sentence, and nothing written
    folder = tmp_path / "one"
    folder.mkdir()
    (folder / "a.json").write_text(own_line("only"))
    (folder / "b.json").write_text("{not json")
    with pytest.raises(dp.PreprocessingError, match="1 usable line of 2 files; at least two .*b.json: not JSON"):
        dp.preprocess(ink_dir=str(folder), like=tiny_like, out_dir=tmp_path / "none", verbose=False)
    assert not (tmp_path / "none" / "validation.npz").exists()


def test_an_empty_validation_split_is_an_error_that_says_what_to_do():
    line = {"offsets": np.array([[0, 0, 0], [1, 1, 1]], np.float32), "text": "ab", "line_id": "x"}
    with pytest.raises(dp.PreprocessingError, match="No validation line.*--validation_fraction"):
        dp.build_splits([{**line, "split": "train"}] * 3, dp.Summary())


def test_files_of_one_name_in_several_formats_stay_separate_lines(tmp_path, tiny_like):
    folder = own_lines_folder(tmp_path, ["first", "second"])
    strokes = json.loads(own_line("other"))["strokes"]
    (folder / "line0.inkml").write_text('<ink><annotation type="transcription">other</annotation>' + "".join(
        "<trace>" + ", ".join(f"{x} {y}" for x, y in stroke) + "</trace>" for stroke in strokes) + "</ink>")
    summary, train, validation = preprocess_own(folder, tiny_like, tmp_path, validation_fraction=0.3)
    assert train.line_ids + validation.line_ids == ["line0.inkml", "line0.json", "line1"]
    assert train.texts + validation.texts == ["other", "first", "second"]
    assert any("line0.inkml, line0.json" in warning and "one name" in warning for warning in summary.warnings)
