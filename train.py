"""Train the unconditional (rand_write) or text-conditioned (synthesis) handwriting model.

    python train.py --task rand_write
    python train.py --task synthesis
    python train.py --task synthesis --resume                       # continue a stopped run exactly
    python train.py --task synthesis --resume --learning_rate 1e-4  # ... with a lower rate
    python train.py --task synthesis --init_from save/synthesis.pt  # go on from the shipped weights
    python train.py --task synthesis --resume --snapshots           # ... keeping every save's weights
    torchrun --standalone --nproc_per_node=2 train.py --task synthesis --threads 1   # data-parallel

Reads data/train.npz and data/validation.npz (made by data_preprocessing.py); writes to save/:
    <task>_last.pt    every epoch and every --save_every steps (everything needed to resume)
    <task>_best.pt    the epoch with the lowest validation NLL
    <task>_log.csv    train / validation NLL per epoch
    <task>_loss.png   the loss curves
    snapshots/        with --snapshots: the weights of every --save_every checkpoint, to average
    <task>_curve.csv  with --curve_every N: validation NLL on --curve_lines lines every N steps,
                      against training CPU seconds and points seen (the learning-curve study)
The recipe is the seed's: Adam at --learning_rate, decayed by --decay_rate every epoch, on batches
of --batch_size lines cut to --timesteps points, the gradient norm clipped at --grad_clip.
"""
import argparse
import ctypes
import csv
import math
import os
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

import arguments
import checkpoint
import dataset
import utils
from dataset import dataset_nll
from kernels import FastHandwritingModel, autocast, uses_bf16
from model import ModelConfig, sequence_nll


