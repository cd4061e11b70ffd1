"""Time the whole preprocessing (archives -> saved arrays) on the real IAM-OnDB.

    python bench_preprocessing.py [--data_dir ../shared/iam-ondb]

The outputs go to a temporary folder, so data/ is left as it is.
"""
import argparse
import os
import sys
import tempfile
import time

import data_preprocessing

DEFAULT_DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "shared", "iam-ondb")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_dir", default=DEFAULT_DATA, help="IAM-OnDB folder (default: ../shared/iam-ondb)")
    args = parser.parse_args()
    if not os.path.exists(os.path.join(args.data_dir, data_preprocessing.STROKE_ARCHIVE)):
        print(f"skipped: no {data_preprocessing.STROKE_ARCHIVE} in {os.path.abspath(args.data_dir)}")
        return 0
    with tempfile.TemporaryDirectory() as out_dir:
        start = time.perf_counter()
        summary = data_preprocessing.preprocess(args.data_dir, out_dir, verbose=False)
        total = time.perf_counter() - start
        size = sum(os.path.getsize(os.path.join(out_dir, f)) for f in os.listdir(out_dir))
    lines = sum(summary.lines.values())
    points = sum(p[3] for p in summary.points.values())
    print(f"total            {total:6.1f} s   ({lines / total:,.0f} lines/s, {points / total / 1e6:.2f} M points/s)")
    print(f"  XML parsing    {summary.parse_seconds:6.1f} s")
    print(f"  everything else before saving (decompression, cleaning, normalising) "
          f"{summary.seconds_before_saving - summary.parse_seconds:.1f} s")
    print(f"  saving         {summary.seconds - summary.seconds_before_saving:6.1f} s   ({size / 1e6:.0f} MB)")
    print(f"lines kept: {summary.lines['train']:,} train, {summary.lines['validation']:,} validation; "
          f"{points:,} points; {os.cpu_count()} CPU cores")
    return 0


if __name__ == "__main__":
    sys.exit(main())
