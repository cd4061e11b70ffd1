"""Write handwriting with a trained model (Graves 2013, arXiv:1308.0850, sections 4 and 5).

    python generate.py --task synthesis --text "a handwriting robot" --bias 1 --out samples/robot.svg
    python generate.py --task synthesis --text_file lines.txt --attention_out samples/phi.png
    python generate.py --task rand_write --num_samples 4 --length 700

or from Python:

    from generate import Writer
    writer = Writer.load("save/synthesis.pt")
    writing = writer.write(["a handwriting robot"], bias=1, seed=0)
    writing.save("robot.png")          # or .svg; writing.lines holds the pen offsets

Everything generation needs (model size, alphabet, normalisation) is in the checkpoint, by default
save/<task>_best.pt from your own training, else the shipped save/<task>.pt, else save/<task>_last.pt
(a run still in its first epoch). Output goes to --out, a PNG or an SVG by its extension, or G-code
for a pen plotter (.gcode: --page_mm, --line_height_mm, --feed_rate, --pen_up, --pen_down);
--strokes_out keeps the raw pen offsets [end_of_stroke, dx, dy] in pen units (.npy for one line
or equal-length lines, .npz for any: line_0, line_1 ... and texts).

A text line ends by Graves' rule (section 5.1): when the window weight phi of the position just
after the text exceeds that of every real character, the network has "read" the whole text. A step
cap (--max_points_per_char per character) stops a line that never gets there, with a warning.

Style (section 5.5): --prime FILE (an IAM-OnDB line XML, InkML or JSON) or --prime_line LINE_ID
(a line of the processed data) is read by the network before it writes, so that it writes on in
that hand; several --prime_line write the texts once in each hand (--show_primes draws the
primes). --adapt STEPS learns a prime's hand rather than reading it: a copy of the network is
fine-tuned on the prime's line (Graves' dynamic evaluation), then writes from the line's start:
the writer's other lines become far likelier than after reading the prime, but the written lines
carry less of its slant and read worse (docs/fidelity.md).
Pages: --width N word-wraps the texts into lines of at most N characters and writes them
one below the other in one style (Writer.write_page).

    python generate.py --prime a01-000u-01.xml --prime_text "A MOVE to stop Mr. Gaitskell" --text "in my hand"
    python generate.py --text_file paragraph.txt --width 40 --bias 1 --out samples/page.png
"""
import argparse
import os
import sys
import time
import warnings
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from tqdm import tqdm

import arguments
import checkpoint
import dataset
import ink
import utils
import model
from model import MAX_POINTS_PER_CHAR

DRAWING_FORMATS = (".png", ".svg", ".pdf", ".jpg", ".jpeg")
RETRIES = 3  # a stalled line is written again with the next seed, up to this many times
ADAPT_STEPS, ADAPT_RATE = 6, 5e-5  # Writer.adapted: the most likely held-out lines of a writer (docs/fidelity.md)

# Bounds on the work of one call (docs/reliability.md).
# A line's characters: IAM-OnDB's lines have at most 64 (its validation lines 47), so the network
# learnt lines of ~1,900 points at most; yet the shipped model wrote texts of 100, 150, 200 and 300
# characters to their end (seed 0, bias 1, ~22 points a character: 6,800 points for 300). 200, three
# times the longest line it learnt, keeps well inside that; a longer text is wrapped into lines (--width).
MAX_LINE_CHARS = 200
MAX_TEXTS = arguments.MAX_SAMPLE_LINES  # lines one command writes (texts x hands), as rand_write's --num_samples
MAX_TEXT_FILE_BYTES = 2 ** 20           # --text_file: 1,000 lines of 200 characters take a fifth of it
# write() writes its texts in batches of at most MAX_BATCH_LINES lines whose record of the window
# (float32 phi: lines x step cap x characters) fits BATCH_WINDOW_BYTES: 64 lines of IAM-OnDB's longest
# text take 85 MB; 200-character lines go 20 at a time.
MAX_BATCH_LINES = 64
BATCH_WINDOW_BYTES = 256 * 2 ** 20
# A prime's text and ink agree when, once the network has read the ink, its window's peak lies within
# this many characters of the space that joins the prime's text to the new one (check_prime_window).
# Measured with the shipped model on 100 validation lines (Prime.from_data, text "hello world"):
# with their own texts the peak was on the space for 84, 1 character off for 12, 2 or 3 off for 2,
# and 5 before and 6 after for one each (the latter's ink holds a word its text marks struck out, #).
# Caught: the text 'A' (all 100: 5 or more after), half the text (98), the text twice (100: 8 or more
# before), the last word dropped (78), " and" added (89), another line's text (67: the window tells
# how long the text is, not its words). docs/reliability.md has the table.
PRIME_WINDOW_SLACK = 3
PRIME_CHECKS = ("stop", "warn", "off")


# ----------------------------------------------------------------------------- the API

