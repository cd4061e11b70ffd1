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
    python checkpoint.py export-web save/synthesis.pt web/    # the page's weights (web/model.js) and hands
"""
import argparse
import base64
import json
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
from kernels import FastHandwritingModel
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


def build_model(checkpoint, device="cpu", compile=False):
    """The model of a loaded checkpoint, with its weights, in eval mode: the fast one (kernels.py),
    which training, generation and bench.py use; model.HandwritingModel loads the same weights.
    compile: its recurrences through torch.compile (as train.py --compile)."""
    model = FastHandwritingModel(ModelConfig(**checkpoint["config"]), compile=compile).to(device)
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


# ----------------------------------------------------------------------------- the browser's copy
#
# web/index.html writes with the synthesis model in the page (web/engine.js). export-web writes what
# it needs into web/model.js, a script (a page opened from disk may load scripts, not fetch files):
# each layer as one (outputs, inputs) matrix over its joined inputs, gates ordered (i, f, o, g) as
# kernels.GenerationStep packs them, and the alphabet and rules the page must share with Python.

WEB_PRECISIONS = ("int8", "fp16", "fp32")


def ifog(gate_rows):
    """An nn.LSTM weight's or bias's 4H gate rows, (i, f, g, o), in the page's order (i, f, o, g),
    the order of web/engine.js's cell (and of kernels.GenerationStep's). Its own inverse."""
    i, f, g, o = gate_rows.chunk(4, dim=0)
    return torch.cat([i, f, o, g], dim=0)


def web_layers(weights):
    """A synthesis state_dict as four (weight (outputs, inputs), bias) layers: layer 1 over
    [x, h1, w], the window over h1, layer 2 over [x, h1, w, h2], the output over [h1, h2]."""
    layer2 = torch.cat([weights["layer2.weight_ih_l0"], weights["layer2.weight_hh_l0"]], 1)
    return {
        "layer1": (torch.cat([weights["layer1_input.weight"], weights["layer1_recurrent.weight"]], 1),
                   weights["layer1_input.bias"]),
        "window": (weights["window_layer.weight"], weights["window_layer.bias"]),
        "layer2": (ifog(layer2), ifog(weights["layer2.bias_ih_l0"] + weights["layer2.bias_hh_l0"])),
        "output": (weights["output_layer.weight"], weights["output_layer.bias"]),
    }


INT8_GROUP = 32  # int8 weights share a scale along this many inputs of a row


def compact(weight, precision):
    """`weight` (outputs, inputs) as stored at `precision`: (stored values, scales or None).

    int8 gives each run of INT8_GROUP weights along a row (the last run of a row may be shorter)
    its own scale, its largest magnitude over 127: scales (outputs, groups). One scale a row wrote
    lines Tesseract read worse (CER 0.177 against 0.147 over five seeds, docs/browser.md)."""
    weight = weight.detach().float().cpu()
    if precision == "fp32":
        return weight, None
    if precision == "fp16":
        return weight.half(), None
    scales = torch.stack([part.abs().amax(1) for part in weight.split(INT8_GROUP, 1)], 1) / 127
    scales[scales == 0] = 1.0
    stored = torch.round(weight / per_weight(scales, weight.shape[1])).clamp(-127, 127).to(torch.int8)
    return stored, scales


def per_weight(scales, columns):
    """Group scales (outputs, groups) spread to every weight (outputs, columns)."""
    return scales.repeat_interleave(INT8_GROUP, 1)[:, :columns]


def expanded(stored, scales):
    """What compact() stored, back in float32: the weights the page computes with."""
    return stored.float() if scales is None else stored.float() * per_weight(scales, stored.shape[1])


def with_compact_weights(checkpoint, precision):
    """`checkpoint` (a synthesis one) with its layers' weights rounded as `precision` stores them,
    in float32 and the same format: to judge what the page's compact weights cost (evaluate.py).
    Biases stay exact, as export-web keeps them."""
    weights = dict(checkpoint["model"])
    H = checkpoint["config"]["cell_size"]
    rounded = {name: expanded(*compact(weight, precision)) for name, (weight, _) in web_layers(weights).items()}
    weights["layer1_input.weight"], weights["layer1_recurrent.weight"] = rounded["layer1"].split([3, rounded["layer1"].shape[1] - 3], 1)
    weights["window_layer.weight"], weights["output_layer.weight"] = rounded["window"], rounded["output"]
    layer2 = ifog(rounded["layer2"])
    weights["layer2.weight_ih_l0"], weights["layer2.weight_hh_l0"] = layer2.split([layer2.shape[1] - H, H], 1)
    return {**checkpoint, "model": {name: tensor.contiguous() for name, tensor in weights.items()}}


def web_bundle(checkpoint, precision="int8"):
    """What the page needs of a synthesis checkpoint, as JSON-ready values: its layers (weights at
    `precision`, little-endian base64; biases float32), the alphabet and look-alikes, the
    normalisation, and the writing rules' constants."""
    import dataset, generate, ink  # here: generate imports this module
    from model import EXP_FLOOR, MAX_POINTS_PER_CHAR

    if checkpoint["config"]["task"] != "synthesis":
        raise CheckpointError(f"export-web: the page writes texts, so it needs a synthesis checkpoint, "
                              f"not {checkpoint['config']['task']}")
    if precision not in WEB_PRECISIONS:
        raise CheckpointError(f"export-web: --precision must be one of {', '.join(WEB_PRECISIONS)}, not {precision}")
    layers = {}
    for name, (weight, bias) in web_layers(checkpoint["model"]).items():
        stored, scales = compact(weight, precision)
        layers[name] = {"rows": weight.shape[0], "cols": weight.shape[1], "precision": precision,
                        "weight": as_base64(stored), "bias": as_base64(bias.detach().float().cpu())}
        if scales is not None:
            layers[name].update(group=INT8_GROUP, scales=as_base64(scales))
    return {"format": 1, "precision": precision, "config": checkpoint["config"], "alphabet": checkpoint["alphabet"],
            "unknown_replacement": dataset.UNKNOWN_REPLACEMENT, "lookalikes": dataset.LOOKALIKES,
            "offset_mean": [float(v) for v in checkpoint["offset_mean"]],
            "offset_std": [float(v) for v in checkpoint["offset_std"]],
            "median_step": ink.median_step(checkpoint["offset_std"]),
            "max_points_per_char": MAX_POINTS_PER_CHAR, "retries": generate.RETRIES, "exp_floor": EXP_FLOOR,
            "max_line_chars": generate.MAX_LINE_CHARS, "prime_window_slack": generate.PRIME_WINDOW_SLACK,
            "line_gap": utils.LINE_GAP, "plotter": asdict(utils.Plotter()), "layers": layers}


