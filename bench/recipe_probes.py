"""The recipe-probe table of ``bench/results/recipe_probes/README.md``, rendered from the probe folders.

    .venv/bin/python -m bench.recipe_probes          # rewrite the table between the markers
    .venv/bin/python -m bench.recipe_probes --check  # exit 1 when README.md differs from the folders

Each probe folder holds the run's ``command.txt`` and its ``dev_curve.jsonl`` as ``pete-train`` wrote
it; the table shows the last row of each file: STS-B dev Spearman x100 overall and per genre, the mean
of the genres (the trainer's selection score), the median dev cosine of gold < 1 / gold >= 4 pairs,
and accuracy on the held-back half of SNLI dev where the run measured it.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from bench.common import REPO_ROOT

PROBES = REPO_ROOT / "bench" / "results" / "recipe_probes"
MARKERS = re.compile(r"(<!-- table \(python -m bench\.recipe_probes\) -->\n)(.*?)(<!-- /table -->)", re.S)


def row(name: str, r: dict) -> str:
    g = r["sts_dev_genres"]
    cos = r["sts_dev_cosine_by_gold"]
    nli = f"{r['snli_valid_acc']:.2f}" if "snli_valid_acc" in r else "–"
    return (f"| `{name}` | {r['stage']} {r['step']} | {r['sts_dev_spearman']:.2f} | {g['captions']:.1f} / "
            f"{g['news']:.1f} / {g['forums']:.1f} | {sum(g.values()) / len(g):.2f} | {cos['0-1']:.2f} / "
            f"{cos['4-5']:.2f} | {nli} |")


def table(root: Path = PROBES) -> str:
    lines = ["| probe | last stage, step | STS-B dev | captions / news / forums | genre mean | cos gold<1 / >=4 | "
             "SNLI dev held-back |", "|---|---|---|---|---|---|---|"]
    for d in sorted(p for p in root.iterdir() if (p / "dev_curve.jsonl").is_file()):
        last = json.loads((d / "dev_curve.jsonl").read_text().strip().splitlines()[-1])
        lines.append(row(d.name, last))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.recipe_probes", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true")
    args = p.parse_args(argv)
    readme = PROBES / "README.md"
    text = readme.read_text()
    if not MARKERS.search(text):
        raise ValueError(f"{readme} has no table markers")
    new = MARKERS.sub(lambda m: m.group(1) + table() + m.group(3), text)
    if args.check:
        return int(new != text)
    readme.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
