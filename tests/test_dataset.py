"""dataset.py: the normalisation between the network's offsets and pen units, the .npz split
format (what is written, that it reads back, and that a file in the documented layout loads),
batches and their padding, distortion, lines joined to their writer's next, and validation NLL."""
import math

import numpy as np
import pytest
import torch

import dataset
import model as model_module
from dataset import dataset_nll
from fixtures import make_handwriting_data
from model import HandwritingModel, ModelConfig, sequence_nll

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


# ----------------------------------------------------------------------------- batches, collate, distortion, joined lines

def hand_data():
    offsets = [np.array([[0, 1, 2], [1, 3, 4]], np.float32),
               np.array([[0, 5, 6], [0, 7, 8], [1, 9, 10], [0, 11, 12]], np.float32),
               np.array([[1, -1, -2], [0, -3, -4], [1, -5, -6]], np.float32)]
    codes = [np.array([3], np.int64), np.array([4, 5, 6], np.int64), np.array([], np.int64)]
    return dataset.HandwritingData(offsets, codes, ["a", "bcd", ""], ["l0", "l1", "l2"], "abcdefg",
                                 np.zeros(2, np.float32), np.ones(2, np.float32))


class FixedDraws:
    """A stand-in for a numpy Generator whose normal() returns preset values."""

    def __init__(self, values):
        self.values = np.array(values, np.float64)

    def normal(self, loc, scale, size):
        assert size == len(self.values)
        return self.values


def padded_size(batches, lengths):
    return sum(len(b) * max(lengths[i] for i in b) for b in batches)


def test_make_batches_without_rng():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 100, 537)
    batches = dataset.make_batches(lengths, 8)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(537))
    assert [len(b) for b in batches] == [8] * 67 + [1]
    assert np.all(np.diff(lengths[flat]) >= 0)  # globally sorted: minimal padding


def test_make_batches_with_rng():
    lengths = np.random.default_rng(0).integers(1, 100, 537)
    total = int(lengths.sum())
    batches = dataset.make_batches(lengths, 8, np.random.default_rng(1))
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(537))  # every line exactly once
    sizes = [len(b) for b in batches]
    assert max(sizes) == 8
    # pools of 50 batches: 400 + 137 lines -> 50 + 18 batches, at most one short batch per pool
    assert len(batches) == 50 + 18 and sum(s < 8 for s in sizes) <= 2
    for b in batches:
        assert np.all(np.diff(lengths[b]) >= 0)  # sorted within each batch
    # nearly padding-free, far less than batches of random lines
    random_batches = [p[i:i + 8] for p in [np.random.default_rng(2).permutation(537)] for i in range(0, 537, 8)]
    assert padded_size(batches, lengths) < 1.1 * total
    assert padded_size(random_batches, lengths) > 1.4 * total
    # deterministic in the seed, different across seeds / epochs
    again = dataset.make_batches(lengths, 8, np.random.default_rng(1))
    assert len(again) == len(batches) and all(np.array_equal(a, b) for a, b in zip(again, batches))
    other = dataset.make_batches(lengths, 8, np.random.default_rng([0, 1]))
    assert not all(np.array_equal(a, b) for a, b in zip(other, batches))


def test_make_batches_small_set():
    batches = dataset.make_batches([5, 3, 9], 2, np.random.default_rng(0))
    assert sorted(np.concatenate(batches).tolist()) == [0, 1, 2]
    assert sorted(len(b) for b in batches) == [1, 2]