@dataclass
class Writing:
    """Lines a Writer wrote: pen offsets in pen units, and how they came about."""
    lines: list                    # float arrays (T_b, 3): [end_of_stroke, dx, dy], y up
    seed: int
    texts: Optional[list] = None   # synthesis: the text of each line
    phis: Optional[list] = None    # synthesis: (T_b - 1, U_b) window on the text behind points 1 ...
    capped: Optional[list] = None  # synthesis: True where a line hit the step cap, unfinished
    # primed lines: where the window's peak was once the network had read the prime, in characters
    # after the space that joins the prime's text to the line's (None: past the whole text)
    prime_window: Optional[list] = None

    @classmethod
    def joined(cls, parts, seed):
        """One Writing of several, their lines one after another; prime_window where every part has it."""
        field = lambda name: [value for part in parts for value in getattr(part, name)]
        windows = None if any(part.prime_window is None for part in parts) else field("prime_window")
        return cls(field("lines"), seed, field("texts"), field("phis"), field("capped"), windows)

    def save(self, path, label=False):
        """Draw the lines, stacked, to a PNG or SVG (by extension); label writes each text above its line."""
        utils.save_drawing(self.lines, path, titles=self.texts if label else None)

    def save_strokes(self, path):
        """The pen offsets as .npy (one array: (T, 3), or (N, T, 3) for equal lengths) or .npz."""
        lines = [line.astype(np.float32) for line in self.lines]
        with utils.atomic_path(path) as tmp:
            if path.endswith(".npy"):
                np.save(tmp, lines[0] if len(lines) == 1 else np.stack(lines))
            else:
                extra = {"texts": np.array(self.texts, dtype=str)} if self.texts is not None else {}
                np.savez(tmp, **{f"line_{i}": line for i, line in enumerate(lines)}, **extra)

    def save_attention(self, path):
        """The window phi over each line's characters (synthesis)."""
        utils.plot_attention(self.phis, self.texts, path)


# ----------------------------------------------------------------------------- primes

class PrimeError(ValueError):
    """A prime that cannot be used; the message names its file and what is wrong."""


class PrimeWarning(UserWarning):
    """A prime whose text and ink seem to disagree (prime_check="warn")."""


@dataclass
class Prime:
    """A line of handwriting whose style to write in (Graves section 5.5): what it says, and its
    pen offsets in pen units: float (T, 3) rows [end_of_stroke, dx, dy], y up, row 0 the zero
    offset (the line's first point). That is the format of Writing.lines, so a written line can
    prime the next. Any scale: the network reads every prime at the data's pace (ink.as_read)."""
    text: str
    offsets: np.ndarray
    name: Optional[str] = None  # where it came from (its file, --prime_line ID), for messages

    @classmethod
    def read(cls, path, text=None):
        """A prime from an IAM-OnDB line XML, an InkML or a JSON file (ink.read_ink_file).

        `text` (--prime_text) is what the strokes say; it wins over the file's own (InkML's
        transcription annotation, JSON's "text"; IAM-OnDB's stroke files hold none). Raises
        PrimeError, naming the file and what is wrong.
        """
        try:
            offsets, file_text = ink.read_ink_file(path)
        except ink.BadFile as e:
            raise PrimeError(str(e)) from None
        text = text if text is not None else file_text
        if not text or not text.strip():
            raise PrimeError(f"{path}: the file does not say what is written; pass its text (--prime_text)")
        return cls(text.strip(), offsets, os.fspath(path))

    @classmethod
    def from_data(cls, line_id, data_dir="data"):
        """A line of the processed data by its id (e.g. a01-003-01): validation.npz, then train.npz.
        PrimeError, in a sentence, for a split that is not a regular file or not data_preprocessing.py's."""
        for split in ("validation", "train"):
            data = load_split(os.path.join(data_dir, f"{split}.npz"))
            if line_id in data.line_ids:
                i = data.line_ids.index(line_id)
                return cls(data.texts[i], data.normalisation.to_pen_units(data.offsets[i]), f"--prime_line {line_id}")
        example = data.line_ids[0] if data.line_ids else "a01-003-01"
        raise PrimeError(f"--prime_line {line_id}: no line of that id in {data_dir}/validation.npz or "
                         f"train.npz (ids look like {example})")


def load_split(path):
    """dataset.load_data(path) for a prime: FileNotFoundError where it is missing, PrimeError where
    it is no regular file or not a split that data_preprocessing.py wrote."""
    if not os.path.exists(path):
        return dataset.load_data(path)  # its FileNotFoundError says how to make one
    try:
        ink.open_regular_file(path, os.stat(path).st_size).close()  # a pipe would block np.load
        data = dataset.load_data(path)
        if not len(data.offsets) == len(data.texts) == len(data.line_ids):
            raise ValueError("its arrays disagree in length")
        return data
    except ink.BadFile as e:
        raise PrimeError(f"--prime_line: {e}") from None
    except Exception as e:  # np.load and the arrays raise many kinds for a file of another kind
        raise PrimeError(f"--prime_line: {path} is not a split data_preprocessing.py wrote ({type(e).__name__}: "
                         f"{str(e)[:80]}); remake it with python data_preprocessing.py") from None


def window_after_prime(phi, prime_chars):
    """Where the window's peak is once the network has read a prime, in characters after the space
    that joins the prime's text to the line's: phi (T, U) is the window behind each point of the
    primed line over the joined text, row 0 the one at the prime's last point. None where the window
    is past the whole text: the line ended right there (no rows), or every character is so far behind
    the window that its weight has reached the floor of window_exp (a flat row)."""
    if len(phi) == 0 or not np.ptp(phi[0]) > 0:
        return None
    return int(np.argmax(phi[0])) - (prime_chars - 1)


