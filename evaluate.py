"""Judge a checkpoint: validation likelihood, and legibility read by an independent reader (OCR).

    python evaluate.py save/synthesis.pt                    # NLL on all validation lines + legibility
    python evaluate.py save/synthesis.pt --lines 300 --bias 1 --seed 0 --log save/judgements.csv
    python evaluate.py save/rand_write.pt                   # NLL only (an unconditional model writes no text)

Likelihood: the NLL of every line of --data_dir/validation.npz, whole lines, fp32, in nats per line
(the unit of Graves' tables) and per point.

Legibility (synthesis): the model writes the texts of a fixed subset of validation lines (--lines of
them, drawn with numpy seed 0, the same for every checkpoint) at --bias and --seed. Its lines and the
real lines of the same texts are drawn identically (same scale, pen width and margins) and read by
Tesseract OCR, an external program (`apt-get install tesseract-ocr`). Reported: the character error
rate (edit distance / characters) of each, their ratio, how many generated lines stalled at the
step cap (model.MAX_POINTS_PER_CHAR), and the median pace of both in points per character. OCR of
handwriting is harsh even on real lines, so the human figure is the baseline. A stall trial (no
OCR needed) writes the subset's first 3 texts with seeds 0-3 at biases 0.5, 1 and 2 and counts the
lines that stall.

Fidelity (--fidelity, instead of the above): whether priming carries a writer's hand, on every
validation form (one writer's consecutive lines) with two lines or more: the likelihood of a
writer's lines alone, after the writer's line before and after another writer's (also by where the
points lie in the line: evaluate.POSITIONS); the writer named by likelihood among 10 primes; style,
legibility and drift over a page of lines written in the hand.
One table, each row beside its target (docs/fidelity.md, "The hand").

    OMP_NUM_THREADS=1 python evaluate.py save/synthesis.pt --fidelity --threads 1
    python evaluate.py CHECKPOINT --fidelity 60 --skip_legibility   # likelihood and naming only: a training curve
    python evaluate.py CHECKPOINT --fidelity 20 --adapt 6            # primes learnt (Writer.adapted), not read

Each run appends one row to --log (CSV), so curves over checkpoints can be drawn.
"""
import argparse
import csv
import os
import shutil
import subprocess
import tempfile
import time
import warnings
from dataclasses import dataclass

import numpy as np
import torch

import arguments
import checkpoint
import dataset
import ink
import utils
from generate import ADAPT_RATE, Prime, Writer
from model import MAX_POINTS_PER_CHAR, adapted, point_nll, split_mixture

PIXELS_PER_UNIT = 0.15  # pen units to pixels: a median IAM-OnDB line (~600 units tall) -> ~90 px
PEN_WIDTH = 3           # pixels
MARGIN = 20             # pixels of white around the ink


# ----------------------------------------------------------------------------- legibility

def edit_distance(a, b):
    """Levenshtein distance: the fewest insertions, deletions and substitutions turning a into b."""
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def normalise_text(text):
    """Whitespace collapsed and trimmed: OCR's line breaks and double spaces are not errors of ink."""
    return " ".join(text.split())


def character_error_rate(readings, truths):
    """Total edit distance over total characters of the truths (normalised text), over all lines."""
    pairs = [(normalise_text(r), normalise_text(t)) for r, t in zip(readings, truths)]
    return sum(edit_distance(r, t) for r, t in pairs) / max(sum(len(t) for _, t in pairs), 1)


def render_line(offsets, path):
    """One line of pen offsets (pen units) as a black-on-white PNG at a fixed scale and pen width.

    Generated and real lines go through this same function, so the reader sees them alike.
    """
    from PIL import Image, ImageDraw

    strokes = [s * np.array([1.0, -1.0]) * PIXELS_PER_UNIT for s in utils.offsets_to_strokes(offsets)]
    points = np.concatenate(strokes) if strokes else np.zeros((1, 2))
    low = points.min(0) - MARGIN
    size = np.ceil(points.max(0) - low + MARGIN).astype(int)
    image = Image.new("L", (int(min(size[0], 20000)), int(min(size[1], 4000))), 255)
    draw = ImageDraw.Draw(image)
    for stroke in strokes:
        xy = [tuple(p) for p in stroke - low]
        if len(xy) > 1:
            draw.line(xy, fill=0, width=PEN_WIDTH, joint="curve")
        r = PEN_WIDTH / 2  # round pen tip: dots and stroke ends
        for x, y in (xy[0], xy[-1]):
            draw.ellipse((x - r, y - r, x + r, y + r), fill=0)
    with utils.atomic_path(path) as tmp:
        image.save(tmp)


def tesseract_available():
    return shutil.which("tesseract") is not None


def read_with_tesseract(paths):
    """Tesseract's reading of each image, as one line of English text (page segmentation mode 7)."""
    readings = []
    for path in paths:
        result = subprocess.run(["tesseract", path, "stdout", "--psm", "7", "-l", "eng"],
                                capture_output=True, text=True, check=False)
        readings.append(result.stdout.strip())
    return readings