def test_collate_exact():
    offsets, mask, text, text_mask = dataset.collate(hand_data(), [2, 0, 1])
    expected = np.array([[[1, -1, -2], [0, -3, -4], [1, -5, -6], [0, 0, 0]],
                         [[0, 1, 2], [1, 3, 4], [0, 0, 0], [0, 0, 0]],
                         [[0, 5, 6], [0, 7, 8], [1, 9, 10], [0, 11, 12]]], np.float32)
    assert offsets.dtype == torch.float32 and mask.dtype == torch.float32
    assert text.dtype == torch.int64 and text_mask.dtype == torch.float32
    np.testing.assert_array_equal(offsets.numpy(), expected)
    np.testing.assert_array_equal(mask.numpy(), [[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]])
    np.testing.assert_array_equal(text.numpy(), [[0, 0, 0], [3, 0, 0], [4, 5, 6]])
    np.testing.assert_array_equal(text_mask.numpy(), [[0, 0, 0], [1, 0, 0], [1, 1, 1]])


def test_collate_truncates_to_max_points():
    offsets, mask, text, text_mask = dataset.collate(hand_data(), [1, 0], max_points=3)
    np.testing.assert_array_equal(offsets.numpy(), [[[0, 5, 6], [0, 7, 8], [1, 9, 10]],
                                                    [[0, 1, 2], [1, 3, 4], [0, 0, 0]]])
    np.testing.assert_array_equal(mask.numpy(), [[1, 1, 1], [1, 1, 0]])
    np.testing.assert_array_equal(text.numpy(), [[4, 5, 6], [3, 0, 0]])  # text is never cut


def test_distorted_stretches_and_slants_the_raw_offsets_by_hand():
    data = hand_data()
    data.offset_mean, data.offset_std = np.array([1.0, 0.5], np.float32), np.array([2.0, 4.0], np.float32)
    line = np.array([[0, 0.5, 0.25], [1, -1.0, 0.5]], np.float32)  # raw (2, 1.5) and (-1, 2.5)
    # width x2 (a = ln 2), height x0.5 (b = -ln 2), slant s = 0.25: dx' = 2 dx + 0.25 dy, dy' = dy / 2
    out = dataset.distorted(line, data, FixedDraws([math.log(2), -math.log(2), 0.25]), 0.1)
    # raw after: (2 * 2 + 0.25 * 1.5, 1.5 / 2) = (4.375, 0.75) and (2 * -1 + 0.25 * 2.5, 2.5 / 2) = (-1.375, 1.25)
    expected = [[0, (4.375 - 1) / 2, (0.75 - 0.5) / 4], [1, (-1.375 - 1) / 2, (1.25 - 0.5) / 4]]
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, expected, rtol=1e-6)


def test_collate_distorts_each_line_reproducibly_and_only_when_asked():
    data = hand_data()
    plain = dataset.collate(data, [1, 0])
    same = dataset.collate(data, [1, 0], distortion=0.0, rng=np.random.default_rng(0))
    for a, b in zip(plain, same):
        assert torch.equal(a, b)
    draw = lambda seed: dataset.collate(data, [1, 0], distortion=0.1, rng=np.random.default_rng(seed))
    first, again, other = draw(3), draw(3), draw(4)
    assert torch.equal(first[0], again[0]) and not torch.equal(first[0], other[0])
    offsets = first[0]
    assert torch.equal(offsets[..., 0], plain[0][..., 0])  # the pen lifts where it did
    assert torch.equal(first[1], plain[1]) and not torch.equal(offsets[..., 1:], plain[0][..., 1:])
    assert torch.all(offsets[1, 2:] == 0)  # padding stays zero


def test_collate_empty_text_only():
    _, _, text, text_mask = dataset.collate(hand_data(), [2])
    assert text.shape == (1, 1) and text_mask.sum() == 0


def test_spelled_in_gives_look_alikes_only_where_the_alphabet_can_spell_them():
    assert dataset.spelled_in("“Ça va?” — naïve ﬁsh, 5×3…") == '"Ca va?" - naive fish, 5x3...'
    assert dataset.spelled_in("Straße, ☃, €") == "Strasse, ☃, €"  # no look-alike: left for encode_text
    assert dataset.spelled_in("e…é", alphabet="abcde") == "e…e"  # no '.' to spell the ellipsis with
    assert dataset.spelled_in(dataset.ALPHABET) == dataset.ALPHABET
    assert dataset.decode_text(dataset.encode_text(dataset.spelled_in("don’t €"))) == "don't  "


