"""Training throughput: the seed's formulation against ours, side by side, on real data, and both
against the machine's matrix-multiply roof.

    python bench.py                       # both tasks, a few optimizer steps each
    python bench.py --sampling            # seconds to write one 40-character line, and a batch,
                                          # against the roof of reading the weights every point
    python bench.py --task synthesis --steps 5
    python bench.py --task synthesis --parts   # also: where a step of ours goes, and the speed-up
                                               # that layer 1 at the roof would give
    python bench.py --compare_loss 120    # also train both 120 steps, comparing validation NLL every 40
    python bench.py --task synthesis --compare_loss 600 --seeds 3 --device cuda   # the longer check
    python bench.py --task synthesis --compare_loss 200 --variants bucketed   # one variant only
    python bench.py --task synthesis --compare_loss 200 --seeds 2 --first_seed 3   # seeds 3 and 4
    python bench.py --check_precision save/synthesis.pt   # what bf16 changes for trained weights
    git show HEAD~1:kernels.py > /tmp/old_kernels.py
    python bench.py --layer1_against /tmp/old_kernels.py --compile   # layer 1 of another kernels.py against ours

The baseline is the seed repository's formulation (SeedModel): every batch padded to --timesteps,
fp32, two nn.LSTMs for rand_write; for synthesis layer 1 (an nn.LSTMCell) and the window stepped in
a Python loop under autograd, then layer 2 (an nn.LSTM) and the output layer once over the
sequence. Ours (kernels.FastHandwritingModel + train.py) batches lines of similar length, steps
layer 1 and the window with a hand-written backward pass, and uses bf16 matrix products where the
hardware has them. Sampling's baseline is the plain model.HandwritingModel, forward() per point.
Throughput counts real (unpadded) predicted points per second; the roof is the speed of one large
matrix product on this machine, and ours is reported as a share of it (FLOPs per point from the
model's configuration).
"""
import argparse
import contextlib
import copy
import importlib.util
import inspect
import os
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import arguments
import checkpoint
import dataset
import kernels
from dataset import collate, make_batches
from dataset import dataset_nll
from kernels import FastHandwritingModel, autocast, pen_projection, uses_bf16
from model import HandwritingModel, ModelConfig, point_nll, sequence_nll, split_mixture
from train import add_shared_arguments, set_up_cpu


class SeedModel(nn.Module):
    """The baseline: the models as the seed repository formulated them, in plain PyTorch.

    rand_write is two nn.LSTM layers over the whole sequence. synthesis steps layer 1 (an
    nn.LSTMCell) and the window through time in a Python loop, under autograd, and then runs
    layer 2 (an nn.LSTM) and the output layer once each over the whole sequence.
    """

    def __init__(self, config):
        super().__init__()
        self.config = config
        H, A = config.cell_size, (config.alphabet_size if config.task == "synthesis" else 0)
        self.A = A
        if config.task == "synthesis":
            self.cell1 = nn.LSTMCell(3 + A, H)
            self.window_layer = nn.Linear(H, 3 * config.K)
        else:
            self.layer1 = nn.LSTM(3, H, batch_first=True)
        self.layer2 = nn.LSTM(3 + H + A, H, batch_first=True)
        self.output_layer = nn.Linear(2 * H, 6 * config.num_clusters + 1)

    def forward(self, offsets, text=None, text_mask=None):
        if self.config.task == "rand_write":
            h1, _ = self.layer1(offsets)
            h2, _ = self.layer2(torch.cat([offsets, h1], -1))
            return self.output_layer(torch.cat([h1, h2], -1))
        B, T, _ = offsets.shape
        H = self.config.cell_size
        one_hot = F.one_hot(text, self.A).to(offsets.dtype)
        state = (offsets.new_zeros(B, H), offsets.new_zeros(B, H))
        kappa, window = offsets.new_zeros(B, self.config.K), offsets.new_zeros(B, self.A)
        h1s, windows = [], []
        for t in range(T):
            state = self.cell1(torch.cat([offsets[:, t], window], -1), state)
            a, b, k = self.window_layer(state[0]).chunk(3, -1)
            # Graves eqs. 46-51 as the seed computes them, with the plain exp (model.window_weights
            # floors the exponents, which is ours)
            alpha, beta, kappa = a.exp(), b.exp(), kappa + k.exp()
            u = torch.arange(text_mask.shape[1], dtype=kappa.dtype, device=kappa.device)
            phi = (alpha.unsqueeze(-1) * torch.exp(-beta.unsqueeze(-1) * (kappa.unsqueeze(-1) - u) ** 2)).sum(1)
            window = torch.bmm((phi * text_mask).unsqueeze(1), one_hot).squeeze(1)
            h1s.append(state[0]), windows.append(window)
        h1, windows = torch.stack(h1s, 1), torch.stack(windows, 1)
        h2, _ = self.layer2(torch.cat([offsets, h1, windows], -1))
        return self.output_layer(torch.cat([h1, h2], -1))


