"""Time each stage of the demo (precompute, distill, evaluate) on the bundled clips.

Usage: python benchmarks/bench_demo.py [--epochs 2]
"""

from __future__ import annotations

import argparse
import logging
import platform
import tempfile
import time
from pathlib import Path

import torch
import yaml

from stages.demo import run_demo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2, help="training epochs (the demo's default is 2)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    with tempfile.TemporaryDirectory() as directory:
        started = time.perf_counter()
        run_demo(Path(directory), epochs=args.epochs)
        total = time.perf_counter() - started
        timings = yaml.safe_load((Path(directory) / "timings.yaml").read_text())

    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads")
    for stage, seconds in timings.items():
        print(f"{stage:<11} {seconds:7.1f} s")
    print(f"{'total':<11} {total:7.1f} s (model writing and imports included)")


if __name__ == "__main__":
    main()
