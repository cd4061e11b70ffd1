"""Files, pictures and threads: atomic writes, drawing pen offsets as PNG, SVG and plots, and the
number of CPU threads the scripts use.

Every file the project writes goes through atomic_path, so a crash never leaves half a file.
The drawing helpers take lines in pen units (generate.Writer gives them) and use matplotlib's
Figure directly, not pyplot: they neither need nor change the global backend.
"""
import os
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch


def set_threads(threads):
    """Run PyTorch and NumPy's BLAS (which writes single lines, kernels.GenerationStep) on `threads`
    CPU threads each, for the rest of the process (0: leave both at one per core)."""
    if threads:
        import threadpoolctl  # here, not at the top: only the scripts that set threads need it

        torch.set_num_threads(threads)
        threadpoolctl.threadpool_limits(threads, user_api="blas")


TEMPORARY_PREFIX = ".tmp-"


@contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds.

    A crash or error leaves the old file (or no file) in place, never a half-written one. The
    temporary name, .tmp-<pid>-<random><extension>, says which process writes it, so that what a
    killed process left behind can be told from a live write (remove_stale_temporaries).
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    suffix = os.path.splitext(path)[1]  # keep the extension: np.savez and savefig look at it
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f"{TEMPORARY_PREFIX}{os.getpid()}-", suffix=suffix)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes owner-only files; give the usual permissions
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def same_file(a, b):
    """Whether paths `a` and `b` name one file: the same file on disk where both exist (hard links,
    symlinks, ./x and x alike), else the same absolute path once links are resolved."""
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return os.path.realpath(a) == os.path.realpath(b)


def overwritten_input(outputs, inputs):
    """The first pair of names (output, other) whose paths are one file (same_file): an output that
    is one of the inputs, or two outputs that are one file; None if there is none.

    outputs, inputs: {name (e.g. a flag): path or None}; None paths are skipped.
    """
    named_outputs = [(name, path) for name, path in outputs.items() if path]
    named_inputs = [(name, path) for name, path in inputs.items() if path]
    for i, (name, path) in enumerate(named_outputs):
        for other, other_path in named_inputs + named_outputs[:i]:
            if same_file(path, other_path):
                return name, other
    return None


class LockHeld(Exception):
    """Another live process holds the lock; `holder` is what it wrote there (its process id)."""

    def __init__(self, holder):
        super().__init__(holder)
        self.holder = holder


def hold_lock(path):
    """Take the exclusive lock on file `path` (made if missing) and write this process's id into it.

    Returns the open file, which holds the lock until it is closed or the process ends, however it
    ends: the lock is the kernel's (flock), so a crash never leaves it held, and two processes
    taking it at the same moment cannot both get it. Raises LockHeld if a live process holds it.
    Without fcntl (Windows) nothing is locked.
    """
    try:
        import fcntl
    except ImportError:
        return open(os.devnull, "w")
    held = open(path, "a+")
    try:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        held.seek(0)
        holder = held.read(100).strip() or "unknown"
        held.close()
        raise LockHeld(holder) from None
    held.truncate(0)
    held.write(f"{os.getpid()}\n")
    held.flush()
    return held


def process_alive(pid):
    """Whether process `pid` runs (on this machine); where that cannot be asked, assume it does."""
    if os.name != "posix":  # os.kill(pid, 0) would end the process on Windows
        return True
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # none by that number; a number no process has
        return False
    except PermissionError:  # another user's
        return True
    return True


STALE_AFTER_SECONDS = 3600  # temporaries without a writer's pid (older code's) go once this old


def remove_stale_temporaries(folder):
    """Remove the temporaries that atomic_path writers left in `folder` when they were killed: those
    whose writer (the pid in the name) no longer runs, and those of older code (no pid in the name)
    untouched for an hour; a live writer's are kept. Returns the names removed."""
    removed = []
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        path = os.path.join(folder, name)
        if not name.startswith(TEMPORARY_PREFIX) or not os.path.isfile(path):
            continue
        writer, dash, _ = name[len(TEMPORARY_PREFIX):].partition("-")
        if writer.isdigit() and dash:
            stale = not process_alive(int(writer))
        else:
            stale = time.time() - os.path.getmtime(path) > STALE_AFTER_SECONDS
        if stale:
            try:
                os.remove(path)
                removed.append(name)
            except FileNotFoundError:  # its writer renamed or removed it meanwhile
                pass
    return removed