def add_shared_arguments(p):
    """The options bench.py shares with training: model size, batches, and where it runs."""
    p.add_argument("--cell_size", type=arguments.POSITIVE, default=400, help="LSTM units per layer")
    p.add_argument("--num_clusters", type=arguments.POSITIVE, default=20, help="Gaussians in the output mixture")
    p.add_argument("--K", type=arguments.POSITIVE, default=10, help="Gaussians in the attention window")
    p.add_argument("--batch_size", type=arguments.POSITIVE, default=50)
    p.add_argument("--timesteps", type=arguments.POSITIVE, default=800,
                   help="training sequence length; longer lines are truncated to their first "
                        "TIMESTEPS predicted points (validation always uses whole lines)")
    p.add_argument("--bucket_pool", type=arguments.POSITIVE, default=50,
                   help="batches are made of similar-length lines drawn from pools of this many "
                        "batches (less padding, faster); 1 gives plain random batches")
    p.add_argument("--data_dir", default="data", help="folder with train.npz and validation.npz")
    p.add_argument("--device", type=arguments.DEVICE, default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                   help="bf16 autocast for the matrix products (auto: where the hardware supports it); "
                        "the loss, and the synthesis window's state, are always fp32")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile each step of the stepped recurrences: synthesis's layer 1 with "
                        "the window, and the nn.LSTM layers where they are stepped (kernels.SteppedLSTM: bf16 on "
                        "AMX CPUs) "
                        "(fuses their small operations; costs one to two minutes of compiling at the start)")
    p.add_argument("--threads", type=arguments.THREADS, default=0,
                   help="CPU threads (0: one per core). Use 1 when anything else runs on the machine: "
                        "waiting threads slow a shared 2-core CPU many times over")
    p.add_argument("--release_memory", action="store_true",
                   help="CPU: let the C library hand freed memory back to the system, as it does by "
                        "default (holds about a quarter of the RAM between steps, about 10%% slower)")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", choices=["rand_write", "synthesis"], default="rand_write")
    add_shared_arguments(p)
    p.add_argument("--num_epochs", type=arguments.OPTIONAL, default=50)
    p.add_argument("--learning_rate", type=arguments.RATE, default=8e-4)
    p.add_argument("--decay_rate", type=arguments.number(0, 1, low_open=True), default=0.99, help="learning-rate factor per epoch")
    p.add_argument("--decay_per_step", action="store_true",
                   help="apply --decay_rate smoothly, a fraction of it after every step, instead of "
                        "all of it at each epoch's start")
    p.add_argument("--model_dir", default="save")
    p.add_argument("--grad_clip", type=arguments.STRENGTH, default=10.0,
                   help="clip the global gradient norm of the per-point loss to this (0: off)")
    p.add_argument("--weight_noise", type=arguments.STRENGTH, default=0.0, metavar="STD",
                   help="regularise with Gaussian weight noise: each step's gradient is taken at "
                        "the weights plus a fresh N(0, STD^2) draw and applied to the clean weights "
                        "(Graves' recipe: retrain a converged network with it; 0: off). The log's "
                        "training NLL is then the noisy weights'; validation uses the clean ones")
    p.add_argument("--distort", type=arguments.STRENGTH, default=0.0, metavar="STRENGTH",
                   help="regularise by training on distorted lines: each line of each batch stretched "
                        "in width and height by e^a and e^b and slanted by s, with a, b, s ~ "
                        "N(0, STRENGTH^2) drawn afresh every time (dataset.distorted; 0: off, "
                        "0.1: about 10%% and 6 degrees)")
    p.add_argument("--join_lines", type=arguments.number(0, 1), default=0.0, metavar="FRACTION",
                   help="synthesis: train on this fraction of lines followed by their writer's next "
                        "line, joined as generation joins a prime and its text (dataset.joined), so "
                        "that priming carries the hand; raise --timesteps to hold both (0: single lines)")
    p.add_argument("--resume", action="store_true",
                   help="continue from MODEL_DIR/<task>_last.pt, with the run's own options (rate, "
                        "schedule, batches, --tbptt, model size) except those given again")
    p.add_argument("--init_from", metavar="CHECKPOINT",
                   help="start from this checkpoint's weights (shipped, exported or a training one) "
                        "with a fresh optimizer and a learning-rate warm-up; epochs count on from "
                        "the checkpoint's, so --num_epochs is the total")
    p.add_argument("--warmup_steps", type=arguments.OPTIONAL, default=None,
                   help="raise the learning rate linearly from 0 over this many steps "
                        "(default: 100 with --init_from, else 0)")
    p.add_argument("--tbptt", type=arguments.OPTIONAL, default=0, metavar="N",
                   help="truncated backpropagation through time: cut each batch into the fewest near-equal "
                        "windows of at most N predicted points, one optimizer step each, the state "
                        "carried from window to window (0: one step per batch, through all of it)")
    p.add_argument("--seed", type=arguments.SEED, default=0)
    p.add_argument("--save_every", type=arguments.OPTIONAL, default=100,
                   help="also checkpoint every N steps (0: only at the end of each epoch)")
    p.add_argument("--snapshots", action="store_true",
                   help="also keep the weights of every --save_every checkpoint, as "
                        "MODEL_DIR/snapshots/<task>_step<N>.pt (exported: weights only), to average "
                        "the last of them with `checkpoint.py average`")
    p.add_argument("--max_steps", type=arguments.OPTIONAL, default=0,
                   help="stop after N optimizer steps (with --tbptt, after the batch that reaches N; 0: no limit)")
    p.add_argument("--max_cpu_hours", type=arguments.STRENGTH, default=0,
                   help="stop once the run's lineage has used this much CPU time, all processes "
                        "together (checked where they meet: every --save_every or --curve_every "
                        "steps and at epoch ends; 0: no limit)")
    p.add_argument("--curve_every", type=arguments.OPTIONAL, default=0,
                   help="every N steps, log the validation NLL of --curve_lines lines to "
                        "<task>_curve.csv (0: off); its CPU time is not counted as training's")
    p.add_argument("--curve_lines", type=arguments.POSITIVE, default=200,
                   help="validation lines for --curve_every (the same ones in every run)")
    args = arguments.parse(p, argv)
    if args.resume and args.init_from:
        p.error("--resume continues MODEL_DIR's run; --init_from starts a new one: choose one")
    if args.resume:
        take_run_options(args, given_options(p, argv))
    return args


# what a run learns with: --resume takes these from the run unless the command line gives them.
# Where it runs (--device, --precision, --compile, --threads, --data_dir) and when this invocation
# stops (--max_steps, --max_cpu_hours) are the command line's.
RUN_OPTIONS = ("cell_size", "num_clusters", "K", "batch_size", "timesteps", "bucket_pool", "num_epochs",
               "learning_rate", "decay_rate", "decay_per_step", "grad_clip", "weight_noise", "distort", "join_lines", "tbptt", "seed",
               "save_every", "snapshots", "curve_every", "curve_lines")