def as_base64(tensor):
    """A tensor's values as base64 of their little-endian bytes, as the page reads them."""
    array = tensor.detach().cpu().contiguous().numpy()
    return base64.b64encode(array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()).decode()


def write_script(path, name, value, source):
    """`value` as a script that sets globalThis[name] (a page opened from disk loads scripts, not data)."""
    with utils.atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(f"// written by python checkpoint.py export-web from {source}: do not edit\n"
                    f"globalThis.{name} = {json.dumps(value, ensure_ascii=False, separators=(',', ':'))};\n")


def web_hands(checkpoint, recipes):
    """The bundled hands: lines the model itself writes, unprimed, at chosen seeds (`recipes`: dicts
    of name, text, seed, bias), as prime JSON (strokes of [x, y] points, y down, pen units). Each is
    read back from its JSON, as the page reads it, and must pass the prime check: its text and its
    ink agree (generate.check_prime_window)."""
    import tempfile

    import generate

    writer = generate.Writer.from_checkpoint(checkpoint)
    hands = []
    for recipe in recipes:
        writing = writer.write([recipe["text"]], bias=recipe["bias"], seed=recipe["seed"])
        strokes = [(np.round(stroke * [1, -1], 2) + 0.0).tolist() for stroke in utils.offsets_to_strokes(writing.lines[0])]
        hand = {"name": recipe["name"], "text": writing.texts[0], "strokes": strokes}
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, "hand.json")
            with open(path, "w", encoding="utf-8") as f:
                json.dump(hand, f)
            try:
                problem = "stalled" if writing.capped[0] else None
                writer.write(["a"], bias=1.0, seed=0, prime=generate.Prime.read(path), prime_check="stop")
            except generate.PrimeError as e:
                problem = f"fails the prime check ({e})"
        if problem:
            raise CheckpointError(f"export-web: the hand {recipe['name']!r} (seed {recipe['seed']}, bias {recipe['bias']}) "
                                  f"{problem}: choose another seed in hands.json")
        hands.append(hand)
    return hands


def export_web(src, folder, precision="int8", judge_copy=None):
    """Write folder/model.js, the page's bundle of synthesis checkpoint `src` at `precision`, and
    folder/hands.js, the hands folder/hands.json asks for, written with the same rounded weights.
    judge_copy: also write those rounded weights as a checkpoint, to judge what they cost."""
    checkpoint = load(src)
    bundle = web_bundle(checkpoint, precision)
    rounded = with_compact_weights(checkpoint, precision)
    source = os.path.basename(src)
    write_script(os.path.join(folder, "model.js"), "HANDWRITING_MODEL", {**bundle, "source": source}, source)
    recipes_path = os.path.join(folder, "hands.json")
    if os.path.exists(recipes_path):
        with open(recipes_path, encoding="utf-8") as f:
            recipes = json.load(f)
        write_script(os.path.join(folder, "hands.js"), "HANDWRITING_HANDS", web_hands(rounded, recipes), source)
    if judge_copy:
        _write_exported(rounded, judge_copy, compact_weights=precision)


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
    web_command = commands.add_parser("export-web", help="write the page's bundle (model.js, hands.js) for web/index.html")
    web_command.add_argument("src")
    web_command.add_argument("folder", help="where model.js goes (web/); hands.js too when FOLDER/hands.json exists")
    web_command.add_argument("--precision", choices=WEB_PRECISIONS, default="int8",
                             help=f"how the layers' weights are stored: int8 with a scale for every {INT8_GROUP} "
                                  "weights of a row (default), fp16, fp32")
    web_command.add_argument("--judge_copy", metavar="PT",
                             help="also write the weights as rounded to a checkpoint, for evaluate.py")
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
        elif args.command == "export-web":
            export_web(args.src, args.folder, args.precision, args.judge_copy)
            print(f"wrote {os.path.join(args.folder, 'model.js')} ({args.precision})"
                  + (f" and {args.judge_copy}" if args.judge_copy else ""))
        else:
            print(describe(load(args.path)))
    except (FileNotFoundError, CheckpointError) as e:
        raise SystemExit(str(e))


if __name__ == "__main__":
    main()
