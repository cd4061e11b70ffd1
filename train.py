"""Train the unconditional (rand_write) or text-conditioned (synthesis) handwriting model.

    python train.py --task rand_write
    python train.py --task synthesis
    python train.py --task synthesis --resume      # continue a killed run where it stopped

Reads data/train.npz and data/validation.npz (made by data_preprocessing.py); writes to save/:
    <task>_last.pt    every epoch and every --save_every steps (everything needed to resume)
    <task>_best.pt    the epoch with the lowest validation NLL
    <task>_log.csv    train / validation NLL per epoch
    <task>_loss.png   the loss curves
"""
import argparse
import csv
import math
import os
import random
import time
from dataclasses import asdict

import numpy as np
import torch
from tqdm import tqdm

import utils
from model import HandwritingModel, ModelConfig, sequence_nll


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", choices=["rand_write", "synthesis"], default="rand_write")
    p.add_argument("--cell_size", type=int, default=400, help="LSTM units per layer")
    p.add_argument("--batch_size", type=int, default=50)
    p.add_argument("--timesteps", type=int, default=800,
                   help="training sequence length; longer lines are truncated to their first "
                        "TIMESTEPS predicted points (validation always uses whole lines)")
    p.add_argument("--num_epochs", type=int, default=50)
    p.add_argument("--learning_rate", type=float, default=8e-4)
    p.add_argument("--decay_rate", type=float, default=0.99, help="learning-rate factor per epoch")
    p.add_argument("--num_clusters", type=int, default=20, help="Gaussians in the output mixture")
    p.add_argument("--K", type=int, default=10, help="Gaussians in the attention window")
    p.add_argument("--model_dir", default="save")
    p.add_argument("--data_dir", default="data", help="folder with train.npz and validation.npz")
    p.add_argument("--bucket_pool", type=int, default=50,
                   help="batches are made of similar-length lines drawn from pools of this many "
                        "batches (less padding, faster); 1 gives plain random batches")
    p.add_argument("--grad_clip", type=float, default=10.0,
                   help="clip the global gradient norm of the per-point loss to this (0: off)")
    p.add_argument("--resume", action="store_true", help="continue from MODEL_DIR/<task>_last.pt")
    p.add_argument("--init_from", metavar="CHECKPOINT",
                   help="start from this checkpoint's weights (shipped, exported or a training one) "
                        "with a fresh optimizer and a learning-rate warm-up; epochs count on from "
                        "the checkpoint's, so --num_epochs is the total")
    p.add_argument("--warmup_steps", type=int, default=None,
                   help="raise the learning rate linearly from 0 over this many steps "
                        "(default: 100 with --init_from, else 0)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                   help="bf16 autocast for the matrix products (auto: where the hardware supports it); "
                        "the loss, and the synthesis window's state, are always fp32")
    p.add_argument("--compile", action="store_true",
                   help="synthesis: torch.compile each step of the window recurrence (fuses its small "
                        "operations; costs about a minute of compiling at the start)")
    p.add_argument("--threads", type=int, default=0,
                   help="CPU threads (0: one per core). Use 1 when anything else runs on the machine: "
                        "waiting threads slow a shared 2-core CPU many times over")
    p.add_argument("--save_every", type=int, default=100, help="also checkpoint every N steps")
    p.add_argument("--max_steps", type=int, default=0, help="stop after N optimizer steps (0: no limit)")
    return p.parse_args(argv)


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


def collate(data, indices, max_points=None, device="cpu"):
    """Pad the chosen lines into tensors: offsets (B, T, 3), mask (B, T), text (B, U), text_mask (B, U).

    max_points cuts each line to its first max_points points (max_points - 1 predictions).
    """
    lines = [data.offsets[i][:max_points] for i in indices]
    texts = [data.text_codes[i] for i in indices]
    T, U = max(len(x) for x in lines), max(max(len(c) for c in texts), 1)
    offsets = np.zeros((len(lines), T, 3), np.float32)
    mask = np.zeros((len(lines), T), np.float32)
    text = np.zeros((len(lines), U), np.int64)
    text_mask = np.zeros((len(lines), U), np.float32)
    for b, (x, c) in enumerate(zip(lines, texts)):
        offsets[b, :len(x)], mask[b, :len(x)] = x, 1
        text[b, :len(c)], text_mask[b, :len(c)] = c, 1
    to = lambda a: torch.from_numpy(a).to(device)
    return to(offsets), to(mask), to(text), to(text_mask)


