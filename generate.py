"""Write handwriting with a trained model (Graves 2013, arXiv:1308.0850, sections 4 and 5).

    python generate.py --task rand_write --num_samples 4 --length 700
    python generate.py --task synthesis --text "a handwriting robot" --bias 1 --out samples/robot.svg
    python generate.py --task synthesis --text_file lines.txt --attention_out samples/phi.png

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
import os
import time
import warnings
from contextlib import contextmanager

import numpy as np
import torch

import utils
from model import sample_mixture, split_mixture


# ----------------------------------------------------------------------------- loading

def default_checkpoint(task, model_dir="save"):
    """The checkpoint generation uses when none is named, the first that exists of:

    save/<task>_best.pt (your own training, its best epoch), save/<task>.pt (the weights shipped
    with the repository), save/<task>_last.pt (a run still in its first epoch).
    """
    candidates = [os.path.join(model_dir, f"{task}{suffix}.pt") for suffix in ("_best", "", "_last")]
    for path in candidates:
        if os.path.exists(path):
            return path
    return candidates[0]  # missing: load_checkpoint says so and how to make one


def load_model(path, device="cpu"):
    """(model in eval mode, checkpoint dict with "alphabet", "offset_mean", "offset_std", ...)."""
    return utils.load_checkpoint(path, device)


def start_row(checkpoint):
    """The first input row of every line: the zero pen offset, pen down, in normalised units.

    Every training line starts with this row (raw [0, 0, 0]), so generation starts from it too.
    """
    mean = np.asarray(checkpoint["offset_mean"], dtype=np.float32)
    std = np.asarray(checkpoint["offset_std"], dtype=np.float32)
    return torch.tensor([0.0, *(-mean / std)], dtype=torch.float32)


def to_pen_units(lines, checkpoint):
    """Generated (normalised) offsets -> pen units, the units of the original data."""
    return [utils.denormalise(line, checkpoint["offset_mean"], checkpoint["offset_std"]) for line in lines]


@contextmanager
def one_step_lstm():
    """Context for stepping nn.LSTM one point at a time on a CPU.

    The oneDNN (mkldnn) LSTM kernel repacks its weights at every call: for one time step that
    takes several times longer than the step itself, so the plain kernel is used instead.
    """
    previous = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = previous


def _first_input(model, batch_size, start):
    weight = model.output_layer.weight
    if start is None:
        start = torch.zeros(3)
    return start.to(weight.device, weight.dtype).expand(batch_size, 1, 3).clone()


# ----------------------------------------------------------------------------- unconditional

@torch.inference_mode()
def generate_unconditional(model, num_samples, length, bias=0.0, generator=None, start=None):
    """Sample `num_samples` lines of `length` points each, as one batch (section 4).

    start: the normalised first row (start_row(checkpoint)); None means all zeros.
    Returns a list of float32 arrays (length, 3) in normalised units, starting with `start`.
    """
    if model.config.task != "rand_write":
        raise ValueError("generate_unconditional needs a rand_write model; use generate_text for synthesis")
    x = _first_input(model, num_samples, start)
    points, state = [x[:, 0]], None
    with one_step_lstm():
        for _ in range(length - 1):
            y, state, _ = model(x, state=state)
            x = sample_mixture(split_mixture(y[:, 0], bias), generator).unsqueeze(1)
            points.append(x[:, 0])
    lines = torch.stack(points, dim=1).float().cpu().numpy()
    return list(lines)


# ----------------------------------------------------------------------------- conditional

def finished(phi_text, phi_after):
    """Graves' stopping rule: phi of the position after the text beats phi of every real character.

    phi_text (B, U): window weights of the characters (0 on padding, which never wins, as phi >= 0);
    phi_after (B,): the weight the same window gives position U_b, just past line b's text.
    Returns (B,) bool.
    """
    return phi_after > phi_text.max(dim=-1).values


def phi_after_text(model, h1, kappa_prev, lengths):
    """phi(t, U_b) for each line b: the window's weight on the position just past its text."""
    phi = model.window_at(h1, kappa_prev, int(lengths.max()) + 1)
    return phi.gather(1, lengths.unsqueeze(1)).squeeze(1)


