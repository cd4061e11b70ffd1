"""Tests for train.py (and checkpoint.py): batching, padding, learning, checkpoints, resume.

Training runs use the synthetic lines of tests/fixtures.py (32 training lines, batch 8: 4 steps
per epoch) and a tiny model on the CPU in fp32, so every run takes well under a second or two.
"""
import csv
import math
import os

import numpy as np
import pytest
import torch

import checkpoint as checkpoint_module
import dataset
import kernels
import model as model_module
import train
from dataset import dataset_nll
from fixtures import TINY_MODEL, write_data_dir
from model import HandwritingModel, ModelConfig, sequence_nll

STEPS_PER_EPOCH = 4  # 32 training lines / batch 8


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_data_dir(tmp_path_factory.mktemp("data"))


def run(data_dir, model_dir, task="rand_write", *extra):
    args = train.parse_args(["--task", task, "--data_dir", data_dir, "--model_dir", str(model_dir),
                             "--device", "cpu", "--precision", "fp32", "--learning_rate", "1e-2",
                             *TINY_MODEL, *extra])
    return train.train(args)


def same_weights(a, b):
    a, b = (m.state_dict() if hasattr(m, "state_dict") else m for m in (a, b))
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ----------------------------------------------------------------------------- learning

@pytest.mark.parametrize("task", ["rand_write", "synthesis"])
def test_training_learns(tmp_path, data_dir, task):
    # The lines are points on the unit circle (+ noise 0.1) advancing 0.8 rad per point, with a pen
    # lift every 8th point. A model that ignores the sequence can do no better than the entropy of
    # one point: ring log(2 pi) + radial noise 0.5 log(2 pi e 0.1^2) + lift H(1/8)
    # = 1.84 - 0.88 + 0.38 = 1.33 nats. After 8 epochs (32 steps) the validation NLL must be well
    # below that (it reaches about -0.9), i.e. the model has learnt the rhythm from the context.
    floor_iid = math.log(2 * math.pi) + 0.5 * math.log(2 * math.pi * math.e * 0.01) \
        - (1 / 8 * math.log(1 / 8) + 7 / 8 * math.log(7 / 8))
    _, progress = run(data_dir, tmp_path, task, "--num_epochs", "8")
    history = progress.history
    assert len(history) == 8
    first, last = history[0], history[-1]
    assert first["validation_nats_per_point"] > 2.0  # untrained: about N(0, 1) guesses
    assert last["validation_nats_per_point"] < floor_iid - 0.8
    assert last["train_nats_per_point"] < first["train_nats_per_point"] - 2.0
    assert all(np.isfinite(r["validation_nats_per_sequence"]) for r in history)


# ----------------------------------------------------------------------------- checkpoints

