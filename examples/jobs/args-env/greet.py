"""Greet someone a number of times, with the greeting taken from the environment."""

import argparse
import os

parser = argparse.ArgumentParser()
parser.add_argument("--name", required=True)
parser.add_argument("--times", type=int, default=1)
opts = parser.parse_args()
for _ in range(opts.times):
    print(f"{os.environ['GREETING']}, {opts.name}!")