def bf16_supported(device):
    """Whether `device` runs bf16 matrix products (and oneDNN's bf16 LSTM, on a CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def autocast(device, precision):
    """The autocast context for `precision`: bf16 matrix products, or none for fp32.

    "auto" is bf16 where the hardware has it, for both tasks. Measured for synthesis on IAM-OnDB
    (README, Speed): over five seeds bf16 ended 200 steps no worse than fp32 (mean validation NLL
    20 nats per line lower; the pairs differ both ways by more than that); it moves a batch's
    gradient by 0.4-12% of its size where the next batch moves it by 31-188%; and it evaluates
    the same weights within 0.3 nats per line of fp32. The window keeps its state in fp32 anyway.
    "bf16" on hardware without it is refused (oneDNN has no bf16 LSTM there).
    """
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=uses_bf16(device, precision))


def uses_bf16(device, precision):
    """Whether `precision` ("auto", "fp32", "bf16") means bf16 on `device`; refuses an impossible bf16."""
    if precision == "bf16" and not bf16_supported(device):
        raise SystemExit(f"--precision bf16: this {torch.device(device).type.upper()} has no bf16 support "
                         "(a CPU needs AVX-512 with bf16, or AMX); use --precision fp32 or auto.")
    return bf16_supported(device) if precision == "auto" else precision == "bf16"


@torch.no_grad()
def evaluate(model, data, batch_size, device):
    """NLL of whole lines, in eval mode: (nats per sequence, nats per point). In fp32 unless the
    caller opens an autocast context (training evaluates outside its own)."""
    model.eval()
    total, points = 0.0, 0.0
    for indices in make_batches([len(x) for x in data.offsets], batch_size):
        offsets, mask, text, text_mask = collate(data, indices, device=device)
        nll, count = sequence_nll(model, offsets, mask, text, text_mask)
        total, points = total + nll.item(), points + count.item()
    model.train()
    return total / len(data), total / points


# ----------------------------------------------------------------------------- checkpoints

def save_checkpoint(path, model, optimizer, progress, data, args):
    """Everything to resume exactly (weights, optimizer, position, RNG) and to generate without the data."""
    checkpoint = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "config": asdict(model.config),
        "alphabet": data.alphabet,
        "offset_mean": data.offset_mean.tolist(),
        "offset_std": data.offset_std.tolist(),
        "args": vars(args),
        "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()},
        **progress,
    }
    with utils.atomic_path(path) as tmp:
        torch.save(checkpoint, tmp)


def log_epoch(args, history):
    with utils.atomic_path(os.path.join(args.model_dir, f"{args.task}_log.csv")) as tmp:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(history[0]))
            writer.writeheader()
            writer.writerows(history)
    utils.plot_loss_curves(history, os.path.join(args.model_dir, f"{args.task}_loss.png"), title=args.task)


# ----------------------------------------------------------------------------- training

def learning_rate(args, epoch, progress):
    """The seed's schedule (decay_rate per epoch), after a linear warm-up of warmup_steps steps."""
    warmup = args.warmup_steps if args.warmup_steps is not None else (100 if args.init_from else 0)
    ramp = min(1.0, (progress["step"] - progress["warmup_from"] + 1) / warmup) if warmup else 1.0
    return args.learning_rate * args.decay_rate ** epoch * ramp