def given_options(parser, argv):
    """The names of the options the command line gives (argparse leaves preset attributes alone)."""
    unset = object()
    preset = argparse.Namespace(**{action.dest: unset for action in parser._actions})
    return {name for name, value in vars(parser.parse_args(argv, preset)).items() if value is not unset}


def take_run_options(args, given):
    """--resume: RUN_OPTIONS not given take the values the run was started with, so that `--resume`
    alone goes on exactly; those given replace the run's, and are listed."""
    try:
        saved = checkpoint.load(Run(args, writes=False).last).get("args", {})
    except (FileNotFoundError, checkpoint.CheckpointError):
        return  # start() says what is missing or wrong
    changed = []
    for name in RUN_OPTIONS:
        if name not in saved:
            continue
        if name not in given:
            setattr(args, name, saved[name])
        elif getattr(args, name) != saved[name]:
            changed.append(f"--{name} {saved[name]} -> {getattr(args, name)}")
    if changed:
        print(f"--resume with options changed from the run's: {', '.join(changed)}")


# ----------------------------------------------------------------------------- the run's state

@dataclass
class Progress:
    """Where a run stands; saved at the top level of every checkpoint, so --resume goes on exactly."""
    epoch: int = 0              # finished epochs
    step_in_epoch: int = 0      # batches of the current epoch already trained
    step: int = 0               # optimizer steps in all
    history: list = field(default_factory=list)  # one record per finished epoch
    best_validation: float = math.inf
    epoch_nll: float = 0.0      # the current epoch's training NLL so far ...
    epoch_points: float = 0.0   # ... over this many predicted points
    epoch_lines: int = 0        # ... and lines
    epoch_seconds: float = 0.0  # ... and wall-clock seconds
    bad_steps: int = 0          # non-finite steps in a row (skipped)
    window_nll: float = 0.0     # training NLL since _last.pt was last due ...
    window_points: float = 0.0  # ... over this many points
    saved_nats_per_point: float = math.inf  # the training NLL per point of the window last saved
    warmup_from: int = 0        # the step the learning-rate warm-up started at ...
    warmup_steps: int = 0       # ... and its length
    cpu_seconds: float = 0.0    # CPU time of the whole lineage, all processes (--init_from carries it on)
    points: float = 0.0         # training points predicted in all (this count starts with this code)
    ranks: int = 1              # data-parallel processes; step_in_epoch counts steps of them all

    @classmethod
    def from_checkpoint(cls, saved):
        return cls(**{f.name: saved[f.name] for f in fields(cls) if f.name in saved})


class Run:
    """The files of one run in MODEL_DIR."""

    def __init__(self, args, writes=True):
        self.args, self.writes = args, writes  # only rank 0 writes
        self.last = os.path.join(args.model_dir, f"{args.task}_last.pt")
        self.best = os.path.join(args.model_dir, f"{args.task}_best.pt")
        self.log = os.path.join(args.model_dir, f"{args.task}_log.csv")
        self.plot = os.path.join(args.model_dir, f"{args.task}_loss.png")
        self.curve = os.path.join(args.model_dir, f"{args.task}_curve.csv")
        self.snapshots = os.path.join(args.model_dir, "snapshots")

    def save(self, path, model, optimizer, progress, data):
        if self.writes:
            try:
                checkpoint.save(path, model, data, asdict(progress), self.args, optimizer)
            except checkpoint.CheckpointError as e:
                raise SystemExit(str(e))

    def save_last(self, model, optimizer, progress, data):
        """Save <task>_last.pt unless training is diverging: only skipped steps since the last
        save, non-finite weights, or a training loss more than 1 nat per point above that of the
        window last saved. Diverging weights must not replace the last good ones. No step at all
        since the last save (an epoch's end just after a --save_every) saves the new progress."""
        window = progress.window_nll / progress.window_points if progress.window_points else math.nan
        no_step_since = not progress.window_points and not progress.bad_steps
        diverging = not no_step_since and (
            not progress.window_points or window > progress.saved_nats_per_point + 1.0
            or not all(torch.isfinite(p).all() for p in model.parameters()))
        progress.window_nll, progress.window_points = 0.0, 0.0
        if diverging:
            if self.writes:
                tqdm.write(f"step {progress.step}: training is diverging (loss {window:.3f} nats/point): "
                           f"{self.last} keeps the weights it has")
            return
        if not no_step_since:
            progress.saved_nats_per_point = window
        self.save(self.last, model, optimizer, progress, data)
        if self.args.snapshots and self.writes and not no_step_since:  # else: the same weights again
            os.makedirs(self.snapshots, exist_ok=True)
            self.save(os.path.join(self.snapshots, f"{self.args.task}_step{progress.step}.pt"),
                      model, None, progress, data)

    def write_log(self, history):
        if not self.writes:
            return
        with utils.atomic_path(self.log) as tmp:
            with open(tmp, "w", newline="") as f:
                # a record of an older run (carried on by --init_from) may lack newer columns
                writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for r in history for k in r)))
                writer.writeheader()
                writer.writerows(history)
        utils.plot_loss_curves(history, self.plot, title=self.args.task)

    def append_curve(self, row):
        """One row of <task>_curve.csv; the file is rewritten whole, through a temporary file."""
        rows = []
        if os.path.exists(self.curve):
            with open(self.curve, newline="") as f:
                rows = list(csv.DictReader(f))
        with utils.atomic_path(self.curve) as tmp:
            with open(tmp, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=list(row))
                writer.writeheader()
                writer.writerows(rows + [row])


