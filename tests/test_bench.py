"""bench.py: its baseline (the seed's formulation) computes what our model computes, and its command line."""
import os

import numpy as np
import pytest
import torch

from bench import SeedModel
from kernels import FastHandwritingModel
from model import HandwritingModel, ModelConfig


def copy_weights(ours, plain):
    """Ours -> the plain model. Our layer 1 orders its gates (i, f, o, g); nn.LSTMCell (i, f, g, o)."""
    H = ours.config.cell_size
    to_cell_order = torch.cat([torch.arange(0, 2 * H), torch.arange(3 * H, 4 * H), torch.arange(2 * H, 3 * H)])
    with torch.no_grad():
        if ours.config.task == "synthesis":
            plain.cell1.weight_ih.copy_(torch.cat([ours.layer1_input.weight,
                                                   ours.layer1_recurrent.weight[:, H:]], dim=1)[to_cell_order])
            plain.cell1.weight_hh.copy_(ours.layer1_recurrent.weight[:, :H][to_cell_order])
            plain.cell1.bias_ih.copy_(ours.layer1_input.bias[to_cell_order])
            plain.cell1.bias_hh.zero_()
            plain.layer2.load_state_dict(ours.layer2.state_dict())
            plain.window_layer.load_state_dict(ours.window_layer.state_dict())
        else:
            plain.layer1.load_state_dict(ours.layer1.state_dict())
            plain.layer2.load_state_dict(ours.layer2.state_dict())
        plain.output_layer.load_state_dict(ours.output_layer.state_dict())
    return to_cell_order


@pytest.mark.parametrize("ours_class", [FastHandwritingModel, HandwritingModel])
def test_ours_matches_the_seed_formulation_values_and_gradients(ours_class):
    """What bench.py times as ours (the fast model) and the plain model of model.py, against the seed's formulation."""
    torch.manual_seed(0)
    for task in ["rand_write", "synthesis"]:
        config = ModelConfig(task=task, cell_size=12, num_clusters=3, K=2, alphabet_size=7)
        ours, plain = ours_class(config).double(), SeedModel(config).double()
        with torch.no_grad():  # move the window along so phi is not negligible everywhere
            for p in ours.parameters():
                p.mul_(3)
        to_cell_order = copy_weights(ours, plain)
        offsets = torch.randn(3, 20, 3, dtype=torch.float64)
        text = torch.randint(0, 7, (3, 5))
        text_mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 0, 0, 0]], dtype=torch.float64)
        y_ours, _, _ = ours(offsets, text, text_mask)
        y_plain = plain(offsets, text, text_mask)
        assert y_ours.shape == y_plain.shape == (3, 20, 6 * 3 + 1)
        torch.testing.assert_close(y_ours, y_plain, rtol=1e-10, atol=1e-10)

        upstream = torch.randn_like(y_ours)
        (y_ours * upstream).sum().backward()
        (y_plain * upstream).sum().backward()
        torch.testing.assert_close(ours.output_layer.weight.grad, plain.output_layer.weight.grad)
        if task == "synthesis":
            H = config.cell_size
            torch.testing.assert_close(ours.window_layer.weight.grad, plain.window_layer.weight.grad)
            torch.testing.assert_close(ours.window_layer.bias.grad, plain.window_layer.bias.grad)
            torch.testing.assert_close(ours.layer1_recurrent.weight.grad[:, :H][to_cell_order],
                                       plain.cell1.weight_hh.grad)
            torch.testing.assert_close(ours.layer1_recurrent.weight.grad[:, H:][to_cell_order],
                                       plain.cell1.weight_ih.grad[:, 3:])
            torch.testing.assert_close(ours.layer1_input.weight.grad[to_cell_order], plain.cell1.weight_ih.grad[:, :3])
            torch.testing.assert_close(ours.layer1_input.bias.grad[to_cell_order], plain.cell1.bias_hh.grad)
            torch.testing.assert_close(ours.layer2.weight_hh_l0.grad, plain.layer2.weight_hh_l0.grad)