def picture_format(path):
    """The picture format that `path`'s extension names (png, svg, pdf, jpg ...), checked before any
    drawing: without one, savefig would write a file of another name than the one renamed into place."""
    from matplotlib.figure import Figure
    extension = os.path.splitext(os.fspath(path))[1].lower().lstrip(".")
    supported = Figure().canvas.get_supported_filetypes()
    if extension not in supported:
        raise ValueError(f"{path}: the extension says the picture format; use one of "
                         f"{', '.join('.' + e for e in sorted(supported))}")
    return extension


# ----------------------------------------------------------------------------- plots

def plot_loss_curves(history, path=None, title="", ax=None):
    """Train vs validation NLL (nats per sequence) against epoch, into `ax` or saved to `path`."""
    if ax is None:
        # matplotlib's Figure without pyplot: no global backend switch (safe inside a notebook)
        from matplotlib.figure import Figure
        fig = Figure(figsize=(6, 4))
        plot_loss_curves(history, title=title, ax=fig.add_subplot())
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=picture_format(path))
        return
    epochs = [r["epoch"] for r in history]
    ax.plot(epochs, [r["train_nats_per_sequence"] for r in history], "o-", label="train")
    ax.plot(epochs, [r["validation_nats_per_sequence"] for r in history], "s-", label="validation")
    ax.set_xlabel("epoch")
    ax.set_ylabel("NLL (nats per sequence)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()


def plot_learning_curves(curves, path, title=""):
    """Validation NLL against training CPU minutes and against points seen, one line per run.

    curves: {label: rows of a train.py --curve_every log (cpu_seconds, points,
    validation_nats_per_sequence)}; saved to `path`.
    """
    from matplotlib.figure import Figure
    fig = Figure(figsize=(11, 4.5))
    by_time, by_points = fig.subplots(1, 2, sharey=True)
    for label, rows in curves.items():
        nll = [r["validation_nats_per_sequence"] for r in rows]
        by_time.plot([r["cpu_seconds"] / 60 for r in rows], nll, ".-", label=label)
        by_points.plot([r["points"] / 1e6 for r in rows], nll, ".-", label=label)
    by_time.set_xlabel("training CPU minutes")
    by_points.set_xlabel("training points seen (millions)")
    by_time.set_ylabel("validation NLL (nats per line)")
    for ax in (by_time, by_points):
        ax.grid(alpha=0.3)
    by_points.legend(fontsize=8, loc="upper right")
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=picture_format(path))


# ----------------------------------------------------------------------------- strokes and drawings
#
# Lines are arrays of pen offsets [end_of_stroke, dx, dy] in pen units, y growing upwards.

def offsets_to_strokes(offsets):
    """Offsets (n, 3) -> list of (k, 2) absolute-coordinate arrays, one per pen stroke.

    A point with end_of_stroke = 1 is the last of its stroke; the pen is lifted before the next
    point. Points after the last lift form a final stroke (a line cut mid-stroke still shows).
    """
    offsets = np.asarray(offsets, dtype=np.float64)
    points = np.cumsum(offsets[:, 1:], axis=0)
    ends = np.flatnonzero(offsets[:, 0] > 0.5) + 1
    return [s for s in np.split(points, ends) if len(s)]


LINE_GAP = 0.3  # layout_lines: the space between stacked lines, in heights of the tallest (web/ shares it)


def layout_lines(lines, gap=LINE_GAP):
    """Strokes of several lines stacked top to bottom, all in one coordinate frame (y up).

    Each line is shifted so that its left edge is at x = 0 and its top lies `gap` line-heights
    (of the tallest line) below the previous line's bottom. Returns a list (per line) of stroke lists.
    """
    per_line = [offsets_to_strokes(line) for line in lines]
    heights = [np.ptp(np.concatenate(s)[:, 1]) if s else 0.0 for s in per_line]
    spacing = gap * max(heights + [1.0])
    placed, top = [], 0.0
    for strokes in per_line:
        if not strokes:
            placed.append([])
            continue
        points = np.concatenate(strokes)
        shift = np.array([-points[:, 0].min(), top - points[:, 1].max()])
        placed.append([s + shift for s in strokes])
        top = (points[:, 1].min() + shift[1]) - spacing
    return placed


