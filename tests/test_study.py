"""study.py: the arms' command lines, the table, and the picture from curves train.py wrote."""
import os
import shutil

import matplotlib.image
import pytest

import study
import train
from fixtures import TINY_MODEL, write_data_dir


def test_each_arm_is_train_py_with_its_flags_a_budget_and_curve_points_every_as_many_lines(tmp_path):
    args = study.parse_args(["--out_dir", str(tmp_path), "--cpu_minutes", "12", "--curve_every", "20"])
    seed, small = study.arm_command(args, "seed"), study.arm_command(args, "small")
    value = lambda command, flag: command[command.index(flag) + 1]
    assert value(seed, "--max_cpu_hours") == "0.2" and value(seed, "--model_dir") == str(tmp_path / "seed")
    assert value(seed, "--curve_every") == "20" and value(small, "--curve_every") == "62"  # 20 * 50 / 16
    assert value(small, "--batch_size") == "16" and "--compile" in seed and "--resume" not in seed
    tbptt = study.arm_command(args, "tbptt")
    assert value(tbptt, "--tbptt") == "200" and value(tbptt, "--curve_every") == "70"  # 20 * 700 / 200
    (tmp_path / "seed").mkdir()
    (tmp_path / "seed" / "synthesis_last.pt").write_bytes(b"")
    assert "--resume" in study.arm_command(args, "seed")  # an interrupted arm goes on


def test_unknown_arm_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        study.parse_args(["--out_dir", str(tmp_path), "--arms", "seed,fast"])
    assert "unknown fast" in capsys.readouterr().err


def test_table_takes_the_last_point_within_each_mark():
    rows = [{"cpu_seconds": s, "points": p, "validation_nats_per_sequence": v}
            for s, p, v in [(100, 1e6, 50.0), (590, 2e6, -10.0), (610, 3e6, -20.0), (1790, 4e6, -30.0)]]
    assert study.at_minutes(rows, 1) is None
    assert study.at_minutes(rows, 10) == -10.0 and study.at_minutes(rows, 30) == -30.0
    table = study.table({"seed": rows}, 30).splitlines()
    assert table[0] == "| arm | after 10 CPU min | after 20 CPU min | after 30 CPU min | points seen |"
    assert table[2] == f"| seed: {study.ARMS['seed'][0]} | -10.0 | -20.0 | -30.0 | 4.00 M |"


def test_plot_only_draws_the_curves_that_train_py_logged(tmp_path, capsys):
    data_dir = write_data_dir(tmp_path / "data")
    for arm in ["seed", "small"]:
        train.train(train.parse_args(["--task", "synthesis", "--data_dir", data_dir, "--model_dir",
                                      str(tmp_path / "study" / arm), "--precision", "fp32", *TINY_MODEL,
                                      "--max_steps", "4", "--curve_every", "2", "--curve_lines", "4"]))
    capsys.readouterr()
    study.main(["--out_dir", str(tmp_path / "study"), "--arms", "seed,small", "--plot_only", "--cpu_minutes", "1"])
    out = capsys.readouterr().out
    assert out.count("| seed:") == 1 and out.count("| small:") == 1
    picture = matplotlib.image.imread(tmp_path / "study" / "learning_curves.png")
    assert picture.shape[1] > picture.shape[0] > 100
    shutil.rmtree(tmp_path / "study" / "small")
    with pytest.raises(SystemExit, match="no learning curve yet for small"):
        study.main(["--out_dir", str(tmp_path / "study"), "--arms", "seed,small", "--plot_only"])
    assert os.path.exists(tmp_path / "study" / "learning_curves.png")


def test_missing_data_is_a_sentence_before_any_arm_starts(tmp_path):
    with pytest.raises(SystemExit, match="has no train.npz: make the arrays with data_preprocessing.py"):
        study.main(["--out_dir", str(tmp_path / "study"), "--data_dir", str(tmp_path / "nowhere")])
    assert not os.path.exists(tmp_path / "study" / "seed")