def tiny_bench_args(data_dir):
    """bench.py on fixture data at a size that runs in a second: one timed step, two compared."""
    return ["--task", "synthesis", "--data_dir", data_dir, "--steps", "1", "--batch_size", "4",
            "--timesteps", "30", "--cell_size", "8", "--compare_loss", "2", "--compare_every", "1",
            "--validation_lines", "4", "--device", "cpu", "--roof_seconds", "0.1"]


def test_bench_command_line_on_tiny_data(tmp_path, capsys):
    """bench.py end to end on fixture data: both implementations time, and --seeds summarises
    exactly the per-seed validation figures it printed."""
    import re

    import numpy as np

    import bench
    from fixtures import write_data_dir

    data_dir = write_data_dir(tmp_path / "data")
    bench.main(tiny_bench_args(data_dir) + ["--seeds", "2"])
    out = capsys.readouterr().out
    assert re.search(r"synthesis  speed-up \d+\.\d\dx", out)
    roof = re.search(r"synthesis  ([\d.]+) MFLOP per point; roof \((?:fp32|bf16) matrix product\) ([\d.]+) GFLOP/s; "
                     r"ours ([\d.]+) GFLOP/s = (\d+)% of the roof", out)
    assert roof, out
    mflop, roof_gflops, ours_gflops, share = (float(v) for v in roof.groups())
    assert share == pytest.approx(100 * ours_gflops / roof_gflops, abs=1)
    for name in ["fp32, padded batches", "ours"]:
        per_seed = np.array([[float(v) for v in re.findall(
            rf"{re.escape(name)}\s+seed {seed} after {step} steps: validation (-?\d+\.\d) nats/seq", out)]
            for seed in range(2) for step in [1, 2]]).reshape(2, 2)
        summary = re.search(rf"{re.escape(name)}\s+mean \+- sd over 2 seeds, nats/seq after steps "
                            r"1: (-?\d+\.\d) \+- (\d+\.\d), 2: (-?\d+\.\d) \+- (\d+\.\d)", out)
        assert summary, out
        mean_1, sd_1, mean_2, _ = (float(v) for v in summary.groups())
        assert abs(mean_1 - per_seed[:, 0].mean()) <= 0.051 and abs(mean_2 - per_seed[:, 1].mean()) <= 0.051
        assert abs(sd_1 - abs(per_seed[0, 0] - per_seed[1, 0]) / np.sqrt(2)) <= 0.11
    assert per_seed[0, 0] != per_seed[1, 0]  # the seeds really differ
    # a later invocation starting at seed 1 repeats seed 1's runs exactly
    bench.main(tiny_bench_args(data_dir) + ["--first_seed", "1"])
    again = capsys.readouterr().out
    seed_lines = lambda text: re.findall(r".*seed 1 after .*", text)
    assert seed_lines(again) and seed_lines(again) == seed_lines(out)
    assert "seed 0 after" not in again


def test_bench_variants_are_the_same_runs_whatever_is_listed(tmp_path, capsys):
    """--variants bucketed is ours in fp32: with --precision fp32 the two must print identical
    validation figures, seed for seed; an unknown variant is refused before anything runs."""
    import re

    import pytest

    import bench
    from fixtures import write_data_dir

    data_dir = write_data_dir(tmp_path / "data")
    common = tiny_bench_args(data_dir) + ["--precision", "fp32"]
    bench.main(common + ["--variants", "bucketed,ours"])
    out = capsys.readouterr().out
    figures = {name: re.findall(rf"{re.escape(name)}\s+seed 0 after \d steps: validation (-?\d+\.\d) nats/seq"
                                r", (-?\d+\.\d+) nats/point", out)
               for name in ["fp32, bucketed batches", "ours"]}
    assert len(figures["ours"]) == 2 and figures["ours"] == figures["fp32, bucketed batches"], out
    assert "padded" not in out.split("speed-up")[-1]
    with pytest.raises(SystemExit):
        bench.main(common + ["--variants", "ours,fastest"])
    assert "unknown fastest" in capsys.readouterr().err


@pytest.mark.skipif(not (torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()),
                    reason="this CPU has no bf16 (AVX2 only): oneDNN cannot run a bf16 LSTM here")