# ----------------------------------------------------------------------------- data parallel (torchrun)

@dataclass
class Ranks:
    """This process's place among torchrun's processes: rank 0 of 1 without torchrun.

    Each step, rank r trains on batch number step * size + r of the epoch's batches, and the loss
    is normalised by the points of all ranks' batches together: one update is the single-process
    update over the union of those batches. Only rank 0 evaluates, logs and writes files.
    """
    rank: int = 0
    size: int = 1

    @property
    def main(self):
        return self.rank == 0

    def sum(self, values, device="cpu"):
        """Each of `values` (floats) summed over all ranks, in one all_reduce."""
        if self.size == 1:
            return list(values)
        total = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(total)
        return total.tolist()


def start_ranks(args):
    """Join torchrun's process group (gloo on a CPU, NCCL on CUDA); Ranks() without torchrun."""
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return Ranks()
    if torch.device(args.device).type == "cuda":
        args.device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        torch.cuda.set_device(args.device)
    # rank 0 evaluates alone at the end of each epoch while the others wait: a generous timeout
    dist.init_process_group("nccl" if args.device.startswith("cuda") else "gloo", timeout=timedelta(hours=3))
    return Ranks(dist.get_rank(), dist.get_world_size())


# ----------------------------------------------------------------------------- starting

@contextmanager
def model_dir_lock(args, main):
    """Hold MODEL_DIR/.<task>.lock for the whole run: one model dir holds one run of a task at a time.

    A second train.py there stops at once, before it reads or writes anything, instead of mixing its
    checkpoints with the first's. The lock is the kernel's (utils.hold_lock): it goes with the process
    however that ends, so a crashed run never leaves the folder locked. Holding it, the run removes
    the temporary files that killed writers left (utils.remove_stale_temporaries). A run refused
    before it writes anything leaves no folder it made."""
    if not main:  # rank 0 writes for all
        yield
        return
    made = not os.path.isdir(args.model_dir)
    os.makedirs(args.model_dir, exist_ok=True)
    path = os.path.join(args.model_dir, f".{args.task}.lock")
    try:
        held = utils.hold_lock(path)
    except utils.LockHeld as e:
        raise SystemExit(f"{args.model_dir} holds a {args.task} run in progress (process {e.holder}, {path}): "
                         "wait for it to end, or give this run another --model_dir.") from None
    try:
        for folder in (args.model_dir, Run(args, writes=False).snapshots):
            removed = utils.remove_stale_temporaries(folder)
            if removed:
                print(f"removed {len(removed)} temporary file(s) that a killed process left in {folder}")
        yield
    except BaseException:
        if made and os.listdir(args.model_dir) == [os.path.basename(path)]:
            os.remove(path)  # while holding it: any other run that opened it has already been refused
            os.rmdir(args.model_dir)
        raise
    finally:
        held.close()


