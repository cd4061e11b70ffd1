"""The checkpoint format: one .pt file holds a model and everything needed to use it.

A module of its own because four scripts share the format: train.py writes and resumes it,
generate.py and evaluate.py read it, bench.py reads it, and exporting and averaging have a command line.

A checkpoint is a dict:
    model                     the state_dict
    config                    model.ModelConfig as a dict
    alphabet                  the text alphabet (code i is alphabet[i])
    offset_mean, offset_std   the [dx, dy] normalisation of the training data, in pen units
    args                      train.py's options
    history                   one dict per finished epoch (NLL, learning rate, seconds, CPU hours)
    epoch, step, ...          the run's progress (train.Progress)
  and, in training checkpoints only (<task>_last.pt, <task>_best.pt):
    optimizer                 Adam's state
    rng                       the torch, numpy and python RNG states, to resume exactly

Exported checkpoints (the shipped save/<task>.pt) drop the last two: they generate and can be
trained on (train.py --init_from) but not resumed. Files are read with torch.load(weights_only=True):
a crafted checkpoint cannot run code.

    python checkpoint.py export save/synthesis_best.pt save/synthesis.pt
    python checkpoint.py average save/synthesis_mean.pt save/snapshots/synthesis_step*.pt
    python checkpoint.py show save/synthesis.pt
"""
import argparse
import os
import pickle
import random
import zipfile
from dataclasses import asdict

import numpy as np
import torch

import utils
from model import HandwritingModel, ModelConfig

try:
    from numpy._core.multiarray import _reconstruct  # numpy 2
except ImportError:
    from numpy.core.multiarray import _reconstruct

RESUME_ONLY_KEYS = ("optimizer", "rng")
# what numpy's RNG state (an array) needs besides tensors and plain Python values
_NUMPY_GLOBALS = [np.dtype, np.ndarray, _reconstruct, type(np.dtype(np.uint32))]


class CheckpointError(ValueError):
    """A file that cannot be used as a checkpoint; the message says why and what to do."""


def save(path, model, data, progress, args=None, optimizer=None):
    """Write a checkpoint atomically. With an optimizer it is a training checkpoint: it also holds
    the optimizer and RNG states, so that resuming continues exactly."""
    checkpoint = {
        "model": model.state_dict(),
        "config": asdict(model.config),
        "alphabet": data.alphabet,
        "offset_mean": [float(v) for v in data.offset_mean],
        "offset_std": [float(v) for v in data.offset_std],
        "args": dict(vars(args)) if args is not None else {},
        **progress,
    }
    if optimizer is not None:
        checkpoint["optimizer"] = optimizer.state_dict()
        name, keys, position, has_gauss, gauss = np.random.get_state()
        checkpoint["rng"] = {"torch": torch.get_rng_state(), "python": random.getstate(),
                             "numpy": (name, keys.tolist(), position, has_gauss, gauss)}
    try:
        with utils.atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)
    except (OSError, RuntimeError) as e:  # torch says "unexpected pos" when the disk fills up
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e).splitlines()[0][:120]
        raise CheckpointError(f"could not write {path} ({reason}): check that the disk has room and the "
                              "folder is writable. The file it would replace is unchanged.") from None


def load(path, device="cpu"):
    """Read a checkpoint (dict) onto `device`; a GPU checkpoint loads on a CPU.

    Raises FileNotFoundError for a missing file and CheckpointError for one that is not a readable
    checkpoint (truncated, another format, or holding code).
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"no checkpoint at {path}: train one with train.py or pass --checkpoint PATH")
    if not zipfile.is_zipfile(path):  # torch.save has written zip archives since PyTorch 1.6
        raise CheckpointError(f"{path} is not a readable checkpoint: truncated, empty or not a PyTorch "
                              "file. Use a .pt file written by train.py or the shipped save/<task>.pt.")
    try:
        with torch.serialization.safe_globals(_NUMPY_GLOBALS):
            checkpoint = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(f"{path} holds Python objects that no checkpoint of ours has; it was not "
                              "loaded, because unpickling them could run code. Use a .pt file written "
                              "by train.py or the shipped save/<task>.pt.") from None
    except Exception as e:  # torch raises several kinds (zip reader, EOF, runtime) for a damaged file
        raise CheckpointError(f"{path} is not a readable checkpoint: damaged or truncated "
                              f"({type(e).__name__}). Use a .pt file written by train.py or the "
                              "shipped save/<task>.pt.") from None
    if not isinstance(checkpoint, dict) or not {"model", "config", "alphabet"} <= set(checkpoint):
        raise CheckpointError(f"{path} is not a train.py checkpoint (it lacks the model, its "
                              "configuration or its alphabet)")
    return checkpoint


def default_path(task, model_dir="save"):
    """The checkpoint generation uses when none is named, the first that exists of:

    <task>_best.pt (your own training, its best epoch), <task>.pt (the weights shipped with the
    repository), <task>_last.pt (a run still in its first epoch).
    """
    candidates = [os.path.join(model_dir, f"{task}{suffix}.pt") for suffix in ("_best", "", "_last")]
    for path in candidates:
        if os.path.exists(path):
            return path
    return candidates[0]  # missing: load says so and how to make one


def build_model(checkpoint, device="cpu"):
    """The model of a loaded checkpoint, with its weights, in eval mode."""
    model = HandwritingModel(ModelConfig(**checkpoint["config"])).to(device)
    model.load_state_dict(checkpoint["model"])
    return model.eval()


def check_compatible(checkpoint, config, data, path, flag):
    """Refuse (SystemExit) a checkpoint whose model, alphabet or normalisation differs from this
    run's: its weights would read the text or the pen offsets wrongly."""
    if checkpoint["config"] != asdict(config):
        raise SystemExit(f"{flag}: {path} holds a model with {checkpoint['config']}, not "
                         f"{asdict(config)}; pass the same --task and model options.")
    if checkpoint["alphabet"] != data.alphabet:
        raise SystemExit(f"{flag}: {path} was trained with another alphabet than the data in --data_dir; "
                         f"remake it with that checkpoint's (python data_preprocessing.py --like {path} ...).")
    if not (np.allclose(checkpoint["offset_mean"], data.offset_mean, rtol=1e-4)
            and np.allclose(checkpoint["offset_std"], data.offset_std, rtol=1e-4)):
        raise SystemExit(f"{flag}: {path} normalises offsets with mean {checkpoint['offset_mean']} and "
                         f"std {checkpoint['offset_std']}, the data in --data_dir with "
                         f"{data.offset_mean.tolist()} and {data.offset_std.tolist()}; remake the data with "
                         f"that checkpoint's (python data_preprocessing.py --like {path} ...).")