def seed_nll(model, offsets, mask, text, text_mask):
    y = model(offsets[:, :-1], text, text_mask)
    nll = point_nll(split_mixture(y), offsets[:, 1:])
    target_mask = mask[:, 1:]
    return (nll * target_mask).sum(), target_mask.sum()


# Both batch streams are endless, epoch after epoch (an epoch is about 200 steps at batch 50).

def padded_batches(data, batch_size, timesteps, rng):
    """Random batches, every one padded (or cut) to exactly timesteps + 1 points."""
    while True:
        order = rng.permutation(len(data))
        for start in range(0, len(order) - batch_size + 1, batch_size):
            offsets, mask, text, text_mask = collate(data, order[start:start + batch_size], timesteps + 1)
            pad = timesteps + 1 - offsets.shape[1]
            yield F.pad(offsets, (0, 0, 0, pad)), F.pad(mask, (0, pad)), text, text_mask


def bucketed_batches(data, batch_size, timesteps, rng):
    """train.py's batches of similar-length lines."""
    while True:
        for indices in make_batches([len(x) for x in data.offsets], batch_size, rng):
            yield collate(data, indices, timesteps + 1)


# --compare_loss variants: (printed name, batches, precision; None: --precision)
VARIANTS = {"padded": ("fp32, padded batches", padded_batches, "fp32"),
            "bucketed": ("fp32, bucketed batches", bucketed_batches, "fp32"),
            "ours": ("ours", bucketed_batches, None)}


def cpu_kind(cpuinfo=None):
    """The CPU's model name and the vector extensions that set its speed here (AVX2 or AVX-512,
    bf16, AMX), from /proc/cpuinfo's text (read if not given; "" off Linux), and its core count:
    every figure bench.py prints names the machine it was measured on."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as f:
                cpuinfo = f.read()
        except OSError:
            cpuinfo = ""
    fields = {}
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())  # the first processor's
    flags = set(fields.get("flags", "").split())
    vectors = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    extras = [name for flag, name in [("avx512_bf16", "avx512_bf16"), ("amx_bf16", "AMX")] if flag in flags]
    return (f"{fields.get('model name', 'unknown CPU')}, {vectors}" + (" with " + " and ".join(extras) if extras else "")
            + f", {os.cpu_count()} cores")


def synchronize(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def backward(model, batch, loss_fn, precision):
    """Fresh gradients of one batch's mean NLL per point under `precision`; returns its real points."""
    offsets, mask, text, text_mask = batch
    with autocast(offsets.device, precision):
        nll, count = loss_fn(model, offsets, mask, text, text_mask)
    model.zero_grad()
    (nll / count).backward()
    return count


def optimizer_step(model, optimizer, batch, loss_fn, precision):
    """One training step as train.py takes it: gradients, clipping, Adam. Returns the real points."""
    count = backward(model, batch, loss_fn, precision)
    torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
    optimizer.step()
    return count


def run(model, batches, loss_fn, steps, precision, warmup=1, optimizer=None, device="cpu"):
    """Time `steps` optimizer steps after `warmup`; returns (seconds per step, real points per second)."""
    optimizer = optimizer or torch.optim.Adam(model.parameters(), lr=8e-4)
    seconds, points = 0.0, 0.0
    for i in range(warmup + steps):
        batch = [t.to(device) for t in next(batches)]
        synchronize(device)
        started = time.perf_counter()
        count = optimizer_step(model, optimizer, batch, loss_fn, precision)
        synchronize(device)
        if i >= warmup:
            seconds += time.perf_counter() - started
            points += count.item()
    return seconds / steps, points / seconds