def encode_texts(texts, alphabet):
    """Texts -> (codes (B, U) int64, mask (B, U) float, lengths (B,)); warns about unknown characters."""
    codes = []
    for text in texts:
        if not text.strip():
            raise ValueError("cannot write an empty (or whitespace-only) text")
        unknown = utils.unknown_characters(text, alphabet)
        if unknown:
            warnings.warn(f"characters not in the model's alphabet, written as "
                          f"{utils.UNKNOWN_REPLACEMENT!r}: {' '.join(repr(c) for c in unknown)} (in {text!r})")
        codes.append(utils.encode_text(text, alphabet))
    lengths = torch.tensor([len(c) for c in codes])
    padded = torch.zeros(len(codes), int(lengths.max()), dtype=torch.int64)
    mask = torch.zeros(padded.shape)
    for b, c in enumerate(codes):
        padded[b, :len(c)], mask[b, :len(c)] = torch.from_numpy(c), 1
    return padded, mask, lengths


@torch.inference_mode()
def generate_text(model, texts, alphabet, bias=0.0, generator=None, max_points_per_char=40, start=None):
    """Write each of `texts` (section 5), all lines as one batch.

    start: the normalised first row (start_row(checkpoint)); None means all zeros.
    A line stops when `finished` says so, or after max_points_per_char * (len(text) + 1) points
    (then its capped flag is True and a warning names it). A finished line stops changing while
    the others go on. Returns (offsets, phis, capped): offsets[b] float32 (T_b + 1, 3) normalised,
    starting with `start`; phis[b] (T_b, U_b), the window that produced each generated point;
    capped[b] bool.
    """
    if model.config.task != "synthesis":
        raise ValueError("generate_text needs a synthesis model; use generate_unconditional for rand_write")
    device = model.output_layer.weight.device
    text, text_mask, lengths = (t.to(device) for t in encode_texts(texts, alphabet))
    B = len(texts)
    caps = max_points_per_char * (lengths + 1)
    x = _first_input(model, B, start)
    state = model.initial_state(B, device)
    points, phis = [x[:, 0]], []
    steps = torch.zeros(B, dtype=torch.int64, device=device)  # points generated per line
    done = torch.zeros(B, dtype=torch.bool, device=device)
    capped = torch.zeros(B, dtype=torch.bool, device=device)
    with one_step_lstm():
        while not done.all():
            kappa_prev = state.kappa
            y, state, phi = model(x, text, text_mask, state=state, return_phi=True)
            phi = phi[:, 0]
            # phi(t, .) was computed after reading point t and decides point t+1: if the window
            # has moved past the text, the line ends here, without that point
            done |= finished(phi, phi_after_text(model, state.h1, kappa_prev, lengths))
            x = sample_mixture(split_mixture(y[:, 0], bias), generator).unsqueeze(1)
            points.append(x[:, 0])
            phis.append(phi)
            steps += ~done
            capped |= ~done & (steps >= caps)
            done |= capped
    offsets = torch.stack(points, dim=1).float().cpu().numpy()
    phi_all = torch.stack(phis, dim=1).float().cpu().numpy()
    steps, lengths, capped = steps.tolist(), lengths.tolist(), capped.tolist()
    for b in range(B):
        if capped[b]:
            warnings.warn(f"line {b} ({texts[b]!r}) hit the step cap of {max_points_per_char} points "
                          f"per character before its window reached the end of the text; "
                          f"it may be unfinished (raise --max_points_per_char or try another seed)")
    return ([offsets[b, :steps[b] + 1] for b in range(B)],
            [phi_all[b, :steps[b], :lengths[b]] for b in range(B)],
            capped)


