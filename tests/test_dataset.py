"""dataset.py: the normalisation between the network's offsets and pen units, and the .npz split
format (what is written, that it reads back, and that a file in the documented layout loads)."""
import numpy as np
import pytest

import dataset
from fixtures import make_handwriting_data

NPZ_KEYS = {"points", "point_lengths", "text_codes", "text_lengths", "texts", "line_ids", "alphabet",
            "offset_mean", "offset_std"}


# ----------------------------------------------------------------------------- normalisation

def test_normalisation_turns_offsets_into_pen_units_and_back_by_hand():
    pen = dataset.Normalisation([0.5, -0.2], [2.0, 4.0])
    normalised = np.array([[0, 1.0, 0.5], [1, -0.25, 0.0]], np.float32)
    # dx = 1 * 2 + 0.5, dy = 0.5 * 4 - 0.2; end_of_stroke as it is
    expected = [[0, 2.5, 1.8], [1, 0.0, -0.2]]
    raw = pen.to_pen_units(normalised)
    assert raw.dtype == np.float64
    np.testing.assert_allclose(raw, expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(pen.from_pen_units(expected), normalised, rtol=1e-12, atol=1e-12)
    assert normalised[0, 1] == 1.0 and raw is not normalised  # the input is left alone
    # the zero pen offset, where every line starts, in normalised units: -mean / std
    np.testing.assert_allclose(pen.from_pen_units(np.zeros(3)), [0, -0.25, 0.05])


def test_the_data_and_a_checkpoint_carry_the_same_normalisation():
    data = make_handwriting_data(2)
    stored = dataset.Normalisation(np.float32([0.5, -0.2]), np.float32([2.0, 3.0]))  # the data keeps float32
    assert data.normalisation == stored != dataset.Normalisation(np.float32([0.5, -0.2]), [2.0, 3.5])
    saved = {"offset_mean": [float(v) for v in data.offset_mean], "offset_std": [float(v) for v in data.offset_std]}
    assert dataset.Normalisation.of(saved) == data.normalisation  # as checkpoint.save writes them


def test_renormalised_lines_keep_their_ink_in_pen_units():
    data = make_handwriting_data(3)
    other = dataset.Normalisation(data.normalisation.mean + [1.5, -0.5], data.normalisation.std * [2.0, 0.5])
    moved = dataset.renormalised(data, other)
    assert moved.normalisation == dataset.Normalisation(np.float32(other.mean), np.float32(other.std))
    for line, moved_line in zip(data.offsets, moved.offsets):
        assert moved_line.dtype == np.float32
        # by hand: raw = line * std + mean, then (raw - other mean) / other std
        raw = line[:, 1:].astype(np.float64) * [2.0, 3.0] + [0.5, -0.2]
        np.testing.assert_allclose(moved_line[:, 1:], (raw - other.mean) / other.std, rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(moved_line[:, 0], line[:, 0])
    assert dataset.renormalised(data, data.normalisation) is data


# ----------------------------------------------------------------------------- the .npz format

def test_a_split_reads_back_as_it_was_written(tmp_path):
    data = make_handwriting_data(5, seed=3)
    dataset.save_data(tmp_path / "split.npz", data)
    with np.load(tmp_path / "split.npz", allow_pickle=False) as f:  # plain arrays, no pickles
        assert set(f.files) == NPZ_KEYS
        assert f["points"].dtype == np.float32 and f["text_codes"].dtype == np.int64
        assert f["point_lengths"].tolist() == [len(o) for o in data.offsets]
    loaded = dataset.load_data(tmp_path / "split.npz")
    assert (loaded.texts, loaded.line_ids, loaded.alphabet) == (data.texts, data.line_ids, data.alphabet)
    assert loaded.normalisation == data.normalisation
    for a, b in zip(loaded.offsets + loaded.text_codes, data.offsets + data.text_codes):
        np.testing.assert_array_equal(a, b)


def test_a_file_in_the_documented_layout_loads(tmp_path):
    """What data_preprocessing.py has always written: concatenated rows and codes with their
    lengths, texts, ids, the alphabet and the statistics (files made before this code still load)."""
    np.savez(tmp_path / "old.npz", points=np.arange(15, dtype=np.float32).reshape(5, 3),
             point_lengths=np.array([2, 3]), text_codes=np.array([33, 34, 35]), text_lengths=np.array([1, 2]),
             texts=np.array(["a", "bc"]), line_ids=np.array(["x-01", "x-02"]), alphabet=np.array(dataset.ALPHABET),
             offset_mean=np.array([1.0, 2.0], np.float32), offset_std=np.array([3.0, 4.0], np.float32))
    data = dataset.load_data(tmp_path / "old.npz")
    assert len(data) == 2 and data.texts == ["a", "bc"] and data.line_ids == ["x-01", "x-02"]
    np.testing.assert_array_equal(data.offsets[1], [[6, 7, 8], [9, 10, 11], [12, 13, 14]])
    assert [c.tolist() for c in data.text_codes] == [[33], [34, 35]]
    np.testing.assert_allclose(data.normalisation.to_pen_units(data.offsets[0][:1]), [[0, 1 * 3 + 1, 2 * 4 + 2]])


def test_an_empty_split_reads_back_empty(tmp_path):
    empty = dataset.HandwritingData([], [], [], [], dataset.ALPHABET, np.zeros(2, np.float32), np.ones(2, np.float32))
    dataset.save_data(tmp_path / "empty.npz", empty)
    loaded = dataset.load_data(tmp_path / "empty.npz")
    assert len(loaded) == 0 and loaded.normalisation == empty.normalisation


def test_a_missing_split_says_how_to_make_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="Run `python data_preprocessing.py` first"):
        dataset.load_data(tmp_path / "train.npz")