def check_prime_window(prime, off, check="stop"):
    """Whether a prime's text and ink agree, told by the network's window where it has read the ink
    (off: window_after_prime): its peak must lie within PRIME_WINDOW_SLACK characters of the space
    after the prime's text. Otherwise PrimeError ("stop") or PrimeWarning ("warn"), naming the
    prime and what to fix; "off" looks at nothing."""
    if check == "off" or (off is not None and abs(off) <= PRIME_WINDOW_SLACK):
        return
    where = ("the network's window had gone past the end of the whole text" if off is None else
             f"the network's window was already {off} characters into the new text" if off > 0 else
             f"{-off} characters of its text are still unread by the network's window")
    fix = ("pick another line, its text in the data does not match its ink" if (prime.name or "").startswith("--prime_line")
           else "give the prime's text as its ink writes it, word for word (--prime_text)")
    message = (f"{prime.name or 'the prime'} ({prime.text!r}): its text and its ink disagree: when its ink ended, "
               f"{where} (at most {PRIME_WINDOW_SLACK} allowed): {fix}; --prime_check warn writes anyway")
    if check == "stop":
        raise PrimeError(message)
    warnings.warn(message, PrimeWarning)


def wrap_words(text, width):
    """Break `text` into lines of at most `width` characters between words (greedily, one space
    between words); a word longer than `width` gets a line of its own."""
    lines = []
    for word in text.split():
        if lines and len(lines[-1]) + 1 + len(word) <= width:
            lines[-1] += " " + word
        else:
            lines.append(word)
    return lines


def fresh_seed():
    return int.from_bytes(os.urandom(4), "little") >> 1


def warn_stalled(name, text, max_points_per_char, first_seed, last_seed):
    """Say that a line was kept although it stalled, with every seed it was tried with."""
    seeds = f"seed {first_seed}" if first_seed == last_seed else f"seeds {first_seed} to {last_seed}"
    warnings.warn(f"{name} ({text!r}) stalled at the step cap of {max_points_per_char} points per character: "
                  f"its window did not reach the end of the text, with {seeds}; kept the last attempt, which "
                  "may miss words (raise --max_points_per_char or try another seed)")


# ----------------------------------------------------------------------------- the writer