# ----------------------------------------------------------------------------- command line

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", choices=["rand_write", "synthesis"], default="synthesis")
    p.add_argument("--checkpoint", help="default: MODEL_DIR/<task>_best.pt, else <task>.pt (shipped), else <task>_last.pt")
    p.add_argument("--model_dir", default="save")
    p.add_argument("--text", action="append", help="text to write (synthesis); repeat for several lines")
    p.add_argument("--text_file", help="file with one text per line (synthesis)")
    p.add_argument("--num_samples", type=int, default=4, help="lines to draw (rand_write)")
    p.add_argument("--length", type=int, default=700, help="points per line (rand_write)")
    p.add_argument("--bias", type=float, default=0.0,
                   help="sampling bias b (section 5.2): 0 samples the model as trained, larger b "
                        "writes more neatly")
    p.add_argument("--max_points_per_char", type=int, default=40,
                   help="stop a synthesis line after this many points per character (+1 character)")
    p.add_argument("--seed", type=int, help="random seed; the same seed gives the same strokes")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1,
                   help="CPU threads; generation is a chain of small steps, where more threads "
                        "mostly wait for each other (and much longer on a busy machine)")
    p.add_argument("--out", help="PNG or SVG (by extension); default samples/<task>.png")
    p.add_argument("--strokes_out", help="also save the pen offsets: .npy or .npz")
    p.add_argument("--attention_out", help="synthesis: also plot the window phi over the characters")
    p.add_argument("--label", action="store_true", help="write each line's text above it (PNG)")
    args = p.parse_args(argv)

    if args.task == "synthesis":
        texts = list(args.text or [])
        if args.text_file:
            with open(args.text_file, encoding="utf-8") as f:
                texts += [line.rstrip("\r\n") for line in f if line.strip()]
        if not texts:
            p.error("synthesis needs --text TEXT or --text_file FILE")
        if any(not t.strip() for t in texts):
            p.error("--text is empty (or whitespace only): there is nothing to write")
        args.texts = texts
    elif args.text or args.text_file or args.attention_out:
        p.error("--text, --text_file and --attention_out are for --task synthesis")
    if args.task == "rand_write" and (args.num_samples < 1 or args.length < 2):
        p.error("--num_samples must be >= 1 and --length >= 2")
    if args.strokes_out and not args.strokes_out.endswith((".npy", ".npz")):
        p.error("--strokes_out must end in .npy or .npz")
    if args.strokes_out and args.strokes_out.endswith(".npy") and args.task == "synthesis" and len(args.texts) > 1:
        p.error("several texts give lines of different lengths: use --strokes_out FILE.npz")
    args.out = args.out or os.path.join("samples", f"{args.task}.png")
    args.checkpoint = args.checkpoint or default_checkpoint(args.task, args.model_dir)
    return args


def save_strokes(path, lines, texts=None):
    """Pen offsets (pen units) -> .npy (one array: (T, 3), or (N, T, 3) for equal lengths) or .npz."""
    with utils.atomic_path(path) as tmp:
        if path.endswith(".npy"):
            np.save(tmp, lines[0] if len(lines) == 1 else np.stack(lines))
        else:
            extra = {"texts": np.array(texts, dtype=str)} if texts is not None else {}
            np.savez(tmp, **{f"line_{i}": line for i, line in enumerate(lines)}, **extra)


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        model, checkpoint = load_model(args.checkpoint, args.device)
    except FileNotFoundError as e:
        raise SystemExit(str(e))
    if model.config.task != args.task:
        raise SystemExit(f"{args.checkpoint} holds a {model.config.task} model, not {args.task}")
    # no --seed: a fresh one, printed so that a good sample can be drawn again
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "little") >> 1
    generator = torch.Generator(device=args.device).manual_seed(seed)
    start = start_row(checkpoint)

    started = time.time()
    if args.task == "synthesis":
        texts = args.texts
        lines, phis, _ = generate_text(model, texts, checkpoint["alphabet"], args.bias, generator,
                                       args.max_points_per_char, start)
    else:
        texts = None
        lines = generate_unconditional(model, args.num_samples, args.length, args.bias, generator, start)
    seconds = time.time() - started
    lines = to_pen_units(lines, checkpoint)
    print(f"{len(lines)} line(s), {sum(len(l) for l in lines)} points in {seconds:.2f} s "
          f"(seed {seed}, bias {args.bias}, {args.checkpoint})")

    utils.save_drawing(lines, args.out, titles=texts if args.label else None)
    print(f"wrote {args.out}")
    if args.strokes_out:
        save_strokes(args.strokes_out, [l.astype(np.float32) for l in lines], texts)
        print(f"wrote {args.strokes_out}")
    if args.attention_out:
        utils.plot_attention(phis, texts, args.attention_out)
        print(f"wrote {args.attention_out}")


if __name__ == "__main__":
    main()