def test_check_precision_reports_the_fp32_figures_and_a_small_bf16_change(tmp_path, capsys):
    """--check_precision fresh: the fp32 validation figure is evaluate()'s on the seed-0 weights,
    bf16 moves it and the gradients a little, and the same works from a checkpoint's weights."""
    import re

    import torch

    import bench
    import checkpoint
    import dataset
    from dataset import dataset_nll as evaluate
    from fixtures import train_tiny, write_data_dir
    from kernels import FastHandwritingModel
    from model import ModelConfig

    data_dir = write_data_dir(tmp_path / "data")
    args = tiny_bench_args(data_dir)
    bench.main(args + ["--check_precision", "fresh"])
    out = capsys.readouterr().out
    fp32, bf16 = (float(v) for v in re.search(
        r"synthesis  validation (-?\d+\.\d\d) nats/seq in fp32, (-?\d+\.\d\d) in bf16 \(4 lines\)", out).groups())
    torch.manual_seed(0)
    model = FastHandwritingModel(ModelConfig(task="synthesis", cell_size=8, alphabet_size=len(dataset.ALPHABET)))
    valid = bench.validation_subset(bench.argparse.Namespace(data_dir=data_dir, validation_lines=4))
    assert abs(fp32 - evaluate(model, valid, 4, "cpu")[0]) <= 0.006
    # at two decimals a tiny model's bf16 figure may equal the fp32 one; the gradient distances
    # below show that bf16 changed something
    assert abs(fp32 - bf16) < 0.02 * abs(fp32)
    bf16_distances = [float(v) for v in re.findall(r"gradient distance bf16 from fp32 (\d\.\d+)", out)]
    batch_distances = [float(v) for v in re.findall(r"fp32 from the previous batch's (\d\.\d+)", out)]
    assert len(bf16_distances) == 3 and len(batch_distances) == 2
    assert all(0 < d < 0.1 for d in bf16_distances)
    assert all(d > 0.1 for d in batch_distances)  # different data moves the gradient far more

    checkpoint_path = train_tiny(tmp_path / "run", "synthesis")
    bench.main(["--data_dir", data_dir, "--batch_size", "4", "--timesteps", "30", "--validation_lines", "4",
                "--device", "cpu", "--check_precision", checkpoint_path])
    out = capsys.readouterr().out
    fp32 = float(re.search(r"validation (-?\d+\.\d\d) nats/seq in fp32", out).group(1))
    trained = checkpoint.build_model(checkpoint.load(checkpoint_path))
    assert abs(fp32 - evaluate(trained, valid, 4, "cpu")[0]) <= 0.006
    assert "speed-up" not in out


def test_batch_streams_go_on_past_an_epoch_covering_every_line_once_per_epoch(tmp_path):
    """--compare_loss may train for more steps than one epoch has batches."""
    import itertools

    import numpy as np

    import bench
    from fixtures import make_handwriting_data

    data = make_handwriting_data(12)  # 3 batches of 4 per epoch
    for stream in [bench.padded_batches, bench.bucketed_batches]:
        batches = list(itertools.islice(stream(data, 4, 100, np.random.default_rng(0)), 7))
        assert len(batches) == 7
        for epoch in [batches[0:3], batches[3:6]]:
            # each line's first point (random loops, all distinct) identifies it
            firsts = sorted(tuple(row) for offsets, *_ in epoch for row in offsets[:, 0].tolist())
            assert firsts == sorted(tuple(line[0].tolist()) for line in data.offsets)


def test_check_precision_is_refused_with_a_sentence_without_bf16(tmp_path, monkeypatch, capsys):
    """Where the CPU has no bf16, --check_precision stops at once with a sentence, not oneDNN's traceback."""
    import bench
    import kernels
    from fixtures import write_data_dir

    monkeypatch.setattr(kernels, "bf16_supported", lambda device: False)
    with pytest.raises(SystemExit, match="no bf16 support"):
        bench.main(tiny_bench_args(write_data_dir(tmp_path / "data")) + ["--check_precision", "fresh"])
    assert "validation" not in capsys.readouterr().out


def test_flops_per_point_by_hand():
    """H=400, A=84, M=20, K=10, 40 characters: layer 1 2*(3+400+84)*1600, layer 2 2*(3+400+84+400)*1600,
    output 2*800*121, window 2*400*30 + 2*40*84; three times the forward pass."""
    from bench import flops_per_point
    synthesis = ModelConfig(task="synthesis", alphabet_size=84)
    assert flops_per_point(synthesis) == 3 * (1_558_400 + 2_838_400 + 193_600 + 24_000 + 6_720)
    assert flops_per_point(ModelConfig(task="rand_write")) == 3 * (1_289_600 + 2_569_600 + 193_600)


