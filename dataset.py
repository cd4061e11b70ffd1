"""The processed data as the model reads it: the alphabet, the normalisation of pen offsets, the
.npz split format, batches, and the likelihood of a split.

data_preprocessing.py writes splits in this format; train.py, bench.py and evaluate.py read them,
cut them into padded batches and take their NLL here (dataset_nll: training validates with the
same function the judge uses); generation encodes its texts with the same alphabet and padding,
and turns the network's offsets into pen units with the same Normalisation. One home for all of
it, so that the format has one definition.
"""
import os
import unicodedata
from dataclasses import dataclass, replace

import numpy as np
import torch

import utils
from model import sequence_nll

# Every character of the IAM-OnDB CSR transcriptions: letters (Q, X, Z included),
# digits and the punctuation the writers used. Code i is ALPHABET[i].
ALPHABET = (" !\"#%&'()*+,-./0123456789:;?@"
            "ABCDEFGHIJKLMNOPQRSTUVWXYZ[]_abcdefghijklmnopqrstuvwxyz")
# The one rule for a character outside the alphabet, in training and generation alike:
# it is written as this character (a space: the pen leaves a gap rather than guess a shape).
UNKNOWN_REPLACEMENT = " "


# What people type that the alphabet lacks but can spell: typographic quotes and dashes, and a
# few letters that Unicode does not decompose. Accented letters (é, ñ), ligatures (ﬁ) and the
# ellipsis come from Unicode's own decomposition (NFKD) instead.
LOOKALIKES = {"‘": "'", "’": "'", "‛": "'", "′": "'", "‚": ",", "“": '"', "”": '"', "„": '"',
              "″": '"', "«": '"', "»": '"', "‐": "-", "‑": "-", "‒": "-", "–": "-", "—": "-",
              "―": "-", "−": "-", "ß": "ss", "æ": "ae", "Æ": "AE", "œ": "oe", "Œ": "OE",
              "ø": "o", "Ø": "O", "ł": "l", "Ł": "L", "đ": "d", "Đ": "D", "×": "x"}


def spelled_in(text, alphabet=ALPHABET):
    """`text` with each character outside `alphabet` replaced by a look-alike spelled in it
    (’ -> ', é -> e, … -> ...) where there is one; others are left for encode_text's rule.
    Generation does this to the texts it is given; the training transcriptions need none."""
    out = []
    for ch in text:
        if ch not in alphabet:
            alike = LOOKALIKES.get(ch) or "".join(
                c for c in unicodedata.normalize("NFKD", ch) if not unicodedata.combining(c))
            if alike and all(c in alphabet for c in alike):
                ch = alike
        out.append(ch)
    return "".join(out)


def unknown_characters(text, alphabet=ALPHABET):
    """The distinct characters of `text` that `alphabet` lacks, sorted."""
    return sorted(set(text) - set(alphabet))


def encode_text(text, alphabet=ALPHABET):
    """Text -> int64 codes (indices into `alphabet`); unknown characters become UNKNOWN_REPLACEMENT."""
    index = {ch: i for i, ch in enumerate(alphabet)}
    replacement = index[UNKNOWN_REPLACEMENT]
    return np.array([index.get(ch, replacement) for ch in text], dtype=np.int64)


def decode_text(codes, alphabet=ALPHABET):
    return "".join(alphabet[int(c)] for c in codes)