def start(args, run, model, optimizer, train_data, ranks):
    """The Progress to start from: a fresh run, --resume (everything back as it was) or --init_from
    (weights only). Never overwrites another run's files without --resume."""
    if args.resume:
        if not os.path.exists(run.last):
            raise SystemExit(f"--resume: no checkpoint at {run.last}; start without --resume.")
        saved = load_or_exit(run.last, args.device, "--resume",
                             f"; to go on from its best epoch instead, use --init_from {run.best}")
        checkpoint.check_compatible(saved, model.config, train_data, run.last, "--resume")
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        checkpoint.restore_rng(saved)
        progress = Progress.from_checkpoint(saved)
        if progress.ranks != ranks.size:
            raise SystemExit(f"--resume: {run.last} was trained by {progress.ranks} process(es), this run has "
                             f"{ranks.size}; resume with as many, or start anew with --init_from {run.last}.")
        print(f"resumed {run.last}: epoch {progress.epoch + 1}, step {progress.step}")
        return progress
    if os.path.exists(run.last):
        raise SystemExit(f"{args.model_dir} already holds a {args.task} run ({run.last}): pass --resume "
                         "to continue it, or another --model_dir to keep it and start afresh.")
    if args.init_from:
        saved = load_or_exit(args.init_from, "cpu", "--init_from")
        checkpoint.check_compatible(saved, model.config, train_data, args.init_from, "--init_from")
        model.load_state_dict(saved["model"])
        progress = Progress(epoch=saved.get("epoch", 0), step=saved.get("step", 0),
                            warmup_from=saved.get("step", 0), history=list(saved.get("history", [])),
                            cpu_seconds=saved.get("cpu_seconds", 0.0), ranks=ranks.size,
                            warmup_steps=100 if args.warmup_steps is None else args.warmup_steps)
        print(f"initialised from {args.init_from}: epoch {progress.epoch + 1}, step {progress.step}")
        return progress
    return Progress(ranks=ranks.size, warmup_steps=args.warmup_steps or 0)


def load_or_exit(path, device, flag, hint=""):
    try:
        return checkpoint.load(path, device)
    except (FileNotFoundError, checkpoint.CheckpointError) as e:
        raise SystemExit(f"{flag}: {e}{hint}")


def learning_rate(args, epoch, progress, steps_per_epoch):
    """The seed's schedule (decay_rate per epoch, or its share per step with --decay_per_step),
    after the run's linear warm-up, if any."""
    warmup = progress.warmup_steps
    ramp = min(1.0, (progress.step - progress.warmup_from + 1) / warmup) if warmup else 1.0
    epochs = epoch + progress.step_in_epoch / steps_per_epoch if args.decay_per_step else epoch
    return args.learning_rate * args.decay_rate ** epochs * ramp


# ----------------------------------------------------------------------------- training