def draw_strokes(ax, lines, titles=None, linewidth=1.5, color="black"):
    """Draw lines of offsets into a matplotlib Axes, stacked vertically, pen lifts respected."""
    for i, strokes in enumerate(layout_lines(lines)):
        for s in strokes:
            # a one-point stroke is a dot: plot it as a marker, a segment of length 0 shows nothing
            ax.plot(s[:, 0], s[:, 1], "-" if len(s) > 1 else ".", color=color, linewidth=linewidth,
                    markersize=2 * linewidth, solid_capstyle="round", solid_joinstyle="round")
        if titles is not None and strokes:
            top = max(s[:, 1].max() for s in strokes)
            ax.text(0, top, titles[i], fontsize=8, color="tab:blue", va="bottom")
    ax.set_aspect("equal")
    ax.axis("off")
    return ax


def _figure(width, height):
    from matplotlib.figure import Figure
    return Figure(figsize=(width, height))


def plot_strokes(lines, path=None, ax=None, titles=None, linewidth=1.5, width=10.0):
    """Draw lines of offsets (pen units) stacked vertically, into `ax` or a new figure saved to `path`.

    The file format follows the extension of `path` (.png, .svg, .pdf ...). Returns the Axes.
    """
    if ax is not None:
        return draw_strokes(ax, lines, titles, linewidth)
    if path is None:
        raise ValueError("plot_strokes needs a path or an Axes")
    picture_format(path)
    placed = [np.concatenate(s) for s in layout_lines(lines) if s]
    if placed:
        points = np.concatenate(placed)
        aspect = max(np.ptp(points[:, 1]), 1e-6) / max(np.ptp(points[:, 0]), 1e-6)
    else:
        aspect = 0.2
    fig = _figure(width, min(max(width * aspect, 1.0), 40.0))
    ax = fig.add_axes([0.01, 0.01, 0.98, 0.98])
    draw_strokes(ax, lines, titles, linewidth)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format=picture_format(path))
    return ax


def write_svg(lines, path, display_width=1000, stroke_width=None):
    """Write lines of offsets (pen units) as an SVG file: one <path> per pen stroke, lines stacked.

    Coordinates stay in pen units (the viewBox); the picture is shown `display_width` pixels wide.
    SVG's y axis points down, so y is negated.
    """
    from xml.sax.saxutils import quoteattr

    strokes = [s * np.array([1.0, -1.0]) for line in layout_lines(lines) for s in line]
    if strokes:
        points = np.concatenate(strokes)
        low, high = points.min(0), points.max(0)
    else:
        low, high = np.zeros(2), np.ones(2)
    if stroke_width is None:
        stroke_width = max(high[0] - low[0], high[1] - low[1], 1e-3) / 500
    low, high = low - 5 * stroke_width, high + 5 * stroke_width  # room for the round pen tip
    width, height = high - low
    fmt = lambda v: f"{v:.2f}"
    paths = []
    for s in strokes:
        # "M x y L x y ..."; a one-point stroke repeats its point so the round cap draws a dot
        pts = s if len(s) > 1 else np.repeat(s, 2, axis=0)
        d = "M " + " L ".join(f"{fmt(x)} {fmt(y)}" for x, y in pts)
        paths.append(f"  <path d={quoteattr(d)}/>")
    svg = "\n".join([
        '<?xml version="1.0" encoding="UTF-8"?>',
        f'<svg xmlns="http://www.w3.org/2000/svg" version="1.1" width="{display_width}" '
        f'height="{fmt(display_width * height / width)}" '
        f'viewBox="{fmt(low[0])} {fmt(low[1])} {fmt(width)} {fmt(height)}">',
        f'<g fill="none" stroke="black" stroke-width="{fmt(stroke_width)}" '
        'stroke-linecap="round" stroke-linejoin="round">',
        *paths,
        "</g>",
        "</svg>",
        "",
    ])
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(svg)


@dataclass
class Plotter:
    """How write_gcode drives a pen plotter (GRBL and its kind): the page in millimetres, the feed
    rate, and the commands that lift and lower the pen, which differ from machine to machine (a Z
    axis, a servo on M3 S..): set them for yours. The page in the browser shares these defaults."""
    page_width: float = 210.0   # mm (A4 portrait)
    page_height: float = 297.0  # mm
    margin: float = 15.0        # mm of blank paper on every side
    line_height: float = 12.0   # mm of the page each written line takes, its gap included
    feed_rate: float = 3000.0   # mm per minute, pen down
    pen_up: str = "G0 Z5"
    pen_down: str = "G0 Z0"

    def __post_init__(self):
        numbers = (self.page_width, self.page_height, self.margin, self.line_height, self.feed_rate)
        if not (all(np.isfinite(numbers)) and self.margin >= 0 and self.line_height > 0 and self.feed_rate > 0
                and min(self.page_width, self.page_height) > 2 * self.margin):
            raise ValueError(f"a plotter needs a page larger than twice its margin (>= 0), a positive line height "
                             f"and a positive feed rate, not {self}")