class Writer:
    """A trained model together with what its checkpoint knows about the data: the alphabet that
    turns text into codes, and the normalisation (dataset.Normalisation) between the network's
    offsets and pen units.

    One retry rule for lines and pages. A line stalls when its window does not reach the end of
    its text within the step cap (rare, but words would be missing); it is then written again,
    up to `retries` times. Every attempt takes the next seed: the first one `seed`
    (Writing.seed), each later one the seed after the last one used. write() writes its texts
    as one batch, so an attempt is one batch (the lines still stalled, each with its own prime);
    write_page() writes its lines one after another, each primed by the one before, so each
    attempt at each line takes the next seed. A line that still stalls is kept, marked in
    Writing.capped, with a warning (warn_stalled). The same seed gives the same lines, and the
    same page.
    """

    def __init__(self, model, alphabet, normalisation, path=None):
        self.model, self.alphabet, self.normalisation, self.path = model, alphabet, normalisation, path

    @classmethod
    def from_checkpoint(cls, saved, path=None, device="cpu", compile=False):
        """A Writer from a checkpoint that checkpoint.load read (compile: checkpoint.build_model's)."""
        return cls(checkpoint.build_model(saved, device, compile), saved["alphabet"],
                   dataset.Normalisation.of(saved), path)

    @classmethod
    def load(cls, path, device="cpu", compile=False):
        """A Writer from a checkpoint file (raises FileNotFoundError or checkpoint.CheckpointError)."""
        return cls.from_checkpoint(checkpoint.load(path, device), path, device, compile)

    @property
    def task(self):
        return self.model.config.task

    # ------------------------------------------------------------------------- what the network reads

    def start_row(self, num_lines):
        """The first input row of every line: the zero pen offset, pen down, in normalised units.

        Every training line starts with this row (raw [0, 0, 0]), so generation starts from it too.
        """
        row = self.normalisation.from_pen_units(np.zeros(3))
        return torch.tensor(row, dtype=torch.float32).expand(num_lines, 3)

    @property
    def median_step(self):
        """The median in-stroke step of the training data in pen units, as the normalisation implies."""
        return ink.median_step(self.normalisation.std)

    def prime_as_read(self, prime):
        """A Prime's offsets as the network reads them, in pen units (ink.as_read, at the data's pace);
        PrimeError for offsets that no line of ink has (ink.checked_offsets)."""
        try:
            return ink.as_read(prime.offsets, self.median_step)[0]
        except ink.BadFile as e:
            raise PrimeError(f"{prime.name or 'the prime'}: {e}") from None

    def prime_offsets(self, prime):
        """A Prime's offsets as the network reads them, normalised (float64 tensor (T, 3))."""
        return torch.from_numpy(self.normalisation.from_pen_units(self.prime_as_read(prime)))

    def spelled(self, text):
        """`text` with look-alikes for the characters the alphabet lacks (dataset.spelled_in)."""
        return dataset.spelled_in(text, self.alphabet)

    def as_written(self, text):
        """`text` as the network reads it: look-alikes in, other unknown characters replaced."""
        return dataset.decode_text(dataset.encode_text(self.spelled(text), self.alphabet), self.alphabet)

    def encode(self, texts):
        """Texts -> padded codes (B, U) and mask (B, U); warns about characters outside the alphabet."""
        codes = []
        for text in texts:
            unknown = dataset.unknown_characters(text, self.alphabet)
            if unknown:
                warnings.warn(f"characters not in the model's alphabet, written as "
                              f"{dataset.UNKNOWN_REPLACEMENT!r}: {' '.join(repr(c) for c in unknown)} (in {text!r})")
            codes.append(dataset.encode_text(text, self.alphabet))
        return dataset.pad(codes, np.int64)

    def adapted(self, prime, steps=ADAPT_STEPS, learning_rate=ADAPT_RATE):
        """A Writer whose network has learnt the hand of `prime` (a Prime), not only read it: a copy
        fine-tuned on the prime's line (model.adapted), this one left as it was. Write with it
        unprimed: the weights carry the hand. It makes the writer's other lines far likelier
        than reading the prime does, but its lines at bias 1 read worse (docs/fidelity.md)."""
        offsets = self.prime_offsets(prime).float()[None]
        text, text_mask = self.encode([self.spelled(prime.text)])
        learner = model.adapted(self.model, offsets, text, text_mask, steps, learning_rate)
        return Writer(learner, self.alphabet, self.normalisation, self.path)

    # ------------------------------------------------------------------------- writing

    def write(self, texts, bias=0.0, seed=None, max_points_per_char=MAX_POINTS_PER_CHAR, prime=None,
              retries=RETRIES, prime_check="warn", progress=False, uniforms=None):
        """Write each text as one line (synthesis), in batches; returns a Writing in pen units.

        bias is Graves' sampling bias (section 5.2): 0 samples the model as trained, larger writes
        more neatly. The same seed gives the same strokes; None draws a fresh one (Writing.seed).
        prime, a Prime (or a list, one per text), is the hand to write in (section 5.5): the
        network first reads its strokes, its window on the prime's text, then writes on. A line
        that stalls is written again by the class's retry rule, the stalled lines of the batch
        together. Characters the alphabet lacks are written as look-alikes where there are some
        (’ as ', é as e: dataset.spelled_in), else as spaces, with a warning; Writing.texts holds
        the texts as written.

        Bounded work: a text (and a prime's text) may have MAX_LINE_CHARS characters; the texts
        go in batches (write_batches: at most MAX_BATCH_LINES lines whose window record fits
        BATCH_WINDOW_BYTES), each taking the next seed not yet used, so that a call that fits one
        batch writes as it always did; progress=True shows a bar on stderr (from two batches on). prime_check
        ("warn", "stop" or "off") says what a prime whose text and ink disagree gets
        (check_prime_window).

        uniforms, an array (points, lines, 4) of numbers in [0, 1), are the random draws in place of
        the seed's (model.draw_noise: four a point and line, as the browser's engine draws them), so
        that another implementation can be held to this one; a stalled line is then not written
        again (there is only the one stream), only marked capped, with the warning.
        """
        texts = [texts] if isinstance(texts, str) else list(texts)
        primes = None if prime is None else [prime] * len(texts) if isinstance(prime, Prime) else list(prime)
        self.check_lengths(texts, primes)
        if uniforms is not None:
            uniforms, retries = np.asarray(uniforms), 0
            if uniforms.ndim != 3 or uniforms.shape[1:] != (len(texts), 4):
                raise ValueError(f"uniforms must be an array (points, {len(texts)} lines, 4), not of shape {uniforms.shape}")
        next_seed = first_seed = fresh_seed() if seed is None else seed
        parts, batches = [], self.write_batches(texts, primes, max_points_per_char)
        with tqdm(total=len(texts), unit="line", disable=not progress or len(batches) < 2, file=sys.stderr) as bar:
            for batch in batches:
                part, next_seed = self._write_to_the_end(
                    [texts[b] for b in batch], None if primes is None else [primes[b] for b in batch], bias, next_seed,
                    max_points_per_char, retries, [f"line {b}" for b in batch], prime_check,
                    None if uniforms is None else uniforms[:, batch])
                parts.append(part)
                bar.update(len(batch))
        return Writing.joined(parts, first_seed)

    def check_lengths(self, texts, primes):
        """ValueError for a text longer than MAX_LINE_CHARS (see there why), PrimeError for a prime's text."""
        for text in texts:
            if len(text) > MAX_LINE_CHARS:
                raise ValueError(f"a text of {len(text)} characters ({text[:30]!r}...): a line may have at most "
                                 f"{MAX_LINE_CHARS}; write a long text as a page of lines (write_page with wrap_words, "
                                 "--width N)")
        for prime in primes or []:
            if len(prime.text) > MAX_LINE_CHARS:
                raise PrimeError(f"{prime.name or 'a prime'}: the prime's text has {len(prime.text)} characters; a line "
                                 f"may have at most {MAX_LINE_CHARS}: prime with one line of handwriting")

    def write_batches(self, texts, primes, max_points_per_char):
        """The texts' indices in batches, in order: at most MAX_BATCH_LINES lines whose record of the
        window, lines x (their longest step cap) x (their longest text read) float32s, fits
        BATCH_WINDOW_BYTES (a line alone always forms a batch)."""
        batches, cap, read = [], 0, 0
        for b, text in enumerate(texts):
            line_cap = max_points_per_char * (len(text) + 1) + 1
            line_read = len(text) + (0 if primes is None else len(primes[b].text) + 1)
            batch = batches[-1] if batches else []
            wider = max(cap, line_cap) * max(read, line_read) * 4 * (len(batch) + 1)
            if not batch or len(batch) == MAX_BATCH_LINES or wider > BATCH_WINDOW_BYTES:
                batches.append([b])
                cap, read = line_cap, line_read
            else:
                batch.append(b)
                cap, read = max(cap, line_cap), max(read, line_read)
        return batches

    def write_page(self, lines, bias=0.0, seed=None, max_points_per_char=MAX_POINTS_PER_CHAR, prime=None,
                   retries=RETRIES, prime_check="warn", progress=False):
        """Write the lines of a page one after another, in one hand (wrap_words makes the lines).

        Each line is primed by `prime`, or, without one, by the last line of the page written to
        its end (the first line is then unprimed): a line passes on its style, a stalled one
        would pass on its scribble. No word may be dropped: a line that stalls is written again
        by the class's retry rule, each attempt with the next seed from `seed` (Writing.seed) on.
        `prime` is checked as write() checks it (prime_check); the page's own lines, which the
        network wrote to their ends, are not. progress=True shows a bar, a line at a time, on stderr.
        """
        lines = [lines] if isinstance(lines, str) else list(lines)
        self.check_lengths(lines, None if prime is None else [prime])
        first_seed = seed = fresh_seed() if seed is None else seed
        written, previous = [], None
        for number, text in enumerate(tqdm(lines, unit="line", disable=not progress or len(lines) < 2, file=sys.stderr)):
            hand = prime if prime is not None else previous
            line, seed = self._write_to_the_end([text], None if hand is None else [hand], bias, seed,
                                                max_points_per_char, retries, [f"page line {number}"],
                                                prime_check if prime is not None else "off")
            written.append(line)
            if not line.capped[0]:
                previous = Prime(self.as_written(text), line.lines[0])
        return Writing([w.lines[0] for w in written], first_seed, [w.texts[0] for w in written],
                       [w.phis[0] for w in written], [w.capped[0] for w in written])

    def _write_to_the_end(self, texts, primes, bias, seed, max_points_per_char, retries, names, prime_check="off",
                          uniforms=None):
        """Write `texts` as a batch (primes: one per text, or None) by the retry rule; a stalled
        line that stays stalled is warned about by its name in `names`. The primes are checked
        after the first attempt (check_prime_window; the network reads a prime alike whatever the
        seed). Returns the Writing and the next seed not yet used."""
        writing = self._write(texts, primes, bias, seed, max_points_per_char, uniforms)
        for prime, off in zip(primes or [], writing.prime_window or []):
            check_prime_window(prime, off, prime_check)
        next_seed = seed + 1
        stalled = [b for b, capped in enumerate(writing.capped) if capped]
        for _ in range(retries):
            if not stalled:
                break
            their_primes = None if primes is None else [primes[b] for b in stalled]
            again = self._write([writing.texts[b] for b in stalled], their_primes, bias, next_seed, max_points_per_char)
            next_seed += 1
            for b, line, phi, capped in zip(stalled, again.lines, again.phis, again.capped):
                writing.lines[b], writing.phis[b], writing.capped[b] = line, phi, capped
            stalled = [b for b in stalled if writing.capped[b]]
        for b in stalled:
            warn_stalled(names[b], writing.texts[b], max_points_per_char, seed, next_seed - 1)
        return writing, next_seed

    def _write(self, texts, primes, bias, seed, max_points_per_char, uniforms=None):
        """One attempt at writing `texts` as a batch, each after its prime (primes: a list, or None).

        A primed line's window reads dataset.joined_text(prime.text, text): it walks over the
        prime's text while the network reads the prime's strokes, then on over the space into the
        new text, and the line ends by Graves' rule at the end of the whole. Only the new points
        are returned.
        """
        if self.task != "synthesis":
            raise ValueError(f"{self.path} holds a {self.task} model: it writes no text (use sample)")
        if any(not text.strip() for text in texts):
            raise ValueError("cannot write an empty (or whitespace-only) text")
        texts = [self.spelled(text) for text in texts]
        read = texts if primes is None else [dataset.joined_text(self.spelled(p.text), t)
                                             for p, t in zip(primes, texts, strict=True)]
        prime_chars = [len(r) - len(t) for r, t in zip(read, texts)]
        text, text_mask = self.encode(read)
        seed, generator = self._generator(seed)
        start = self.start_row(len(texts)) if primes is None else None
        read_first = None if primes is None else [self.prime_offsets(p) for p in primes]
        offsets, phis, capped = self.model.generate(start, text=text, text_mask=text_mask, bias=bias,
                                                    generator=generator, max_points_per_char=max_points_per_char,
                                                    prime=read_first, prime_chars=prime_chars, uniforms=uniforms)
        lines = [self.normalisation.to_pen_units(o) for o in offsets]
        if primes is None:
            return Writing(lines, seed, texts, phis, capped)
        where = [window_after_prime(phi, chars) for phi, chars in zip(phis, prime_chars)]
        lines, phis = after_prime(lines, phis, prime_chars)
        return Writing(lines, seed, texts, phis, capped, where)

    def sample(self, num_lines=4, length=700, bias=0.0, seed=None):
        """num_lines lines of `length` points each from an unconditional (rand_write) model."""
        if self.task != "rand_write":
            raise ValueError(f"{self.path} holds a {self.task} model: it writes texts (use write)")
        seed, generator = self._generator(seed)
        offsets, _, _ = self.model.generate(self.start_row(num_lines), length=length, bias=bias,
                                            generator=generator)
        return Writing([self.normalisation.to_pen_units(o) for o in offsets], seed)

    def _generator(self, seed):
        # no seed: a fresh one, kept in the Writing so that a good sample can be drawn again
        seed = seed if seed is not None else fresh_seed()
        return seed, torch.Generator().manual_seed(seed)  # sampling runs on the CPU, whatever the model's device