def init_from(path, model, data, progress):
    """Load `path`'s weights into `model` for a new run on `data`; the optimizer starts afresh.

    Refuses a checkpoint whose model, alphabet or normalisation differs from this run's: its
    weights would read the text or the pen offsets wrongly.
    """
    if not os.path.exists(path):
        raise SystemExit(f"--init_from: no checkpoint at {path}.")
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    if checkpoint["config"] != asdict(model.config):
        raise SystemExit(f"--init_from: {path} holds a model with {checkpoint['config']}, not "
                         f"{asdict(model.config)}; pass the same --task and model options.")
    if checkpoint["alphabet"] != data.alphabet:
        raise SystemExit(f"--init_from: {path} was trained with another alphabet than the data's; "
                         "preprocess the data with that checkpoint's alphabet.")
    if not (np.allclose(checkpoint["offset_mean"], data.offset_mean, rtol=1e-4)
            and np.allclose(checkpoint["offset_std"], data.offset_std, rtol=1e-4)):
        raise SystemExit(f"--init_from: {path} normalises offsets with mean {checkpoint['offset_mean']}, "
                         f"std {checkpoint['offset_std']}, the data with {data.offset_mean.tolist()}, "
                         f"{data.offset_std.tolist()}; preprocess the data with that checkpoint's statistics.")
    model.load_state_dict(checkpoint["model"])
    epoch, step = checkpoint.get("epoch", 0), checkpoint.get("step", 0)
    return {**progress, "epoch": epoch, "step": step, "warmup_from": step,
            "cpu_seconds": checkpoint.get("cpu_seconds", 0.0),
            "history": list(checkpoint.get("history", [])),
            "best_validation": checkpoint.get("best_validation", math.inf)}