def fresh_model(model_class, config, seed, args):
    """Weights drawn from `seed` on args.device; --compile applies to ours only."""
    torch.manual_seed(seed)
    options = {"compile": args.compile} if model_class is FastHandwritingModel else {}
    return model_class(config, **options).to(args.device)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", choices=["rand_write", "synthesis", "both"], default="both")
    add_shared_arguments(p)  # train.py's model, batch and device options, with its defaults
    p.add_argument("--steps", type=arguments.POSITIVE, default=3, help="timed optimizer steps per implementation")
    p.add_argument("--compare_loss", type=arguments.OPTIONAL, default=0,
                   help="also train each implementation this many steps and compare validation NLL")
    p.add_argument("--compare_every", type=arguments.POSITIVE, default=40, help="evaluate every N steps of --compare_loss")
    p.add_argument("--validation_lines", type=arguments.POSITIVE, default=200)
    p.add_argument("--seeds", type=arguments.POSITIVE, default=1,
                   help="--compare_loss repeats with this many seeds (weights and batch order) and averages")
    p.add_argument("--first_seed", type=arguments.SEED, default=0,
                   help="seeds run from this one up, so a later invocation can add new seeds to earlier ones")
    p.add_argument("--variants", default="padded,ours",
                   help="comma-separated, for --compare_loss: padded (fp32, padded batches), bucketed "
                        "(fp32, bucketed batches: isolates bucketing from precision), ours (bucketed, "
                        "--precision); seed s gives the same runs whichever variants are listed")
    p.add_argument("--parts", action="store_true",
                   help="also time ours part by part (layer 1 and the window, layer 2, the rest) and say "
                        "what the speed-up would be with layer 1 at the roof")
    p.add_argument("--roof_seconds", type=arguments.RATE, default=2.0, help="how long to time the matrix-product roof")
    p.add_argument("--sampling", metavar="CHECKPOINT", nargs="?", const="save/synthesis.pt",
                   help="instead of training: time writing one 40-character line, and 10 as a batch")
    p.add_argument("--browser", action="store_true",
                   help="instead: write a 40-character line with web/index.html's engine in headless Chromium, "
                        "and compare its strokes with Python's from the same random draws")
    p.add_argument("--layer1_against", metavar="KERNELS_PY",
                   help="instead: time synthesis layer 1 with the window (forward and backward) under "
                        "another copy of kernels.py (or a model.py from before kernels.py was split "
                        "off) and under ours, alternating in one process")
    p.add_argument("--check_precision", metavar="CHECKPOINT",
                   help="instead of timing: compare bf16 with fp32 validation NLL and gradients for a "
                        "checkpoint's weights (its task), or 'fresh' for newly initialised ones")
    args = arguments.parse(p, argv)
    args.variants = args.variants.split(",")
    unknown = set(args.variants) - set(VARIANTS)
    if unknown:
        p.error(f"--variants: unknown {', '.join(sorted(unknown))}; choose from {', '.join(VARIANTS)}")
    for flag, path in [("--sampling", args.sampling), ("--check_precision", args.check_precision)]:
        if path not in (None, "fresh"):
            try:  # a checkpoint refused now, in a sentence, not midway as a traceback
                checkpoint.load(path)
            except (FileNotFoundError, checkpoint.CheckpointError) as e:
                p.error(f"{flag}: {e}")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.check_precision:
        uses_bf16(args.device, "bf16")  # the comparison needs bf16: refuse where there is none
    uses_bf16(args.device, args.precision)
    set_up_cpu(args)  # the same threads and memory policy for the seed's formulation and ours
    if args.sampling:
        time_sampling(args.sampling)
        return
    if args.browser:
        time_browser()
        return
    data = dataset.load_data(os.path.join(args.data_dir, "train.npz"))
    where = torch.cuda.get_device_name(args.device) if torch.device(args.device).type == "cuda" \
        else f"{cpu_kind()}, {torch.get_num_threads()} threads"
    print(f"torch {torch.__version__}, {where}, {len(data)} training lines, "
          f"batch {args.batch_size} x {args.timesteps} steps, cell {args.cell_size}")
    if args.layer1_against:
        config = ModelConfig(task="synthesis", cell_size=args.cell_size, num_clusters=args.num_clusters, K=args.K,
                             alphabet_size=len(data.alphabet))
        time_layer1_against(args.layer1_against, config, data, args)
        return
    if args.check_precision not in (None, "fresh"):
        model = checkpoint.build_model(checkpoint.load(args.check_precision, args.device), args.device)
        print(f"weights from {args.check_precision}: {model.config}")
        check_precision(model, data, args)
        return
    for task in ["rand_write", "synthesis"] if args.task == "both" else [args.task]:
        config = ModelConfig(task=task, cell_size=args.cell_size, num_clusters=args.num_clusters, K=args.K,
                             alphabet_size=len(data.alphabet))
        if args.check_precision == "fresh":
            check_precision(fresh_model(FastHandwritingModel, config, 0, args), data, args)
            continue
        seed_points_s, roof = time_both(config, data, args)
        if args.parts:
            time_parts(config, data, args, seed_points_s, roof)
        if args.compare_loss:
            compare_loss(config, data, args)