def test_flops_by_part_by_hand_and_summing_to_the_whole():
    """The same hand counts as test_flops_per_point_by_hand, part by part (the window with layer 1)."""
    from bench import flops_by_part, flops_per_point
    synthesis = ModelConfig(task="synthesis", alphabet_size=84)
    assert flops_by_part(synthesis) == {"layer 1": 3 * (1_558_400 + 24_000 + 6_720), "layer 2": 3 * 2_838_400,
                                        "output": 3 * 193_600}
    assert sum(flops_by_part(synthesis).values()) == flops_per_point(synthesis)


def test_speedup_with_a_part_at_the_roof_by_hand():
    """Seed 100 points/s; ours 2,000 points in a 10 s step, 6 s of it layer 1, which needs 1 MFLOP a
    point: at a roof of 1 GFLOP/s layer 1 would take 2 s, the step 6 s: 333.3 points/s, 3.33x."""
    from bench import speedup_with_part_at_roof
    seconds = {"step": 10.0, "layer 1": 6.0, "layer 2": 3.0}
    assert speedup_with_part_at_roof(100.0, seconds, 2000, "layer 1", 1e6, 1e9) == pytest.approx(10 / 3)


@pytest.mark.parametrize("task", ["synthesis", "rand_write"])
def test_parts_add_up_to_the_step_and_the_roof_bound_follows(tmp_path, capsys, task):
    """--parts on fixture data: layer 1, layer 2 and the rest add up to the step, each part
    takes time, and the all-at-the-roof bound is the roof over the FLOPs per point over the seed's speed."""
    import re

    import bench
    from fixtures import write_data_dir

    args = tiny_bench_args(write_data_dir(tmp_path / "data"))
    args = [a for a in args if a not in ("--compare_loss", "2")] + ["--parts", "--steps", "2"]
    args[args.index("synthesis")] = task
    bench.main(args)
    out = capsys.readouterr().out
    number = r"(-?\d+\.\d+)"
    parts = re.search(rf"ours by part, s/step: layer 1[a-z ]* {number} \((\d+) GFLOP/s\), layer 2 {number} "
                      rf"\((\d+) GFLOP/s\), the rest \(output layer, loss, optimizer\) {number}, of {number}", out)
    assert parts, out
    layer1, _, layer2, _, rest, step = (float(v) for v in parts.groups())
    assert layer1 + layer2 + rest == pytest.approx(step, abs=0.015)
    seed = float(re.search(rf"{task}\s+seed\s+{number} s/step\s+(\d+) real points/s", out).group(2))
    mflop, roof = (float(v) for v in re.search(rf"{number} MFLOP per point; roof \(\w+ matrix product\) "
                                               rf"{number} GFLOP/s", out).groups())
    bound = re.search(rf"with layer 1[a-z ]* at the roof: {number}x the seed; with everything at the roof: "
                      rf"{number}x", out)
    assert bound, out
    assert float(bound.group(2)) == pytest.approx(roof * 1e3 / mflop / seed, rel=0.02)


def test_sampling_timing_writes_and_reports_per_line(tmp_path, capsys):
    import re

    import bench
    import model
    from fixtures import train_tiny

    checkpoint = train_tiny(tmp_path, "synthesis", "--max_steps", "1").replace("_best", "_last")
    bench.time_sampling(checkpoint, text="abcd", repeats=2)  # what bench.py --sampling runs, made short
    out = capsys.readouterr().out
    for name in [r"forward\(\) per point", "ours"]:
        one, ten = (re.search(rf"{name} +{n:2d} line\(s\) of 4 characters: ([\d.]+) s, ([\d.]+) s per line", out)
                    for n in [1, 10])
        assert one and ten, out
        assert float(ten.group(2)) == pytest.approx(float(ten.group(1)) / 10, abs=0.001)
    assert len(re.findall(r"ratio [\d.]+x", out)) == 2
    roof = re.search(r"roof: ([\d.]+) MB of weights a point, read in ([\d.]+) ms \(([\d.]+) GB/s", out)
    assert roof, out
    megabytes, milliseconds, gigabytes_per_second = map(float, roof.groups())
    assert megabytes * 1e6 == pytest.approx(bench.weight_bytes_per_point(model.ModelConfig(
        **checkpoint_config(checkpoint))), rel=1e-3)
    assert megabytes / milliseconds == pytest.approx(gigabytes_per_second, rel=0.05)
    assert torch.backends.mkldnn.enabled  # put back after timing the baseline


