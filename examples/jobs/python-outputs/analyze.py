"""Summarise a CSV of sales per region; writes report.txt and figures/totals.txt."""

import argparse
import csv
import pathlib
from collections import defaultdict

parser = argparse.ArgumentParser()
parser.add_argument("--dataset", required=True)
opts = parser.parse_args()

totals: dict[str, float] = defaultdict(float)
with open(opts.dataset, newline="") as fh:
    for row in csv.DictReader(fh):
        totals[row["region"]] += float(row["amount"])

pathlib.Path("figures").mkdir(exist_ok=True)
bars = "\n".join(f"{region:6} {'#' * int(total // 20)} {total:.2f}"
                 for region, total in sorted(totals.items()))
pathlib.Path("figures/totals.txt").write_text(bars + "\n")
pathlib.Path("report.txt").write_text(f"regions={len(totals)} total={sum(totals.values()):.2f}\n")
print(f"analysed {opts.dataset}: {len(totals)} regions")