def keep_freed_memory():
    """Ask glibc's malloc to keep the memory a training step frees, for the next step to reuse.

    By default every block over 32 MB (a batch's gates and saved activations) is mapped fresh from
    the kernel and unmapped when freed, so every step the kernel faults in and zeroes about a gigabyte
    again: a tenth of a CPU training step. Kept, the process holds on to its peak (synthesis at batch
    50 x 800: 3-3.7 GB over an 80-minute run instead of 0.7 between steps) and the page faults stop
    after the first steps. Returns False where the C library has no mallopt (not glibc), which changes nothing."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc's <malloc.h>
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return mallopt(M_MMAP_MAX, 0) == 1 and mallopt(M_TRIM_THRESHOLD, -1) == 1  # -1: never trim


def set_up_cpu(args):
    """--threads and the memory policy, for train.py and bench.py alike."""
    utils.set_threads(args.threads)
    if torch.device(args.device).type == "cpu" and not args.release_memory:
        keep_freed_memory()


def train(args):
    uses_bf16(args.device, args.precision)  # refuse an impossible --precision before any work
    set_up_cpu(args)
    ranks = start_ranks(args)
    if ranks.size > 1 and args.tbptt:
        dist.destroy_process_group()
        # the ranks' batches differ in length, so they would cut them into different numbers of steps
        raise SystemExit("--tbptt is for one process: the ranks would take different numbers of steps. "
                         "Run without torchrun, or without --tbptt.")
    try:
        with model_dir_lock(args, ranks.main):
            result = train_ranks(args, ranks)
        if ranks.size > 1:
            dist.barrier()  # rank 0 may still be writing; leave together
        return result
    finally:
        if ranks.size > 1:
            dist.destroy_process_group()


def train_ranks(args, ranks):
    train_data = dataset.load_data(os.path.join(args.data_dir, "train.npz"))
    valid_data = dataset.load_data(os.path.join(args.data_dir, "validation.npz"))
    curve_data = dataset.subset(valid_data, args.curve_lines) if args.curve_every else None
    if len(train_data) == 0 or len(valid_data) == 0:
        raise SystemExit(f"{args.data_dir}: the training or validation split is empty; "
                         "rerun data_preprocessing.py.")
    if valid_data.alphabet != train_data.alphabet:
        raise SystemExit(f"{args.data_dir}: validation.npz and train.npz use different alphabets; make "
                         "both with one run of data_preprocessing.py.")
    run = Run(args, writes=ranks.main)
    config = ModelConfig(task=args.task, cell_size=args.cell_size, num_clusters=args.num_clusters,
                         K=args.K, alphabet_size=len(train_data.alphabet))
    torch.manual_seed(args.seed)
    model = FastHandwritingModel(config, compile=args.compile).to(args.device)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.learning_rate)
    progress = start(args, run, model, optimizer, train_data, ranks)
    if ranks.main:
        os.makedirs(args.model_dir, exist_ok=True)
        print(f"{args.task}: {sum(p.numel() for p in model.parameters()):,} parameters, "
              f"{len(train_data)} training / {len(valid_data)} validation lines, device {args.device}"
              + (f", {ranks.size} processes" if ranks.size > 1 else ""))
    # DDP averages the ranks' gradients as they are computed; all ranks start from rank 0's weights
    trained = torch.nn.parallel.DistributedDataParallel(model) if ranks.size > 1 else model
    if args.max_steps and progress.step >= args.max_steps:
        print(f"already at step {progress.step} >= --max_steps {args.max_steps}; nothing to do")
        return model, progress
    for epoch in range(progress.epoch, args.num_epochs):
        stopped = train_epoch(args, run, trained, optimizer, train_data, progress, epoch, ranks, curve_data)
        if stopped:
            if ranks.main:
                print(f"stopped after {stopped}")
            break
        end_epoch(args, run, model, optimizer, train_data, valid_data, progress, epoch, ranks)
        if over_budget(args, progress):
            if ranks.main:
                print(f"stopped after --max_cpu_hours {args.max_cpu_hours}")
            break
    return model, progress


def over_budget(args, progress):
    return bool(args.max_cpu_hours) and progress.cpu_seconds >= args.max_cpu_hours * 3600


# the numpy stream that chooses an epoch's joined lines, apart from its batch order's
JOIN_STREAM = 1


def train_epoch(args, run, model, optimizer, train_data, progress, epoch, ranks, curve_data=None):
    """Train the rest of epoch `epoch`; returns None, or the option (--max_steps, --max_cpu_hours)
    that stopped it first. With --curve_every, rank 0 logs the NLL of curve_data on the way."""
    # the sequences and their batch order are a function of (seed, epoch), so a resumed run sees the
    # same batches; the loop's step s takes batches s * ranks.size ... + ranks.size - 1, one per rank
    items = dataset.epoch_items(train_data, args.join_lines, np.random.default_rng([args.seed, epoch, JOIN_STREAM]))
    batches = dataset.make_batches([dataset.item_length(train_data, item) for item in items], args.batch_size,
                                   np.random.default_rng([args.seed, epoch]), args.bucket_pool)
    steps = len(batches) // ranks.size
    clock = {"cpu_unsummed": 0.0, "cpu_mark": time.process_time(), "wall_mark": time.time()}
    started, points_before = time.time(), progress.points  # the bar's pace: this run's points a second
    bar = tqdm(total=steps, initial=progress.step_in_epoch, desc=f"epoch {epoch + 1}/{args.num_epochs}",
               disable=not ranks.main)
    for step in range(progress.step_in_epoch, steps):
        batch = step * ranks.size + ranks.rank
        # the distortions of a batch are a function of (seed, epoch, batch): a resumed run draws the same
        offsets, mask, text, text_mask = dataset.collate(train_data, [items[i] for i in batches[batch]],
                                                         args.timesteps + 1, args.device, args.distort,
                                                         np.random.default_rng([args.seed, epoch, batch]))
        steps_before = progress.step
        nats_per_point = train_batch(args, run, model, optimizer, (offsets, mask, text, text_mask), ranks, progress,
                                     lambda: learning_rate(args, epoch, progress, steps))
        progress.step_in_epoch += 1
        clock["cpu_unsummed"] += time.process_time() - clock["cpu_mark"]
        progress.epoch_seconds += time.time() - clock["wall_mark"]
        clock["cpu_mark"], clock["wall_mark"] = time.process_time(), time.time()
        if nats_per_point is not None:
            bar.set_postfix(nats_per_point=f"{nats_per_point:.3f}",
                            points_per_s=f"{(progress.points - points_before) / (time.time() - started):.0f}")
        bar.update(1)
        # checks come between batches: due when the batch's steps reached a multiple of N
        due = lambda every: every and progress.step // every > steps_before // every
        stop = "--max_steps" if args.max_steps and progress.step >= args.max_steps else None
        save_due, curve_due = due(args.save_every), due(args.curve_every)
        if save_due or curve_due or stop or progress.step_in_epoch == steps:
            # every rank reaches these points together: add all ranks' CPU time in one all_reduce
            progress.cpu_seconds += ranks.sum([clock["cpu_unsummed"]], args.device)[0]
            clock["cpu_unsummed"] = 0.0
            if over_budget(args, progress) and progress.step_in_epoch < steps:
                stop = stop or "--max_cpu_hours"
        if curve_due and ranks.main:
            log_curve(args, run, unwrapped(model), optimizer, curve_data, progress)
        if curve_due:
            clock["cpu_mark"] = time.process_time()  # the curve's evaluation is measurement, not training
        if save_due or stop:
            run.save_last(unwrapped(model), optimizer, progress, train_data)
        if stop:
            bar.close()
            return stop
    bar.close()
    return None


def train_batch(args, run, model, optimizer, batch, ranks, progress, rate):
    """One batch: one optimizer step per window of it (one window unless --tbptt), each window's
    lines starting from the state the previous window left; adds to progress's counts. Returns
    the last good window's nats per point (None if every window was skipped)."""
    offsets, mask, text, text_mask = batch
    state, batch_lines, nats_per_point = None, 0, None
    for start, stop in dataset.windows(offsets.shape[1] - 1, args.tbptt or offsets.shape[1] - 1):
        for group in optimizer.param_groups:
            group["lr"] = rate()
        window = (offsets[:, start:stop + 1], mask[:, start:stop + 1], text, text_mask)
        nll, count, lines, state = train_step(args, model, optimizer, window, ranks, state, progress.step)
        progress.step += 1
        if nll is None:
            # a non-finite step would poison the weights and Adam's moments: it was skipped
            progress.bad_steps += 1
            tqdm.write(f"step {progress.step - 1}: non-finite loss or gradient, step skipped")
            if progress.bad_steps >= 10:
                raise SystemExit(f"10 non-finite steps in a row; stopping. {run.last} holds the last "
                                 f"weights saved before the failures began (and {run.best} the best "
                                 "epoch's). Try a lower --learning_rate.")
            continue
        progress.bad_steps = 0
        progress.epoch_nll += nll
        progress.epoch_points += count
        progress.window_nll += nll
        progress.window_points += count
        progress.points += count
        batch_lines, nats_per_point = lines, nll / count
    progress.epoch_lines += batch_lines
    return nats_per_point