def test_evaluate_equals_lines_one_by_one():
    data = make_handwriting_data(7, seed=3)
    torch.manual_seed(0)
    model = HandwritingModel(ModelConfig(task="synthesis", cell_size=16, num_clusters=3, K=2,
                                         alphabet_size=len(data.alphabet)))
    per_seq, per_point = dataset_nll(model, data, 3, "cpu")
    total, points = 0.0, 0
    with torch.no_grad():
        for x, c in zip(data.offsets, data.text_codes):
            nll, count = sequence_nll(model, torch.from_numpy(x)[None], torch.ones(1, len(x)),
                                      torch.from_numpy(c)[None], torch.ones(1, len(c)))
            total, points = total + nll.item(), points + count.item()
    assert points == sum(len(x) - 1 for x in data.offsets)
    assert per_seq == pytest.approx(total / 7, rel=1e-5)
    assert per_point == pytest.approx(total / points, rel=1e-5)
    assert model.training  # evaluate restores training mode


def test_make_batches_pool_of_one_is_plain_random_batching():
    lengths = list(range(100, 0, -1))
    rng_a, rng_b = np.random.default_rng(3), np.random.default_rng(3)
    batches = dataset.make_batches(lengths, 10, rng_a, pool=1)
    # the same draws by hand: one permutation chunked into batches, each sorted by length, then shuffled
    shuffled = rng_b.permutation(100)
    expected = [sorted(shuffled[i:i + 10], key=lambda j: lengths[j]) for i in range(0, 100, 10)]
    expected = [expected[i] for i in rng_b.permutation(10)]
    assert [list(b) for b in batches] == [list(b) for b in expected]


def test_subset_is_the_same_lines_every_time_in_split_order():
    data = make_handwriting_data(30)
    first, again = dataset.subset(data, 7), dataset.subset(data, 7)
    assert first.line_ids == again.line_ids and len(first) == 7
    ids = [int(i.split("-")[1]) for i in first.line_ids]
    assert ids == sorted(ids) and len(set(ids)) == 7
    i = ids[3]
    assert first.texts[3] == data.texts[i] and np.array_equal(first.offsets[3], data.offsets[i])
    assert len(dataset.subset(data, 100)) == 30


def test_windows_are_the_fewest_of_at_most_n_steps_and_near_equal():
    assert dataset.windows(10, 4) == [(0, 3), (3, 6), (6, 10)]  # not 4 + 4 + a leftover 2
    assert dataset.windows(8, 4) == [(0, 4), (4, 8)]
    assert dataset.windows(5, 10) == [(0, 5)]
    assert dataset.windows(0, 10) == [(0, 0)]


def test_next_lines_follow_the_form_by_its_line_numbers():
    ids = ["a01-000u-01", "a01-000u-02", "a01-000u-04", "a01-000x-03", "a01-000u-03", "odd", "z-x"]
    assert dataset.next_lines(ids) == [1, 4, -1, -1, 2, -1, -1]


def test_joining_move_puts_the_second_line_a_word_space_right_of_the_first_level_with_it():
    # first line: 4 characters over x 0..40 (a word space of 10), ending at (30, -5), median height 0;
    # second line starts 2 right of its own leftmost point and 3 above its median height
    first = np.diff(np.array([[0, 0], [40, 5], [20, 0], [30, -5]], float), axis=0, prepend=[[0, 0]])
    second = np.diff(np.array([[0, 0], [-2, -1], [5, -6]], float), axis=0, prepend=[[0, 0]])
    move = dataset.joining_move(first, second, characters=4)
    # start: x = 40 + 10 + (0 - (-2)) = 52, y = 0 + (0 - (-1)) ... second's median height is -1
    np.testing.assert_allclose(move, [52 - 30, 0 + (0 - (-1)) - (-5)])


