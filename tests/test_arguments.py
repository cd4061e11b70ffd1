"""Every number a user passes is checked where it is parsed: finite, in range, refused in one
sentence that names the flag and the range; every script's numeric options use such a check. And
no command's outputs are its inputs (compared as files, not spellings) or a file it did not make."""
import argparse
import os

import pytest
import torch

import arguments
import bench
import evaluate
import generate
import train


def refusal(parse, argv, capsys):
    """The one-line error a parse_args gives for argv (it must exit with argparse's code 2)."""
    with pytest.raises(SystemExit) as exit:
        parse(argv)
    assert exit.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


def parser(**types):
    p = argparse.ArgumentParser(prog="x")
    for name, kind in types.items():
        p.add_argument(f"--{name}", type=kind)
    return lambda argv: arguments.parse(p, argv)


@pytest.mark.parametrize("kind, text, message", [
    (arguments.POSITIVE, "0", "--n must be >= 1, not 0"),
    (arguments.POSITIVE, "-1", "--n must be >= 1, not -1"),
    (arguments.POSITIVE, "1.5", "--n must be a whole number >= 1, not '1.5'"),
    (arguments.OPTIONAL, "-1", "--n must be 0 or more, not -1"),
    (arguments.SEED, "-5", "--n must be between 0 and 4294967295, not -5 (NumPy's seeds)"),
    (arguments.SEED, str(2 ** 70), f"--n must be between 0 and 4294967295, not {2 ** 70} (NumPy's seeds)"),
    (arguments.STRENGTH, "nan", "--n must be a finite number 0 or more, not nan"),
    (arguments.STRENGTH, "inf", "--n must be a finite number 0 or more, not inf"),
    (arguments.STRENGTH, "-0.1", "--n must be 0 or more, not -0.1"),
    (arguments.RATE, "0", "--n must be > 0, not 0"),
    (arguments.FRACTION, "1", "--n must be > 0 and < 1, not 1"),
    (arguments.FRACTION, "0", "--n must be > 0 and < 1, not 0"),
    (arguments.FRACTION, "-1", "--n must be > 0 and < 1, not -1"),
    (arguments.BIAS, "1e300", "--n must be between 0 and 20, not 1e300 (at 20 the strokes are already the "
                                "mixture's means)"),
])
def test_a_value_out_of_range_is_refused_in_a_sentence_naming_flag_and_range(kind, text, message, capsys):
    assert refusal(parser(n=kind), ["--n", text], capsys) == f"x: error: {message}"


@pytest.mark.parametrize("kind, text, value", [
    (arguments.POSITIVE, "1", 1), (arguments.OPTIONAL, "0", 0), (arguments.SEED, "4294967295", 2 ** 32 - 1),
    (arguments.STRENGTH, "0", 0.0), (arguments.RATE, "1e-9", 1e-9), (arguments.FRACTION, "0.05", 0.05),
    (arguments.BIAS, "20", 20.0), (arguments.BIAS, "0", 0.0),
])
def test_the_ends_of_each_range_are_accepted(kind, text, value):
    assert parser(n=kind)(["--n", text]).n == value


def test_a_seed_at_numpys_largest_is_one_numpy_takes():
    import numpy as np
    np.random.default_rng([arguments.SEED_MAX, 0])
    np.random.seed(arguments.SEED_MAX)
    with pytest.raises(ValueError):
        np.random.seed(arguments.SEED_MAX + 1)


def test_a_shared_type_names_each_flag_it_parses(capsys):
    parse = parser(first=arguments.POSITIVE, second=arguments.POSITIVE)
    assert refusal(parse, ["--first", "1", "--second", "0"], capsys) == "x: error: --second must be >= 1, not 0"
    assert refusal(parse, ["--first", "0"], capsys) == "x: error: --first must be >= 1, not 0"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_gets_its_own_sentence(capsys):
    for parse in [generate.parse_args, evaluate.parse_args, train.parse_args]:
        argv = ["x.pt"] if parse is evaluate.parse_args else []
        line = refusal(parse, [*argv, "--device", "cuda"], capsys)
        assert line.endswith("--device cuda: this machine has no CUDA GPU that PyTorch can use; use --device cpu")
    assert refusal(generate.parse_args, ["--device", "gpu"], capsys).endswith(
        "--device 'gpu' is not a device: use cpu, cuda, cuda:N or mps")


