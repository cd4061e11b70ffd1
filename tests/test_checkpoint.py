"""checkpoint.py's promises: a checkpoint is validated as a whole when it is loaded, one sentence
otherwise; export and average never write over one of their own sources or over a file they did
not make, count each source once, and say so in a sentence when the disk is full."""
import os
import signal

import numpy as np
import pytest
import torch

import checkpoint
import generate
from fixtures import make_handwriting_data
from model import HandwritingModel, ModelConfig


def make_checkpoint(path, task="synthesis", training=True, step=5, seed=0):
    """A tiny untrained checkpoint as train.py writes it (with the optimizer when `training`)."""
    data = make_handwriting_data(2)
    torch.manual_seed(seed)
    model = HandwritingModel(ModelConfig(task=task, cell_size=8, num_clusters=2, K=2,
                                         alphabet_size=len(data.alphabet)))
    progress = {"epoch": 1, "step": step, "history": [
        {"epoch": 1, "step": step, "validation_nats_per_sequence": -10.0, "validation_nats_per_point": -1.0}]}
    optimizer = torch.optim.Adam(model.parameters()) if training else None
    checkpoint.save(str(path), model, data, progress, None, optimizer)
    return str(path)


def edited(tmp_path, change, name="edited.pt"):
    """A checkpoint changed by hand but still loadable by torch: `change` edits its dict."""
    saved = torch.load(make_checkpoint(tmp_path / "source.pt"), weights_only=False)
    change(saved)
    torch.save(saved, tmp_path / name)
    return str(tmp_path / name)


def set_key(key, value):
    return lambda saved: saved.__setitem__(key, value)


def set_config(key, value):
    return lambda saved: saved["config"].__setitem__(key, value)


def set_weight(name, value):
    return lambda saved: saved["model"].__setitem__(name, value(saved["model"][name]))


# ----------------------------------------------------------------------------- validation on load

@pytest.mark.parametrize("change, reason", [
    (set_key("config", "synthesis"), "its config must be a dict"),
    (set_config("cell_size", -8), "config cell_size must be a whole number >= 1, not -8"),
    (set_config("cell_size", 8.0), "config cell_size must be a whole number >= 1, not 8.0"),
    (set_config("layers", 3), "config has keys this code does not know: layers"),
    (lambda saved: saved["config"].pop("K"), "config lacks K"),
    (set_config("task", "poetry"), "config task must be 'rand_write' or 'synthesis', not 'poetry'"),
    (set_weight("output_layer.bias", lambda t: t[:-1]), "output_layer.bias has shape (12,), the config's model (13,)"),
    (set_key("model", {}), "holds no weights for layer1_input.weight, layer1_input.bias"),
    (lambda saved: saved["model"].pop("window_layer.weight"), "holds no weights for window_layer.weight"),
    (lambda saved: saved["model"].__setitem__("extra.weight", torch.zeros(2)), "weights the model lacks: extra.weight"),
    (set_weight("layer2.weight_hh_l0", lambda t: t * float("nan")), "layer2.weight_hh_l0 holds NaN or infinite"),
    (set_weight("layer2.weight_hh_l0", lambda t: t.long()), "layer2.weight_hh_l0 is not floating point"),
    (set_key("alphabet", 84), "its alphabet must be a non-empty text"),
    (set_key("alphabet", ""), "its alphabet must be a non-empty text"),
    (lambda saved: saved.__setitem__("alphabet", saved["alphabet"][:-1] + saved["alphabet"][0]),
     "its alphabet repeats"),
    (lambda saved: saved.__setitem__("alphabet", saved["alphabet"][:-1]), "characters, its config reads"),
    (set_key("offset_std", [0.0, 3.0]), "offset_std must be two finite numbers, the std > 0"),
    (set_key("offset_std", "big"), "offset_std must be two finite numbers"),
    (set_key("offset_mean", [float("inf"), 0.0]), "offset_mean must be two finite numbers"),
    (set_key("offset_mean", [0.0, 0.0, 0.0]), "offset_mean must be two finite numbers"),
    (set_key("history", "none"), "its history must be a list of records"),
])
def test_a_hand_edited_checkpoint_is_refused_in_one_sentence_everywhere(tmp_path, change, reason):
    path = edited(tmp_path, change)
    with pytest.raises(checkpoint.CheckpointError) as error:
        checkpoint.load(path)
    assert reason in str(error.value) and str(error.value).startswith(f"{path} cannot be used")
    assert "\n" not in str(error.value)
    with pytest.raises(SystemExit, match="cannot be used"):  # generation stops with it, no traceback
        generate.main(["--checkpoint", path, "--text", "ab", "--out", str(tmp_path / "x.png")])
    assert not (tmp_path / "x.png").exists()


def test_the_checkpoints_train_writes_pass_validation(tmp_path):
    for task in ["synthesis", "rand_write"]:
        for training in [True, False]:
            saved = checkpoint.load(make_checkpoint(tmp_path / f"{task}{training}.pt", task, training))
            assert saved["config"]["task"] == task and ("optimizer" in saved) == training