class Normalisation:
    """How the network sees pen offsets: dx and dy as (value - mean) / std, with the mean and
    standard deviation (pen units, float64 (2,)) of the training split's rows; end_of_stroke as
    it is. The data carries one (HandwritingData.normalisation, from the .npz's offset_mean and
    offset_std) and so does every checkpoint (the same two keys: Normalisation.of): every
    conversion between normalised offsets and pen units goes through it."""

    def __init__(self, mean, std):
        self.mean = np.array(mean, dtype=np.float64).reshape(2)
        self.std = np.array(std, dtype=np.float64).reshape(2)

    @classmethod
    def of(cls, saved):
        """The normalisation a checkpoint (the dict checkpoint.load returns) was trained with."""
        return cls(saved["offset_mean"], saved["offset_std"])

    def to_pen_units(self, offsets):
        """Normalised offsets (..., 3) -> pen units: dx, dy = value * std + mean (a new float64 array)."""
        out = np.array(offsets, dtype=np.float64)
        out[..., 1:] = out[..., 1:] * self.std + self.mean
        return out

    def from_pen_units(self, offsets):
        """Pen units (..., 3) -> normalised offsets, the inverse of to_pen_units (a new float64 array)."""
        out = np.array(offsets, dtype=np.float64)
        out[..., 1:] = (out[..., 1:] - self.mean) / self.std
        return out

    def __eq__(self, other):
        return (isinstance(other, Normalisation) and np.array_equal(self.mean, other.mean)
                and np.array_equal(self.std, other.std))

    def __repr__(self):
        return f"Normalisation(mean={self.mean.tolist()}, std={self.std.tolist()})"


@dataclass
class HandwritingData:
    """One split of processed handwriting: a list of lines, each offsets + text.

    offsets[i]:    float32 (T_i, 3) rows [end_of_stroke, dx, dy]; dx, dy normalised with
                   offset_mean/offset_std (y grows upwards); end_of_stroke is 1 on the last
                   point of each pen stroke.
    text_codes[i]: int64 (U_i,) indices into `alphabet`.
    """
    offsets: list
    text_codes: list
    texts: list
    line_ids: list
    alphabet: str
    offset_mean: np.ndarray  # (2,) raw-unit mean of dx, dy over the training split
    offset_std: np.ndarray   # (2,) raw-unit standard deviation of dx, dy

    def __len__(self):
        return len(self.offsets)

    @property
    def normalisation(self):
        """offset_mean and offset_std as one Normalisation, the way to and from pen units."""
        return Normalisation(self.offset_mean, self.offset_std)


def subset_indices(count, lines, seed=0):
    """The same `lines` of `count` indices every time (drawn with numpy `seed`), in ascending order."""
    return sorted(np.random.default_rng(seed).choice(count, min(lines, count), replace=False).tolist())


def subset(data, lines, seed=0):
    """The same `lines` lines of `data` every time (subset_indices), in their split's order."""
    chosen = subset_indices(len(data), lines, seed)
    return replace(data, offsets=[data.offsets[i] for i in chosen], text_codes=[data.text_codes[i] for i in chosen],
                   texts=[data.texts[i] for i in chosen], line_ids=[data.line_ids[i] for i in chosen])


def renormalised(data, normalisation):
    """The same lines normalised another way (a checkpoint's Normalisation); their ink in pen
    units is unchanged."""
    if normalisation == data.normalisation:
        return data
    offsets = [normalisation.from_pen_units(data.normalisation.to_pen_units(line)).astype(np.float32)
               for line in data.offsets]
    return replace(data, offsets=offsets, offset_mean=normalisation.mean.astype(np.float32),
                   offset_std=normalisation.std.astype(np.float32))


def save_data(path, data):
    """Write a split as one .npz (concatenated arrays + lengths; no pickles), atomically."""
    with utils.atomic_path(path) as tmp:
        np.savez(
            tmp,
            points=np.concatenate(data.offsets).astype(np.float32) if len(data) else np.zeros((0, 3), np.float32),
            point_lengths=np.array([len(o) for o in data.offsets], dtype=np.int64),
            text_codes=np.concatenate(data.text_codes).astype(np.int64) if len(data) else np.zeros(0, np.int64),
            text_lengths=np.array([len(c) for c in data.text_codes], dtype=np.int64),
            texts=np.array(data.texts, dtype=str),
            line_ids=np.array(data.line_ids, dtype=str),
            alphabet=np.array(data.alphabet),
            offset_mean=np.asarray(data.offset_mean, dtype=np.float32),
            offset_std=np.asarray(data.offset_std, dtype=np.float32),
        )