def log_curve(args, run, model, optimizer, curve_data, progress):
    """One point of the learning curve: validation NLL against training CPU time and points seen."""
    nats_per_line, nats_per_point = dataset_nll(model, curve_data, args.batch_size, args.device)
    run.append_curve({"step": progress.step, "points": int(progress.points),
                      "cpu_seconds": round(progress.cpu_seconds, 3),
                      "learning_rate": optimizer.param_groups[0]["lr"],
                      "validation_nats_per_sequence": round(nats_per_line, 3),
                      "validation_nats_per_point": round(nats_per_point, 5)})


def unwrapped(model):
    """The FastHandwritingModel inside a DistributedDataParallel wrapper (or the model itself)."""
    return getattr(model, "module", model)


def train_step(args, model, optimizer, batch, ranks, state, step):
    """Optimizer step number `step` on the mean NLL per point of all ranks' batches together, the
    lines starting from `state` (None: their beginning). Returns their (NLL, points, lines), or
    Nones when the loss or the gradient is not finite and the step was skipped (by every rank
    alike: they see the same sums and the same averaged gradient); and the state after the batch,
    cut from the graph, where the next window of the same lines starts."""
    offsets, mask, text, text_mask = batch
    # the noise of step s on rank r is a function of (seed, s, r): a resumed run draws the same
    noise_seed = (args.seed, step, ranks.rank)
    with noisy_weights(list(model.parameters()), args.weight_noise, noise_seed):
        with autocast(args.device, args.precision):
            nll, count, state = sequence_nll(model, offsets, mask, text, text_mask, state, return_state=True)
        total_nll, total_count, lines = ranks.sum([nll.item(), count.item(), len(offsets)], args.device)
        optimizer.zero_grad(set_to_none=True)
        # DDP averages the ranks' gradients: times ranks.size, that is the gradient of the global mean
        (nll * (ranks.size / total_count)).backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip or math.inf)
    if not (math.isfinite(total_nll) and torch.isfinite(grad_norm)):
        return None, None, None, state.detach()
    optimizer.step()
    return total_nll, total_count, int(lines), state.detach()