def test_a_folder_or_a_fifo_is_refused_before_it_is_read(tmp_path):
    with pytest.raises(checkpoint.CheckpointError, match="is a folder, not a checkpoint: name the .pt files"):
        checkpoint.load(tmp_path)
    os.mkfifo(tmp_path / "pipe.pt")
    signal.signal(signal.SIGALRM, lambda *_: pytest.fail("reading a FIFO blocked"))
    signal.alarm(5)
    try:
        with pytest.raises(checkpoint.CheckpointError, match="is not a regular file"):
            checkpoint.load(tmp_path / "pipe.pt")
    finally:
        signal.alarm(0)


def test_show_says_what_a_history_without_validation_holds(tmp_path, capsys):
    path = edited(tmp_path, set_key("history", [{"epoch": 1, "step": 5}]))
    checkpoint.main(["show", path])
    out = capsys.readouterr().out
    assert "1 epoch(s), 5 steps" in out and "best validation" not in out


# ----------------------------------------------------------------------------- export and average

def test_export_never_writes_over_its_source_whatever_the_spelling(tmp_path):
    source = make_checkpoint(tmp_path / "synthesis_last.pt")
    before = (tmp_path / "synthesis_last.pt").read_bytes()
    os.link(source, tmp_path / "linked.pt")
    os.symlink(source, tmp_path / "symlinked.pt")
    for dst in [source, str(tmp_path / "." / "synthesis_last.pt"), str(tmp_path / "linked.pt"),
                str(tmp_path / "symlinked.pt")]:
        with pytest.raises(SystemExit, match="would write over its own source"):
            checkpoint.main(["export", source, dst])
    assert (tmp_path / "synthesis_last.pt").read_bytes() == before
    assert "optimizer" in checkpoint.load(source)  # still resumable


def test_export_and_average_replace_only_an_exported_checkpoint(tmp_path):
    source = make_checkpoint(tmp_path / "a.pt")
    other_run = make_checkpoint(tmp_path / "synthesis_last.pt", step=9)
    notes = tmp_path / "README.md"
    notes.write_text("precious notes\n")
    before = (tmp_path / "synthesis_last.pt").read_bytes()
    for command in [["export", source, other_run], ["average", other_run, source]]:
        with pytest.raises(SystemExit, match="a training checkpoint .* will not replace it"):
            checkpoint.main(command)
    for command in [["export", source, str(notes)], ["average", str(notes), source]]:
        with pytest.raises(SystemExit, match="README.md exists and is not a checkpoint"):
            checkpoint.main(command)
    assert (tmp_path / "synthesis_last.pt").read_bytes() == before and notes.read_text() == "precious notes\n"
    exported = str(tmp_path / "exported.pt")
    checkpoint.main(["export", source, exported])
    checkpoint.main(["export", other_run, exported])  # an export replaces an export
    assert checkpoint.load(exported)["step"] == 9


def test_average_refuses_its_output_among_its_sources_and_a_source_listed_twice(tmp_path):
    first, second = make_checkpoint(tmp_path / "s1.pt", training=False), make_checkpoint(tmp_path / "s2.pt", seed=1)
    before = (tmp_path / "s1.pt").read_bytes()
    with pytest.raises(SystemExit, match="average would write over its own source .*s1.pt"):
        checkpoint.main(["average", first, first, second])
    os.link(first, tmp_path / "s1_again.pt")
    for again in [str(tmp_path / "." / "s1.pt"), str(tmp_path / "s1_again.pt")]:
        with pytest.raises(SystemExit, match="s1.pt and .* are one file: each checkpoint counts once"):
            checkpoint.main(["average", str(tmp_path / "mean.pt"), first, second, again])
    assert (tmp_path / "s1.pt").read_bytes() == before and not (tmp_path / "mean.pt").exists()


def test_average_takes_a_previous_mean_in_only_when_asked(tmp_path):
    first, second = make_checkpoint(tmp_path / "s1.pt"), make_checkpoint(tmp_path / "s2.pt", seed=1)
    third = make_checkpoint(tmp_path / "s3.pt", seed=2)
    mean = str(tmp_path / "mean.pt")
    checkpoint.main(["average", mean, first, second])
    with pytest.raises(SystemExit, match="mean.pt is itself a mean .*--include_means"):
        checkpoint.main(["average", str(tmp_path / "mean2.pt"), mean, third])
    checkpoint.main(["average", str(tmp_path / "mean2.pt"), mean, third, "--include_means"])
    weights = [checkpoint.load(p)["model"] for p in (first, second, third, tmp_path / "mean2.pt")]
    for name, tensor in weights[3].items():  # the mean counts as one checkpoint: ((a + b) / 2 + c) / 2
        torch.testing.assert_close(tensor, ((weights[0][name] + weights[1][name]) / 2 + weights[2][name]) / 2)


def test_average_of_a_folder_is_a_sentence(tmp_path):
    source = make_checkpoint(tmp_path / "s1.pt")
    with pytest.raises(SystemExit, match="is a folder, not a checkpoint: name the .pt files in it"):
        checkpoint.main(["average", str(tmp_path / "mean.pt"), str(tmp_path), source])