def after_prime(lines, phis, prime_chars):
    """Primed lines (pen units) and their windows without the prime. Row 0 is the prime's last
    point: a primed line starts at its first new point, the origin, as every line of the data does
    (the pen's jump from the prime is left out), and its window is kept over its own text only."""
    lines = [line[1:] for line in lines]
    for line in lines:
        if len(line):
            line[0, 1:] = 0
    return lines, [phi[1:, chars:].copy() for phi, chars in zip(phis, prime_chars)]  # a copy: the prime's part goes


# ----------------------------------------------------------------------------- command line

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", choices=["rand_write", "synthesis"], default="synthesis")
    p.add_argument("--checkpoint", help="default: MODEL_DIR/<task>_best.pt, else <task>.pt (shipped), else <task>_last.pt")
    p.add_argument("--model_dir", default="save")
    p.add_argument("--text", action="append", help="text to write (synthesis); repeat for several lines")
    p.add_argument("--text_file", help="UTF-8 file with one text per line (synthesis)")
    p.add_argument("--width", type=arguments.POSITIVE, metavar="N",
                   help="write a page: word-wrap the texts, joined, into lines of at most N characters, "
                        "each primed by the last (or all by --prime), and written again if it stalls")
    p.add_argument("--prime", metavar="FILE",
                   help="write in the hand of this line (section 5.5): an IAM-OnDB line XML "
                        "(lineStrokes/...xml, with --prime_text), InkML or JSON "
                        '{"text": ..., "strokes": [[[x, y], ...], ...]} (y down)')
    p.add_argument("--prime_text", help="what --prime says (wins over the text the file holds)")
    p.add_argument("--prime_line", metavar="LINE_ID", action="append",
                   help="prime with a line of the processed data, e.g. a01-003-01 (DATA_DIR/validation.npz "
                        "or train.npz); repeat to write the texts once in each of several hands")
    p.add_argument("--prime_check", choices=PRIME_CHECKS, default="stop",
                   help="a prime whose text and ink disagree (the network's window, having read the ink, is more "
                        f"than {PRIME_WINDOW_SLACK} characters from the end of its text) stops the command (stop), "
                        "is written with a warning (warn) or is not looked at (off)")
    p.add_argument("--adapt", metavar="STEPS", type=arguments.OPTIONAL, default=0,
                   help="learn each prime's hand rather than read it: fine-tune the network on the prime's "
                        f"line for STEPS steps (a few seconds; {ADAPT_STEPS} makes the writer's other lines "
                        "likeliest), then write from the line's start; the lines carry less of the prime's "
                        "slant and read worse than a read prime's (docs/fidelity.md). 0: read the prime")
    p.add_argument("--show_primes", action="store_true",
                   help="draw each prime, as the network reads it, above the lines written in its hand")
    p.add_argument("--data_dir", default="data", help="where --prime_line looks")
    p.add_argument("--num_samples", default=4, help="lines to draw (rand_write)",
                   type=arguments.count(1, arguments.MAX_SAMPLE_LINES,
                                        hint="; write more in several runs, each with its own --seed"))
    p.add_argument("--length", default=700, help="points per line (rand_write)",
                   type=arguments.count(2, arguments.MAX_SAMPLE_POINTS,
                                        hint="; real lines have up to about 2,000 (700 is about one line)"))
    p.add_argument("--bias", type=arguments.BIAS, default=0.0,
                   help="sampling bias b >= 0 (section 5.2): 0 samples the model as trained, larger b "
                        "writes more neatly")
    p.add_argument("--max_points_per_char", type=arguments.count(1, 5 * MAX_POINTS_PER_CHAR),
                   default=MAX_POINTS_PER_CHAR,
                   help="stop a synthesis line after this many points per character (+1 character); "
                        "real lines take about 21, at most about 45")
    p.add_argument("--seed", type=arguments.SEED, help="random seed; the same seed gives the same strokes")
    p.add_argument("--device", type=arguments.DEVICE, default="cpu")
    p.add_argument("--threads", type=arguments.THREADS, default=1,
                   help="CPU threads of PyTorch and of NumPy's BLAS (0: one per core). One by default, "
                        "so that writing beside a training run slows neither much; on a quiet machine "
                        "two wrote a 40-character line in 0.34 s against 0.49 s (2-core Xeon)")
    p.add_argument("--out", help="PNG or SVG (by extension); default samples/<task>.png")
    p.add_argument("--strokes_out", help="also save the pen offsets: .npy or .npz")
    p.add_argument("--attention_out", help="synthesis: also plot the window phi over the characters")
    p.add_argument("--label", action="store_true", help="write each line's text above it (PNG)")
    plotter = utils.Plotter()  # --out FILE.gcode: one centre line per stroke, in millimetres
    p.add_argument("--page_mm", type=arguments.RATE, nargs=2, metavar=("WIDTH", "HEIGHT"),
                   default=[plotter.page_width, plotter.page_height], help="G-code: the plotter's page (default A4)")
    p.add_argument("--line_height_mm", type=arguments.RATE, default=plotter.line_height,
                   help="G-code: the height each written line takes (smaller where the page is too small)")
    p.add_argument("--feed_rate", type=arguments.RATE, default=plotter.feed_rate, help="G-code: mm per minute, pen down")
    p.add_argument("--pen_up", default=plotter.pen_up, help="G-code: the command that lifts the pen (default %(default)s)")
    p.add_argument("--pen_down", default=plotter.pen_down, help="G-code: the command that lowers it (default %(default)s)")
    return checked(p, arguments.parse(p, argv))


