"""Checked command-line values: argparse `type=` functions that refuse, where a value is parsed,
what no run can use, in one sentence naming the flag and the range.

    p.add_argument("--batch_size", type=arguments.count(1), default=50)
    p.add_argument("--seed", type=arguments.SEED)
    args = arguments.parse(p, argv)   # p.parse_args, with each checked type told its flag's name

Counts are whole numbers (>= 1, or >= 0 where 0 means "off"); rates and strengths are finite
numbers >= 0 (NaN passes every `< 0` test, so it is refused by name); fractions lie strictly between
0 and 1; seeds within NumPy's range; work a command does in one go has an upper bound.
"""
import argparse
import copy
import math

SEED_MAX = 2 ** 32 - 1  # numpy.random.seed and default_rng([seed, ...]) take 0 .. 2**32 - 1

# Sampling bias b (Graves, section 5.2) sharpens the mixture weights by (1 + b) and shrinks the
# Gaussians by exp(-b). At b = 20 they are already exp(-20) = 2e-9 of their trained spread, so the
# strokes are the mixture's means: the shipped models' lines move at most 26 pen units (of a line
# ~600 tall) between b = 20 and 100, and not at all past b = 87, where exp(-b) leaves float32's
# normal range. Float32 sampling itself breaks near b = 1e37, where (1 + b) * logits overflows; 20
# keeps far from that and loses nothing a user can see (docs/reliability.md).
MAX_BIAS = 20
MAX_SAMPLE_LINES = 1000    # rand_write --num_samples: one batch of lines in memory
MAX_SAMPLE_POINTS = 20000  # rand_write --length: the longest IAM-OnDB line has under 2,000 points


class FlagType:
    """An argparse type whose refusals name the flag it parses (set by `parse`)."""
    flag = "the value"

    def named(self, flag):
        named = copy.copy(self)
        named.flag = flag
        return named

    def refuse(self, message):
        # an ArgumentError without an argument prints as the message alone: "--x must be ..."
        return argparse.ArgumentError(None, f"{self.flag} {message}")


class Number(FlagType):
    """A whole or finite number within bounds: low <= x (low < x if low_open), x <= high (x < high)."""

    def __init__(self, whole, low=None, high=None, low_open=False, high_open=False, hint=""):
        self.whole, self.low, self.high = whole, low, high
        self.low_open, self.high_open, self.hint = low_open, high_open, hint

    def __call__(self, text):
        kind = "a whole number" if self.whole else "a finite number"
        try:
            value = int(text) if self.whole else float(text)
        except ValueError:
            raise self.refuse(f"must be {kind} {self.range()}, not {text!r}{self.hint}") from None
        if not math.isfinite(value):
            raise self.refuse(f"must be {kind} {self.range()}, not {text}{self.hint}")
        too_low = self.low is not None and (value <= self.low if self.low_open else value < self.low)
        too_high = self.high is not None and (value >= self.high if self.high_open else value > self.high)
        if too_low or too_high:
            raise self.refuse(f"must be {self.range()}, not {text}{self.hint}")
        return value

    def range(self):
        if self.high is None:
            return f"> {self.low}" if self.low_open else ("0 or more" if self.low == 0 else f">= {self.low}")
        if not (self.low_open or self.high_open):
            return f"between {self.low} and {self.high}"
        return f"{'>' if self.low_open else '>='} {self.low} and {'<' if self.high_open else '<='} {self.high}"


def count(low=1, high=None, hint=""):
    """A whole number >= low (and <= high); `hint` follows a refusal (start it with ': ' or ' (')."""
    return Number(True, low, high, hint=hint)


def number(low=0, high=None, low_open=False, high_open=False, hint=""):
    """A finite number within the bounds (inclusive unless open)."""
    return Number(False, low, high, low_open, high_open, hint)


POSITIVE = count(1)                  # batch sizes, cell sizes, lines, steps ...
OPTIONAL = count(0)                  # counts where 0 means off or "no limit"
THREADS = count(0, hint=" (0: one per core)")
SEED = count(0, SEED_MAX, hint=" (NumPy's seeds)")
STRENGTH = number(0)                 # rates, noise, clipping, budgets: finite and >= 0
RATE = number(0, low_open=True)      # a learning rate: finite and > 0
FRACTION = number(0, 1, low_open=True, high_open=True)
BIAS = number(0, MAX_BIAS, hint=f" (at {MAX_BIAS} the strokes are already the mixture's means)")


class Device(FlagType):
    """cpu, cuda, cuda:N or mps, refused at once where this machine lacks it."""

    def __call__(self, text):
        import torch  # here: the rest of this module needs no torch

        try:
            device = torch.device(text)
        except RuntimeError:
            raise self.refuse(f"{text!r} is not a device: use cpu, cuda, cuda:N or mps") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise self.refuse(f"{text}: this machine has no CUDA GPU that PyTorch can use; use --device cpu")
        if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
            raise self.refuse(f"{text}: this machine has {torch.cuda.device_count()} CUDA GPU(s), "
                              f"numbered from 0")
        if device.type == "mps" and not torch.backends.mps.is_available():
            raise self.refuse(f"{text}: this machine has no Apple GPU that PyTorch can use; use --device cpu")
        if device.type not in ("cpu", "cuda", "mps"):
            raise self.refuse(f"{text}: the scripts run on cpu, cuda or mps")
        return text


DEVICE = Device()


def parse(parser, argv=None):
    """parser.parse_args(argv), after telling each checked type the name of its flag."""
    for action in parser._actions:  # argparse keeps a parser's options here
        if isinstance(action.type, FlagType):
            action.type = action.type.named(action.option_strings[0] if action.option_strings else action.dest)
    return parser.parse_args(argv)