def checkpoint_config(path):
    import checkpoint

    return checkpoint.load(path)["config"]


def test_weight_bytes_per_point_counts_what_a_generation_step_reads():
    import bench
    import kernels

    for task in ["synthesis", "rand_write"]:
        config = ModelConfig(task=task, cell_size=16, num_clusters=3, K=2, alphabet_size=7)
        net = HandwritingModel(config)
        text = torch.zeros(1, 4, dtype=torch.int64)
        step = kernels.GenerationStep(net, *((text, torch.ones(1, 4)) if task == "synthesis" else ()))
        layers = [step.layer1, step.layer2, step.output] + ([step.window_layer] if task == "synthesis" else [])
        read = sum(weight.numel() * weight.element_size() + bias.numel() * bias.element_size()
                   for weight, bias, _, _ in layers)
        assert bench.weight_bytes_per_point(config) == read


def test_the_sampling_baseline_writes_the_same_strokes(tmp_path):
    """The baseline bench.py --sampling times: the plain model with the same weights, forward() a point."""
    import copy

    import bench
    from fixtures import train_tiny
    from generate import Writer

    writer = Writer.load(train_tiny(tmp_path, "synthesis", "--max_steps", "1").replace("_best", "_last"))
    ours = writer.write(["abc", "b a"], bias=0.5, seed=3, max_points_per_char=10)
    plain = copy.copy(writer)
    plain.model = bench.plain_model(writer.model)
    assert type(plain.model) is HandwritingModel and type(writer.model) is FastHandwritingModel
    with bench.onednn_off():
        baseline = plain.write(["abc", "b a"], bias=0.5, seed=3, max_points_per_char=10)
    for a, b, phi_a, phi_b in zip(ours.lines, baseline.lines, ours.phis, baseline.phis):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(phi_a, phi_b, rtol=1e-4, atol=1e-5)


def test_cpu_kind_names_the_vector_extensions():
    import bench

    amx = "processor\t: 0\nmodel name\t: Some Xeon\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16\n" \
          "processor\t: 1\nmodel name\t: Some Xeon\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16\n"
    assert bench.cpu_kind(amx).startswith("Some Xeon, AVX-512 with avx512_bf16 and AMX, ")
    assert bench.cpu_kind("model name : Some EPYC\nflags : fpu avx avx2 fma\n").startswith("Some EPYC, AVX2, ")
    assert bench.cpu_kind("").startswith("unknown CPU, no AVX2, ")
    assert bench.cpu_kind().endswith(f"{os.cpu_count()} cores")


def test_layer1_against_another_model_py_times_both_on_the_same_inputs(tmp_path, capsys):
    """--layer1_against: the same kernels.py as ours gives exactly our outputs and gradients, and both
    sides' timings and their ratio are printed."""
    import re

    import bench
    from fixtures import write_data_dir

    data_dir = write_data_dir(tmp_path / "data")
    ours = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "kernels.py")
    bench.main(["--data_dir", data_dir, "--batch_size", "4", "--timesteps", "30", "--cell_size", "8",
                "--device", "cpu", "--precision", "fp32", "--layer1_against", ours])
    out = capsys.readouterr().out
    assert "the same batch gives h within 0, the recurrent weight's gradient within 0 (relative)" in out, out
    together = {name: float(v) for name, v in re.findall(r"(other|ours)\s+forward [\d.]+ s, backward [\d.]+ s, "
                                                       r"together ([\d.]+) s", out)}
    ratio = float(re.search(r"ours is ([\d.]+)x the other's speed", out).group(1))
    assert set(together) == {"other", "ours"}
    assert ratio == pytest.approx(together["other"] / together["ours"], rel=0.01, abs=0.002)