def checked(p, args):
    """The parsed options checked against each other and completed (the texts, default paths);
    p.error, naming the options, where they do not go together."""
    synthesis_only = [args.text, args.text_file, args.attention_out, args.width, args.prime, args.prime_line]
    if args.task == "synthesis":
        args.texts = read_texts(p, args)
    elif any(option is not None for option in synthesis_only):
        p.error("--text, --text_file, --attention_out, --width, --prime and --prime_line are for --task synthesis")
    if args.prime and args.prime_line:
        p.error("--prime and --prime_line both name a prime: give one")
    if args.prime_text is not None and not args.prime:
        p.error("--prime_text says what the --prime file says: give --prime FILE")
    if args.adapt and not (args.prime or args.prime_line):
        p.error("--adapt learns the hand of a prime: give --prime FILE or --prime_line LINE_ID")
    if args.show_primes and not (args.prime or args.prime_line):
        p.error("--show_primes draws the primes: give --prime FILE or --prime_line LINE_ID")
    if args.width is not None and args.prime_line and len(args.prime_line) > 1:
        p.error("a page (--width) is written in one hand: give one --prime_line")
    if args.width is not None:
        args.texts = wrap_words(" ".join(args.texts), args.width)
    if args.task == "synthesis":
        check_work(p, args)
    args.out = args.out or os.path.join("samples", f"{args.task}.png")
    for flag, path, formats in [("--out", args.out, DRAWING_FORMATS + (".gcode",)),
                                ("--attention_out", args.attention_out, DRAWING_FORMATS)]:
        if path and not path.lower().endswith(formats):
            p.error(f"{flag} {path}: the extension says the format; use one of {', '.join(formats)}")
    try:
        args.plotter = utils.Plotter(*args.page_mm, line_height=args.line_height_mm, feed_rate=args.feed_rate,
                                     pen_up=args.pen_up, pen_down=args.pen_down)
    except ValueError as e:
        p.error(f"--page_mm: {e}")
    if args.strokes_out and not args.strokes_out.endswith((".npy", ".npz")):
        p.error("--strokes_out must end in .npy or .npz")
    if args.strokes_out and args.strokes_out.endswith(".npy") and args.task == "synthesis" and len(args.texts) > 1:
        p.error("several texts give lines of different lengths: use --strokes_out FILE.npz")
    args.checkpoint = args.checkpoint or checkpoint.default_path(args.task, args.model_dir)
    outputs = {"--out": args.out, "--strokes_out": args.strokes_out, "--attention_out": args.attention_out}
    inputs = {"--checkpoint": args.checkpoint, "--prime": args.prime, "--text_file": args.text_file,
              **{f"--data_dir's {name}": os.path.join(args.data_dir, name) for name in ("train.npz", "validation.npz")}}
    clash = utils.overwritten_input(outputs, inputs)
    if clash:  # compared as files, not as spellings: ./a.png, a link to a.png and a.png are one
        output, other = clash
        p.error(f"{output} {outputs[output]} and {other} ({({**outputs, **inputs})[other]}) are one file: "
                f"writing {output} would replace it; name another file")
    return args