@contextmanager
def noisy_weights(params, std, seed):
    """Within the block the parameters carry Gaussian noise of standard deviation `std`, drawn
    from a generator seeded with `seed`; after it they hold their clean values again, exactly
    (copied back, not subtracted). Nothing is done when std is 0."""
    if not std:
        yield
        return
    clean = [p.detach().clone() for p in params]
    # numpy's SeedSequence mixes the tuple into one well-spread 64-bit seed
    generator = torch.Generator(params[0].device).manual_seed(
        int(np.random.SeedSequence(list(seed)).generate_state(1, np.uint64)[0]))
    try:  # an interrupt while the noise goes on leaves clean weights too
        with torch.no_grad():
            for p in params:
                p.add_(torch.randn(p.shape, generator=generator, device=p.device, dtype=p.dtype), alpha=std)
        yield
    finally:
        with torch.no_grad():
            for p, value in zip(params, clean):
                p.copy_(value)


def end_epoch(args, run, model, optimizer, train_data, valid_data, progress, epoch, ranks):
    """Rank 0 validates and logs the epoch; then the checkpoints (the best too, when it is)."""
    is_best = ranks.main and validate(args, model, optimizer, valid_data, progress, epoch)
    progress.epoch, progress.step_in_epoch = epoch + 1, 0
    progress.epoch_nll, progress.epoch_points, progress.epoch_lines, progress.epoch_seconds = 0.0, 0.0, 0, 0.0
    if is_best:
        run.save(run.best, model, optimizer, progress, train_data)
    run.save_last(model, optimizer, progress, train_data)
    run.write_log(progress.history)


def validate(args, model, optimizer, valid_data, progress, epoch):
    """Add the epoch's record (training and validation NLL) to the history; True if it is the best."""
    cpu_mark = time.process_time()
    valid_seq, valid_point = dataset_nll(model, valid_data, args.batch_size, args.device)
    progress.cpu_seconds += time.process_time() - cpu_mark
    record = {"epoch": epoch + 1, "step": progress.step,
              "learning_rate": optimizer.param_groups[0]["lr"],
              # training figures are over the (truncated) training windows of this epoch
              "train_nats_per_sequence": progress.epoch_nll / max(progress.epoch_lines, 1),
              "train_nats_per_point": progress.epoch_nll / max(progress.epoch_points, 1),
              "validation_nats_per_sequence": valid_seq, "validation_nats_per_point": valid_point,
              "seconds": round(progress.epoch_seconds, 1),  # of training, wall clock
              "cpu_hours": round(progress.cpu_seconds / 3600, 3)}
    progress.history.append(record)
    print(f"epoch {epoch + 1}: train {record['train_nats_per_sequence']:.1f} nats/seq "
          f"({record['train_nats_per_point']:.4f}/point), validation {valid_seq:.1f} nats/seq "
          f"({valid_point:.4f}/point), {record['cpu_hours']:.2f} CPU hours")
    if valid_seq >= progress.best_validation:
        return False
    progress.best_validation = valid_seq
    return True


if __name__ == "__main__":
    train(parse_args())
