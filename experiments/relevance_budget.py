"""Where LRP relevance goes on a trained model: the shares dropped (z+ units without positive input) and absorbed
(biases, stabilizers) per stage, on the held-out images of the best fold.

  python -m experiments.relevance_budget --workdir=runs/default [--composite=paper] [--images=64]

Reads a finished run (`--mode=train` or `all`) with its own settings, and writes
<workdir>/results/relevance_budget_<composite>.md and .json; prints the table.
"""

import argparse
import json
import os

import numpy as np


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", required=True, help="a trained run's work directory")
    parser.add_argument("--composite", default="paper", help="an LRP composite (not a gradient baseline)")
    parser.add_argument("--images", type=int, default=64, help="held-out images of the best fold to explain")
    args = parser.parse_args(argv)

    from aujax import lrp, pipeline, protocol, rundir
    from aujax.configs import default

    run = rundir.RunDir(args.workdir)
    if not os.path.exists(run.config):
        parser.error(f"--workdir={args.workdir}: no config.json there; train first (python -m aujax.main "
                     f"--workdir={args.workdir})")
    config = default.get_config()
    pipeline.adopt_run_settings(args.workdir, config)
    roles = protocol.load_roles(config)
    outcome = protocol.loso_outcome(config, args.workdir, roles)
    held_out = outcome.results[outcome.best]
    index = held_out.test_index[: args.images]
    images = outcome.resident.image[index].astype(np.float32) / 255.0
    budget = lrp.relevance_budget(outcome.variables, images, args.composite, config.explain.epsilon)
    shares = lrp.budget_shares(budget)
    heading = (f"Relevance budget of the `{args.composite}` composite: {len(index)} held-out images of subject "
               f"{held_out.name} (best fold), shares of the summed |logit| over the 8 AUs")
    table = heading + "\n\n" + lrp.budget_table(budget) + "\n"
    os.makedirs(run.results, exist_ok=True)
    with open(run.result(f"relevance_budget_{args.composite}.md"), "w") as f:
        f.write(table)
    with open(run.result(f"relevance_budget_{args.composite}.json"), "w") as f:
        json.dump({"composite": args.composite, "subject": held_out.name, "images": len(index), "shares": shares},
                  f, indent=2)
    print(table)


if __name__ == "__main__":
    main()