def test_checkpoint_round_trip(tmp_path, data_dir):
    model, progress = run(data_dir, tmp_path, "synthesis", "--num_epochs", "2")
    path = os.path.join(tmp_path, "synthesis_last.pt")
    checkpoint = checkpoint_module.load(path, "cpu")
    loaded = checkpoint_module.build_model(checkpoint)
    assert not loaded.training
    assert same_weights(loaded, model)
    data = dataset.load_data(os.path.join(data_dir, "train.npz"))
    assert checkpoint["config"] == {"task": "synthesis", "cell_size": 16, "num_clusters": 3, "K": 2,
                                    "alphabet_size": len(dataset.ALPHABET)}
    assert checkpoint["alphabet"] == data.alphabet == dataset.ALPHABET
    np.testing.assert_allclose(checkpoint["offset_mean"], [0.5, -0.2], rtol=1e-6)  # fixture values
    np.testing.assert_allclose(checkpoint["offset_std"], [2.0, 3.0], rtol=1e-6)
    assert checkpoint["epoch"] == 2 and checkpoint["step"] == 2 * STEPS_PER_EPOCH
    offsets, mask, text, text_mask = dataset.collate(data, [0, 5, 9])
    model.eval()
    with torch.no_grad():
        assert torch.equal(loaded(offsets, text, text_mask)[0], model(offsets, text, text_mask)[0])
    # best checkpoint: the epoch with the lowest validation NLL
    best = torch.load(os.path.join(tmp_path, "synthesis_best.pt"), map_location="cpu", weights_only=False)
    valid = [r["validation_nats_per_sequence"] for r in progress.history]
    assert best["epoch"] == 1 + int(np.argmin(valid))
    assert best["best_validation"] == min(valid)
    with pytest.raises(FileNotFoundError):
        checkpoint_module.load(os.path.join(tmp_path, "missing.pt"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_checkpoint_cuda_to_cpu_and_back(tmp_path, data_dir):
    model, _ = run(data_dir, tmp_path, "rand_write", "--num_epochs", "1", "--device", "cuda")
    path = os.path.join(tmp_path, "rand_write_last.pt")
    on_cpu = checkpoint_module.build_model(checkpoint_module.load(path, "cpu"), "cpu")
    assert all(p.device.type == "cpu" for p in on_cpu.parameters())
    assert same_weights(on_cpu, {k: v.cpu() for k, v in model.state_dict().items()})
    on_gpu = checkpoint_module.build_model(checkpoint_module.load(path, "cuda"), "cuda")
    assert all(p.device.type == "cuda" for p in on_gpu.parameters())


# ----------------------------------------------------------------------------- resume

@pytest.mark.parametrize("task, total, split", [
    ("rand_write", 6, 2),   # stop mid-epoch 1, resume inside it
    ("rand_write", 6, 3),   # stop mid-epoch 1, resume across the epoch boundary
    ("rand_write", 6, 4),   # stop exactly at the end of epoch 1 (before its validation)
    ("synthesis", 6, 3),
])
def test_resume_is_exact(tmp_path, data_dir, task, total, split):
    common = [task, "--num_epochs", "3", "--decay_rate", "0.5", "--save_every", "100"]
    straight, _ = run(data_dir, tmp_path / "straight", *common, "--max_steps", str(total))
    run(data_dir, tmp_path / "split", *common, "--max_steps", str(split))
    first = torch.load(tmp_path / "split" / f"{task}_last.pt", weights_only=False)
    assert first["step"] == split
    resumed, progress = run(data_dir, tmp_path / "split", *common, "--max_steps", str(total), "--resume")
    assert progress.step == total
    assert same_weights(straight, resumed)
    a = torch.load(tmp_path / "straight" / f"{task}_last.pt", weights_only=False)
    b = torch.load(tmp_path / "split" / f"{task}_last.pt", weights_only=False)
    assert a["optimizer"]["param_groups"][0]["lr"] == b["optimizer"]["param_groups"][0]["lr"]
    for k, state in a["optimizer"]["state"].items():
        for name, value in state.items():
            assert torch.equal(value, b["optimizer"]["state"][k][name])
    assert (a["epoch"], a["step_in_epoch"], a["step"]) == (b["epoch"], b["step_in_epoch"], b["step"])


def test_resume_after_a_crash_from_the_periodic_checkpoint(tmp_path, data_dir, monkeypatch):
    # the run crashes in step 4 (mid-epoch 1); its last checkpoint is the --save_every one of
    # step 2, and resuming from it ends with the weights of an uninterrupted run
    common = ["--num_epochs", "2", "--save_every", "2"]
    straight, _ = run(data_dir, tmp_path / "a", "rand_write", *common)
    real, calls = train.sequence_nll, []

    def crash_in_step_4(model, *args, **kwargs):
        calls.append(model.training)
        if sum(calls) == 4:
            raise KeyboardInterrupt
        return real(model, *args, **kwargs)

    monkeypatch.setattr(train, "sequence_nll", crash_in_step_4)
    with pytest.raises(KeyboardInterrupt):
        run(data_dir, tmp_path / "b", "rand_write", *common)
    monkeypatch.setattr(train, "sequence_nll", real)
    checkpoint = torch.load(tmp_path / "b" / "rand_write_last.pt", weights_only=False)
    assert (checkpoint["step"], checkpoint["step_in_epoch"], checkpoint["epoch"]) == (2, 2, 0)
    resumed, _ = run(data_dir, tmp_path / "b", "rand_write", *common, "--resume")
    assert same_weights(straight, resumed)


@pytest.mark.parametrize("split", [2, 4])
def test_resumed_history_equals_uninterrupted(tmp_path, data_dir, split):
    common = ["rand_write", "--num_epochs", "2"]
    _, straight = run(data_dir, tmp_path / "a", *common)
    run(data_dir, tmp_path / "b", *common, "--max_steps", str(split))
    _, resumed = run(data_dir, tmp_path / "b", *common, "--resume")
    for a, b in zip(straight.history, resumed.history):
        for key in ["train_nats_per_sequence", "train_nats_per_point", "validation_nats_per_point"]:
            assert b[key] == pytest.approx(a[key], rel=1e-6), key


def test_resume_alone_goes_on_with_the_runs_own_options(tmp_path, data_dir):
    """`--resume` with none of the run's options repeated ends where the uninterrupted run ends; an
    option given again replaces the run's; when to stop is each invocation's own."""
    base = ["--task", "rand_write", "--data_dir", data_dir, "--device", "cpu", "--precision", "fp32", *TINY_MODEL]
    recipe = ["--learning_rate", "3e-3", "--decay_rate", "0.5", "--tbptt", "20", "--num_epochs", "2"]
    straight, _ = train.train(train.parse_args([*base, "--model_dir", str(tmp_path / "a"), *recipe]))
    split = [*base, "--model_dir", str(tmp_path / "b")]
    train.train(train.parse_args([*split, *recipe, "--max_steps", "3"]))
    args = train.parse_args([*split, "--resume"])
    assert (args.learning_rate, args.decay_rate, args.tbptt, args.num_epochs) == (3e-3, 0.5, 20, 2)
    assert args.max_steps == 0
    resumed, _ = train.train(args)
    assert same_weights(straight, resumed)
    lowered = train.parse_args([*split, "--resume", "--learning_rate=1e-3"])
    assert (lowered.learning_rate, lowered.tbptt) == (1e-3, 20)
    fresh = train.parse_args([*split, "--model_dir", str(tmp_path / "c")])  # not --resume: the defaults
    assert (fresh.learning_rate, fresh.tbptt) == (8e-4, 0)


def test_resume_without_checkpoint(tmp_path, data_dir):
    with pytest.raises(SystemExit, match="no checkpoint"):
        run(data_dir, tmp_path, "rand_write", "--resume")


def test_resume_with_other_model_options(tmp_path, data_dir):
    run(data_dir, tmp_path, "rand_write", "--max_steps", "1")
    with pytest.raises(SystemExit, match="--resume") as e:
        run(data_dir, tmp_path, "rand_write", "--resume", "--cell_size", "8")
    assert "cell_size" in str(e.value)


def test_a_new_run_never_replaces_an_existing_one(tmp_path, data_dir):
    """Without --resume, a model_dir that holds a run is refused, and its files stay as they were."""
    run(data_dir, tmp_path, "rand_write", "--num_epochs", "1")
    before = {name: (tmp_path / name).read_bytes() for name in ["rand_write_last.pt", "rand_write_best.pt"]}
    with pytest.raises(SystemExit, match="already holds a rand_write run.*--resume"):
        run(data_dir, tmp_path, "rand_write", "--max_steps", "1")
    with pytest.raises(SystemExit, match="already holds"):
        run(data_dir, tmp_path, "rand_write", "--max_steps", "1", "--init_from", str(tmp_path / "rand_write_best.pt"))
    assert all((tmp_path / name).read_bytes() == content for name, content in before.items())
    run(data_dir, tmp_path, "synthesis", "--max_steps", "1")  # another task's files are another run


def test_init_from_loads_the_weights_with_a_fresh_optimizer_and_a_warm_up(tmp_path, data_dir):
    """--init_from an exported checkpoint: its weights, its epoch count and history go on, Adam starts
    afresh, and the first step's learning rate is 1/warmup of the schedule's."""
    source, _ = run(data_dir, tmp_path / "a", "rand_write", "--num_epochs", "1")
    exported = str(tmp_path / "exported.pt")
    checkpoint_module.export(str(tmp_path / "a" / "rand_write_best.pt"), exported)
    loaded, progress = run(data_dir, tmp_path / "b", "rand_write", "--init_from", exported,
                           "--max_steps", str(STEPS_PER_EPOCH))  # already there: no step taken
    assert same_weights(loaded, source)
    assert progress.epoch == 1 and len(progress.history) == 1 and progress.warmup_from == STEPS_PER_EPOCH

    start = {k: v.clone() for k, v in source.state_dict().items()}
    stepped, progress = run(data_dir, tmp_path / "c", "rand_write", "--init_from", exported, "--warmup_steps", "4",
                            "--max_steps", str(STEPS_PER_EPOCH + 1), "--decay_rate", "0.5")
    # Adam's first update is lr in size wherever the gradient is not tiny: lr = 1e-2 * 0.5^1 / 4
    move = max((stepped.state_dict()[k] - start[k]).abs().max().item() for k in start)
    assert move == pytest.approx(1e-2 * 0.5 / 4, rel=1e-3)
    last = torch.load(tmp_path / "c" / "rand_write_last.pt", weights_only=False)
    assert [s["step"].item() for s in last["optimizer"]["state"].values()] == [1] * len(start)
    assert last["step"] == STEPS_PER_EPOCH + 1 and last["history"] == progress.history
    # the warm-up goes on where it was after --resume (which takes no --init_from): step 2 of 4
    run(data_dir, tmp_path / "c", "rand_write", "--resume", "--max_steps", str(STEPS_PER_EPOCH + 2),
        "--decay_rate", "0.5")
    last = torch.load(tmp_path / "c" / "rand_write_last.pt", weights_only=False)
    assert last["optimizer"]["param_groups"][0]["lr"] == pytest.approx(1e-2 * 0.5 * 2 / 4, rel=1e-12)


def test_init_from_starts_its_own_best(tmp_path, data_dir):
    """The source's best validation NLL may be on other data (fine-tuning, re-made arrays): the new
    run's _best.pt is the best of its own epochs, so its first epoch always writes one."""
    run(data_dir, tmp_path / "a", "rand_write", "--num_epochs", "1")
    saved = torch.load(tmp_path / "a" / "rand_write_best.pt", weights_only=False)
    saved["best_validation"] = -1e9  # unbeatable on this data
    torch.save(saved, tmp_path / "source.pt")
    _, progress = run(data_dir, tmp_path / "b", "rand_write", "--init_from", str(tmp_path / "source.pt"),
                      "--num_epochs", "2")
    best = torch.load(tmp_path / "b" / "rand_write_best.pt", weights_only=False)
    assert best["epoch"] == 2 and progress.best_validation == progress.history[-1]["validation_nats_per_sequence"]


def test_init_from_a_checkpoint_of_older_code_logs_both_epochs(tmp_path, data_dir):
    """A history record written before a column existed (cpu_hours) goes on into the log."""
    run(data_dir, tmp_path / "a", "rand_write", "--num_epochs", "1")
    saved = torch.load(tmp_path / "a" / "rand_write_best.pt", weights_only=False)
    del saved["history"][0]["cpu_hours"]
    torch.save(saved, tmp_path / "older.pt")
    run(data_dir, tmp_path / "b", "rand_write", "--init_from", str(tmp_path / "older.pt"), "--num_epochs", "2")
    rows = read_csv(tmp_path / "b" / "rand_write_log.csv")
    assert [r["epoch"] for r in rows] == ["1", "2"] and rows[0]["cpu_hours"] == "" and float(rows[1]["cpu_hours"]) >= 0


def test_init_from_refuses_another_task_model_alphabet_or_normalisation(tmp_path, data_dir):
    run(data_dir, tmp_path / "a", "rand_write", "--max_steps", "1")
    source = str(tmp_path / "a" / "rand_write_last.pt")
    with pytest.raises(SystemExit, match="--init_from: .* holds a model with .*'task': 'rand_write'"):
        run(data_dir, tmp_path / "b", "synthesis", "--init_from", source)
    with pytest.raises(SystemExit, match="--init_from: .*'cell_size': 16"):
        run(data_dir, tmp_path / "c", "rand_write", "--init_from", source, "--cell_size", "8")
    for name, change in [("alphabet", lambda d: setattr(d, "alphabet", d.alphabet[::-1])),
                         ("normalises", lambda d: setattr(d, "offset_std", d.offset_std * 2))]:
        other = tmp_path / f"other_{name}"
        write_data_dir(other)
        for split in ["train.npz", "validation.npz"]:
            data = dataset.load_data(other / split)
            change(data)
            dataset.save_data(other / split, data)
        with pytest.raises(SystemExit, match=f"--init_from: .*{name}"):
            run(str(other), tmp_path / f"d_{name}", "rand_write", "--init_from", source)
    with pytest.raises(SystemExit, match="--init_from: no checkpoint at"):
        run(data_dir, tmp_path / "e", "rand_write", "--init_from", str(tmp_path / "missing.pt"))


def test_a_checkpoint_that_would_run_code_is_refused_not_run(tmp_path, data_dir):
    """Checkpoints are read with weights_only: a pickled call (here: creating a file) never runs."""
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    run(data_dir, tmp_path / "run", "rand_write", "--max_steps", "1")
    last = tmp_path / "run" / "rand_write_last.pt"
    saved = torch.load(last, weights_only=False)
    saved["args"] = Payload()
    torch.save(saved, last)
    with pytest.raises(checkpoint_module.CheckpointError, match="could run code"):
        checkpoint_module.load(last)
    with pytest.raises(SystemExit, match="--resume: .*could run code"):
        run(data_dir, tmp_path / "run", "rand_write", "--resume")
    with pytest.raises(SystemExit, match="could run code"):
        import generate
        generate.main(["--task", "rand_write", "--checkpoint", str(last), "--out", str(tmp_path / "x.png")])
    assert not marker.exists()


def test_a_damaged_checkpoint_is_a_sentence(tmp_path):
    complete = torch.save({"model": {}}, tmp_path / "whole.pt") or (tmp_path / "whole.pt").read_bytes()
    for name, content in [("empty.pt", b""), ("random.pt", os.urandom(1000)), ("half.pt", complete[:len(complete) // 2])]:
        (tmp_path / name).write_bytes(content)
        with pytest.raises(checkpoint_module.CheckpointError, match="not a readable checkpoint"):
            checkpoint_module.load(tmp_path / name)
    with pytest.raises(checkpoint_module.CheckpointError, match="not a train.py checkpoint"):
        checkpoint_module.load(tmp_path / "whole.pt")


# ----------------------------------------------------------------------------- learning rate, logs

def test_learning_rate_decays_per_epoch_and_logs(tmp_path, data_dir):
    _, progress = run(data_dir, tmp_path, "rand_write", "--num_epochs", "3", "--decay_rate", "0.5")
    rows = read_csv(tmp_path / "rand_write_log.csv")
    assert list(rows[0]) == ["epoch", "step", "learning_rate", "train_nats_per_sequence",
                             "train_nats_per_point", "validation_nats_per_sequence",
                             "validation_nats_per_point", "seconds", "cpu_hours"]
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert [int(r["step"]) for r in rows] == [4, 8, 12]
    # epoch e (counting from 1) trains at learning_rate * decay_rate ** (e - 1)
    np.testing.assert_allclose([float(r["learning_rate"]) for r in rows], [1e-2, 5e-3, 2.5e-3], rtol=1e-12)
    last = torch.load(tmp_path / "rand_write_last.pt", weights_only=False)
    assert last["optimizer"]["param_groups"][0]["lr"] == pytest.approx(2.5e-3, rel=1e-12)
    for r, h in zip(rows, progress.history):
        assert float(r["validation_nats_per_point"]) == pytest.approx(h["validation_nats_per_point"])
        assert np.isfinite(float(r["train_nats_per_point"]))
    with open(tmp_path / "rand_write_loss.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_learning_rate_reaches_adam(tmp_path, data_dir):
    # Adam's first update is lr * g / (|g| + eps) per coordinate: exactly lr in size wherever the
    # gradient is not tiny, so the largest move of any weight in step 1 is --learning_rate
    moves = []
    for lr in ["1e-2", "1e-3"]:
        torch.manual_seed(0)
        config = ModelConfig(task="rand_write", cell_size=16, num_clusters=3, K=2, alphabet_size=len(dataset.ALPHABET))
        start = HandwritingModel(config).state_dict()
        model, _ = run(data_dir, tmp_path / lr, "rand_write", "--max_steps", "1", "--learning_rate", lr)
        moves.append(max((model.state_dict()[k] - start[k]).abs().max().item() for k in start))
    assert moves[0] == pytest.approx(1e-2, rel=1e-3) and moves[1] == pytest.approx(1e-3, rel=1e-3)


# ----------------------------------------------------------------------------- non-finite steps

def nan_on_training_calls(monkeypatch, bad_calls):
    """Make train's sequence_nll return nan on the given (1-based) training calls."""
    real, calls = train.sequence_nll, []

    def patched(model, *args, **kwargs):
        nll, count, *state = real(model, *args, **kwargs)  # training asks for the state too
        if model.training:
            calls.append(1)
            if len(calls) in bad_calls:
                nll = nll * float("nan")
        return (nll, count, *state)

    monkeypatch.setattr(train, "sequence_nll", patched)
    return calls


def test_non_finite_step_is_skipped(tmp_path, data_dir, monkeypatch):
    clean, _ = run(data_dir, tmp_path / "clean", "rand_write", "--max_steps", "2")
    clean_opt = torch.load(tmp_path / "clean" / "rand_write_last.pt", weights_only=False)["optimizer"]
    nan_on_training_calls(monkeypatch, {3})
    skipped, progress = run(data_dir, tmp_path / "skip", "rand_write", "--max_steps", "3")
    assert progress.step == 3
    assert same_weights(clean, skipped)  # step 3 changed nothing ...
    opt = torch.load(tmp_path / "skip" / "rand_write_last.pt", weights_only=False)["optimizer"]
    for k, state in clean_opt["state"].items():  # ... not even Adam's moments or step count
        for name, value in state.items():
            assert torch.equal(value, opt["state"][k][name])
    # ... and training goes on after it, with the epoch's figures from the good steps only
    nan_on_training_calls(monkeypatch, {3})
    model, progress = run(data_dir, tmp_path / "goes_on", "rand_write", "--num_epochs", "1")
    assert not same_weights(model, skipped)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert np.isfinite(progress.history[0]["train_nats_per_point"])


def test_ten_non_finite_steps_stop_training(tmp_path, data_dir, monkeypatch):
    clean, _ = run(data_dir, tmp_path / "clean", "rand_write", "--max_steps", "2")
    calls = nan_on_training_calls(monkeypatch, set(range(3, 100)))
    with pytest.raises(SystemExit, match="10 non-finite steps"):
        run(data_dir, tmp_path / "bad", "rand_write", "--num_epochs", "10", "--save_every", "2")
    assert len(calls) == 12  # 2 good steps, then exactly 10 bad ones
    loaded = checkpoint_module.build_model(checkpoint_module.load(tmp_path / "bad" / "rand_write_last.pt"))
    assert same_weights(loaded, clean)  # the weights after the last good step
    assert all(torch.isfinite(p).all() for p in loaded.parameters())


def test_splits_with_different_alphabets_are_refused_before_training(tmp_path):
    data_dir = write_data_dir(tmp_path / "data")
    validation = dataset.load_data(tmp_path / "data" / "validation.npz")
    validation.alphabet = validation.alphabet + "é"
    dataset.save_data(tmp_path / "data" / "validation.npz", validation)
    with pytest.raises(SystemExit, match="different alphabets"):
        run(data_dir, tmp_path / "run", "rand_write")
    assert not (tmp_path / "run").exists()


def test_a_diverging_run_does_not_overwrite_the_last_good_checkpoint(tmp_path, data_dir, monkeypatch, capsys):
    """Finite but exploding losses (as with a far too high learning rate) keep _last.pt at the last
    weights saved before them; the run can be resumed from there."""
    real = train.sequence_nll
    calls = []

    def exploding(model, *args, **kwargs):
        nll, count, *state = real(model, *args, **kwargs)
        if model.training:
            calls.append(1)
            if len(calls) > 4:
                nll = nll * 1000 + 1e4 * count  # finite, and far worse than before
        return (nll, count, *state)

    monkeypatch.setattr(train, "sequence_nll", exploding)
    run(data_dir, tmp_path, "rand_write", "--max_steps", "8", "--save_every", "2")
    assert torch.load(tmp_path / "rand_write_last.pt", weights_only=False)["step"] == 4
    assert "training is diverging" in "".join(capsys.readouterr())
    monkeypatch.setattr(train, "sequence_nll", real)
    _, progress = run(data_dir, tmp_path, "rand_write", "--max_steps", "6", "--resume")
    assert progress.step == 6


def test_nine_non_finite_steps_do_not_stop_training(tmp_path, data_dir, monkeypatch):
    nan_on_training_calls(monkeypatch, set(range(3, 12)) | set(range(13, 22)))
    _, progress = run(data_dir, tmp_path, "rand_write", "--num_epochs", "6")
    assert progress.epoch == 6


def test_precision_flags_choose_the_autocast_dtype():
    """auto: bf16 exactly where this CPU has bf16 matrix products; fp32 and bf16 as asked, and bf16
    refused with a sentence (not oneDNN's traceback) where the CPU lacks it."""
    supported = torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    assert kernels.bf16_supported("cpu") == supported
    for precision, expected in [("auto", supported), ("fp32", False)] + ([("bf16", True)] if supported else []):
        with kernels.autocast("cpu", precision):
            assert torch.is_autocast_enabled("cpu") == expected, precision
            if expected:
                assert torch.get_autocast_dtype("cpu") == torch.bfloat16


def test_bf16_is_refused_with_a_sentence_where_the_cpu_lacks_it(tmp_path, data_dir, monkeypatch):
    """On a CPU without bf16 (AVX2 only), --precision bf16 stops before training, naming the fix."""
    monkeypatch.setattr(kernels, "bf16_supported", lambda device: False)
    with pytest.raises(SystemExit, match="no bf16 support.*--precision fp32"):
        train.train(train.parse_args(["--data_dir", data_dir, "--model_dir", str(tmp_path), "--precision", "bf16",
                                      "--max_steps", "1", *TINY_MODEL]))
    assert not os.path.exists(tmp_path / "rand_write_last.pt")


# ----------------------------------------------------------------------------- data parallel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_two_processes_make_the_update_of_one_over_the_same_global_batches(tmp_path, data_dir):
    """torchrun with two gloo processes: after 3 steps (crossing an epoch boundary, where rank 0
    validates alone), the weights equal a single process's Adam steps on the union of the two
    ranks' batches, the loss normalised by all their points; rank 0 alone wrote the files."""
    import subprocess
    import sys

    args = ["--task", "synthesis", "--data_dir", data_dir, "--model_dir", str(tmp_path), "--precision", "fp32",
            "--learning_rate", "1e-2", "--decay_rate", "0.5", "--max_steps", "3", "--threads", "1", *TINY_MODEL]
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             "train.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=240,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("epoch 1: train") == 1  # one rank logs
    saved = torch.load(tmp_path / "synthesis_last.pt", weights_only=False)
    assert saved["step"] == 3 and saved["ranks"] == 2 and saved["epoch"] == 1

    # the same three updates, by hand, in one process
    options = train.parse_args(args)
    data = dataset.load_data(os.path.join(data_dir, "train.npz"))
    torch.manual_seed(options.seed)
    model = HandwritingModel(ModelConfig(task="synthesis", cell_size=16, num_clusters=3, K=2,
                                         alphabet_size=len(data.alphabet)))
    optimizer = torch.optim.Adam(model.parameters())
    lengths = [len(x) for x in data.offsets]
    for epoch, steps in [(0, [0, 1]), (1, [0])]:  # 4 batches of 8 lines per epoch: 2 steps of 2 ranks
        batches = dataset.make_batches(lengths, 8, np.random.default_rng([options.seed, epoch]), options.bucket_pool)
        for step in steps:
            union = np.concatenate(batches[2 * step:2 * step + 2])
            offsets, mask, text, text_mask = dataset.collate(data, union, options.timesteps + 1)
            nll, count = sequence_nll(model, offsets, mask, text, text_mask)
            optimizer.zero_grad()
            (nll / count).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            for group in optimizer.param_groups:
                group["lr"] = 1e-2 * 0.5 ** epoch
            optimizer.step()
    # Adam divides by sqrt(v), which magnifies the rounding of another summation order (two ranks'
    # halves, another CPU's kernels) where a gradient is near zero: 1e-4 is 1% of one step here
    for name, value in model.state_dict().items():
        torch.testing.assert_close(saved["model"][name], value, rtol=1e-4, atol=1e-4)


def test_resuming_with_another_number_of_processes_is_refused(tmp_path, data_dir):
    run(data_dir, tmp_path, "rand_write", "--max_steps", "1")
    saved = torch.load(tmp_path / "rand_write_last.pt", weights_only=False)
    saved["ranks"] = 2
    torch.save(saved, tmp_path / "rand_write_last.pt")
    with pytest.raises(SystemExit, match="trained by 2 process.*this run has 1.*--init_from"):
        run(data_dir, tmp_path, "rand_write", "--resume")


def test_a_checkpoint_that_cannot_be_written_stops_with_a_sentence_and_keeps_the_old_file(tmp_path, data_dir, monkeypatch):
    """A full disk (torch.save says "unexpected pos") stops training with a sentence, not a traceback."""
    run(data_dir, tmp_path, "rand_write", "--max_steps", "1")
    before = (tmp_path / "rand_write_last.pt").read_bytes()

    def full_disk(obj, f, *args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 1984 vs 1872")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(SystemExit, match="could not write .*rand_write_last.pt .*unexpected pos.*disk has room"):
        run(data_dir, tmp_path, "rand_write", "--max_steps", "2", "--resume")
    assert (tmp_path / "rand_write_last.pt").read_bytes() == before
    assert [f for f in os.listdir(tmp_path) if f.startswith(".tmp-")] == []


def test_save_every_zero_checkpoints_only_at_epoch_ends_and_at_the_stop(tmp_path, data_dir, monkeypatch):
    saved_at = []
    real_save_last = train.Run.save_last
    def recording(self, model, optimizer, progress, data):
        saved_at.append(progress.step)
        return real_save_last(self, model, optimizer, progress, data)
    monkeypatch.setattr(train.Run, "save_last", recording)
    _, progress = run(data_dir, tmp_path, "rand_write", "--save_every", "0", "--max_steps", "6")
    assert progress.step == 6
    assert saved_at == [STEPS_PER_EPOCH, 6]  # end of epoch 1, then where --max_steps stopped it
    with pytest.raises(SystemExit):
        train.parse_args(["--save_every", "-1"])


# ----------------------------------------------------------------------------- learning curves and budgets

def test_curve_logs_the_nll_of_the_same_lines_against_points_seen(tmp_path, data_dir):
    run(data_dir, tmp_path, "synthesis", "--max_steps", "6", "--curve_every", "3", "--curve_lines", "5")
    rows = read_csv(tmp_path / "synthesis_curve.csv")
    assert [int(r["step"]) for r in rows] == [3, 6]
    # points seen: the real predicted points of the batches trained, each line cut to --timesteps
    data = dataset.load_data(os.path.join(data_dir, "train.npz"))
    lengths = [len(x) for x in data.offsets]
    epochs = [dataset.make_batches(lengths, 8, np.random.default_rng([0, e]), 50) for e in range(2)]
    batches = epochs[0] + epochs[1][:2]
    points = np.cumsum([sum(min(lengths[i] - 1, 800) for i in b) for b in batches])
    assert [int(r["points"]) for r in rows] == [points[2], points[5]]
    # the last row is the final weights' NLL of 5 validation lines, the same 5 as dataset.subset's
    saved = torch.load(tmp_path / "synthesis_last.pt", weights_only=False)
    model = HandwritingModel(ModelConfig(**saved["config"]))
    model.load_state_dict(saved["model"])
    lines = dataset.subset(dataset.load_data(os.path.join(data_dir, "validation.npz")), 5)
    per_line, per_point = dataset_nll(model, lines, 8)
    assert float(rows[-1]["validation_nats_per_sequence"]) == pytest.approx(per_line, abs=1e-3)
    assert float(rows[-1]["validation_nats_per_point"]) == pytest.approx(per_point, abs=1e-5)
    assert 0 < float(rows[0]["cpu_seconds"]) <= float(rows[1]["cpu_seconds"])


def test_a_cpu_budget_stops_the_run_where_the_processes_meet(tmp_path, data_dir):
    budget_hours = 1e-6  # 3.6 ms: passed by the first step
    run(data_dir, tmp_path, "rand_write", "--max_cpu_hours", str(budget_hours), "--save_every", "3",
        "--num_epochs", "5")
    saved = torch.load(tmp_path / "rand_write_last.pt", weights_only=False)
    assert saved["step"] == 3 and saved["epoch"] == 0  # the first point where it is checked
    assert saved["cpu_seconds"] >= budget_hours * 3600


def test_a_budget_passed_at_an_epoch_end_stops_after_validating(tmp_path, data_dir):
    run(data_dir, tmp_path, "rand_write", "--max_cpu_hours", "1e-6", "--save_every", "0", "--num_epochs", "5")
    saved = torch.load(tmp_path / "rand_write_last.pt", weights_only=False)
    assert saved["epoch"] == 1 and saved["step"] == STEPS_PER_EPOCH and len(saved["history"]) == 1


def test_decay_per_step_spreads_each_epochs_decay_over_its_steps():
    args = train.parse_args(["--learning_rate", "1e-3", "--decay_rate", "0.5", "--decay_per_step"])
    progress = train.Progress(epoch=2, step_in_epoch=1, step=9)
    # 2 epochs and 1 of 4 steps: 1e-3 * 0.5 ** 2.25
    assert train.learning_rate(args, 2, progress, 4) == pytest.approx(1e-3 * 0.5 ** 2.25)
    per_epoch = train.parse_args(["--learning_rate", "1e-3", "--decay_rate", "0.5"])
    assert train.learning_rate(per_epoch, 2, progress, 4) == pytest.approx(1e-3 * 0.25)
    warming = train.Progress(epoch=0, step_in_epoch=2, step=2, warmup_steps=10)
    assert train.learning_rate(args, 0, warming, 4) == pytest.approx(1e-3 * 0.5 ** 0.5 * 3 / 10)


def test_negative_budget_or_curve_interval_is_refused(capsys):
    for flag in ["--max_cpu_hours", "--curve_every"]:
        with pytest.raises(SystemExit):
            train.parse_args([flag, "-1"])
        assert f"{flag} must be 0 or more" in capsys.readouterr().err


# ----------------------------------------------------------------------------- truncated backpropagation

@pytest.mark.parametrize("task", ["rand_write", "synthesis"])
def test_windows_with_the_state_carried_add_up_to_the_whole_lines_nll(data_dir, task):
    """Reading a batch window by window, each from the state the last one left, is the same
    computation as reading it whole: the windows' NLLs sum to the whole batch's."""
    train_data = dataset.load_data(os.path.join(data_dir, "train.npz"))
    offsets, mask, text, text_mask = dataset.collate(train_data, range(8))
    torch.manual_seed(0)
    config = ModelConfig(task=task, cell_size=16, num_clusters=3, K=2, alphabet_size=len(dataset.ALPHABET))
    model = HandwritingModel(config)
    whole, whole_count = sequence_nll(model, offsets, mask, text, text_mask)
    total, count, state = 0.0, 0.0, None
    for start, stop in dataset.windows(offsets.shape[1] - 1, 7):
        nll, points, state = sequence_nll(model, offsets[:, start:stop + 1], mask[:, start:stop + 1], text,
                                          text_mask, state, return_state=True)
        total, count = total + nll, count + points
    assert count == whole_count and total.item() == pytest.approx(whole.item(), rel=1e-5)


@pytest.mark.parametrize("task", ["rand_write", "synthesis"])
def test_tbptt_steps_once_per_window_from_the_state_the_last_window_left(tmp_path, data_dir, task):
    """--tbptt cutting the first batch in two: the first step is a plain Adam step on the first
    window from the lines' start, the second one on the second window from the state that the
    first window's forward pass left (computed before the first step, cut from the graph)."""
    train_data = dataset.load_data(os.path.join(data_dir, "train.npz"))
    first_batch = dataset.make_batches([len(x) for x in train_data.offsets], 8, np.random.default_rng([0, 0]))[0]
    offsets, mask, text, text_mask = dataset.collate(train_data, first_batch)
    predictions = offsets.shape[1] - 1
    tbptt = -(-predictions // 2)  # two windows: predictions // 2 and the rest

    torch.manual_seed(0)
    config = ModelConfig(task=task, cell_size=16, num_clusters=3, K=2, alphabet_size=len(dataset.ALPHABET))
    expected = kernels.FastHandwritingModel(config)  # the model train.py trains
    adam = torch.optim.Adam(expected.parameters(), lr=1e-2)
    state = None
    for start, stop in [(0, predictions // 2), (predictions // 2, predictions)]:
        inputs, targets, target_mask = offsets[:, start:stop], offsets[:, start + 1:stop + 1], mask[:, start + 1:stop + 1]
        y, state, _ = expected(inputs, text, text_mask, state=state)
        nll = model_module.point_nll(model_module.split_mixture(y), targets)
        adam.zero_grad()
        ((nll * target_mask).sum() / target_mask.sum()).backward()
        torch.nn.utils.clip_grad_norm_(expected.parameters(), 10.0)
        adam.step()
        state = state.detach()

    trained, progress = run(data_dir, tmp_path / "tbptt", task, "--tbptt", str(tbptt), "--max_steps", "2")
    assert progress.step == 2 and progress.step_in_epoch == 1 and progress.points == mask[:, 1:].sum().item()
    for name, value in expected.state_dict().items():
        torch.testing.assert_close(trained.state_dict()[name], value, rtol=1e-5, atol=1e-6)
    # without --tbptt the same batch is one step through all of it
    _, progress = run(data_dir, tmp_path / "whole", task, "--max_steps", "1")
    assert progress.step == 1 and progress.step_in_epoch == 1


def test_tbptt_checkpoints_when_a_batchs_steps_pass_a_multiple_of_save_every(tmp_path, data_dir):
    """With several steps a batch, the step count jumps past multiples of --save_every: a save is
    due at the end of the batch that passes one, and the run resumes exactly from there."""
    train_data = dataset.load_data(os.path.join(data_dir, "train.npz"))
    batches = dataset.make_batches([len(x) for x in train_data.offsets], 8, np.random.default_rng([0, 0]))
    windows = [len(dataset.windows(len(dataset.collate(train_data, b)[0][0]) - 1, 10)) for b in batches]
    uninterrupted, progress = run(data_dir, tmp_path / "a", "rand_write", "--tbptt", "10", "--num_epochs", "1")
    assert progress.step == sum(windows) and progress.epoch == 1
    # stop at the end of the first batch whose steps reach 5, as a crash after the save would
    _, stopped = run(data_dir, tmp_path / "b", "rand_write", "--tbptt", "10", "--save_every", "5",
                     "--max_steps", "5")
    after = next(k + 1 for k in range(len(windows)) if sum(windows[:k + 1]) >= 5)
    assert stopped.step_in_epoch == after and stopped.step == sum(windows[:after])
    resumed, _ = run(data_dir, tmp_path / "b", "rand_write", "--tbptt", "10", "--resume", "--num_epochs", "1")
    assert same_weights(resumed, uninterrupted)


def test_tbptt_is_refused_when_negative(capsys):
    with pytest.raises(SystemExit):
        train.parse_args(["--tbptt", "-1"])
    assert "--tbptt must be 0 or more" in capsys.readouterr().err


# ----------------------------------------------------------------------------- weight noise

def test_weight_noise_has_the_asked_spread_and_comes_off_exactly():
    params = [torch.randn(300, 400), torch.randn(1000)]
    clean = [p.clone() for p in params]
    with train.noisy_weights(params, 0.01, (0, 5, 0)):
        noise = torch.cat([(p - c).flatten() for p, c in zip(params, clean)])
        noisy = [p.clone() for p in params]
    assert noise.std().item() == pytest.approx(0.01, rel=0.02)
    assert abs(noise.mean().item()) < 1e-4
    assert all(torch.equal(p, c) for p, c in zip(params, clean))  # copied back, bit for bit
    with train.noisy_weights(params, 0.01, (0, 5, 0)):
        assert all(torch.equal(p, n) for p, n in zip(params, noisy))  # the same seed, the same draw
    with train.noisy_weights(params, 0.01, (0, 6, 0)):
        assert not torch.equal(params[0], noisy[0])  # the next step, a fresh draw
    with pytest.raises(KeyboardInterrupt), train.noisy_weights(params, 0.01, (0, 7, 0)):
        raise KeyboardInterrupt
    assert all(torch.equal(p, c) for p, c in zip(params, clean))
    with train.noisy_weights(params, 0.0, (0, 5, 0)):
        assert all(torch.equal(p, c) for p, c in zip(params, clean))


def test_weight_noise_steps_the_clean_weights_by_the_gradient_at_the_noisy_ones(data_dir):
    args = train.parse_args(["--task", "synthesis", "--device", "cpu", "--precision", "fp32",
                             "--grad_clip", "0", "--weight_noise", "0.05", *TINY_MODEL])
    model = HandwritingModel(ModelConfig(task="synthesis", cell_size=16, num_clusters=3, K=2,
                                         alphabet_size=len(dataset.ALPHABET)))
    data = dataset.load_data(os.path.join(data_dir, "train.npz"))
    batch = dataset.collate(data, list(range(8)))
    clean = {k: v.clone() for k, v in model.state_dict().items()}
    seen = {}
    model.register_forward_pre_hook(lambda m, _: seen.update({k: v.clone() for k, v in m.state_dict().items()}))
    train.train_step(args, model, torch.optim.SGD(model.parameters(), lr=1.0), batch, train.Ranks(), None, 3)
    # the reference: the plain gradient of the mean NLL per point at the weights the forward saw
    reference = HandwritingModel(model.config)
    reference.load_state_dict(seen)
    nll, count = sequence_nll(reference, *batch)
    (nll / count).backward()
    moved = sum(not torch.equal(seen[k], clean[k]) for k in clean)
    assert moved == len(clean)
    for name, p in reference.named_parameters():
        torch.testing.assert_close(model.state_dict()[name], clean[name] - p.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("option, value", [("weight_noise", 0.02), ("distort", 0.1)])
def test_a_regularised_run_differs_and_resumes_exactly(tmp_path, data_dir, option, value):
    """Weight noise and distorted lines are drawn from the run's seed and its place in training:
    they change the weights, and a resumed run draws the same."""
    common = ["synthesis", "--num_epochs", "2", f"--{option}", str(value)]
    straight, _ = run(data_dir, tmp_path / "a", *common)
    plain, _ = run(data_dir, tmp_path / "p", "synthesis", "--num_epochs", "2")
    assert not same_weights(straight, plain)
    run(data_dir, tmp_path / "b", *common, "--max_steps", "3")
    args = train.parse_args(["--task", "synthesis", "--data_dir", data_dir, "--model_dir", str(tmp_path / "b"),
                             "--device", "cpu", "--precision", "fp32", "--resume"])
    assert getattr(args, option) == value  # the run's own option
    resumed, _ = train.train(args)
    assert same_weights(straight, resumed)


def test_snapshots_keep_the_weights_of_every_save_and_average_into_their_mean(tmp_path, data_dir, capsys):
    # 4 steps an epoch, saved every 2: snapshots after steps 2, 4, 6, 8 (epoch ends coincide)
    model, _ = run(data_dir, tmp_path, "rand_write", "--num_epochs", "2", "--save_every", "2", "--snapshots")
    assert "diverging" not in capsys.readouterr().out
    folder = tmp_path / "snapshots"
    names = sorted(os.listdir(folder), key=lambda n: int(n[len("rand_write_step"):-3]))
    assert names == [f"rand_write_step{s}.pt" for s in (2, 4, 6, 8)]
    snapshots = [checkpoint_module.load(str(folder / name)) for name in names]
    assert [s["step"] for s in snapshots] == [2, 4, 6, 8]
    assert all("optimizer" not in s for s in snapshots)
    last = checkpoint_module.load(str(tmp_path / "rand_write_last.pt"))
    # the epoch's end, just after a save, is saved too: the last checkpoint holds both epochs
    assert last["epoch"] == 2 and len(last["history"]) == 2
    assert same_weights(snapshots[-1]["model"], last["model"]) and same_weights(snapshots[-1]["model"], model)
    assert not same_weights(snapshots[0]["model"], snapshots[1]["model"])
    checkpoint_module.average([str(folder / n) for n in names[2:]], str(tmp_path / "mean.pt"))
    mean = checkpoint_module.load(str(tmp_path / "mean.pt"))["model"]
    for key, tensor in mean.items():
        torch.testing.assert_close(tensor, (snapshots[2]["model"][key] + snapshots[3]["model"][key]) / 2)


# A training loop in a fresh process: full-size rand_write model, 8 lines of 600 points, so that its
# gate buffers (8 x 600 x 1600 floats, 31 MB and up) are the large blocks glibc maps and unmaps.
# Prints, per step, the page faults it took and the resident memory after it.
FAULT_PROBE = """
import resource, sys, torch
import model, train
torch.set_num_threads(1)
kept = train.keep_freed_memory() if sys.argv[1] == "keep" else None
torch.manual_seed(0)
# a quarter of the real model's cells and four times its lines: gate buffers as large, less work
net = model.HandwritingModel(model.ModelConfig(task="rand_write", cell_size=100))
optimizer = torch.optim.Adam(net.parameters())
offsets = torch.randn(32, 601, 3)
offsets[..., 0] = (offsets[..., 0] > 1).float()
mask = torch.ones(32, 601)
for step in range(9):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    nats, points = model.sequence_nll(net, offsets, mask)
    optimizer.zero_grad()
    (nats / points).backward()
    optimizer.step()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    resident = int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize()
    print(kept, faults, resident)
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="counts page faults the Linux way")
def test_kept_memory_stops_the_page_faults_of_each_step_and_stays_bounded():
    """With glibc's default policy every step faults its large buffers in again; after
    keep_freed_memory() the later steps reuse the memory the first ones freed (almost no faults),
    and the resident size stops growing."""
    import resource
    import subprocess
    import sys

    def probe(policy):
        result = subprocess.run([sys.executable, "-c", FAULT_PROBE, policy], cwd=ROOT, capture_output=True,
                                text=True, timeout=240, env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert result.returncode == 0, result.stderr[-3000:]
        rows = [line.split() for line in result.stdout.splitlines()]
        return rows[0][0], [int(r[1]) for r in rows], [int(r[2]) for r in rows]

    kept, kept_faults, kept_resident = probe("keep")
    if kept != "True":
        pytest.skip("this C library has no mallopt (not glibc): keep_freed_memory() changes nothing")
    _, default_faults, _ = probe("default")
    page_faults_of_one_gate_buffer = 32 * 600 * 400 * 4 // 4096
    assert min(default_faults[2:]) > page_faults_of_one_gate_buffer, default_faults  # the cost removed
    # the heap settles within the first steps, and now and then a later step's buffers do not fit
    # its holes and fault in a part anew (seen: one step in five, on a loaded machine), hence medians
    median = lambda values: sorted(values)[len(values) // 2]
    assert median(kept_faults[2:]) < median(default_faults[2:]) / 10, (kept_faults, default_faults)
    first_step = kept_faults[0] * resource.getpagesize()
    # after the first steps the resident size grows by less than half of what the first step faulted in
    assert kept_resident[-1] - kept_resident[3] < first_step / 2, kept_resident


# ----------------------------------------------------------------------------- lines that follow each other

def test_joined_lines_train_differently_and_resume_exactly_with_tbptt_distortion_and_snapshots(tmp_path, data_dir):
    common = ["synthesis", "--num_epochs", "2", "--join_lines", "0.5", "--timesteps", "120", "--tbptt", "40",
              "--distort", "0.1", "--save_every", "3", "--snapshots"]
    straight, _ = run(data_dir, tmp_path / "a", *common)
    single, _ = run(data_dir, tmp_path / "p", *[c for c in common if c not in ("--join_lines", "0.5")])
    assert not same_weights(straight, single)
    run(data_dir, tmp_path / "b", *common, "--max_steps", "5")
    args = train.parse_args(["--task", "synthesis", "--data_dir", data_dir, "--model_dir", str(tmp_path / "b"),
                             "--device", "cpu", "--precision", "fp32", "--resume"])
    assert args.join_lines == 0.5  # the run's own option
    resumed, _ = train.train(args)
    assert same_weights(straight, resumed)
    kept = os.listdir(tmp_path / "a" / "snapshots")
    assert kept and set(kept) <= set(os.listdir(tmp_path / "b" / "snapshots"))  # b also kept its stop's
    for name in kept:
        a, b = (checkpoint_module.load(tmp_path / run_dir / "snapshots" / name)["model"] for run_dir in "ab")
        assert same_weights(a, b), name


# ----------------------------------------------------------------------------- one run per model dir

import signal  # noqa: E402 (this section's own)
import time  # noqa: E402

import utils  # noqa: E402


def test_a_second_run_in_a_model_dir_in_use_stops_before_writing_anything(tmp_path, data_dir):
    """The lock is taken before the "already holds a run" check, so two runs started at the same
    moment cannot both pass it: the second stops with a sentence naming the first's process."""
    tmp_path.mkdir(exist_ok=True)
    held = utils.hold_lock(tmp_path / ".rand_write.lock")  # a run in progress, as far as the lock says
    try:
        with pytest.raises(SystemExit, match=f"holds a rand_write run in progress \\(process {os.getpid()}"):
            run(data_dir, tmp_path, "rand_write", "--max_steps", "1")
        assert not (tmp_path / "rand_write_last.pt").exists()
        _, progress = run(data_dir, tmp_path, "synthesis", "--max_steps", "1")  # another task's run may go on
        assert progress.step == 1
    finally:
        held.close()
    _, progress = run(data_dir, tmp_path, "rand_write", "--max_steps", "1")  # the lock let go: it runs
    assert progress.step == 1


def test_a_killed_runs_lock_is_taken_over_and_its_temporaries_removed(tmp_path, data_dir):
    """A run killed mid-save leaves its lock file (with its pid) and a .tmp-<pid>-* file: the next
    run takes the lock and removes the dead writer's temporaries, a live writer's stay."""
    snapshots = tmp_path / "snapshots"
    snapshots.mkdir(parents=True)
    child = os.fork()
    if child == 0:  # the doomed run: takes the lock, starts a save, and is killed
        try:
            utils.hold_lock(tmp_path / ".rand_write.lock")
            with utils.atomic_path(snapshots / "rand_write_step5.pt") as tmp:
                open(tmp, "w").write("half")
                os.kill(os.getpid(), signal.SIGKILL)
        finally:
            os._exit(1)  # never back into pytest
    os.waitpid(child, 0)
    (tmp_path / f".tmp-{child}-abc.pt").write_text("half")
    live = tmp_path / f".tmp-{os.getpid()}-def.pt"  # this process is writing it
    live.write_text("being written")
    old_style, fresh_old_style = tmp_path / ".tmp-ghi.pt", tmp_path / ".tmp-jkl.pt"
    old_style.write_text("old")
    fresh_old_style.write_text("new")
    os.utime(old_style, (time.time() - 7200, time.time() - 7200))
    assert (tmp_path / ".rand_write.lock").read_text().strip() == str(child)
    assert [name for name in os.listdir(snapshots) if name.startswith(f".tmp-{child}-")]
    _, progress = run(data_dir, tmp_path, "rand_write", "--max_steps", "1")
    assert progress.step == 1
    left = sorted(name for folder in (tmp_path, snapshots) for name in os.listdir(folder) if name.startswith(".tmp-"))
    assert left == sorted([live.name, fresh_old_style.name])