# Each script's numeric options, each given a value no run can use: refused with the flag's name.
TRAIN_REFUSED = [("--batch_size", "0"), ("--batch_size", "-1"), ("--timesteps", "0"), ("--threads", "-1"),
                 ("--learning_rate", "nan"), ("--learning_rate", "0"), ("--cell_size", "0"),
                 ("--num_clusters", "0"), ("--K", "0"), ("--bucket_pool", "0"), ("--seed", "-5"),
                 ("--max_cpu_hours", "nan"), ("--distort", "nan"), ("--weight_noise", "nan"),
                 ("--grad_clip", "nan"), ("--grad_clip", "inf"), ("--decay_rate", "0"), ("--decay_rate", "1.5"),
                 ("--num_epochs", "-1"), ("--warmup_steps", "-1"), ("--curve_lines", "0"),
                 ("--save_every", "-1"), ("--join_lines", "nan"), ("--join_lines", "2")]
GENERATE_REFUSED = [("--seed", str(2 ** 70)), ("--threads", "-1"), ("--bias", "1e300"), ("--bias", "-1"),
                    ("--bias", "nan"), ("--num_samples", "100000"), ("--num_samples", "0"),
                    ("--length", "10000000"), ("--length", "1"), ("--max_points_per_char", "0"),
                    ("--max_points_per_char", "100000"), ("--width", "0")]
EVALUATE_REFUSED = [("--lines", "0"), ("--lines", "-5"), ("--fidelity", "-1"), ("--fidelity", "1"),
                    ("--batch_size", "0"), ("--threads", "-1"), ("--seed", "-1"), ("--bias", "inf")]
BENCH_REFUSED = [("--steps", "0"), ("--compare_every", "0"), ("--seeds", "0"), ("--first_seed", "-1"),
                 ("--validation_lines", "0"), ("--roof_seconds", "nan"), ("--compare_loss", "-1")]


@pytest.mark.parametrize("parse, before, flag, text", [
    *[(train.parse_args, [], flag, text) for flag, text in TRAIN_REFUSED],
    *[(generate.parse_args, ["--task", "rand_write"], flag, text) for flag, text in GENERATE_REFUSED
      if flag != "--width"],
    (generate.parse_args, ["--text", "ab"], "--width", "0"),
    *[(evaluate.parse_args, ["x.pt"], flag, text) for flag, text in EVALUATE_REFUSED],
    *[(bench.parse_args, [], flag, text) for flag, text in BENCH_REFUSED],
])
def test_every_scripts_numbers_are_checked_where_parsed(parse, before, flag, text, capsys):
    line = refusal(parse, [*before, flag, text], capsys)
    assert f"error: {flag} must be " in line and f"not {text}" in line


def test_the_bounds_on_one_go_of_work_say_how_to_do_more(capsys):
    line = refusal(generate.parse_args, ["--task", "rand_write", "--num_samples", "1001"], capsys)
    assert "--num_samples must be between 1 and 1000, not 1001" in line and "--seed" in line
    line = refusal(generate.parse_args, ["--task", "rand_write", "--length", "20001"], capsys)
    assert "--length must be between 2 and 20000, not 20001" in line


def test_validation_fraction_outside_0_1_gets_the_range_sentence(capsys):
    import data_preprocessing
    for text in ["1", "-1", "nan", "0"]:
        with pytest.raises(SystemExit) as exit:
            data_preprocessing.main(["--strokes", "s.npy", "--validation_fraction", text])
        assert exit.value.code == 2
        assert "--validation_fraction must be " in capsys.readouterr().err