def test_a_joined_pair_is_the_first_line_then_the_second_after_the_joining_move():
    data = make_handwriting_data(3)
    offsets, codes = dataset.joined(data, 0, 1)
    first, second = data.offsets[0], data.offsets[1]
    assert len(offsets) == len(first) + len(second)
    np.testing.assert_array_equal(offsets[:len(first)], first)
    np.testing.assert_array_equal(offsets[len(first) + 1:], second[1:])
    raw = lambda o: o[:, 1:].astype(np.float64) * data.offset_std + data.offset_mean
    move = dataset.joining_move(raw(first), raw(second), len(data.texts[0]))
    np.testing.assert_allclose(raw(offsets[len(first):len(first) + 1])[0], move, rtol=1e-5)
    assert offsets[len(first), 0] == second[0, 0] and first[-1, 0] == 1  # the pen is up between them
    assert dataset.decode_text(codes) == f"{data.texts[0].rstrip()} {data.texts[1]}"


def test_epoch_items_join_the_asked_fraction_the_same_way_for_the_same_seed():
    data = make_handwriting_data(400)  # ids line-0 ... line-399: one form, each line has a next but the last
    assert dataset.epoch_items(data, 0.0, None) == list(range(400))
    items = dataset.epoch_items(data, 0.5, np.random.default_rng([3, 1]))
    assert items == dataset.epoch_items(data, 0.5, np.random.default_rng([3, 1]))
    pairs = [item for item in items if isinstance(item, tuple)]
    assert all(second == first + 1 for first, second in pairs)
    assert 0.4 < len(pairs) / 400 < 0.6
    assert [item if isinstance(item, int) else item[0] for item in items] == list(range(400))  # each line leads once
    everything = dataset.epoch_items(data, 1.0, np.random.default_rng(0))
    assert everything[:-1] == [(i, i + 1) for i in range(399)] and everything[-1] == 399
    assert [dataset.item_length(data, i) for i in everything[:3]] == [len(dataset.joined(data, i, i + 1)[0])
                                                                       for i in range(3)]


def test_a_joined_sequences_nll_is_its_lines_nlls_with_the_state_carried_across():
    """The loss of a joined pair, computed by hand: the first line's points (the window reading the
    joined text), then, from the state the first line left, the joining move and the second
    line's points; the two add up to the pair's NLL in one pass."""
    data = make_handwriting_data(2)
    offsets, codes = dataset.joined(data, 0, 1)
    torch.manual_seed(0)
    config = ModelConfig(task="synthesis", cell_size=16, num_clusters=3, K=2, alphabet_size=len(dataset.ALPHABET))
    model = HandwritingModel(config)
    x, text = torch.from_numpy(offsets)[None], torch.from_numpy(codes)[None]
    ones = lambda t: torch.ones(t.shape[:2])
    whole, count = sequence_nll(model, x, ones(x), text, ones(text))
    split = len(data.offsets[0])
    first, first_count, state = sequence_nll(model, x[:, :split], ones(x[:, :split]), text, ones(text),
                                             return_state=True)
    # the second part's input starts with the first line's last point, which predicts the move
    second, second_count = sequence_nll(model, x[:, split - 1:], ones(x[:, split - 1:]), text, ones(text), state)
    assert first_count + second_count == count == len(offsets) - 1
    assert (first + second).item() == pytest.approx(whole.item(), rel=1e-5)
    by_steps, state = 0.0, model.initial_state(1)
    for t in range(len(offsets) - 1):  # point by point, the state carried
        y, state, _ = model(x[:, t:t + 1], text, ones(text), state=state)
        by_steps += model_module.point_nll(model_module.split_mixture(y), x[:, t + 1:t + 2]).sum().item()
    assert by_steps == pytest.approx(whole.item(), rel=1e-5)
