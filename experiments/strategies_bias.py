"""Do the strategies (SpRAy) find a spurious cue without being told about it? Train the bias experiment's model with the
corner mark on half of the AU4 images, then check how the AU4 clusters of the cv role split the marked images.

  python -m experiments.strategies_bias --workdir=runs/strategies_bias [--probability=0.5] [-- extra aujax.main flags]

The run knows nothing of the mark: `results/strategies_cv.json` clusters the AU4 heatmaps of the correctly predicted
images. Afterwards, which images carry the mark is read off the data (each explained image rendered again without
the cue: the marked ones differ in the top-left corner). Passes when one AU4 cluster holds at least 90 % of the marked
images at a purity of at least 90 %. Writes <workdir>/strategies_bias.md|json and prints the table; the figure is
<workdir>/results/figures/strategies_cv.png.
"""

import argparse
import json
import os
import subprocess
import sys

import ml_collections
import numpy as np

from aujax import facs, files
from aujax.data import sources

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AU = 4
CORNER = 20  # px: the mark lies within the top-left 20 x 20 pixels (`aujax.data.synthetic._draw_cue`)
REQUIRED = 0.9


def run(workdir: str, probability: float, extra: list[str]) -> None:
    command = [sys.executable, "-m", "aujax.main", "--config=bias", f"--workdir={workdir}",
               f"--config.synthetic.spurious_cue_au={AU}", f"--config.synthetic.spurious_cue_probability={probability}",
               *extra]
    print("running:", " ".join(command), flush=True)
    subprocess.run(command, cwd=REPO, check=True)


def marked_sources(workdir: str) -> set[str]:
    """Sources of the cv role's images that carry the mark: those whose render without the cue differs in the
    corner."""
    record = files.read_json(os.path.join(workdir, "config.json"))
    settings = ml_collections.ConfigDict(record["synthetic"])
    aus = facs.resolve_aus(record.get("aus", "pain"))
    with_cue = sources.synthetic_role("cv", settings, aus)
    settings.spurious_cue_au = 0
    without = sources.synthetic_role("cv", settings, aus)
    corner = (slice(None), slice(0, CORNER), slice(0, CORNER))
    differs = np.any(np.asarray(with_cue.image)[corner] != np.asarray(without.image)[corner], axis=(1, 2, 3))
    return set(with_cue.source[differs])


def cluster_table(strategies: dict, marked: set[str]) -> tuple[list[dict], dict]:
    """Per AU4 cluster its size, marked images, μ; and the verdict for the cluster holding most marked images."""
    entry = strategies["aus"][f"AU{AU}"]
    images = entry["images"]
    total_marked = sum(image["source"] in marked for image in images)
    rows = []
    for cluster in entry["clusters"]:
        members = [image["source"] for image in images if image["cluster"] == cluster["id"]]
        holds = sum(source in marked for source in members)
        rows.append({"cluster": cluster["id"], "images": len(members), "marked": holds,
                     "purity": holds / len(members), "share of marked": holds / max(total_marked, 1),
                     "mu": cluster["mu"]})
    best = max(rows, key=lambda r: r["marked"])
    verdict = {"explained AU4 images": len(images), "marked": total_marked, "cluster": best["cluster"],
               "share of marked": best["share of marked"], "purity": best["purity"],
               "passes": best["share of marked"] >= REQUIRED and best["purity"] >= REQUIRED}
    return rows, verdict


def markdown(rows: list[dict], verdict: dict) -> str:
    cell = lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + " --- |" * len(rows[0])]
    lines += ["| " + " | ".join(cell(v) for v in row.values()) + " |" for row in rows]
    lines.append(f"\nCluster {verdict['cluster']} holds {verdict['share of marked']:.0%} of the {verdict['marked']} "
                 f"marked images among {verdict['explained AU4 images']} correctly predicted AU4 images, at "
                 f"{verdict['purity']:.0%} purity: {'passes' if verdict['passes'] else 'FAILS'} (both >= 90 %).")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="runs/strategies_bias")
    parser.add_argument("--probability", type=float, default=0.5, help="share of the AU4 images with the mark")
    parser.add_argument("--analyse_only", action="store_true", help="read a finished run, do not run aujax")
    parser.add_argument("extra", nargs="*", help="further aujax.main flags (after --)")
    args = parser.parse_args()
    if not args.analyse_only:
        run(args.workdir, args.probability, args.extra)
    with open(os.path.join(args.workdir, "results", "strategies_cv.json")) as f:
        rows, verdict = cluster_table(json.load(f), marked_sources(args.workdir))
    text = markdown(rows, verdict)
    with open(os.path.join(args.workdir, "strategies_bias.md"), "w") as f:
        f.write(text + "\n")
    files.write_json(os.path.join(args.workdir, "strategies_bias.json"), {"clusters": rows, "verdict": verdict})
    print(text)


if __name__ == "__main__":
    main()