def matmul_roof(device, dtype, size=2048, seconds=2.0):
    """FLOP/s of one large square matrix product, repeated for about `seconds`: the machine's roof."""
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    a.mm(b)  # warm up
    synchronize(device)
    started, repeats = time.perf_counter(), 0
    while time.perf_counter() - started < seconds:
        a.mm(b)
        repeats += 1
    synchronize(device)
    return 2 * size ** 3 * repeats / (time.perf_counter() - started)


def flops_by_part(config, text_length=40):
    """Training FLOPs per predicted point of each part of the model: forward matrix products (2 per
    multiply-add) times 3, for the forward pass and the two products of the backward pass.
    Elementwise work is left out. Synthesis's layer 1 counts the window with it (they step together)."""
    H, M, K = config.cell_size, config.num_clusters, config.K
    A = config.alphabet_size if config.task == "synthesis" else 0
    layer1 = 2 * (3 + H + A) * 4 * H              # layer 1: [x, h1, w] -> gates
    if A:
        layer1 += 2 * H * 3 * K + 2 * text_length * A  # window parameters, phi times the one-hot text
    return {"layer 1": 3 * layer1,
            "layer 2": 3 * 2 * (3 + H + A + H) * 4 * H,  # [x, h1, w, h2] -> gates
            "output": 3 * 2 * 2 * H * (6 * M + 1)}


def flops_per_point(config, text_length=40):
    """Training FLOPs per predicted point, all parts together (flops_by_part)."""
    return sum(flops_by_part(config, text_length).values())


def weight_bytes_per_point(config, bytes_per_weight=4):
    """Bytes of weights one generation step reads (each matrix and bias once, fp32): with one line
    at a time they stream from memory every point, sampling's roof."""
    H, M, K = config.cell_size, config.num_clusters, config.K
    A = config.alphabet_size if config.task == "synthesis" else 0
    weights = (3 + H + A + 1) * 4 * H            # layer 1: [x, h1, w] -> gates, and its bias
    weights += (3 + H + A + H + 1) * 4 * H       # layer 2: [x, h1, w, h2] -> gates
    weights += (2 * H + 1) * (6 * M + 1)         # output layer
    if A:
        weights += (H + 1) * 3 * K               # window parameters
    return bytes_per_weight * weights