def load_data(path):
    """Read a split written by save_data."""
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"{path} does not exist. Run `python data_preprocessing.py` first "
            "(see README.md for where to put the IAM-OnDB files).")
    with np.load(path, allow_pickle=False) as f:
        n = len(f["point_lengths"])
        return HandwritingData(
            offsets=np.split(f["points"], np.cumsum(f["point_lengths"])[:-1]) if n else [],
            text_codes=np.split(f["text_codes"], np.cumsum(f["text_lengths"])[:-1]) if n else [],
            texts=[str(t) for t in f["texts"]],
            line_ids=[str(t) for t in f["line_ids"]],
            alphabet=str(f["alphabet"]),
            offset_mean=f["offset_mean"].copy(),
            offset_std=f["offset_std"].copy(),
        )


# ----------------------------------------------------------------------------- batches

def make_batches(lengths, batch_size, rng=None, pool=50):
    """Group line indices into batches of similar length, so little of a batch is padding.

    With an rng (training), lines are shuffled, sorted by length within pools of `pool` batches
    and the batches shuffled: batches differ every epoch but stay nearly padding-free. pool=1
    gives plain random batches (each padded to its longest line).
    """
    order = np.argsort(lengths, kind="stable")
    if rng is None:
        return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    shuffled = rng.permutation(len(lengths))
    pool = pool * batch_size
    batches = []
    for start in range(0, len(shuffled), pool):
        chunk = shuffled[start:start + pool]
        chunk = chunk[np.argsort(np.asarray(lengths)[chunk], kind="stable")]
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def pad(sequences, dtype):
    """Stack arrays of different lengths (first axis) into (B, longest, ...) zeros-padded, and a
    (B, longest) float mask that is 1 on real entries. The longest is at least 1."""
    longest = max([len(s) for s in sequences] + [1])
    padded = np.zeros((len(sequences), longest, *np.shape(sequences[0])[1:]), dtype)
    mask = np.zeros((len(sequences), longest), np.float32)
    for b, s in enumerate(sequences):
        padded[b, :len(s)], mask[b, :len(s)] = s, 1
    return torch.from_numpy(padded), torch.from_numpy(mask)


def distorted(offsets, data, rng, strength):
    """A line as if written a little differently: its pen offsets (dx, dy), in the pen's own units,
    times a random matrix [[e^a, s], [0, e^b]] with a, b, s ~ N(0, strength^2): wider or narrower
    by e^a, taller or shorter by e^b, slanted by s (the shear of x by y); the pen lifts where it did.
    offsets are normalised with data's statistics, and so is the result (float32)."""
    a, b, s = rng.normal(0.0, strength, 3)
    raw = data.normalisation.to_pen_units(offsets)
    raw[:, 1], raw[:, 2] = np.exp(a) * raw[:, 1] + s * raw[:, 2], np.exp(b) * raw[:, 2]
    return data.normalisation.from_pen_units(raw).astype(np.float32)


# ----------------------------------------------------------------------------- lines that follow each other

def joined_text(first, second):
    """The text of a line followed by another: the two joined by one space, as a primed line's
    window reads its prime's text and then the text it writes."""
    return f"{first.rstrip()} {second}"


def form_of(line_id):
    """The form a line belongs to, one writer's consecutive lines: a01-000u-01 is line 1 of a01-000u."""
    return line_id.rsplit("-", 1)[0]


def next_lines(line_ids):
    """For each line, the index of the next line of the same form, or -1. An IAM-OnDB form is one
    writer's consecutive lines, FORM-01, FORM-02, ... (a01-000u-01); ids of another shape have none."""
    where = {line_id: i for i, line_id in enumerate(line_ids)}
    following = []
    for line_id in line_ids:
        form = form_of(line_id)
        number = line_id[len(form) + 1:]
        following.append(where.get(f"{form}-{int(number) + 1:0{len(number)}d}", -1)
                         if number.isdigit() else -1)
    return following


def joining_move(first, second, characters):
    """The pen-up move (dx, dy), in pen units, from the end of line `first` to the start of line
    `second` written on to its right, as generation writes a text after its prime: one word space
    (the first line's width over its `characters`) right of the first line's rightmost point, the
    two lines' median heights level. first, second: pen-unit offsets (T, 2), each from its line's
    start (the first row is the zero offset)."""
    (x1, y1), (x2, y2) = np.cumsum(first, axis=0).T, np.cumsum(second, axis=0).T
    word_space = np.ptp(x1) / max(characters, 1)
    start_x = x1.max() + word_space + (x2[0] - x2.min())
    start_y = np.median(y1) + (y2[0] - np.median(y2))
    return np.array([start_x - x1[-1], start_y - y1[-1]])