def legibility_subset(data, lines):
    """The validation lines whose texts the model writes: `lines` of them, drawn with seed 0."""
    return dataset.subset_indices(len(data), lines)


def legibility(writer, data, lines, bias, seed, batch_size=50, read=read_with_tesseract, workdir=None):
    """Write the subset's texts, draw them and the real lines alike, and read both.

    Returns a dict: cer_generated, cer_human, cer_ratio, stalled, lines.
    """
    subset = legibility_subset(data, lines)
    texts = [data.texts[i] for i in subset]
    generated, stalled = [], 0
    for start in range(0, len(texts), batch_size):
        # seed + batch number: a batch's strokes do not depend on how many batches came before
        # retries=0: a stalled line counts as it first came out (Writer.write would write it again)
        writing = writer.write(texts[start:start + batch_size], bias=bias, seed=seed + start // batch_size, retries=0)
        generated += writing.lines
        stalled += sum(writing.capped)
    human = [data.normalisation.to_pen_units(data.offsets[i]) for i in subset]
    with tempfile.TemporaryDirectory(dir=workdir) as folder:
        paths = {}
        for kind, lines_of_kind in [("generated", generated), ("human", human)]:
            paths[kind] = [os.path.join(folder, f"{kind}_{i}.png") for i in range(len(texts))]
            for line, path in zip(lines_of_kind, paths[kind]):
                render_line(line, path)
        cer = {kind: character_error_rate(read(paths[kind]), texts) for kind in paths}
    # the pen's pace, points per character (+1, as the step cap counts): a biased model that
    # writes with short steps is slow, and slow lines are the ones that reach the cap
    pace = {kind: float(np.median([len(line) / (len(text) + 1) for line, text in zip(lines_of_kind, texts)]))
            for kind, lines_of_kind in [("generated", generated), ("human", human)]}
    return {"lines": len(texts), "cer_generated": cer["generated"], "cer_human": cer["human"],
            "cer_ratio": cer["generated"] / max(cer["human"], 1e-9), "stalled": stalled,
            "step_cap": MAX_POINTS_PER_CHAR, "points_per_char_generated": pace["generated"],
            "points_per_char_human": pace["human"]}


# ----------------------------------------------------------------------------- priming fidelity
#
# Does priming (Graves, section 5.5) carry a writer's hand? An IAM-OnDB form is one writer's
# consecutive lines. Every line of a form after its first is held out and primed by the line just
# before it, as a page is written on; its likelihood is taken alone, after that line, and after
# other writers' lines; lines are written in the hand and compared with the real ones.

CANDIDATES = 10      # primes a held-out line is scored after to name its writer: its own, 9 others
STYLE_LINES = 3      # held-out lines per writer written at the bias, unprimed and primed
PAGE_LINES = 10      # lines of a page written in one writer's hand (drift)
PAGES = 5            # such pages, from forms long enough to hold one
FIDELITY_SEED = 0    # draws of writers, rival primes and pages: the same for every checkpoint
POSITIONS = (1, 10, 30, 100, 300)  # a held-out line's points also scored apart from these on: where a prime helps
TARGETED_STYLE = ("slant", "width per character / height", "strokes per character", "points per character")


def style(offsets, text):
    """A line's style in numbers (pen units): width per character, height (the 5th to 95th
    percentile of y about the line's axis, the least-squares line through its points, so that a
    line that climbs across the page is not taller for it), their ratio (free of the line's
    scale), slant (degrees from upright of the near-vertical pen-down steps, positive leaning
    right, weighted by length), pen strokes per character, the pace: points (rows of offsets) per
    character, and the line's tilt (its axis, in degrees, positive climbing)."""
    strokes = utils.offsets_to_strokes(offsets)
    points = np.concatenate(strokes)
    steps = np.concatenate([np.diff(s, axis=0) for s in strokes if len(s) > 1] or [np.zeros((0, 2))])
    upright = steps[np.abs(steps[:, 1]) > np.abs(steps[:, 0])]
    lengths = np.hypot(upright[:, 0], upright[:, 1])
    slant = np.degrees(np.arctan(upright[:, 0] / upright[:, 1]))
    x, y = points[:, 0], points[:, 1]
    climb = np.polyfit(x, y, 1)[0] if np.ptp(x) > 0 else 0.0  # a line of one vertical stroke: no axis
    about_axis = y - climb * x
    width = np.ptp(x) / len(text)
    height = np.percentile(about_axis, 95) - np.percentile(about_axis, 5)
    return {"width per character": width, "height": height,
            "width per character / height": width / height if height > 0 else np.nan,
            "slant": float(np.average(slant, weights=lengths)) if len(lengths) else 0.0,
            "strokes per character": len(strokes) / len(text), "points per character": len(offsets) / len(text),
            "line tilt": float(np.degrees(np.arctan(climb)))}


ANGLES = ("slant", "line tilt")  # style statistics in degrees, compared by difference


def style_error(written, real, statistic):
    """How far `written` is from `real`: in degrees for angles, else relative to the real value."""
    return abs(written - real) if statistic in ANGLES else abs(written - real) / abs(real)


def pair_sequence(data, prime, line):
    """What the network reads to score `line` after `prime`: (offsets, text codes, rows of the
    prime). The two lines are joined as training joins a writer's consecutive lines (dataset.joined:
    texts joined by one space, the pen lifted and moved on to the right); prime None: the line alone."""
    if prime is None:
        return data.offsets[line], data.text_codes[line], 0
    offsets, codes = dataset.joined(data, prime, line)
    return offsets, codes, len(data.offsets[prime])


@torch.no_grad()
def pair_nlls(model, data, pairs, batch_size=50):
    """NLL (nats) of line `line` of data after the network has read line `prime` teacher-forced,
    for each (prime, line) in pairs (prime None: the line alone). Every pair counts the same
    predictions, the line's points after its first (the move from the prime's end is not scored),
    so figures with and without a prime compare. Pairs of similar length go through the network
    together. Returns (nats, points scored), each (N, len(POSITIONS)): the line's points from
    POSITIONS[k] up to the next (sum over axis 1 for whole lines)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters(), torch.empty(0)).device
    sequences = [pair_sequence(data, prime, line) for prime, line in pairs]
    nats, points = np.zeros((len(pairs), len(POSITIONS))), np.zeros((len(pairs), len(POSITIONS)))
    for batch in dataset.make_batches([len(s[0]) for s in sequences], batch_size):
        offsets, mask = dataset.pad([sequences[i][0] for i in batch], np.float32)
        text, text_mask = dataset.pad([sequences[i][1] for i in batch], np.int64)
        scored = mask[:, 1:].clone()  # target j is row j + 1: the line's row 1 is target `prime rows`
        for b, i in enumerate(batch):
            scored[b, :sequences[i][2]] = 0
        y, _, _ = model(offsets[:, :-1].to(device), text.to(device), text_mask.to(device))
        nll = (point_nll(split_mixture(y), offsets[:, 1:].to(device)).cpu() * scored).double().numpy()
        # target prime_rows + j - 1 is the line's point j; part k holds points POSITIONS[k] on (-1: the prime)
        position = np.arange(nll.shape[1]) - np.array([sequences[i][2] for i in batch])[:, None] + 1
        part = np.searchsorted(POSITIONS, position, side="right") - 1
        for k in range(len(POSITIONS)):
            nats[batch, k], points[batch, k] = (nll * (part == k)).sum(1), (scored.numpy() * (part == k)).sum(1)
    model.train(was_training)
    return nats, points


def adapted_to(model, data, line, steps):
    """The network fine-tuned on line `line` of data (model.adapted, at Writer.adapted's rate)."""
    device = next(model.parameters()).device
    offsets, _ = dataset.pad([data.offsets[line]], np.float32)
    text, text_mask = dataset.pad([data.text_codes[line]], np.int64)
    return adapted(model, offsets.to(device), text.to(device), text_mask.to(device), steps, ADAPT_RATE)


def scored_pairs(model, data, pairs, batch_size=50, adapt_steps=0):
    """pair_nlls; with adapt_steps, the prime is learnt rather than read: each line is scored from
    its start (as alone) by the network fine-tuned on its prime's line (adapted_to), once for all
    the lines of one prime."""
    if not adapt_steps:
        return pair_nlls(model, data, pairs, batch_size)
    nats, points = np.zeros((len(pairs), len(POSITIONS))), np.zeros((len(pairs), len(POSITIONS)))
    by_prime = {}
    for i, (prime, _) in enumerate(pairs):
        by_prime.setdefault(prime, []).append(i)
    for prime, indices in by_prime.items():
        learner = model if prime is None else adapted_to(model, data, prime, adapt_steps)
        nats[indices], points[indices] = pair_nlls(learner, data, [(None, pairs[i][1]) for i in indices], batch_size)
    return nats, points


def primed_nll(model, data, prime, line):
    """NLL (nats) of line `line` after line `prime` (pair_nlls), and of the line alone."""
    nats, _ = pair_nlls(model, data, [(prime, line), (None, line)])
    return nats.sum(1).tolist()


def forms_of(line_ids):
    """Line indices by form, {form id: [indices in line order]}."""
    forms = {}
    for i in sorted(range(len(line_ids)), key=lambda i: line_ids[i]):
        forms.setdefault(dataset.form_of(line_ids[i]), []).append(i)
    return forms


@dataclass
class FidelityPlan:
    """What the fidelity judge scores and writes, drawn once (FIDELITY_SEED) from the line ids."""
    writers: list     # the forms judged, each one writer with two lines or more
    held_out: list    # (prime, line): each line of a judged form after its first, and the line before it
    others: list      # for each held-out line, lines of other writers (one per form), first the control
    identified: list  # one held-out entry per writer, named among its prime and its `others`
    pages: list       # forms with a line to prime and PAGE_LINES more to write as a page


def draw_plan(data, writers=None):
    """The FidelityPlan for `writers` forms with two lines or more (None: all of them)."""
    rng = np.random.default_rng(FIDELITY_SEED)
    forms = forms_of(data.line_ids)
    eligible = sorted(form for form, lines in forms.items() if len(lines) >= 2)
    if len(eligible) < 2:
        raise ValueError(f"the fidelity judge needs two writers (forms) with two lines or more; the data has "
                         f"{len(eligible)} (line ids name their form: a01-000u-01 is line 1 of form a01-000u)")
    if writers is not None and writers < len(eligible):
        eligible = sorted(rng.choice(eligible, writers, replace=False).tolist())
    held_out, others, identified = [], [], []
    for form in eligible:
        lines = forms[form]
        identified.append(len(held_out) + int(rng.integers(len(lines) - 1)))
        for prime, line in zip(lines, lines[1:]):
            rivals = rng.choice([f for f in sorted(forms) if f != form], min(CANDIDATES - 1, len(forms) - 1),
                                replace=False)
            held_out.append((prime, line))
            others.append([forms[f][int(rng.integers(len(forms[f])))] for f in rivals])
    long_forms = [form for form in eligible if len(forms[form]) > PAGE_LINES]
    pages = sorted(rng.choice(long_forms, min(PAGES, len(long_forms)), replace=False).tolist())
    return FidelityPlan(eligible, held_out, others, identified, pages)


def likelihood_figures(model, data, plan, batch_size=50, adapt_steps=0):
    """The held-out lines' NLL alone, after their own prime and after the control (another writer's
    line), in nats per line and per point; and writer identification: each `identified` line's
    candidates, its own prime first, scored, the likeliest named (top-1 accuracy). adapt_steps:
    primes learnt, not read (scored_pairs). Returns (figures, scores (identified lines, candidates)
    in nats)."""
    lines = [line for _, line in plan.held_out]
    control = [(others[0], line) for others, line in zip(plan.others, lines)]
    rivals = [(other, lines[i]) for i in plan.identified for other in plan.others[i][1:]]
    by_position, points = scored_pairs(model, data, [(None, line) for line in lines] + plan.held_out + control + rivals,
                                       batch_size, adapt_steps)
    nats, n = by_position.sum(1), len(lines)
    figures = {}
    for number, name in enumerate(["alone", "own", "other"]):
        part = slice(number * n, (number + 1) * n)
        figures[f"nll_{name}_per_line"] = nats[part].sum() / n
        figures[f"nll_{name}_per_point"] = nats[part].sum() / points[part].sum()
        for k, first in enumerate(POSITIONS):
            scored = points[part, k].sum()  # none on tiny data whose lines end before POSITIONS[k]: unjudged
            figures[f"nll_{name}_per_point_from_{first}"] = by_position[part, k].sum() / scored if scored else np.nan
    scores = np.column_stack([nats[n:2 * n][plan.identified], nats[2 * n:3 * n][plan.identified],
                              nats[3 * n:].reshape(len(plan.identified), -1)])
    figures.update(held_out_lines=n, identified_lines=len(plan.identified), candidates=scores.shape[1],
                   identification_top1=float(np.mean(identify(scores) == 0)))
    return figures, scores


def identify(scores):
    """For each row of candidate NLLs, the candidate that makes the line likeliest (the least NLL)."""
    return np.argmin(scores, axis=1)


def pen_units(data, line):
    """Line `line` of data in pen units."""
    return data.normalisation.to_pen_units(data.offsets[line])


def write_in_batches(writer, texts, primes, bias, seed, batch_size=50):
    """Writer.write over texts (primes: one Prime per text, or None), texts of similar length
    together, each batch with seed + its number, stalled lines kept as they came (retries=0).
    Returns (lines in pen units in the order of texts, capped flags)."""
    lines, capped = [None] * len(texts), [None] * len(texts)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # stalled lines are counted by the caller
        for number, batch in enumerate(dataset.make_batches([len(t) for t in texts], batch_size)):
            writing = writer.write([texts[i] for i in batch], bias=bias, seed=seed + number, retries=0,
                                   prime=None if primes is None else [primes[i] for i in batch])
            for b, i in enumerate(batch):
                lines[i], capped[i] = writing.lines[b], writing.capped[b]
    return lines, capped


def style_errors(written, real, writer_of):
    """{statistic: mean over writers of style_error(the mean over its written lines, the mean over
    its real lines)}; written, real: style() of the same lines, writer_of: each line's writer."""
    writer_of = np.asarray(writer_of)
    errors = {}
    for statistic in real[0]:
        per_writer = []
        for w in np.unique(writer_of):
            mine = np.flatnonzero(writer_of == w)
            per_writer.append(style_error(np.nanmean([written[i][statistic] for i in mine]),
                                          np.nanmean([real[i][statistic] for i in mine]), statistic))
        errors[statistic] = float(np.nanmean(per_writer))
    return errors


def read_lines(lines, texts, read, workdir=None):
    """The CER of `read` (read_with_tesseract) on lines (pen units) drawn by render_line."""
    with tempfile.TemporaryDirectory(dir=workdir) as folder:
        paths = [os.path.join(folder, f"{i}.png") for i in range(len(lines))]
        for line, path in zip(lines, paths):
            render_line(line, path)
        return character_error_rate(read(paths), texts)


def write_adapted(writer, texts, primes, bias, seed, adapt_steps):
    """Each text written unprimed by the writer adapted to its prime (Writer.adapted), with seed +
    its number, stalled lines kept (retries=0). Returns (lines in pen units, capped flags)."""
    lines, capped = [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # stalled lines are counted by the caller
        for number, (text, prime) in enumerate(zip(texts, primes, strict=True)):
            writing = writer.adapted(prime, adapt_steps).write(text, bias=bias, seed=seed + number, retries=0)
            lines.append(writing.lines[0])
            capped.append(writing.capped[0])
    return lines, capped


def written_figures(writer, data, plan, bias, seed, batch_size=50, read=None, workdir=None, adapt_steps=0):
    """Up to STYLE_LINES held-out lines of each writer written at `bias`, unprimed and primed by
    the line before them: their style errors against the writer's real lines (style_errors; the
    real lines rescaled to the data's pace as a prime is, which changes only height and width),
    how many stalled, the same errors of the primes themselves (the writer's real lines before:
    how near the writer comes to their own hand), and, given a reader (read_with_tesseract), the
    CER of the written lines and of the real lines of the same texts. adapt_steps: the primed lines
    are written by the writer adapted to their prime (write_adapted)."""
    chosen = [entry for form in plan.writers
              for entry in [e for e in plan.held_out if dataset.form_of(data.line_ids[e[1]]) == form][:STYLE_LINES]]
    writer_of = [dataset.form_of(data.line_ids[line]) for _, line in chosen]
    texts = [data.texts[line] for _, line in chosen]
    primes = [Prime(data.texts[prime], pen_units(data, prime)) for prime, _ in chosen]
    real = [style(ink.rescale_to_pace(pen_units(data, line), writer.median_step), text)
            for (_, line), text in zip(chosen, texts)]
    # the control: how far the writer's own line before (the prime, real ink) is from the held-out lines
    prime_styles = [style(ink.rescale_to_pace(prime.offsets, writer.median_step), prime.text) for prime in primes]
    figures = {"style_lines": len(texts)}
    figures.update({f"prime error: {statistic}": error
                    for statistic, error in style_errors(prime_styles, real, writer_of).items()})
    written = {}
    for kind, kind_primes in [("unprimed", None), ("primed", primes)]:
        if kind == "primed" and adapt_steps:
            written[kind], capped = write_adapted(writer, texts, kind_primes, bias, seed, adapt_steps)
        else:
            written[kind], capped = write_in_batches(writer, texts, kind_primes, bias, seed, batch_size)
        errors = style_errors([style(line, text) for line, text in zip(written[kind], texts)], real, writer_of)
        figures.update({f"{kind} error: {statistic}": error for statistic, error in errors.items()})
        figures[f"{kind} stalled"] = int(sum(capped))
    if read is not None:
        written["human"] = [pen_units(data, line) for _, line in chosen]
        figures.update({f"{kind} cer": read_lines(lines, texts, read, workdir) for kind, lines in written.items()})
    return figures


def drift_figures(writer, data, plan, bias, seed, adapt_steps=0):
    """Pages of PAGE_LINES lines written by Writer.write_page in one writer's hand (primed by the
    form's first line, the texts of its next lines), one per plan.pages form: how far the style
    of a page's last line is from its first's (style_error, the mean over pages), and the same for
    the writer's own lines of those texts. adapt_steps: the pages are written unprimed by the
    writer adapted to that line (Writer.adapted)."""
    forms = forms_of(data.line_ids)
    drift = {"page": [], "human": []}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a stalled page line is written again, up to write_page's retries
        for number, form in enumerate(plan.pages):
            prime, *lines = forms[form][:PAGE_LINES + 1]
            prime = Prime(data.texts[prime], pen_units(data, prime))
            hand, prime = (writer.adapted(prime, adapt_steps), None) if adapt_steps else (writer, prime)
            page = hand.write_page([data.texts[i] for i in lines], bias=bias, seed=seed + number, prime=prime)
            for kind, drawn in [("page", page.lines), ("human", [pen_units(data, i) for i in lines])]:
                first, last = style(drawn[0], data.texts[lines[0]]), style(drawn[-1], data.texts[lines[-1]])
                drift[kind].append({s: style_error(last[s], first[s], s) for s in first})
    figures = {"pages": len(plan.pages)}
    for kind, rows in drift.items():
        figures.update({f"{kind} drift: {s}": float(np.mean([row[s] for row in rows])) if rows else np.nan
                        for s in TARGETED_STYLE})
    return figures


def cpu_seconds():
    """CPU time of this process and of the programs it ran (Tesseract): a shared machine's clock
    time says little."""
    return sum(os.times()[:4])


def fidelity(writer, data, writers=None, bias=1.0, seed=0, batch_size=50, read=None, workdir=None, say=print,
             write=True, adapt_steps=0):
    """Whether priming carries the writer's hand, on `writers` validation forms with two lines or
    more (drawn with FIDELITY_SEED; None: all): likelihood_figures, then, when `write`,
    written_figures at `bias` and `seed` (CER only given a reader) and drift_figures. Says how long
    each part took. adapt_steps: every prime learnt by that many steps of fine-tuning on its line
    (Writer.adapted), not read. Returns one dict of figures (fidelity_table lays it out)."""
    plan = draw_plan(data, writers)
    say(f"fidelity: {len(plan.writers)} writers, {len(plan.held_out)} held-out lines, "
        f"{len(plan.identified)} named among {min(CANDIDATES, len(forms_of(data.line_ids)))} primes"
        + (f", {len(plan.pages)} pages of {PAGE_LINES} lines; bias {bias}, seed {seed}" if write else ""))
    figures = {"writers": len(plan.writers), "bias": bias, "seed": seed, "adapt_steps": adapt_steps}
    parts = [("likelihood and writer identification",
              lambda: likelihood_figures(writer.model, data, plan, batch_size, adapt_steps)[0]),
             ("lines written unprimed and primed" + (", read by Tesseract" if read else ""),
              lambda: written_figures(writer, data, plan, bias, seed, batch_size, read, workdir, adapt_steps)),
             ("pages written in one hand", lambda: drift_figures(writer, data, plan, bias, seed, adapt_steps))]
    for name, part in parts if write else parts[:1]:
        started, cpu = time.time(), cpu_seconds()
        figures.update(part())
        say(f"fidelity: {name}, {time.time() - started:.0f} s ({cpu_seconds() - cpu:.0f} s of CPU)")
    return figures


def fidelity_table(figures):
    """The figures as rows (measure, unprimed or alone, primed by the writer, control, target, met),
    numbers as text; the targets are issue 48's. Controls: the held-out lines after another
    writer's line; chance; for style, the primes themselves (how near a writer's own line comes);
    the real lines."""
    f = lambda key, digits=3: "—" if not np.isfinite(figures.get(key, np.nan)) else f"{figures[key]:.{digits}f}"
    get = lambda key: figures.get(key, np.nan)
    met = lambda ok: "yes" if ok else "no"
    alone, own, other = get("nll_alone_per_line"), get("nll_own_per_line"), get("nll_other_per_line")
    candidates = int(figures.get("candidates", CANDIDATES))
    rows = [("NLL of held-out lines, nats per line (control: after another writer's line)",
             f("nll_alone_per_line", 1), f("nll_own_per_line", 1), f("nll_other_per_line", 1),
             "primed ≤ alone − 20 and ≤ control − 40", met(own <= alone - 20 and own <= other - 40)),
            ("the same, nats per point", f("nll_alone_per_point", 4), f("nll_own_per_point", 4),
             f("nll_other_per_point", 4), "", ""),
            *[(f"nats per point, the line's points {first}-{last - 1}" if last
               else f"nats per point, the line's points {first} on",
               *[f(f"nll_{name}_per_point_from_{first}", 4) for name in ("alone", "own", "other")], "", "")
              for first, last in zip(POSITIONS, POSITIONS[1:] + (None,))],
            (f"writer named by likelihood among {candidates} primes, top-1 (control: chance)", "—",
             f("identification_top1"), f"{1 / candidates:.3f}", "≥ 0.60", met(get("identification_top1") >= 0.6))]
    for statistic in TARGETED_STYLE + ("height", "line tilt"):
        unprimed, primed = get(f"unprimed error: {statistic}"), get(f"primed error: {statistic}")
        targeted = statistic in TARGETED_STYLE
        rows.append((f"{statistic}, error" + (" in degrees" if statistic in ANGLES else "")
                     + (" (the data's pace)" if statistic == "height" else ""), f(f"unprimed error: {statistic}"),
                     f(f"primed error: {statistic}"), f(f"prime error: {statistic}"),
                     "primed ≤ ½ unprimed" if targeted else "",
                     "" if not targeted else met(primed <= unprimed / 2) if np.isfinite([primed, unprimed]).all()
                     else "—"))
    cer = [get(f"{kind} cer") for kind in ("unprimed", "primed", "human")]
    rows.append(("Tesseract CER (control: the real lines)", f("unprimed cer"), f("primed cer"), f("human cer"),
                 "primed ≤ 1.25 × unprimed and < real",
                 met(cer[1] <= 1.25 * cer[0] and cer[1] < cer[2]) if np.isfinite(cer).all() else "—"))
    rows.append((f"lines stalled at the step cap, of {int(figures.get('style_lines', 0))}",
                 f("unprimed stalled", 0), f("primed stalled", 0), "—", "", ""))
    for statistic in TARGETED_STYLE:
        rows.append((f"page drift, line {PAGE_LINES} against line 1: {statistic} (control: the writer's lines)",
                     "—", f(f"page drift: {statistic}"), f(f"human drift: {statistic}"), "", ""))
    return rows


def judge_fidelity(path, data, args):
    """Print the fidelity table of one checkpoint (fidelity, on all forms unless --fidelity N);
    returns its row for the log."""
    try:
        writer = Writer.load(path, args.device, compile=args.compile)
    except (FileNotFoundError, checkpoint.CheckpointError) as e:
        raise SystemExit(str(e))
    if writer.task != "synthesis":
        raise SystemExit(f"{path} holds a {writer.task} model: --fidelity judges a synthesis model, which is primed")
    view = checkpoints_view(data, writer.normalisation, path)
    read = read_with_tesseract if tesseract_available() and not args.skip_legibility else None
    if read is None and not args.skip_legibility:
        print("fidelity: CER skipped: Tesseract OCR is not installed (apt-get install tesseract-ocr)")
    writers = args.fidelity or None  # --fidelity alone: all
    started = time.time()
    try:
        figures = fidelity(writer, view, writers, args.bias, args.seed, args.batch_size, read,
                           write=not args.skip_legibility, adapt_steps=args.adapt)
    except ValueError as e:
        raise SystemExit(f"{path}: {e}")
    primed = f"adapted to the writer's line ({args.adapt} steps)" if args.adapt else "primed by the writer"
    print(f"{path}: priming fidelity ({time.time() - started:.0f} s)\n"
          f"| measure | unprimed (alone) | {primed} | control | target | met |\n"
          "| --- | --- | --- | --- | --- | --- |")
    for row in fidelity_table(figures):
        print("| " + " | ".join(row) + " |")
    return {"checkpoint": path, "task": "synthesis", "judged": "fidelity",
            **{f"fidelity {key}": value for key, value in figures.items()}}


# ----------------------------------------------------------------------------- command line

TRIAL_BIASES = (0.5, 1.0, 2.0)


def stall_trial(writer, data, texts=3, seeds=4, biases=TRIAL_BIASES):
    """How many lines stall (reach the step cap before the window reaches the end of the text):
    the first `texts` texts of the legibility subset, each written with seeds 0 .. seeds-1 at each
    bias. Returns {bias: stalled lines of texts * seeds}."""
    chosen = [data.texts[i] for i in legibility_subset(data, texts)]
    stalled = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # write() warns about each capped line; they are counted here
        for bias in biases:
            stalled[bias] = sum(sum(writer.write(chosen, bias=bias, seed=seed, retries=0).capped)
                                for seed in range(seeds))
    return stalled


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", nargs="+", help="one or more checkpoints (.pt) to judge")
    p.add_argument("--data_dir", default="data", help="folder with validation.npz")
    p.add_argument("--lines", type=arguments.POSITIVE, default=300, help="validation texts written for legibility")
    p.add_argument("--bias", type=arguments.BIAS, default=1.0, help="sampling bias of the written lines")
    p.add_argument("--seed", type=arguments.SEED, default=0)
    p.add_argument("--batch_size", type=arguments.POSITIVE, default=50)
    p.add_argument("--skip_legibility", action="store_true",
                   help="likelihood only (with --fidelity: its likelihood and writer identification, no lines written)")
    p.add_argument("--fidelity", metavar="WRITERS", nargs="?", const=0,  # 0: all
                   type=arguments.count(2, hint=" (a writer's lines are told from other writers')"),
                   help="instead: whether priming carries a writer's hand, on all validation writers (forms "
                        "with two lines or more), or WRITERS of them: likelihood of their lines alone and "
                        "primed, the writer named by likelihood, style and CER of lines written in their hand")
    p.add_argument("--adapt", metavar="STEPS", type=arguments.OPTIONAL, default=0,
                   help="with --fidelity: each prime learnt, not read: the network fine-tuned on the prime's "
                        "line for STEPS steps (Writer.adapted), the line then scored and written from its start")
    p.add_argument("--compile", action="store_true",
                   help="with --fidelity: torch.compile the network's recurrences (as train.py --compile): a "
                        "minute or two of compiling, then each prime learnt by --adapt about 1.6 times faster")
    p.add_argument("--log", default=os.path.join("save", "judgements.csv"),
                   help="CSV that gets one row per judged checkpoint")
    p.add_argument("--threads", type=arguments.THREADS, default=1, help="CPU threads (as train.py; 0: one per core)")
    p.add_argument("--device", type=arguments.DEVICE, default="cpu")
    args = arguments.parse(p, argv)
    if args.adapt and args.fidelity is None:
        p.error("--adapt is for --fidelity: it says how the judge's primes are taken in")
    if args.compile and args.fidelity is None:
        p.error("--compile is for --fidelity (where --adapt trains a copy of the network for every prime)")
    fault = args.log and log_fault(args.log)
    if fault:  # checked before the judging, which may take an hour
        p.error(f"--log {args.log}: {fault}")
    return args


LOG_COLUMNS = ["checkpoint", "task"]  # the first columns of every row judged: the log's header starts so


def log_fault(path):
    """Why rows cannot be appended to `path` (None if they can). The log is a .csv file, new in a
    folder that can be written or one this script wrote (its header starts checkpoint,task):
    appending rewrites the whole file, which must never happen to another."""
    if not path.lower().endswith(".csv"):
        return "the log is a CSV file: give a path ending in .csv (or --log '' to only print)"
    if os.path.lexists(path):
        if not os.path.isfile(path):
            return "is not a regular file"
        with open(path, newline="", encoding="utf-8", errors="replace") as f:
            header = next(csv.reader([f.readline(4096)]), [])
        if header[:2] != LOG_COLUMNS:
            return (f"is not a log this script wrote (its first line does not start {','.join(LOG_COLUMNS)}); "
                    "name a new .csv file")
    folder = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(folder):
        folder = os.path.dirname(folder)
    if not os.path.isdir(folder):
        return f"{folder} is a file, not a folder"
    if not os.access(folder, os.W_OK):
        return f"{folder} is not writable: give a path in a writable folder (or --log '' to only print)"
    return None


def checkpoints_view(data, normalisation, path):
    """The validation lines normalised as the checkpoint at `path` expects (its Normalisation; data
    made without --like carries its own statistics): the same ink for every checkpoint judged."""
    seen = dataset.renormalised(data, normalisation)
    if seen is not data:
        print(f"{path}: the validation lines are renormalised with the checkpoint's statistics "
              f"(mean {np.round(normalisation.mean, 3).tolist()}, std {np.round(normalisation.std, 3).tolist()})")
    return seen


def judge(path, data, args):
    """One row of figures for one checkpoint."""
    try:
        saved = checkpoint.load(path, args.device)
    except (FileNotFoundError, checkpoint.CheckpointError) as e:
        raise SystemExit(str(e))
    if saved["alphabet"] != data.alphabet:
        raise SystemExit(f"{path} was trained with another alphabet than {args.data_dir}/validation.npz")
    data = checkpoints_view(data, dataset.Normalisation.of(saved), path)
    history = saved.get("history") or [{}]
    row = {"checkpoint": path, "task": saved["config"]["task"], "epoch": saved.get("epoch", ""),
           "step": saved.get("step", ""), "cpu_hours": history[-1].get("cpu_hours", "")}
    writer = Writer.from_checkpoint(saved, path, args.device)
    started = time.time()
    row["nats_per_line"], row["nats_per_point"] = dataset.dataset_nll(writer.model, data, args.batch_size, args.device)
    row["validation_lines"] = len(data)
    print(f"{path}: validation NLL {row['nats_per_line']:.1f} nats/line, {row['nats_per_point']:.4f} "
          f"nats/point ({len(data)} lines, {time.time() - started:.0f} s)")
    if row["task"] == "synthesis" and not args.skip_legibility:
        if not tesseract_available():
            print("legibility skipped: Tesseract OCR is not installed (apt-get install tesseract-ocr)")
        else:
            started = time.time()
            row.update(legibility(writer, data, args.lines, args.bias, args.seed, args.batch_size),
                       bias=args.bias, seed=args.seed)
            print(f"{path}: Tesseract CER {row['cer_generated']:.3f} on generated lines, {row['cer_human']:.3f} "
                  f"on the human lines of the same texts (ratio {row['cer_ratio']:.2f}); {row['stalled']} of "
                  f"{row['lines']} lines stalled at the step cap of {MAX_POINTS_PER_CHAR} points/character; "
                  f"median pace {row['points_per_char_generated']:.1f} points/character, human "
                  f"{row['points_per_char_human']:.1f} (bias {args.bias}, seed {args.seed}, {time.time() - started:.0f} s)")
        stalled = stall_trial(writer, data)
        row["trial_stalled"], row["trial_lines"] = sum(stalled.values()), 3 * 4 * len(stalled)
        print(f"{path}: stall trial, 3 texts x 4 seeds at each bias: " +
              ", ".join(f"bias {bias:g} {count} of 12" for bias, count in stalled.items()))
    return row


def append_rows(path, rows):
    """Add rows to the CSV at `path`, keeping earlier rows; columns are the union of all rows'."""
    old = []
    if os.path.exists(path):
        with open(path, newline="") as f:
            old = list(csv.DictReader(f))
    columns = list(dict.fromkeys(k for r in old + rows for k in r))
    with utils.atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(old + rows)


def main(argv=None):
    args = parse_args(argv)
    utils.set_threads(args.threads)
    data = dataset.load_data(os.path.join(args.data_dir, "validation.npz"))
    judged = judge if args.fidelity is None else judge_fidelity
    rows = [judged(path, data, args) for path in args.checkpoint]
    if args.log:
        append_rows(args.log, rows)
        print(f"appended {len(rows)} row(s) to {args.log}")
    return rows


if __name__ == "__main__":
    main()
