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

import numpy as np
import torch

import arguments
import checkpoint
import dataset
import utils
from generate import Prime, Writer
from model import MAX_POINTS_PER_CHAR, point_nll, split_mixture

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

def style(offsets, text):
    """A line's style in numbers (pen units): width per character, height (the 5th to 95th
    percentile of y), slant (degrees from upright of the near-vertical pen-down steps, positive
    leaning right, weighted by length) and pen strokes per character."""
    strokes = utils.offsets_to_strokes(offsets)
    points = np.concatenate(strokes)
    steps = np.concatenate([np.diff(s, axis=0) for s in strokes if len(s) > 1] or [np.zeros((0, 2))])
    upright = steps[np.abs(steps[:, 1]) > np.abs(steps[:, 0])]
    lengths = np.hypot(upright[:, 0], upright[:, 1])
    slant = np.degrees(np.arctan(upright[:, 0] / upright[:, 1]))
    return {"width per character": np.ptp(points[:, 0]) / len(text),
            "height": np.percentile(points[:, 1], 95) - np.percentile(points[:, 1], 5),
            "slant": float(np.average(slant, weights=lengths)) if len(lengths) else 0.0,
            "strokes per character": len(strokes) / len(text)}


@torch.no_grad()
def primed_nll(model, data, prime, line):
    """NLL (nats) of validation line `line` after the network has read line `prime` (teacher-forced;
    the window reads the two texts joined by a space, as generate.py primes), and of the line alone.
    Both count the same predictions: the line's points after its first."""
    joined = dataset.encode_text(f"{data.texts[prime].rstrip()} {data.texts[line]}", data.alphabet)
    alone = dataset.encode_text(data.texts[line], data.alphabet)
    result = []
    for offsets, codes, skip in [(np.concatenate([data.offsets[prime], data.offsets[line]]), joined,
                                  len(data.offsets[prime])), (data.offsets[line], alone, 0)]:
        x = torch.from_numpy(offsets)[None]
        text = torch.from_numpy(codes)[None]
        y, _, _ = model(x[:, :-1], text, torch.ones(text.shape))
        result.append(point_nll(split_mixture(y), x[:, 1:])[0, skip:].sum().item())
    return result


def fidelity(writer, data, writers=20, lines_per_writer=3, bias=1.0, seed=0):
    """How much a prime makes the model write like its writer. For each of `writers` validation
    forms (one writer each, drawn with numpy seed 0), line 1 primes; up to `lines_per_writer` other
    lines are written primed and unprimed (their texts), and their likelihood is taken both ways, and
    after a line of the next chosen writer instead (the control: what priming does without the hand).
    Returns rows of (statistic, mean |unprimed - real|, mean |primed - real|) over the writers, the
    real value being the mean over the writer's held-out lines."""
    forms = {}
    for i, line_id in enumerate(data.line_ids):
        forms.setdefault(line_id.rsplit("-", 1)[0], []).append(i)
    chosen = np.random.default_rng(0).choice(sorted(forms), min(writers, len(forms)), replace=False)
    errors = {"unprimed": [], "primed": []}
    nll = {"unprimed": 0.0, "primed": 0.0, "other": 0.0, "lines": 0}
    for number, form in enumerate(chosen):
        prime_index, *held_out = forms[form]
        other_prime = forms[chosen[(number + 1) % len(chosen)]][0]  # the next writer's line 1: the control
        held_out = held_out[:lines_per_writer]
        texts = [data.texts[i] for i in held_out]
        to_pen = data.normalisation.to_pen_units
        real = {k: np.mean([style(to_pen(data.offsets[i]), data.texts[i])[k] for i in held_out])
                for k in style(to_pen(data.offsets[held_out[0]]), texts[0])}
        prime = Prime(data.texts[prime_index], to_pen(data.offsets[prime_index]))
        for kind, primed_by in [("unprimed", None), ("primed", prime)]:
            written = writer.write(texts, bias=bias, seed=seed + number, prime=primed_by)
            stats = [style(line, text) for line, text in zip(written.lines, texts)]
            errors[kind].append({k: abs(np.mean([s[k] for s in stats]) - real[k]) / (1 if k == "slant" else real[k])
                                 for k in real})
        for i in held_out:
            primed, alone = primed_nll(writer.model, data, prime_index, i)
            other, _ = primed_nll(writer.model, data, other_prime, i)
            for key, value in [("primed", primed), ("unprimed", alone), ("other", other), ("lines", 1)]:
                nll[key] += value
    rows = [(k, np.mean([e[k] for e in errors["unprimed"]]), np.mean([e[k] for e in errors["primed"]]))
            for k in errors["primed"][0]]
    rows.append(("NLL of the held-out lines, nats per line", nll["unprimed"] / nll["lines"], nll["primed"] / nll["lines"]))
    rows.append(("the same, primed by another writer's line", nll["unprimed"] / nll["lines"], nll["other"] / nll["lines"]))
    return rows


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
    p.add_argument("--skip_legibility", action="store_true", help="likelihood only")
    p.add_argument("--fidelity", metavar="WRITERS",
                   type=arguments.count(2, hint=" (the control primes each writer with the next one's line)"),
                   help="instead: how much priming with one line of each of WRITERS validation writers makes "
                        "the model write like them (style statistics and likelihood, primed against unprimed)")
    p.add_argument("--log", default=os.path.join("save", "judgements.csv"),
                   help="CSV that gets one row per judged checkpoint")
    p.add_argument("--threads", type=arguments.THREADS, default=1, help="CPU threads (as train.py; 0: one per core)")
    p.add_argument("--device", type=arguments.DEVICE, default="cpu")
    args = arguments.parse(p, argv)
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
    if args.fidelity:
        for path in args.checkpoint:
            print(f"{path}: priming fidelity over {args.fidelity} validation writers, bias {args.bias}, seed {args.seed}")
            print("| statistic | unprimed, error | primed, error |\n| --- | --- | --- |")
            writer = Writer.load(path, args.device)
            view = checkpoints_view(data, writer.normalisation, path)
            for name, unprimed, primed in fidelity(writer, view, args.fidelity, bias=args.bias, seed=args.seed):
                print(f"| {name} | {unprimed:.3f} | {primed:.3f} |")
        return []
    rows = [judge(path, data, args) for path in args.checkpoint]
    if args.log:
        append_rows(args.log, rows)
        print(f"appended {len(rows)} row(s) to {args.log}")
    return rows


if __name__ == "__main__":
    main()
