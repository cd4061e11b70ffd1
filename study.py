"""The sample-efficiency study: which recipe gives the most model per CPU hour?

Each arm is a train.py run with its own flags, from the same initial weights (--seed) and the same
batch order, stopped after the same CPU time (--max_cpu_hours); every few steps it logs the NLL of
the same validation lines against training CPU seconds and points seen (--curve_every). The
curves go into one picture and a table.

    python study.py --out_dir ~/study                    # every arm, 30 CPU minutes each, then plot
    python study.py --out_dir ~/study --arms seed,small  # some arms (an interrupted arm resumes)
    python study.py --out_dir ~/study --plot_only --plot examples/learning_curves.png

Run it on a quiet machine (or beside one other single-threaded process, every arm alike): the
arms run one after another, one thread each.
"""
import argparse
import csv
import os
import subprocess
import sys

import utils

# name: (what it is, train.py flags on top of the seed's defaults)
ARMS = {
    "seed": ("the seed's recipe: Adam 8e-4, batch 50, x0.99 per epoch", []),
    "warm": ("Adam 2e-3 after 100 warm-up steps, x0.5 per epoch applied per step",
             ["--learning_rate", "2e-3", "--warmup_steps", "100", "--decay_rate", "0.5", "--decay_per_step"]),
    "small": ("batches of 16 lines (Adam 8e-4)", ["--batch_size", "16"]),
    "tbptt": ("batches of 50 cut into windows of at most 200 points, one step each, the state carried",
              ["--tbptt", "200"]),
}
# a batch of training lines, cut to --timesteps 800, is about 700 points long (IAM-OnDB):
# what --tbptt's steps per batch are estimated from
BATCH_POINTS = 700
ROOT = os.path.dirname(os.path.abspath(__file__))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out_dir", required=True, help="one model_dir per arm is made in here")
    p.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated, from {', '.join(ARMS)}")
    p.add_argument("--task", choices=["rand_write", "synthesis"], default="synthesis")
    p.add_argument("--data_dir", default="data")
    p.add_argument("--cpu_minutes", type=float, default=30, help="CPU budget of each arm")
    p.add_argument("--curve_every", type=int, default=25,
                   help="validate every N steps of 50 lines (arms with other batch sizes: every as many lines)")
    p.add_argument("--plot_only", action="store_true", help="draw the curves of the arms already run")
    p.add_argument("--plot", help="the picture (default OUT_DIR/learning_curves.png)")
    args = p.parse_args(argv)
    args.arms = args.arms.split(",")
    unknown = set(args.arms) - set(ARMS)
    if unknown:
        p.error(f"--arms: unknown {', '.join(sorted(unknown))}; choose from {', '.join(ARMS)}")
    return args


def flag(flags, name, default):
    return int(flags[flags.index(name) + 1]) if name in flags else default


def steps_per_50_lines(flags):
    """Optimizer steps an arm takes per 50 training lines: more with smaller batches, and with
    --tbptt one per window of each batch."""
    return 50 / flag(flags, "--batch_size", 50) * max(1.0, BATCH_POINTS / flag(flags, "--tbptt", BATCH_POINTS))


def arm_command(args, name):
    """The train.py command line of one arm."""
    flags = ARMS[name][1]
    model_dir = os.path.join(args.out_dir, name)
    every = max(1, round(args.curve_every * steps_per_50_lines(flags)))  # about the same lines between points
    command = [sys.executable, os.path.join(ROOT, "train.py"), "--task", args.task, "--data_dir", args.data_dir,
               "--model_dir", model_dir, "--threads", "1", "--max_cpu_hours", str(args.cpu_minutes / 60),
               "--curve_every", str(every), "--save_every", str(every), *flags]
    if args.task == "synthesis":
        command.append("--compile")
    if os.path.exists(os.path.join(model_dir, f"{args.task}_last.pt")):
        command.append("--resume")
    return command


def read_curve(args, name):
    path = os.path.join(args.out_dir, name, f"{args.task}_curve.csv")
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def at_minutes(rows, minutes):
    """The validation NLL of the last curve point within `minutes` of CPU time (None before any)."""
    within = [r for r in rows if r["cpu_seconds"] <= minutes * 60]
    return within[-1]["validation_nats_per_sequence"] if within else None


def table(curves, budget):
    """A Markdown table: each arm's NLL after a third, two thirds and all of the budget."""
    marks = [budget / 3, 2 * budget / 3, budget]
    lines = ["| arm | " + " | ".join(f"after {m:.0f} CPU min" for m in marks) + " | points seen |",
             "| --- |" + " --- |" * (len(marks) + 1)]
    for name, rows in curves.items():
        cells = [at_minutes(rows, m) for m in marks]
        seen = rows[-1]["points"] / 1e6 if rows else 0
        lines.append(f"| {name}: {ARMS[name][0]} | " + " | ".join("-" if c is None else f"{c:.1f}" for c in cells)
                     + f" | {seen:.2f} M |")
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    os.makedirs(args.out_dir, exist_ok=True)
    if not args.plot_only:
        for split in ["train.npz", "validation.npz"]:
            if not os.path.exists(os.path.join(args.data_dir, split)):
                raise SystemExit(f"{args.data_dir} has no {split}: make the arrays with data_preprocessing.py "
                                 "first, or pass --data_dir")
        for name in args.arms:
            command = arm_command(args, name)
            print(f"arm {name}: {' '.join(command)}", flush=True)
            if subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": "1"}).returncode:
                raise SystemExit(f"arm {name} stopped with an error (above); its state is in "
                                 f"{os.path.join(args.out_dir, name)}: run the study again to resume it")
    curves = {name: read_curve(args, name) for name in args.arms}
    missing = [name for name, rows in curves.items() if not rows]
    if missing:
        raise SystemExit(f"no learning curve yet for {', '.join(missing)} in {args.out_dir}: run those arms first")
    path = args.plot or os.path.join(args.out_dir, "learning_curves.png")
    utils.plot_learning_curves({f"{name}: {ARMS[name][0]}": rows for name, rows in curves.items()}, path,
                               title=f"{args.task}, validation NLL on the same lines, one CPU thread per arm")
    print(table(curves, args.cpu_minutes))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
