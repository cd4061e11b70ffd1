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
(a run still in its first epoch). Output goes to --out, a PNG or an SVG by its extension;
--strokes_out keeps the raw pen offsets [end_of_stroke, dx, dy] in pen units (.npy for one line
or equal-length lines, .npz for any: line_0, line_1 ... and texts).

A text line ends by Graves' rule (section 5.1): when the window weight phi of the position just
after the text exceeds that of every real character, the network has "read" the whole text. A step
cap (--max_points_per_char per character) stops a line that never gets there, with a warning.
"""
import argparse
import math
import os
import time
import warnings
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

import checkpoint
import dataset
import utils

DRAWING_FORMATS = (".png", ".svg", ".pdf", ".jpg", ".jpeg")


# ----------------------------------------------------------------------------- the API

@dataclass
class Writing:
    """Lines a Writer wrote: pen offsets in pen units, and how they came about."""
    lines: list                    # float arrays (T_b, 3): [end_of_stroke, dx, dy], y up
    seed: int
    texts: Optional[list] = None   # synthesis: the text of each line
    phis: Optional[list] = None    # synthesis: (T_b - 1, U_b) window weights behind each point
    capped: Optional[list] = None  # synthesis: True where a line hit the step cap, unfinished

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


class Writer:
    """A trained model together with what its checkpoint knows about the data: the alphabet that
    turns text into codes, and the normalisation that turns its outputs into pen units."""

    def __init__(self, model, alphabet, offset_mean, offset_std, path=None):
        self.model, self.alphabet, self.path = model, alphabet, path
        self.offset_mean = np.asarray(offset_mean, dtype=np.float32)
        self.offset_std = np.asarray(offset_std, dtype=np.float32)

    @classmethod
    def load(cls, path, device="cpu"):
        """A Writer from a checkpoint file (raises FileNotFoundError or checkpoint.CheckpointError)."""
        saved = checkpoint.load(path, device)
        return cls(checkpoint.build_model(saved, device), saved["alphabet"], saved["offset_mean"],
                   saved["offset_std"], path)

    @property
    def task(self):
        return self.model.config.task

    def start_row(self, num_lines):
        """The first input row of every line: the zero pen offset, pen down, in normalised units.

        Every training line starts with this row (raw [0, 0, 0]), so generation starts from it too.
        """
        row = torch.tensor([0.0, *(-self.offset_mean / self.offset_std)], dtype=torch.float32)
        return row.expand(num_lines, 3)

    def to_pen_units(self, offsets):
        """Normalised offsets (n, 3) -> pen units: dx, dy = normalised * std + mean (a new array)."""
        out = np.array(offsets, dtype=np.float64, copy=True)
        out[:, 1:] = out[:, 1:] * self.offset_std.astype(np.float64) + self.offset_mean.astype(np.float64)
        return out

    def encode(self, texts):
        """Texts -> padded codes (B, U) and mask (B, U); warns about characters outside the alphabet."""
        codes = []
        for text in texts:
            if not text.strip():
                raise ValueError("cannot write an empty (or whitespace-only) text")
            unknown = dataset.unknown_characters(text, self.alphabet)
            if unknown:
                warnings.warn(f"characters not in the model's alphabet, written as "
                              f"{dataset.UNKNOWN_REPLACEMENT!r}: {' '.join(repr(c) for c in unknown)} (in {text!r})")
            codes.append(dataset.encode_text(text, self.alphabet))
        return dataset.pad(codes, np.int64)

    def write(self, texts, bias=0.0, seed=None, max_points_per_char=40):
        """Write each text as one line (synthesis), all as one batch; returns a Writing in pen units.

        bias is Graves' sampling bias (section 5.2): 0 samples the model as trained, larger writes
        more neatly. The same seed gives the same strokes; None draws a fresh one (Writing.seed).
        """
        if self.task != "synthesis":
            raise ValueError(f"{self.path} holds a {self.task} model: it writes no text (use sample)")
        texts = [texts] if isinstance(texts, str) else list(texts)
        text, text_mask = self.encode(texts)
        seed, generator = self._generator(seed)
        offsets, phis, capped = self.model.generate(self.start_row(len(texts)), text=text, text_mask=text_mask,
                                                    bias=bias, generator=generator,
                                                    max_points_per_char=max_points_per_char)
        for b, line_capped in enumerate(capped):
            if line_capped:
                warnings.warn(f"line {b} ({texts[b]!r}) hit the step cap of {max_points_per_char} points "
                              f"per character before its window reached the end of the text; "
                              f"it may be unfinished (raise --max_points_per_char or try another seed)")
        return Writing([self.to_pen_units(o) for o in offsets], seed, texts, phis, capped)

    def sample(self, num_lines=4, length=700, bias=0.0, seed=None):
        """num_lines lines of `length` points each from an unconditional (rand_write) model."""
        if self.task != "rand_write":
            raise ValueError(f"{self.path} holds a {self.task} model: it writes texts (use write)")
        seed, generator = self._generator(seed)
        offsets, _, _ = self.model.generate(self.start_row(num_lines), length=length, bias=bias,
                                            generator=generator)
        return Writing([self.to_pen_units(o) for o in offsets], seed)

    def _generator(self, seed):
        # no seed: a fresh one, kept in the Writing so that a good sample can be drawn again
        seed = seed if seed is not None else int.from_bytes(os.urandom(4), "little") >> 1
        device = self.model.output_layer.weight.device
        return seed, torch.Generator(device=device).manual_seed(seed)


# ----------------------------------------------------------------------------- command line

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", choices=["rand_write", "synthesis"], default="synthesis")
    p.add_argument("--checkpoint", help="default: MODEL_DIR/<task>_best.pt, else <task>.pt (shipped), else <task>_last.pt")
    p.add_argument("--model_dir", default="save")
    p.add_argument("--text", action="append", help="text to write (synthesis); repeat for several lines")
    p.add_argument("--text_file", help="UTF-8 file with one text per line (synthesis)")
    p.add_argument("--num_samples", type=int, default=4, help="lines to draw (rand_write)")
    p.add_argument("--length", type=int, default=700, help="points per line (rand_write)")
    p.add_argument("--bias", type=float, default=0.0,
                   help="sampling bias b >= 0 (section 5.2): 0 samples the model as trained, larger b "
                        "writes more neatly")
    p.add_argument("--max_points_per_char", type=int, default=40,
                   help="stop a synthesis line after this many points per character (+1 character)")
    p.add_argument("--seed", type=int, help="random seed; the same seed gives the same strokes")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1,
                   help="CPU threads (as train.py; 0: one per core). Generation is a chain of small "
                        "steps, where more threads mostly wait for each other")
    p.add_argument("--out", help="PNG or SVG (by extension); default samples/<task>.png")
    p.add_argument("--strokes_out", help="also save the pen offsets: .npy or .npz")
    p.add_argument("--attention_out", help="synthesis: also plot the window phi over the characters")
    p.add_argument("--label", action="store_true", help="write each line's text above it (PNG)")
    args = p.parse_args(argv)

    if args.task == "synthesis":
        args.texts = read_texts(p, args)
    elif args.text or args.text_file or args.attention_out:
        p.error("--text, --text_file and --attention_out are for --task synthesis")
    if args.task == "rand_write" and (args.num_samples < 1 or args.length < 2):
        p.error("--num_samples must be >= 1 and --length >= 2")
    if not (math.isfinite(args.bias) and args.bias >= 0):
        p.error(f"--bias must be a finite number >= 0 (0: as trained; 0.5-2: neater), not {args.bias}")
    if args.max_points_per_char < 1:
        p.error("--max_points_per_char must be >= 1")
    args.out = args.out or os.path.join("samples", f"{args.task}.png")
    for flag, path in [("--out", args.out), ("--attention_out", args.attention_out)]:
        if path and not path.lower().endswith(DRAWING_FORMATS):
            p.error(f"{flag} {path}: the extension says the format; use one of {', '.join(DRAWING_FORMATS)}")
    if args.strokes_out and not args.strokes_out.endswith((".npy", ".npz")):
        p.error("--strokes_out must end in .npy or .npz")
    if args.strokes_out and args.strokes_out.endswith(".npy") and args.task == "synthesis" and len(args.texts) > 1:
        p.error("several texts give lines of different lengths: use --strokes_out FILE.npz")
    args.checkpoint = args.checkpoint or checkpoint.default_path(args.task, args.model_dir)
    return args


def read_texts(p, args):
    """The texts to write: each --text, then each non-empty line of --text_file."""
    texts = list(args.text or [])
    if args.text_file:
        try:
            with open(args.text_file, encoding="utf-8") as f:
                texts += [line.rstrip("\r\n") for line in f if line.strip()]
        except UnicodeDecodeError as e:
            p.error(f"--text_file {args.text_file} is not UTF-8 text ({e.reason} at byte {e.start}); "
                    "save it as UTF-8")
        except OSError as e:
            p.error(f"--text_file {args.text_file}: {e.strerror}")
    if not texts:
        p.error("synthesis needs --text TEXT or --text_file FILE")
    if any(not t.strip() for t in texts):
        p.error("--text is empty (or whitespace only): there is nothing to write")
    return texts


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        writer = Writer.load(args.checkpoint, args.device)
    except (FileNotFoundError, checkpoint.CheckpointError) as e:
        raise SystemExit(str(e))
    if writer.task != args.task:
        raise SystemExit(f"{args.checkpoint} holds a {writer.task} model, not {args.task}")

    started = time.time()
    if args.task == "synthesis":
        writing = writer.write(args.texts, args.bias, args.seed, args.max_points_per_char)
    else:
        writing = writer.sample(args.num_samples, args.length, args.bias, args.seed)
    print(f"{len(writing.lines)} line(s), {sum(len(l) for l in writing.lines)} points in "
          f"{time.time() - started:.2f} s (seed {writing.seed}, bias {args.bias}, {args.checkpoint})")

    writing.save(args.out, label=args.label)
    print(f"wrote {args.out}")
    if args.strokes_out:
        writing.save_strokes(args.strokes_out)
        print(f"wrote {args.strokes_out}")
    if args.attention_out:
        writing.save_attention(args.attention_out)
        print(f"wrote {args.attention_out}")


if __name__ == "__main__":
    main()