def train(args):
    uses_bf16(args.device, args.precision)  # refuse an impossible --precision before any work
    if args.threads:
        torch.set_num_threads(args.threads)
    os.makedirs(args.model_dir, exist_ok=True)
    train_data = utils.load_data(os.path.join(args.data_dir, "train.npz"))
    valid_data = utils.load_data(os.path.join(args.data_dir, "validation.npz"))
    if len(train_data) == 0 or len(valid_data) == 0:
        raise SystemExit(f"{args.data_dir}: the training or validation split is empty; "
                         "rerun data_preprocessing.py.")
    last_path = os.path.join(args.model_dir, f"{args.task}_last.pt")
    best_path = os.path.join(args.model_dir, f"{args.task}_best.pt")

    config = ModelConfig(task=args.task, cell_size=args.cell_size, num_clusters=args.num_clusters,
                         K=args.K, alphabet_size=len(train_data.alphabet))
    torch.manual_seed(args.seed)
    model = HandwritingModel(config).to(args.device)
    model.compile_recurrence = args.compile
    optimizer = torch.optim.Adam(model.parameters(), lr=args.learning_rate)
    progress = {"epoch": 0, "step_in_epoch": 0, "step": 0, "history": [], "best_validation": math.inf,
                "epoch_nll": 0.0, "epoch_points": 0.0, "epoch_lines": 0, "warmup_from": 0,
                "cpu_seconds": 0.0}

    if args.resume:
        if not os.path.exists(last_path):
            raise SystemExit(f"--resume: no checkpoint at {last_path}; start without --resume.")
        checkpoint = torch.load(last_path, map_location=args.device, weights_only=False)
        if checkpoint["config"] != asdict(config):
            raise SystemExit(f"--resume: {last_path} holds a model with {checkpoint['config']}, "
                             f"not {asdict(config)}; use the same options or another --model_dir.")
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        progress = {k: checkpoint.get(k, v) for k, v in progress.items()}
        torch.set_rng_state(checkpoint["rng"]["torch"])
        np.random.set_state(checkpoint["rng"]["numpy"])
        random.setstate(checkpoint["rng"]["python"])
        print(f"resumed {last_path}: epoch {progress['epoch'] + 1}, step {progress['step']}")
    elif args.init_from:
        progress = init_from(args.init_from, model, train_data, progress)
        print(f"initialised from {args.init_from}: epoch {progress['epoch'] + 1}, step {progress['step']}")

    lengths = [len(x) for x in train_data.offsets]
    print(f"{args.task}: {sum(p.numel() for p in model.parameters()):,} parameters, "
          f"{len(train_data)} training / {len(valid_data)} validation lines, device {args.device}")
    bad_steps = 0
    if args.max_steps and progress["step"] >= args.max_steps:
        print(f"already at step {progress['step']} >= --max_steps {args.max_steps}; nothing to do")
        return model, progress
    for epoch in range(progress["epoch"], args.num_epochs):
        # the batch order is a function of (seed, epoch), so a resumed run sees the same batches
        batches = make_batches(lengths, args.batch_size, np.random.default_rng([args.seed, epoch]),
                               args.bucket_pool)
        started, points_this_run = time.time(), 0.0
        cpu_mark = time.process_time()
        bar = tqdm(batches, initial=progress["step_in_epoch"], desc=f"epoch {epoch + 1}/{args.num_epochs}")
        for indices in batches[progress["step_in_epoch"]:]:
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(args, epoch, progress)
            offsets, mask, text, text_mask = collate(train_data, indices, args.timesteps + 1, args.device)
            with autocast(args.device, args.precision):
                nll, count = sequence_nll(model, offsets, mask, text, text_mask)
            optimizer.zero_grad(set_to_none=True)
            (nll / count).backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip or math.inf)
            if not (torch.isfinite(nll) and torch.isfinite(grad_norm)):
                # a non-finite step would poison the weights and Adam's moments: skip it
                bad_steps += 1
                tqdm.write(f"step {progress['step']}: non-finite loss or gradient, step skipped")
                if bad_steps >= 10:
                    raise SystemExit(f"10 non-finite steps in a row; stopping. The last good "
                                     f"checkpoint is {last_path}. Try a lower --learning_rate.")
            else:
                bad_steps = 0
                optimizer.step()
                progress["epoch_nll"] += nll.item()
                progress["epoch_points"] += count.item()
                progress["epoch_lines"] += len(indices)
                points_this_run += count.item()
            progress["step"] += 1
            progress["step_in_epoch"] += 1
            progress["cpu_seconds"] += time.process_time() - cpu_mark
            cpu_mark = time.process_time()
            bar.update(1)
            bar.set_postfix(nats_per_point=f"{nll.item() / count.item():.3f}",
                            points_per_s=f"{points_this_run / (time.time() - started):.0f}")
            if progress["step"] % args.save_every == 0:
                save_checkpoint(last_path, model, optimizer, progress, train_data, args)
            if args.max_steps and progress["step"] >= args.max_steps:
                save_checkpoint(last_path, model, optimizer, progress, train_data, args)
                bar.close()
                print(f"stopped after --max_steps {args.max_steps}")
                return model, progress
        bar.close()

        valid_seq, valid_point = evaluate(model, valid_data, args.batch_size, args.device)
        progress["cpu_seconds"] += time.process_time() - cpu_mark
        record = {"epoch": epoch + 1, "step": progress["step"],
                  "learning_rate": optimizer.param_groups[0]["lr"],
                  # training figures are over the (truncated) training windows of this epoch
                  "train_nats_per_sequence": progress["epoch_nll"] / max(progress["epoch_lines"], 1),
                  "train_nats_per_point": progress["epoch_nll"] / max(progress["epoch_points"], 1),
                  "validation_nats_per_sequence": valid_seq, "validation_nats_per_point": valid_point,
                  "seconds": round(time.time() - started, 1),
                  # all processes' CPU time of the whole lineage (--init_from carries it on)
                  "cpu_hours": round(progress["cpu_seconds"] / 3600, 3)}
        progress["history"].append(record)
        progress["epoch"], progress["step_in_epoch"] = epoch + 1, 0
        progress["epoch_nll"], progress["epoch_points"], progress["epoch_lines"] = 0.0, 0.0, 0
        print(f"epoch {epoch + 1}: train {record['train_nats_per_sequence']:.1f} nats/seq "
              f"({record['train_nats_per_point']:.4f}/point), validation {valid_seq:.1f} nats/seq "
              f"({valid_point:.4f}/point)")
        if valid_seq < progress["best_validation"]:
            progress["best_validation"] = valid_seq
            save_checkpoint(best_path, model, optimizer, progress, train_data, args)
        save_checkpoint(last_path, model, optimizer, progress, train_data, args)
        log_epoch(args, progress["history"])
    return model, progress


if __name__ == "__main__":
    train(parse_args())
