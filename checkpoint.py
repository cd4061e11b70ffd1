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
import math
import numbers
import os
import pickle
import random
import stat
import zipfile
from dataclasses import asdict, fields

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
    _write_atomically(checkpoint, path)


def _write_atomically(checkpoint, path):
    """torch.save to `path` through a temporary file; a failure is a CheckpointError sentence."""
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
    checkpoint (not a regular file, truncated, another format, holding code) or not a usable one (validate).
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"no checkpoint at {path}: train one with train.py or pass --checkpoint PATH")
    if os.path.isdir(path):
        raise CheckpointError(f"{path} is a folder, not a checkpoint: name the .pt files in it "
                              f"({os.path.join(path, '*.pt')})")
    if not stat.S_ISREG(os.stat(path).st_mode):  # a pipe or a device would block or never end
        raise CheckpointError(f"{path} is not a regular file (a pipe, device or socket): a checkpoint is a .pt file")
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
    validate(checkpoint, path)
    return checkpoint


def validate(checkpoint, path):
    """Refuse (CheckpointError, one sentence) a checkpoint that torch reads but no model can use.

    Its configuration, alphabet, normalisation and history must have the types and ranges train.py
    writes, and its weights must be exactly the tensors of the model the configuration describes
    (names and shapes), floating point and finite. Checked as a whole here, so no script meets a
    hand-edited or damaged file halfway through its work.
    """
    fault = _config_fault(checkpoint["config"]) or _data_fault(checkpoint) or _weights_fault(checkpoint)
    if fault:
        raise CheckpointError(f"{path} cannot be used as a checkpoint: {fault}. Use a .pt file written by "
                              "train.py or the shipped save/<task>.pt.")


def _shown(value):
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _config_fault(config):
    names = [f.name for f in fields(ModelConfig)]
    if not isinstance(config, dict):
        return f"its config must be a dict of {', '.join(names)}, not {_shown(config)}"
    unknown = [str(name) for name in config if name not in names]
    if unknown:
        return f"its config has keys this code does not know: {', '.join(unknown)}"
    missing = [name for name in names if name not in config]
    if missing:
        return f"its config lacks {', '.join(missing)}"
    if config["task"] not in ("rand_write", "synthesis"):
        return f"its config task must be 'rand_write' or 'synthesis', not {_shown(config['task'])}"
    for name in names:
        if name != "task" and (type(config[name]) is not int or config[name] < 1):
            return f"its config {name} must be a whole number >= 1, not {_shown(config[name])}"
    return None


def _finite_pair(value):
    return (isinstance(value, (list, tuple)) and len(value) == 2
            and all(isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) for v in value))


def _data_fault(checkpoint):
    """What is wrong with the alphabet, the normalisation or the history, if anything."""
    alphabet = checkpoint["alphabet"]
    if not isinstance(alphabet, str) or not alphabet:
        return f"its alphabet must be a non-empty text, not {_shown(alphabet)}"
    repeated = sorted({c for c in alphabet if alphabet.count(c) > 1})
    if repeated:
        return f"its alphabet repeats {', '.join(map(repr, repeated))}"
    if len(alphabet) != checkpoint["config"]["alphabet_size"]:
        return f"its alphabet has {len(alphabet)} characters, its config reads {checkpoint['config']['alphabet_size']}"
    mean, std = checkpoint.get("offset_mean"), checkpoint.get("offset_std")
    if not _finite_pair(mean):
        return f"its offset_mean must be two finite numbers, not {_shown(mean)}"
    if not _finite_pair(std) or min(std) <= 0:
        return f"its offset_std must be two finite numbers, the std > 0, not {_shown(std)}"
    history = checkpoint.get("history", [])
    if not isinstance(history, list) or not all(isinstance(record, dict) for record in history):
        return f"its history must be a list of records, not {_shown(history)}"
    return None