# ----------------------------------------------------------------------------- outputs against inputs

@pytest.mark.parametrize("flags, clash", [
    (["--out", "{d}/a.png", "--attention_out", "{d}/a.png"], "--attention_out {d}/a.png and --out"),
    (["--out", "{d}/a.png", "--attention_out", "{d}/./a.png"], "--attention_out {d}/./a.png and --out"),
    (["--out", "{d}/link.svg", "--prime", "{d}/prime.svg"], "--out {d}/link.svg and --prime"),
    (["--strokes_out", "{d}/data/validation.npz", "--prime_line", "a01"], "--strokes_out {d}/data/validation.npz and "
                                                                           "--data_dir's validation.npz"),
    (["--out", "{d}/texts.svg", "--text_file", "{d}/texts.svg"], "--out {d}/texts.svg and --text_file"),
])
def test_generate_never_writes_over_its_inputs_or_one_output_over_another(tmp_path, flags, clash, capsys):
    (tmp_path / "prime.svg").write_text("{}")  # an ink file under a name that could be a picture's
    os.symlink(tmp_path / "prime.svg", tmp_path / "link.svg")
    (tmp_path / "texts.svg").write_text("ab\n")
    argv = ["--data_dir", str(tmp_path / "data"), *[flag.format(d=tmp_path) for flag in flags]]
    if "--text_file" not in flags:
        argv += ["--text", "ab"]
    line = refusal(generate.parse_args, argv, capsys)
    assert clash.format(d=tmp_path) in line and "are one file: writing" in line
    assert (tmp_path / "prime.svg").read_text() == "{}"


def test_evaluate_appends_only_to_its_own_log(tmp_path, capsys):
    notes = tmp_path / "README.md"
    notes.write_text("# notes\n")
    other_csv = tmp_path / "other.csv"
    other_csv.write_text("name,value\na,1\n")
    for log, fault in [(notes, "the log is a CSV file"), (tmp_path / "x.pt", "the log is a CSV file"),
                       (other_csv, "is not a log this script wrote"), (tmp_path, "the log is a CSV file"),
                       (notes / "log.csv", f"{notes} is a file, not a folder")]:
        line = refusal(evaluate.parse_args, ["x.pt", "--log", str(log)], capsys)
        assert f"--log {log}: {fault}" in line
    own = tmp_path / "judgements.csv"
    evaluate.append_rows(str(own), [{"checkpoint": "a.pt", "task": "synthesis", "nats_per_line": -1000.0}])
    assert evaluate.parse_args(["x.pt", "--log", str(own)]).log == str(own)  # its own log: appended to
    assert evaluate.parse_args(["x.pt", "--log", str(tmp_path / "new" / "log.csv")]).log  # a new one
    assert notes.read_text() == "# notes\n" and other_csv.read_text() == "name,value\na,1\n"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_evaluate_refuses_a_log_it_could_not_write_before_judging(tmp_path, capsys):
    tmp_path.chmod(0o555)
    try:
        line = refusal(evaluate.parse_args, ["x.pt", "--log", str(tmp_path / "log.csv")], capsys)
        assert "is not writable" in line
    finally:
        tmp_path.chmod(0o755)


def test_bench_refuses_a_checkpoint_that_cannot_be_used_in_a_sentence(tmp_path, capsys):
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    for flag in ["--sampling", "--check_precision"]:
        line = refusal(bench.parse_args, [flag, str(tmp_path / "junk.pt")], capsys)
        assert f"error: {flag}: {tmp_path / 'junk.pt'} is not a readable checkpoint" in line
        line = refusal(bench.parse_args, [flag, str(tmp_path / "missing.pt")], capsys)
        assert f"error: {flag}: no checkpoint at {tmp_path / 'missing.pt'}" in line