def restore_rng(checkpoint):
    """Put back the RNG states saved in a training checkpoint."""
    torch.set_rng_state(checkpoint["rng"]["torch"])
    name, keys, position, has_gauss, gauss = checkpoint["rng"]["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), position, has_gauss, gauss))
    random.setstate(checkpoint["rng"]["python"])


def export(src, dst):
    """Write the part of checkpoint `src` that generation and --init_from need to `dst`, atomically.

    Drops the optimizer and RNG states (two thirds of the file) and stores the weights on the CPU.
    Used to make the shipped save/<task>.pt.
    """
    _write_exported(load(src), dst, exported_from=os.path.basename(src))


def _write_exported(checkpoint, dst, **changes):
    """Write `checkpoint` without its resume state, with `changes` applied, to `dst`, atomically."""
    exported = {k: v for k, v in checkpoint.items() if k not in RESUME_ONLY_KEYS}
    with utils.atomic_path(dst) as tmp:
        torch.save({**exported, **changes}, tmp)


def average(sources, dst):
    """Write the mean of the weights of checkpoints `sources` to `dst`, exported, atomically.

    Snapshots of one run taken every hundred or so steps at a steady learning rate lie around the
    bottom of a valley that each of them misses by a little noise; their mean lies nearer to it
    (Polyak averaging; Izmailov et al. 2018, "Averaging Weights Leads to Wider Optima"). Everything
    but the weights (progress, history, options) is that of the source with the most steps, in
    whatever order the sources come (a shell sorts step10000 before step9000). The sources must
    share the model, alphabet and normalisation.
    """
    if not sources:
        raise CheckpointError("average needs at least one checkpoint to average")
    checkpoints = [load(path) for path in sources]
    latest = max(range(len(sources)), key=lambda i: checkpoints[i].get("step", 0))
    newest = checkpoints[latest]
    for path, checkpoint in zip(sources, checkpoints):
        for key in ("config", "alphabet", "offset_mean", "offset_std"):
            if checkpoint.get(key) != newest.get(key):
                raise CheckpointError(f"{path} differs from {sources[latest]} in its {key}: only checkpoints "
                                      "of one model, trained on the same data, can be averaged")
    weights = {}
    for name, tensor in newest["model"].items():
        if tensor.is_floating_point():  # summed in float64: exact enough whatever the count
            total = sum(checkpoint["model"][name].double() for checkpoint in checkpoints)
            weights[name] = (total / len(checkpoints)).to(tensor.dtype)
        else:
            weights[name] = tensor
    _write_exported(newest, dst, model=weights, averaged_from=[os.path.basename(path) for path in sources])


def describe(checkpoint):
    """One paragraph about a checkpoint: model, training so far, best validation."""
    history = checkpoint.get("history", [])
    lines = [f"{checkpoint['config']}",
             f"{checkpoint.get('epoch', 0)} epoch(s), {checkpoint.get('step', 0)} steps"
             + (f", {history[-1]['cpu_hours']:.2f} CPU hours" if history and "cpu_hours" in history[-1] else "")]
    if history:
        best = min(history, key=lambda r: r["validation_nats_per_sequence"])
        lines.append(f"best validation {best['validation_nats_per_sequence']:.1f} nats/line "
                     f"({best['validation_nats_per_point']:.4f}/point) after epoch {best['epoch']}"
                     + (" (of the run's epochs; the mean's own: python evaluate.py)" if "averaged_from" in checkpoint else ""))
    if "averaged_from" in checkpoint:
        names = checkpoint["averaged_from"]
        shown = ", ".join(names) if len(names) <= 4 else f"{names[0]}, {names[1]} ... {names[-1]}"
        lines.append(f"weights: the mean of {len(names)} checkpoints ({shown})")
    lines.append("training checkpoint (resumable)" if "optimizer" in checkpoint else "exported (not resumable)")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = p.add_subparsers(dest="command", required=True)
    export_command = commands.add_parser("export", help="strip a training checkpoint to what generation needs")
    export_command.add_argument("src")
    export_command.add_argument("dst")
    average_command = commands.add_parser("average", help="write the mean of several checkpoints' weights")
    average_command.add_argument("dst")
    average_command.add_argument("sources", nargs="+", metavar="src")
    show_command = commands.add_parser("show", help="say what a checkpoint holds")
    show_command.add_argument("path")
    args = p.parse_args(argv)
    try:
        if args.command == "export":
            export(args.src, args.dst)
            print(f"wrote {args.dst}")
        elif args.command == "average":
            average(args.sources, args.dst)
            print(f"wrote {args.dst}, the mean of {len(args.sources)} checkpoints")
        else:
            print(describe(load(args.path)))
    except (FileNotFoundError, CheckpointError) as e:
        raise SystemExit(str(e))


if __name__ == "__main__":
    main()