def read_bandwidth(nbytes, seconds=1.0):
    """Bytes per second at which this machine reads an array of `nbytes` over and over (torch.sum
    on the threads set): the speed the weights of a generation step can stream at."""
    x = torch.ones(nbytes // 4)
    x.sum()  # warm up
    started, repeats = time.perf_counter(), 0
    while time.perf_counter() - started < seconds:
        x.sum()
        repeats += 1
    return nbytes * repeats / (time.perf_counter() - started)


def time_both(config, data, args):
    """Points per second of the seed's formulation and ours, from the same weights, and ours as a
    share of the machine's roof."""
    results = {}
    for name, model_class, batches, loss_fn, precision in [
        ("seed", SeedModel, padded_batches, seed_nll, "fp32"),
        ("ours", FastHandwritingModel, bucketed_batches, sequence_nll, args.precision),
    ]:
        model = fresh_model(model_class, config, 0, args)
        rng = np.random.default_rng(0)
        step_s, points_s = run(model, batches(data, args.batch_size, args.timesteps, rng),
                               loss_fn, args.steps, precision, device=args.device)
        results[name] = points_s
        print(f"{config.task:10s} {name:15s} {step_s:6.2f} s/step  {points_s:8.0f} real points/s")
    print(f"{config.task:10s} speed-up {results['ours'] / results['seed']:.2f}x")
    flops = flops_per_point(config)
    bf16 = uses_bf16(args.device, args.precision)
    roof = matmul_roof(args.device, torch.bfloat16 if bf16 else torch.float32, seconds=args.roof_seconds)
    print(f"{config.task:10s} {flops / 1e6:.3g} MFLOP per point; roof ({'bf16' if bf16 else 'fp32'} matrix "
          f"product) {roof / 1e9:.1f} GFLOP/s; ours {results['ours'] * flops / 1e9:.1f} GFLOP/s = "
          f"{results['ours'] * flops / roof:.0%} of the roof, the seed {results['seed'] * flops / 1e9:.1f} GFLOP/s")
    return results["seed"], roof


def timed(device, f):
    """(f's result, its seconds)."""
    synchronize(device)
    started = time.perf_counter()
    result = f()
    synchronize(device)
    return result, time.perf_counter() - started


def part_seconds(model, optimizer, batch, precision, device):
    """Seconds of one whole training step of ours on `batch`, and of its layer 1 (with synthesis's
    window) and its layer 2, each run forward and backward alone on the step's own inputs."""
    offsets, mask, text, text_mask = batch
    inputs, state = offsets[:, :-1], model.initial_state(len(offsets), offsets.device)
    synthesis = model.config.task == "synthesis"

    def layer1():
        if synthesis:
            h1, _, _, windows, _ = model._layer1_with_window(inputs, text, text_mask, state)
            outputs = [h1, windows]
        else:
            outputs = [model._lstm(model.layer1, inputs, state.h1, state.c1)[0]]
        torch.autograd.backward(outputs, [torch.ones_like(o) for o in outputs])
        return torch.cat([inputs, *(o.detach() for o in outputs)], dim=-1)

    def layer2():
        h2, _ = model._lstm(model.layer2, layer2_input, state.h2, state.c2)
        h2.backward(torch.ones_like(h2))

    with autocast(offsets.device, precision):
        model.zero_grad()
        layer2_input, layer1_seconds = timed(device, layer1)
        layer2_input.requires_grad_()  # as in training, layer 2 passes a gradient back
        model.zero_grad()
        _, layer2_seconds = timed(device, layer2)
    count, step_seconds = timed(device, lambda: optimizer_step(model, optimizer, batch, sequence_nll, precision))
    return count.item(), {"step": step_seconds, "layer 1": layer1_seconds, "layer 2": layer2_seconds}


def speedup_with_part_at_roof(seed_points_s, seconds, points, part, part_flops, roof):
    """The speed-up over the seed if `part` ran at the roof and everything else as measured:
    seconds holds the step's and each part's seconds over `points` real points."""
    step = seconds["step"] - seconds[part] + part_flops * points / roof
    return points / step / seed_points_s


def time_parts(config, data, args, seed_points_s, roof):
    """Where a training step of ours goes (--parts): layer 1 (with the window), layer 2, and the
    rest (output layer, loss, optimizer: the whole step less the two), each with its FLOP/s; and how
    fast ours would be against the seed with layer 1 at the roof, and with everything at it."""
    model = fresh_model(FastHandwritingModel, config, 0, args)
    optimizer = torch.optim.Adam(model.parameters(), lr=8e-4)
    batches = bucketed_batches(data, args.batch_size, args.timesteps, np.random.default_rng(0))
    seconds, points = {"step": 0.0, "layer 1": 0.0, "layer 2": 0.0}, 0.0
    for i in range(1 + args.steps):  # the first warms up (and compiles)
        count, step = part_seconds(model, optimizer, [t.to(args.device) for t in next(batches)],
                                   args.precision, args.device)
        if i:
            points += count
            seconds = {name: seconds[name] + step[name] for name in seconds}
    flops = flops_by_part(config)
    per_step = lambda name: seconds[name] / args.steps
    gflops = lambda name: flops[name] * points / seconds[name] / 1e9
    layer1 = "layer 1 and the window" if config.task == "synthesis" else "layer 1"
    rest = per_step("step") - per_step("layer 1") - per_step("layer 2")
    print(f"{config.task:10s} ours by part, s/step: {layer1} {per_step('layer 1'):.2f} ({gflops('layer 1'):.0f} "
          f"GFLOP/s), layer 2 {per_step('layer 2'):.2f} ({gflops('layer 2'):.0f} GFLOP/s), the rest (output "
          f"layer, loss, optimizer) {rest:.2f}, of {per_step('step'):.2f}")
    at_roof = speedup_with_part_at_roof(seed_points_s, seconds, points, "layer 1", flops["layer 1"], roof)
    print(f"{config.task:10s} with {layer1} at the roof: {at_roof:.2f}x the seed; with everything at the "
          f"roof: {roof / sum(flops.values()) / seed_points_s:.2f}x")


def load_kernels_module(path):
    """Another copy of kernels.py as a module of its own, so that its compiled step functions stay
    apart from ours (torch.compile keys them by their code)."""
    spec = importlib.util.spec_from_file_location(f"kernels_{abs(hash(os.path.abspath(path)))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def time_layer1_against(path, config, data, args, rounds=4, batches=2):
    """--layer1_against: synthesis layer 1 with the window, forward and backward, under the
    kernels.py (or older model.py) at `path` and under ours, on the same batches and weights, the two taking turns round
    by round in one process. Separate processes on these shared machines differ by 5-10% in
    speed, more than a change to one layer makes; turns in one process see the same machine."""
    other = load_kernels_module(path)
    # the earliest WindowedLSTM took the text as one-hot vectors, later ones take its codes
    takes_one_hot = "one_hot" in inspect.signature(other.WindowedLSTM.forward).parameters
    model = fresh_model(FastHandwritingModel, config, 0, args)
    bf16 = uses_bf16(args.device, args.precision)
    matmul_dtype = torch.bfloat16 if bf16 else torch.float32
    stream = bucketed_batches(data, args.batch_size, args.timesteps, np.random.default_rng(0))
    chosen = [[t.to(args.device) for t in next(stream)] for _ in range(batches)]

    def run(module, batch):
        offsets, _, text, text_mask = batch
        B, H, A = len(offsets), config.cell_size, config.alphabet_size
        gates = pen_projection(offsets[:, :-1], model.layer1_input.weight, model.layer1_input.bias).detach().requires_grad_()
        weights = [w.detach().requires_grad_() for w in
                   (model.layer1_recurrent.weight, model.window_layer.weight, model.window_layer.bias)]
        zeros = lambda n: offsets.new_zeros(B, n)
        codes = F.one_hot(text, A).to(offsets.dtype) if module is other and takes_one_hot else text
        with torch.autocast(offsets.device.type, dtype=torch.bfloat16, enabled=bf16):
            outputs, forward_s = timed(args.device, lambda: module.WindowedLSTM.apply(
                gates, zeros(H), zeros(H), zeros(config.K), zeros(A), *weights, codes, text_mask.to(offsets.dtype),
                matmul_dtype, args.compile))
        hs, ws = outputs[:2]
        _, backward_s = timed(args.device, lambda: torch.autograd.backward([hs, ws], [torch.ones_like(hs),
                                                                                     torch.ones_like(ws)]))
        return forward_s, backward_s, hs.detach(), weights[0].grad

    sides = {"other": other, "ours": kernels}
    first = {name: run(module, chosen[0]) for name, module in sides.items()}  # also compiles
    print(f"layer 1 of {path} against ours ({'bf16' if bf16 else 'fp32'} products): the same batch gives h "
          f"within {(first['other'][2] - first['ours'][2]).abs().max():.2g}, the recurrent weight's gradient "
          f"within {((first['other'][3] - first['ours'][3]).norm() / first['ours'][3].norm()):.2g} (relative)")
    seconds = {name: [] for name in sides}
    for r in range(rounds):
        for name in (list(sides) if r % 2 == 0 else list(sides)[::-1]):
            seconds[name].append([run(sides[name], batch)[:2] for batch in chosen])
    medians = {}
    for name, times in seconds.items():
        times = np.array(times).sum(1)  # (rounds, forward / backward), summed over the batches
        medians[name] = np.median(times.sum(1))
        print(f"{name:6s} forward {np.median(times[:, 0]):.3f} s, backward {np.median(times[:, 1]):.3f} s, "
              f"together {medians[name]:.4f} s (medians of {rounds} rounds of {batches} batches)")
    print(f"ours is {medians['other'] / medians['ours']:.3f}x the other's speed")


def plain_model(fast):
    """The plain model.HandwritingModel with the weights of `fast` (a FastHandwritingModel), in eval mode."""
    weight = fast.output_layer.weight
    plain = HandwritingModel(fast.config).to(weight.device, weight.dtype)
    plain.load_state_dict(fast.state_dict())
    return plain.eval()


@contextlib.contextmanager
def onednn_off():
    """oneDNN off for the duration (torch.backends.mkldnn.flags would also touch its TF32 setting)."""
    enabled = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = enabled


def time_sampling(path, text="The quick brown fox jumps over lazy dogs", repeats=3):
    """Seconds to write one line of `text` (40 characters), and per line in a batch of ten, with
    ours (kernels.GenerationStep) and with the baseline, the plain model stepping each point
    through forward() (the same strokes, to rounding), with oneDNN off, which would repack an
    nn.LSTM's weights at every one-step call."""
    from generate import Writer

    writer = Writer.load(path)
    baseline = copy.copy(writer)
    baseline.model = plain_model(writer.model)
    print(f"sampling with {path}, {cpu_kind()}, {torch.get_num_threads()} thread(s), bias 1, best of {repeats}")
    for lines in [1, 10]:
        best = {}
        for name, timed_writer in [("forward() per point", baseline), ("ours", writer)]:
            seconds, points = [], 0
            for seed in range(repeats):
                with onednn_off() if timed_writer is baseline else contextlib.nullcontext():
                    started = time.perf_counter()
                    writing = timed_writer.write([text] * lines, bias=1.0, seed=seed)
                    seconds.append(time.perf_counter() - started)
                points += sum(len(line) for line in writing.lines)
            best[name], per_point = min(seconds), sum(seconds) / points
            # the seeds write lines of different lengths: the time a point compares across seeds
            print(f"  {name:20s} {lines:2d} line(s) of {len(text)} characters: {best[name]:.2f} s, "
                  f"{best[name] / lines:.3f} s per line, {points / repeats / lines:.0f} points per line, "
                  f"{1e3 * per_point:.3f} ms per point")
        print(f"  ratio {best['forward() per point'] / best['ours']:.2f}x")
        if lines == 1:  # one line reads all the weights every point: how close is that to the roof
            nbytes = weight_bytes_per_point(writer.model.config)
            floor = nbytes / read_bandwidth(nbytes)
            print(f"  roof: {nbytes / 1e6:.4g} MB of weights a point, read in {1e3 * floor:.4g} ms "
                  f"({nbytes / floor / 1e9:.1f} GB/s, torch.sum): ours runs at {floor / per_point:.0%} of that roof")


def time_browser(text="The quick brown fox jumps over lazy dogs", repeats=3, seed=0):
    """The page's engine (web/engine.js, the weights of web/model.js) writing one line of `text` in
    headless Chromium: steps per second and seconds for the line, best of `repeats`; then the same
    line from the same uniform draws in Python (generate.Writer with the same rounded weights), and
    the largest difference between the two, in pen units."""
    import json
    import re

    import browser
    from generate import Writer

    web = os.path.join(os.path.dirname(os.path.abspath(__file__)), "web")
    if browser.find_browser() is None:
        raise SystemExit("--browser needs Chromium or Chrome (apt-get install chromium, or set CHROMIUM=/path)")
    with browser.headless_chromium() as page:
        page.open(os.path.join(web, "index.html"))
        user_agent = page.js("navigator.userAgent")
        precision, source = page.js("[HANDWRITING_MODEL.precision, HANDWRITING_MODEL.source]")
        runs = [page.js(f"""(() => {{
            const writer = handwritingPage.writer, draws = new Handwriting.Uniforms({seed}), rows = [];
            const uniforms = {{row: () => {{ const row = draws.row(); rows.push(row); return row; }}}};
            const started = performance.now();
            const line = Handwriting.Writer.run(writer.writeLine({json.dumps(text)}, {{bias: 1, uniforms}}));
            return {{seconds: (performance.now() - started) / 1000, rows, line, simd: writer.network.simd}};
        }})()""", timeout=300) for _ in range(repeats)]
    best = min(runs, key=lambda run: run["seconds"])
    steps = len(best["rows"])
    browser_name = re.search(r"(?:Headless)?Chrom\w*/\d+", user_agent)
    print(f"web/index.html in {browser_name.group() if browser_name else 'Chromium'}, {cpu_kind()}, weights {precision} "
          f"({source}), WebAssembly SIMD {'on' if best['simd'] else 'off (plain JavaScript)'}, bias 1, best of {repeats}")
    print(f"  {steps / best['seconds']:.0f} steps per second; a {len(text)}-character line in {best['seconds']:.2f} s "
          f"({steps} steps, {len(best['line']['offsets'])} points)")
    saved = checkpoint.load(os.path.join("save", source))
    writer = Writer.from_checkpoint(checkpoint.with_compact_weights(saved, precision))
    writing = writer.write([text], bias=1.0, uniforms=np.array(best["rows"], np.float32)[:, None, :])
    ours, python = np.array(best["line"]["offsets"]), writing.lines[0]
    if len(ours) != len(python):
        print(f"  Python wrote {len(python)} points from the same draws, the page {len(ours)}")
    n = min(len(ours), len(python))
    print(f"  largest difference against Python on the same draws: {np.abs(ours[:n] - python[:n]).max():.2e} pen units")


def validation_subset(args):
    """The same --validation_lines lines of the validation split for every run."""
    return dataset.subset(dataset.load_data(os.path.join(args.data_dir, "validation.npz")), args.validation_lines)


def gradient(model, batch, precision):
    """The training gradient of one batch under `precision`, flattened."""
    backward(model, batch, sequence_nll, precision)
    return torch.cat([p.grad.flatten() for p in model.parameters()])


def check_precision(model, data, args, batches=3):
    """What bf16 changes in the figures training sees, against what the data itself changes.

    Validation NLL evaluated in fp32 and in bf16; then, on a few training batches, the distance
    of the bf16 gradient from the fp32 one, beside the distance between the fp32 gradients of two
    consecutive batches (the noise that stochastic gradient descent lives with anyway).
    Distances are relative: |a - b| / |b|.
    """
    task = model.config.task
    valid = validation_subset(args)
    figures = {}
    for precision in ["fp32", "bf16"]:
        with autocast(args.device, precision):
            figures[precision] = dataset_nll(model, valid, args.batch_size, args.device)
    print(f"{task:10s} validation {figures['fp32'][0]:.2f} nats/seq in fp32, {figures['bf16'][0]:.2f} in bf16 "
          f"({len(valid)} lines)")
    stream = bucketed_batches(data, args.batch_size, args.timesteps, np.random.default_rng(0))
    distance = lambda a, b: ((a - b).norm() / b.norm()).item()
    previous = None
    for i in range(batches):
        batch = [t.to(args.device) for t in next(stream)]
        fp32, bf16 = gradient(model, batch, "fp32"), gradient(model, batch, "bf16")
        line = f"{task:10s} batch {i}: gradient distance bf16 from fp32 {distance(bf16, fp32):.4f}"
        if previous is not None:
            line += f", fp32 from the previous batch's {distance(previous, fp32):.4f}"
        print(line)
        previous = fp32


def compare_loss(config, data, args):
    """Validation NLL after the same number of steps, each seed from the same initial weights and
    batch order for every variant; with several seeds, also the mean and spread."""
    valid = validation_subset(args)
    checkpoints = list(range(args.compare_every, args.compare_loss + 1, args.compare_every))
    variants = [VARIANTS[v] for v in args.variants]
    results = {name: np.zeros((args.seeds, len(checkpoints))) for name, _, _ in variants}
    for row, seed in enumerate(range(args.first_seed, args.first_seed + args.seeds)):
        for name, batches, precision in variants:
            precision = precision or args.precision
            model = fresh_model(HandwritingModel, config, seed, args)
            optimizer = torch.optim.Adam(model.parameters(), lr=8e-4)
            stream = batches(data, args.batch_size, args.timesteps, np.random.default_rng(seed))
            for j, done in enumerate(checkpoints):
                run(model, stream, sequence_nll, args.compare_every, precision, warmup=0, optimizer=optimizer,
                    device=args.device)
                per_sequence, per_point = dataset_nll(model, valid, args.batch_size, args.device)
                results[name][row, j] = per_sequence
                print(f"{config.task:10s} {name:22s} seed {seed} after {done} steps: validation "
                      f"{per_sequence:.1f} nats/seq, {per_point:.4f} nats/point (fp32 evaluation)")
    if args.seeds > 1:
        for name, table in results.items():
            summary = ", ".join(f"{done}: {m:.1f} +- {s:.1f}" for done, m, s
                                in zip(checkpoints, table.mean(0), table.std(0, ddof=1)))
            print(f"{config.task:10s} {name:22s} mean +- sd over {args.seeds} seeds, nats/seq after steps {summary}")


if __name__ == "__main__":
    main()