def _weights_fault(checkpoint):
    """What is wrong with the weights against the model the (valid) configuration describes."""
    weights = checkpoint["model"]
    if not isinstance(weights, dict) or not all(isinstance(t, torch.Tensor) for t in weights.values()):
        return "its model must be a dict of tensors"
    try:
        with torch.device("meta"):  # the model's names and shapes, without memory or time
            expected = HandwritingModel(ModelConfig(**checkpoint["config"])).state_dict()
    except (RuntimeError, ValueError, OverflowError) as e:
        return f"its config describes no model this code can build ({type(e).__name__})"
    missing = [name for name in expected if name not in weights]
    if missing:
        return f"it holds no weights for {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}"
    extra = [str(name) for name in weights if name not in expected]
    if extra:
        return f"it holds weights the model lacks: {', '.join(extra[:3])}{' ...' if len(extra) > 3 else ''}"
    for name, tensor in expected.items():
        saved = weights[name]
        if saved.shape != tensor.shape:
            return f"its {name} has shape {tuple(saved.shape)}, the config's model {tuple(tensor.shape)}"
        if not saved.is_floating_point():
            return f"its {name} is not floating point ({saved.dtype})"
        if not torch.isfinite(saved).all():
            return f"its {name} holds NaN or infinite values"
    return None


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
    check_destination(dst, [src], "export")
    _write_exported(load(src), dst, exported_from=os.path.basename(src))


def check_destination(dst, sources, command):
    """Refuse a `dst` that is one of `sources` (the same file, however spelled: links, ./, symlinks)
    or a file `command` did not make: export and average replace only an exported checkpoint, never
    a training one (a run's resume state) nor anything else."""
    for src in sources:
        if utils.same_file(dst, src):
            raise CheckpointError(f"{command} would write over its own source {src} (as {dst}): "
                                  "name another file to write")
    if not os.path.lexists(dst):
        return
    try:
        existing = load(dst)
    except (FileNotFoundError, CheckpointError):
        raise CheckpointError(f"{dst} exists and is not a checkpoint: {command} replaces only a checkpoint "
                              "it wrote; name another file to write") from None
    if any(key in existing for key in RESUME_ONLY_KEYS):
        raise CheckpointError(f"{dst} is a training checkpoint (it resumes a run): {command} will not replace "
                              "it; name another file to write")


def _write_exported(checkpoint, dst, **changes):
    """Write `checkpoint` without its resume state, with `changes` applied, to `dst`, atomically."""
    exported = {k: v for k, v in checkpoint.items() if k not in RESUME_ONLY_KEYS}
    _write_atomically({**exported, **changes}, dst)


def average(sources, dst, include_means=False):
    """Write the mean of the weights of checkpoints `sources` to `dst`, exported, atomically.

    Snapshots of one run taken every hundred or so steps at a steady learning rate lie around the
    bottom of a valley that each of them misses by a little noise; their mean lies nearer to it
    (Polyak averaging; Izmailov et al. 2018, "Averaging Weights Leads to Wider Optima"). Everything
    but the weights (progress, history, options) is that of the source with the most steps, in
    whatever order the sources come (a shell sorts step10000 before step9000). The sources must
    share the model, alphabet and normalisation, and each counts once: one file named twice (under
    any spelling) is refused, and so is a source that is itself a mean (written by average: it
    would weigh its own sources again) unless `include_means`, when it counts as one checkpoint.
    """
    if not sources:
        raise CheckpointError("average needs at least one checkpoint to average")
    for i, path in enumerate(sources):
        for earlier in sources[:i]:
            if utils.same_file(path, earlier):
                raise CheckpointError(f"{earlier} and {path} are one file: each checkpoint counts once in the "
                                      "mean; name it once")
    check_destination(dst, sources, "average")
    checkpoints = [load(path) for path in sources]
    for path, checkpoint in zip(sources, checkpoints):
        if "averaged_from" in checkpoint and not include_means:
            raise CheckpointError(f"{path} is itself a mean (written by average): averaging it in would weigh "
                                  "its own sources again. Leave it out, or pass --include_means to count it "
                                  "as one checkpoint")
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
    judged = [r for r in history if {"epoch", "validation_nats_per_sequence", "validation_nats_per_point"} <= set(r)]
    if judged:  # records of epochs that were validated (hand-made or older histories may lack it)
        best = min(judged, key=lambda r: r["validation_nats_per_sequence"])
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
    average_command.add_argument("--include_means", action="store_true",
                                 help="also take in sources that are themselves means, each as one checkpoint")
    show_command = commands.add_parser("show", help="say what a checkpoint holds")
    show_command.add_argument("path")
    args = p.parse_args(argv)
    try:
        if args.command == "export":
            export(args.src, args.dst)
            print(f"wrote {args.dst}")
        elif args.command == "average":
            average(args.sources, args.dst, args.include_means)
            print(f"wrote {args.dst}, the mean of {len(args.sources)} checkpoints")
        else:
            print(describe(load(args.path)))
    except (FileNotFoundError, CheckpointError) as e:
        raise SystemExit(str(e))


if __name__ == "__main__":
    main()