def joined(data, first, second):
    """Lines `first` and `second` of data (consecutive lines of one writer) as one training
    sequence, joined the way generation joins a prime and its text: (offsets (T1 + T2, 3), text
    codes). The second line's start row (its zero offset) becomes the joining move (joining_move):
    the pen, lifted at the first line's end, goes to where the second line starts."""
    a, b, pen = data.offsets[first], data.offsets[second], data.normalisation
    move = joining_move(pen.to_pen_units(a)[:, 1:], pen.to_pen_units(b)[:, 1:], len(data.texts[first].rstrip()))
    b = b.copy()
    b[0, 1:] = pen.from_pen_units([0.0, *move])[1:]
    text = joined_text(data.texts[first], data.texts[second])
    return np.concatenate([a, b]).astype(np.float32), encode_text(text, data.alphabet)


def sequence(data, item):
    """A training sequence's (offsets, text codes): item is a line's index, or a pair of indices of
    lines that follow each other (joined)."""
    if isinstance(item, (tuple, list)):
        return joined(data, *item)
    return data.offsets[item], data.text_codes[item]


def epoch_items(data, join_fraction, rng):
    """The sequences of one training epoch: every line once, alone or, with probability
    join_fraction when its writer wrote a next line, followed by that line (joined). With
    join_fraction 0 these are the plain line indices, and rng is not used."""
    if not join_fraction:
        return list(range(len(data)))
    following = next_lines(data.line_ids)
    draws = rng.random(len(data))
    return [(i, following[i]) if following[i] >= 0 and draws[i] < join_fraction else i
            for i in range(len(data))]


def item_length(data, item):
    """The number of points of a training sequence (epoch_items), without building it."""
    if isinstance(item, (tuple, list)):
        return sum(len(data.offsets[i]) for i in item)
    return len(data.offsets[item])


def collate(data, indices, max_points=None, device="cpu", distortion=0.0, rng=None):
    """Pad the chosen lines into tensors: offsets (B, T, 3), mask (B, T), text (B, U), text_mask (B, U).

    indices are lines' indices, or pairs of them for lines joined (`sequence`). max_points cuts each
    sequence to its first max_points points (max_points - 1 predictions). With a distortion > 0
    each sequence is `distorted` first (a joined pair as one: one writer), drawing from rng.
    """
    sequences = [sequence(data, i) for i in indices]
    lines = [offsets[:max_points] for offsets, _ in sequences]
    if distortion:
        lines = [distorted(line, data, rng, distortion) for line in lines]
    offsets, mask = pad(lines, np.float32)
    text, text_mask = pad([codes for _, codes in sequences], np.int64)
    return offsets.to(device), mask.to(device), text.to(device), text_mask.to(device)


def windows(predictions, most):
    """Cut `predictions` time steps into the fewest windows of at most `most` steps, as equal in
    length as can be (no short leftover window): a list of (start, stop), stop exclusive."""
    count = max(1, -(-predictions // most))
    bounds = [i * predictions // count for i in range(count + 1)]
    return list(zip(bounds[:-1], bounds[1:]))


# ----------------------------------------------------------------------------- likelihood

@torch.no_grad()
def dataset_nll(model, data, batch_size, device="cpu"):
    """NLL of whole lines, in eval mode: (nats per line, nats per point). In fp32 unless the
    caller opens an autocast context (training evaluates outside its own). Training validates
    with it and evaluate.py judges with it: the same figure for both."""
    was_training = model.training
    model.eval()
    total, points = 0.0, 0.0
    for indices in make_batches([len(x) for x in data.offsets], batch_size):
        offsets, mask, text, text_mask = collate(data, indices, device=device)
        nll, count = sequence_nll(model, offsets, mask, text, text_mask)
        total, points = total + nll.item(), points + count.item()
    model.train(was_training)
    return total / len(data), total / points
