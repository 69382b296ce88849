"""Does μ catch a biased model? Train the same model on clean synthetic data and on data where a background mark goes
with one AU (in the `train` and `cv` roles only), then compare F1 and μ of that AU.

  python experiments/bias_experiment.py --workdir=runs/bias [--au=4] [-- extra aujax.main flags]

Expected: F1 on data with the cue (LOSO on the cv role) stays similar, F1 on clean data (the cross role) drops, and μ
of the cued AU drops sharply for the biased model. Writes <workdir>/bias_table.csv|md and prints the table.
"""

import argparse
import csv
import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_arm(workdir: str, cue_au: int, extra: list[str]) -> None:
    command = [sys.executable, "-m", "aujax.main", "--config=experiments/bias.py", f"--workdir={workdir}",
               f"--config.synthetic.spurious_cue_au={cue_au}", *extra]
    print("running:", " ".join(command), flush=True)
    subprocess.run(command, cwd=REPO, check=True)


def au_value(path: str, method_part: str, metric: str, au: int):
    with open(path) as f:
        rows = json.load(f)["rows"]
    for row in rows:
        if method_part in row["method"]:
            return row["scores"][f"AU{au}"].get(metric)
    raise KeyError(f"{path}: no row with {method_part!r}")


def arm_row(name: str, workdir: str, au: int) -> dict:
    results = os.path.join(workdir, "results")
    return {
        "model": name,
        f"AU{au} F1, cv (LOSO, cue present)": au_value(os.path.join(results, "table1_f1.json"), "pooled", "f1", au),
        f"AU{au} F1, cross (clean)": au_value(os.path.join(results, "table2_cross_f1.json"), "ResNet", "f1", au),
        f"AU{au} μ, cv (cue present)": au_value(os.path.join(results, "table3_mu.json"), "synthetic_cv", "mu", au),
        f"AU{au} μ, cross (clean)": au_value(os.path.join(results, "table3_mu.json"), "synthetic_cross", "mu", au),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="runs/bias")
    parser.add_argument("--au", type=int, default=4, help="the AU the cue goes with")
    parser.add_argument("extra", nargs="*", help="further aujax.main flags (after --)")
    args = parser.parse_args()
    arms = {"clean": os.path.join(args.workdir, "clean"), f"biased (cue with AU{args.au})":
            os.path.join(args.workdir, "biased")}
    run_arm(arms["clean"], 0, args.extra)
    run_arm(arms[f"biased (cue with AU{args.au})"], args.au, args.extra)
    rows = [arm_row(name, workdir, args.au) for name, workdir in arms.items()]
    columns = list(rows[0])
    cell = lambda v: "n/a" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))
    table = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    table += ["| " + " | ".join(cell(r[c]) for c in columns) + " |" for r in rows]
    with open(os.path.join(args.workdir, "bias_table.md"), "w") as f:
        f.write("\n".join(table) + "\n")
    with open(os.path.join(args.workdir, "bias_table.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    print("\n".join(table))


if __name__ == "__main__":
    main()