@pytest.mark.parametrize("error", [RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 1984 vs 1872"),
                                   OSError(28, "No space left on device")])
def test_a_full_disk_in_export_or_average_is_a_sentence_and_keeps_the_old_file(tmp_path, monkeypatch, error):
    source = make_checkpoint(tmp_path / "s1.pt")
    dst = tmp_path / "out.pt"
    checkpoint.main(["export", source, str(dst)])
    before = dst.read_bytes()

    def full_disk(obj, f, *args, **kwargs):
        raise error

    monkeypatch.setattr(torch, "save", full_disk)
    for command in [["export", source, str(dst)], ["average", str(dst), source]]:
        with pytest.raises(SystemExit, match="could not write .*out.pt .*disk has room"):
            checkpoint.main(command)
    assert dst.read_bytes() == before
    assert [f for f in os.listdir(tmp_path) if f.startswith(".tmp-")] == []


# ----------------------------------------------------------------------------- finding, exporting, averaging

def test_default_checkpoint_prefers_own_best_then_shipped_then_last(tmp_path):
    path = lambda name: str(tmp_path / name)
    assert checkpoint.default_path("synthesis", str(tmp_path)) == path("synthesis_best.pt")
    (tmp_path / "synthesis_last.pt").write_bytes(b"")
    assert checkpoint.default_path("synthesis", str(tmp_path)) == path("synthesis_last.pt")
    (tmp_path / "synthesis.pt").write_bytes(b"")
    assert checkpoint.default_path("synthesis", str(tmp_path)) == path("synthesis.pt")
    (tmp_path / "synthesis_best.pt").write_bytes(b"")
    assert checkpoint.default_path("synthesis", str(tmp_path)) == path("synthesis_best.pt")
    assert checkpoint.default_path("rand_write", str(tmp_path)) == path("rand_write_best.pt")


@pytest.mark.filterwarnings("ignore:.*stalled")  # an untrained model: the two files write alike, stalled or not
def test_exported_checkpoint_generates_the_same_strokes_without_resume_state(tmp_path):
    trained = make_checkpoint(tmp_path / "synthesis_last.pt")
    exported = str(tmp_path / "synthesis.pt")
    checkpoint.main(["export", trained, exported])
    full = torch.load(trained, map_location="cpu", weights_only=False)
    small = torch.load(exported, map_location="cpu", weights_only=False)
    assert "optimizer" not in small and "rng" not in small and "optimizer" in full
    assert small["exported_from"] == "synthesis_last.pt"
    for key in ["config", "alphabet", "offset_mean", "offset_std", "step", "history"]:
        assert small[key] == full[key]

    written = [generate.Writer.load(path).write(["ab"], bias=0.5, seed=3, max_points_per_char=5).lines[0]
               for path in [trained, exported]]
    np.testing.assert_array_equal(written[0], written[1])


def test_export_refuses_a_file_that_is_not_a_checkpoint(tmp_path):
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(SystemExit, match="not a train.py checkpoint"):
        checkpoint.main(["export", str(tmp_path / "other.pt"), str(tmp_path / "out.pt")])
    assert not (tmp_path / "out.pt").exists()


@pytest.mark.filterwarnings("ignore:.*stalled")  # an untrained model: only that it writes counts
def test_average_writes_the_mean_of_the_weights_and_keeps_the_rest_of_the_newest(tmp_path):
    trained = make_checkpoint(tmp_path / "synthesis_last.pt")
    first = torch.load(trained, map_location="cpu", weights_only=False)
    second = dict(first, model={name: tensor * 3 + 1 for name, tensor in first["model"].items()}, step=7)
    torch.save(second, tmp_path / "second.pt")
    out = str(tmp_path / "mean.pt")
    assert first["step"] < 7
    # the later checkpoint given first: the progress is still the later one's
    checkpoint.main(["average", out, str(tmp_path / "second.pt"), trained])
    mean = torch.load(out, map_location="cpu", weights_only=False)
    for name, tensor in first["model"].items():  # (w + 3w + 1) / 2 = 2w + 0.5
        torch.testing.assert_close(mean["model"][name], tensor * 2 + 0.5)
    assert mean["step"] == 7 and "optimizer" not in mean
    assert mean["averaged_from"] == ["second.pt", "synthesis_last.pt"]
    assert "the mean of 2 checkpoints" in checkpoint.describe(mean)
    generate.Writer.load(out).write(["ab"], bias=0.5, seed=3, max_points_per_char=5)  # it is a usable model


def test_average_refuses_checkpoints_of_different_models(tmp_path):
    synthesis = make_checkpoint(tmp_path / "synthesis_last.pt")
    rand_write = make_checkpoint(tmp_path / "rand_write_last.pt", task="rand_write")
    out = tmp_path / "mean.pt"
    with pytest.raises(SystemExit, match="differs from .* in its config: only checkpoints of one model"):
        checkpoint.main(["average", str(out), synthesis, rand_write])
    assert not out.exists()