def plotter_strokes(lines, plotter):
    """The strokes of `lines` as write_svg lays them out (layout_lines), in millimetres on the
    plotter's page, y up from its bottom edge: the writing's top left corner at the margins, each
    line taking line_height, all shrunk where the page is too small. Returns (strokes, mm per pen unit)."""
    strokes = [s for line in layout_lines(lines) for s in line]
    if not strokes:
        return [], 1.0
    points = np.concatenate(strokes)
    low, high = points.min(0), points.max(0)
    width, height = np.maximum(high - low, 1e-9)
    scale = min(plotter.line_height * len(lines) / height, (plotter.page_width - 2 * plotter.margin) / width,
                (plotter.page_height - 2 * plotter.margin) / height)
    corner = np.array([plotter.margin, plotter.page_height - plotter.margin])
    return [corner + (s - [low[0], high[1]]) * scale for s in strokes], scale


def gcode(lines, plotter=None):
    """Lines of offsets (pen units) as G-code for a pen plotter: millimetres, absolute coordinates;
    for each stroke a pen-up move (G0) to its first point, pen down, a G1 move to each further
    point, pen up; at the end, back to the origin. One centre line per stroke, as in the SVG."""
    plotter = plotter or Plotter()
    strokes, scale = plotter_strokes(lines, plotter)
    at = lambda point: f"X{point[0]:.3f} Y{point[1]:.3f}"
    out = [f"; {len(lines)} line(s) of handwriting, {len(strokes)} strokes, {scale:.6f} mm per pen unit, "
           f"on a {plotter.page_width:g} x {plotter.page_height:g} mm page",
           "G21 ; millimetres", "G90 ; absolute coordinates", plotter.pen_up]
    for stroke in strokes:
        out += [f"G0 {at(stroke[0])}", plotter.pen_down]
        out += [f"G1 {at(point)}" + (f" F{plotter.feed_rate:g}" if i == 0 else "") for i, point in enumerate(stroke[1:])]
        out.append(plotter.pen_up)
    out.append("G0 X0 Y0")
    return "\n".join(out) + "\n"


def write_gcode(lines, path, plotter=None):
    """gcode(lines, plotter) to `path`, atomically."""
    text = gcode(lines, plotter)
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)


def save_drawing(lines, path, titles=None):
    """Lines of offsets (pen units) -> `path`: SVG for .svg (vector, one path per stroke), else matplotlib."""
    if os.fspath(path).lower().endswith(".svg"):
        write_svg(lines, path)
    else:
        plot_strokes(lines, path, titles=titles)


def draw_attention(ax, phi, text):
    """phi (T, U) as an image: characters of `text` down the y axis, time step along x."""
    phi = np.asarray(phi)
    ax.imshow(phi.T, aspect="auto", origin="upper", interpolation="nearest", cmap="Greys")
    ax.set_yticks(range(len(text)))
    ax.set_yticklabels([repr(c)[1:-1] if c != " " else "␣" for c in text], fontsize=7,
                       fontfamily="monospace")
    ax.set_xlabel("time step (pen point)")
    ax.set_ylabel("character")
    return ax


def plot_attention(phi, text, path=None, ax=None):
    """The attention window phi (T, U) over the characters of `text`, into `ax` or saved to `path`.

    For several lines pass lists of phis and texts: one panel each, stacked (file output only).
    """
    if ax is not None:
        return draw_attention(ax, phi, text)
    if path is None:
        raise ValueError("plot_attention needs a path or an Axes")
    picture_format(path)
    phis, texts = (phi, text) if isinstance(text, (list, tuple)) else ([phi], [text])
    heights = [max(1.5, 0.18 * len(t) + 0.8) for t in texts]
    fig = _figure(10, sum(heights) + 0.3)
    axes = fig.subplots(len(texts), 1, squeeze=False, gridspec_kw={"height_ratios": heights})[:, 0]
    for ax, p, t in zip(axes, phis, texts):
        draw_attention(ax, p, t)
    axes[0].set_title("attention window phi(t, u)")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format=picture_format(path))
    return axes[0] if len(axes) == 1 else axes