def read_texts(p, args):
    """The texts to write: each --text, then each non-empty line of --text_file (a regular file of
    at most MAX_TEXT_FILE_BYTES: a pipe would block, a huge file would be written for hours)."""
    texts = list(args.text or [])
    if args.text_file:
        try:
            content = ink.read_regular_file(args.text_file, MAX_TEXT_FILE_BYTES).decode("utf-8")
            texts += [line for line in content.splitlines() if line.strip()]
        except UnicodeDecodeError as e:
            p.error(f"--text_file {args.text_file} is not UTF-8 text ({e.reason} at byte {e.start}); "
                    "save it as UTF-8")
        except ink.BadFile as e:
            p.error(f"--text_file {e}" + ("; split it and write the parts in several runs" if "bytes" in str(e) else ""))
    if not texts:
        p.error("synthesis needs --text TEXT or --text_file FILE")
    if any(not t.strip() for t in texts):
        p.error("--text is empty (or whitespace only): there is nothing to write")
    return texts


def check_work(p, args):
    """p.error where the texts (after --width's wrapping) are more lines than MAX_TEXTS, or one is longer
    than MAX_LINE_CHARS (see there why), with what to do instead."""
    lines = len(args.texts) * max(1, len(args.prime_line or []))
    if lines > MAX_TEXTS:
        p.error(f"{lines:,} lines to write; at most {MAX_TEXTS:,} in one run: split the texts and write them in "
                "several runs")
    longest = max(args.texts, key=len)
    if len(longest) > MAX_LINE_CHARS:
        p.error(f"a line of {len(longest)} characters ({longest[:30]!r}...): the model writes lines of at most "
                f"{MAX_LINE_CHARS}; write a long text as a page of shorter lines with --width N (e.g. --width 60)")


def read_primes(args):
    """The primes that --prime or --prime_line name (a list, maybe empty); a bad one stops with one line."""
    try:
        if args.prime:
            return [Prime.read(args.prime, args.prime_text)]
        return [Prime.from_data(line_id, args.data_dir) for line_id in args.prime_line or []]
    except (PrimeError, FileNotFoundError) as e:
        raise SystemExit(str(e))


def with_primes(writing, primes, writer):
    """For drawing: each prime, as the network reads it (rescaled to the data's pace), above the
    lines written in its hand, which follow one another in the order of `primes`."""
    per_prime = len(writing.lines) // len(primes)
    lines, texts = [], []
    for i, prime in enumerate(primes):
        lines.append(writer.prime_as_read(prime))
        texts.append(f"prime: {prime.text}")
        lines += writing.lines[i * per_prime:(i + 1) * per_prime]
        texts += writing.texts[i * per_prime:(i + 1) * per_prime]
    return Writing(lines, writing.seed, texts)


def why_unwritable(path, error):
    """What stopped a write, in words: a file where a folder should be, else the system's reason."""
    folder = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(folder):
        folder = os.path.dirname(folder)
    return f"{folder} is a file, not a folder" if not os.path.isdir(folder) else (error.strerror or str(error))


def written(writer, args, primes):
    """The Writing the options ask for: a page (--width), the texts in each hand, or rand_write's lines."""
    if args.adapt and primes:  # each hand learnt first (Writer.adapted), its lines then written from their start
        hands = [writer.adapted(prime, args.adapt) for prime in primes]
        if args.width:
            return hands[0].write_page(args.texts, args.bias, args.seed, args.max_points_per_char, progress=True)
        parts = [hand.write(args.texts, args.bias, args.seed, args.max_points_per_char, progress=True) for hand in hands]
        return Writing.joined(parts, parts[0].seed)
    if args.width:
        return writer.write_page(args.texts, args.bias, args.seed, args.max_points_per_char,
                                 primes[0] if primes else None, prime_check=args.prime_check, progress=True)
    if args.task == "synthesis":
        # several hands: every text once in each, hand after hand, in batches
        texts = [text for _ in primes for text in args.texts] if primes else args.texts
        hands = [prime for prime in primes for _ in args.texts] if primes else None
        return writer.write(texts, args.bias, args.seed, args.max_points_per_char, hands,
                            prime_check=args.prime_check, progress=True)
    return writer.sample(args.num_samples, args.length, args.bias, args.seed)


def main(argv=None):
    args = parse_args(argv)
    utils.set_threads(args.threads)
    primes = read_primes(args)
    try:
        writer = Writer.load(args.checkpoint, args.device)
    except (FileNotFoundError, checkpoint.CheckpointError) as e:
        raise SystemExit(str(e))
    if writer.task != args.task:
        raise SystemExit(f"{args.checkpoint} holds a {writer.task} model, not {args.task}")

    started = time.time()
    try:
        writing = written(writer, args, primes)
    except PrimeError as e:  # a prime whose text and ink disagree
        raise SystemExit(str(e))
    print(f"{len(writing.lines)} line(s), {sum(len(l) for l in writing.lines)} points in "
          f"{time.time() - started:.2f} s (seed {writing.seed}, bias {args.bias}, {args.checkpoint})")
    if args.width:
        stalled = [i for i, capped in enumerate(writing.capped) if capped]
        print(f"page line(s) {stalled} stalled: words may be missing" if stalled
              else "every line of the page was written to its end")

    drawing = with_primes(writing, primes, writer) if args.show_primes else writing
    save_out = lambda p: (utils.write_gcode(drawing.lines, p, args.plotter) if p.lower().endswith(".gcode")
                          else drawing.save(p, label=args.label))
    for path, save in [(args.out, save_out),
                       (args.strokes_out, writing.save_strokes), (args.attention_out, writing.save_attention)]:
        if path:
            try:
                save(path)
            except OSError as e:  # a folder that is a file or not writable, a full disk ...
                raise SystemExit(f"cannot write {path}: {why_unwritable(path, e)}")
            print(f"wrote {path}")


if __name__ == "__main__":
    main()
