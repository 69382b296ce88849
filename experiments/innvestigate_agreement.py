"""The paper's toolbox, measured: iNNvestigate's LRP presets on a Keras copy of a trained aujax ResNet-18 (BatchNorm
kept), against aujax's composites with BatchNorm folded (`config.explain.batch_norm="fold"`) and treated as
iNNvestigate treats it ("innvestigate": 2.1.2, "innvestigate_v1": 1.0.8).

Two steps in two virtual environments (iNNvestigate 2.1.2 needs TensorFlow 2.14 and numpy < 2; aujax needs jax):

  .venv/bin/python -m experiments.innvestigate_agreement export --workdir=runs/default [--images=16]
  python3.11 -m venv ~/venv-inn && ~/venv-inn/bin/pip install -r experiments/requirements-innvestigate.txt
  ~/venv-inn/bin/python experiments/innvestigate_agreement.py compare --workdir=runs/default  # ~25 min on 2 cores

`export` writes <workdir>/results/innvestigate/export.npz (the best fold's variables by name path, the first held-out
images, their AU region masks, aujax's logits and pixel heatmaps of `paper` and `epsilon_alpha2_beta1_flat` under
each BatchNorm treatment) and graph.json (the network's nodes). `compare` builds the Keras model from those two
files (no aujax, no jax; no pickle), checks its logits against aujax's, runs LRPSequentialPresetAFlat and
PresetBFlat, and writes agreement.json and agreement.md beside them (per AU: the Pearson r per image between the
heatmaps, the relevance sums relative to the logit and μ, from both toolboxes; innvestigate.npz keeps iNNvestigate's
heatmaps, so that a rerun only recomputes the statistics). Not part of CI; results: docs/lrp.md.
"""

import argparse
import json
import os
import sys

import numpy as np

PAIRS = {"LRPSequentialPresetAFlat": "paper", "LRPSequentialPresetBFlat": "epsilon_alpha2_beta1_flat"}
TREATMENTS = ("fold", "innvestigate", "innvestigate_v1")


def _out_dir(workdir: str) -> str:
    return os.path.join(workdir, "results", "innvestigate")


def export(workdir: str, images: int) -> None:
    """The aujax side (jax): variables, images, masks, logits and heatmaps of the best fold's model."""
    import dataclasses

    import jax.numpy as jnp

    from aujax import lrp, pipeline, protocol, regions, rundir
    from aujax.configs import default

    run = rundir.RunDir(workdir)
    if not os.path.exists(run.config):
        raise SystemExit(f"--workdir={workdir}: no config.json there; train first (python -m aujax.main "
                         f"--workdir={workdir})")
    config = default.get_config()
    pipeline.adopt_run_settings(workdir, config)
    roles = protocol.load_roles(config)
    outcome = protocol.loso_outcome(config, workdir, roles)
    index = outcome.results[outcome.best].test_index[:images]
    pixels = outcome.resident.image[index].astype(np.float32) / 255.0
    aus = outcome.resident.au_ids
    graph = protocol.create_model(config).graph
    arrays = {"images": pixels, "au_ids": np.asarray(aus), "labels": outcome.resident.labels[index],
              "masks": np.asarray(regions.au_region_masks(jnp.asarray(outcome.resident.landmarks[index]), aus=aus))}
    for collection, tree in outcome.variables.items():
        for path, leaf in _flat(tree):
            arrays[f"{collection}/{path}"] = np.asarray(leaf)
    for treatment in TREATMENTS:
        canonical = lrp.canonize(outcome.variables, graph, batch_norm=treatment)
        for composite in PAIRS.values():
            logits, relevance = lrp.make_explain_fn(composite, config.explain.epsilon)(canonical, pixels)
            arrays[f"aujax/{composite}/{treatment}"] = np.asarray(lrp.pixel_heatmaps(relevance))
            arrays["logits"] = np.asarray(logits)
    out = _out_dir(workdir)
    os.makedirs(out, exist_ok=True)
    np.savez_compressed(os.path.join(out, "export.npz"), **arrays)
    nodes = [{"kind": type(node).__name__, **dataclasses.asdict(node)} for node in graph.nodes]
    with open(os.path.join(out, "graph.json"), "w") as f:
        json.dump({"nodes": nodes, "output": graph.output, "epsilon": config.explain.epsilon}, f, indent=1)
    print(f"wrote {out}/export.npz and graph.json ({len(index)} images, AUs {list(aus)})")


def _flat(tree, prefix=""):
    for key, value in tree.items():
        path = f"{prefix}/{key}" if prefix else key
        yield from (_flat(value, path) if isinstance(value, dict) else [(path, value)])


# ---------------------------------------------------------------------------------------------------------------
# The iNNvestigate side (TensorFlow): nothing of aujax is imported


def keras_model(graph: dict, arrays):
    """The aujax graph as a Keras functional model on images padded by the stem's padding (so that the stem
    convolution reads the input directly and iNNvestigate's input-layer rule, flat, applies to it: iNNvestigate
    ignores only Flatten / Permute / Reshape between the input and that layer). BatchNorm stays BatchNormalization,
    ReLU is Activation('relu') (iNNvestigate passes an Activation's relevance through). Returns (model, stem pad)."""
    from tensorflow import keras

    layers = keras.layers
    nodes = graph["nodes"]
    stem_pad = nodes[0]["padding"]
    height, width = arrays["images"].shape[1:3]
    inputs = keras.Input((height + sum(stem_pad[0]), width + sum(stem_pad[1]), 3))
    values = {"input": inputs}
    weights = []
    for number, node in enumerate(nodes):
        kind, name, x = node["kind"], node["name"].replace("/", "__"), [values[n] for n in node["inputs"]]
        params = f"params/{node['name']}"
        if kind == "Conv":
            padding = node["padding"] if number else ((0, 0), (0, 0))
            if any(p for pair in padding for p in pair):
                x = [layers.ZeroPadding2D(tuple(map(tuple, padding)), name=name + "_pad")(x[0])]
            layer = layers.Conv2D(node["features"], tuple(node["kernel"]), tuple(node["strides"]), "valid",
                                  dilation_rate=tuple(node["dilation"]), groups=node["groups"],
                                  use_bias=node["use_bias"], name=name)
            weights.append((layer, [arrays[f"{params}/kernel"]]
                            + ([arrays[f"{params}/bias"]] if node["use_bias"] else [])))
        elif kind == "BatchNorm":
            layer = layers.BatchNormalization(epsilon=node["epsilon"], name=name)
            stats = f"batch_stats/{node['name']}"
            weights.append((layer, [arrays[f"{params}/scale"], arrays[f"{params}/bias"], arrays[f"{stats}/mean"],
                                    arrays[f"{stats}/var"]]))
        elif kind == "Relu":
            layer = layers.Activation("relu", name=name)
        elif kind == "MaxPool":
            # zero padding is exact after a ReLU (inputs >= 0)
            x = [layers.ZeroPadding2D(tuple(map(tuple, node["padding"])), name=name + "_pad")(x[0])]
            layer = layers.MaxPooling2D(tuple(node["window"]), tuple(node["strides"]), "valid", name=name)
        elif kind == "Add":
            layer = layers.Add(name=name)
        elif kind == "GlobalAvgPool":
            layer = layers.GlobalAveragePooling2D(name=name)
        elif kind == "Dense":
            layer = layers.Dense(node["features"], use_bias=node["use_bias"], name=name)
            weights.append((layer, [arrays[f"{params}/kernel"]]
                            + ([arrays[f"{params}/bias"]] if node["use_bias"] else [])))
        else:
            raise SystemExit(f"graph node {node['name']}: {kind} has no Keras counterpart here (ResNet nodes only)")
        values[node["name"]] = layer(x if kind == "Add" else x[0])
    model = keras.Model(inputs, values[graph["output"]])
    for layer, leaves in weights:
        layer.set_weights(leaves)
    return model, stem_pad


def _pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per row of (n, P) arrays."""
    a, b = a - a.mean(1, keepdims=True), b - b.mean(1, keepdims=True)
    return (a * b).sum(1) / np.sqrt((a * a).sum(1) * (b * b).sum(1) + 1e-30)


def _mu(heatmaps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """μ per image of (n, h, w) heatmaps and masks: positive relevance inside / positive relevance."""
    positive = np.maximum(heatmaps, 0)
    return (positive * masks).sum((1, 2)) / np.maximum(positive.sum((1, 2)), 1e-30)


def compare(workdir: str) -> None:
    out = _out_dir(workdir)
    arrays = dict(np.load(os.path.join(out, "export.npz")))
    cached = os.path.join(out, "innvestigate.npz")
    with open(os.path.join(out, "graph.json")) as f:
        graph = json.load(f)
    if not os.path.exists(cached):  # computing is slow (minutes per preset on a CPU): keep it for a rerun
        np.savez_compressed(cached, **innvestigate_relevance(graph, arrays))
    inn_arrays = dict(np.load(cached))
    logits = inn_arrays["logits"]
    logit_error = float(np.abs(logits - arrays["logits"]).max())
    print(f"Keras copy: max |logit - aujax logit| = {logit_error:.2e} (logits up to {np.abs(logits).max():.2f})")
    aus, masks = [int(a) for a in arrays["au_ids"]], arrays["masks"]  # masks (n, A, h, w)
    report = {"images": len(logits), "logit_max_abs_error": logit_error, "presets": {}}
    for preset, composite in PAIRS.items():
        rows = []
        for j, au in enumerate(aus):
            inn = inn_arrays[f"{preset}/heatmaps"][j]
            row = {"au": au, "innvestigate_sum_over_logit": _median_ratio(inn_arrays[f"{preset}/sums"][j],
                                                                          logits[:, j]),
                   "innvestigate_mu": float(_mu(inn, masks[:, j]).mean())}
            for treatment in TREATMENTS:
                ours = arrays[f"aujax/{composite}/{treatment}"][j]
                r = _pearson(inn.reshape(len(inn), -1), ours.reshape(len(ours), -1))
                row[treatment] = {"r_min": float(r.min()), "r_median": float(np.median(r)),
                                  "sum_over_logit": _median_ratio(ours.sum((1, 2)), arrays["logits"][:, j]),
                                  "mu": float(_mu(ours, masks[:, j]).mean())}
            rows.append(row)
            print(preset, f"AU{au}", json.dumps(row), flush=True)
        report["presets"][preset] = {"composite": composite, "aus": rows}
    with open(os.path.join(out, "agreement.json"), "w") as f:
        json.dump(report, f, indent=2)
    table = _table(report)
    with open(os.path.join(out, "agreement.md"), "w") as f:
        f.write(table)
    print(table)


def innvestigate_relevance(graph: dict, arrays: dict) -> dict:
    """{'logits': (n, A) of the Keras copy, '<preset>/heatmaps': (A, n, h, w) pixel heatmaps (the padding's share
    dropped), '<preset>/sums': (A, n) relevance sums over the padded input}."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import innvestigate
    import tensorflow as tf

    tf.compat.v1.disable_eager_execution()
    model, pad = keras_model(graph, arrays)
    padded = np.pad(arrays["images"], ((0, 0), tuple(pad[0]), tuple(pad[1]), (0, 0)))
    (top, _), (left, _) = pad
    height, width = arrays["images"].shape[1:3]
    result = {"logits": model.predict(padded, verbose=0)}
    for preset in PAIRS:
        analyzer = getattr(innvestigate.analyzer, preset)(model, neuron_selection_mode="index",
                                                          epsilon=graph["epsilon"])
        parts = [analyzer.analyze(padded, neuron_selection=j) for j in range(len(arrays["au_ids"]))]
        result[f"{preset}/heatmaps"] = np.stack([p[:, top:top + height, left:left + width].sum(-1) for p in parts])
        result[f"{preset}/sums"] = np.stack([p.sum((1, 2, 3)) for p in parts])
        print(f"{preset}: done", flush=True)
    return result


def _median_ratio(sums: np.ndarray, logits: np.ndarray) -> float:
    """The median over images of relevance sum / logit."""
    return float(np.median(sums / np.where(np.abs(logits) < 1e-12, 1e-12, logits)))


def _table(report: dict) -> str:
    lines = [f"iNNvestigate against aujax on {report['images']} images (max |logit difference| "
             f"{report['logit_max_abs_error']:.1e}); r: Pearson per image (min / median), sum: median relevance "
             "sum / logit, μ: mean over the images (all images, not only correctly predicted ones)", ""]
    for preset, part in report["presets"].items():
        lines += [f"{preset} vs `{part['composite']}`", "",
                  "| AU | iNN sum | iNN μ | " + " | ".join(f"{t}: r min / med, sum, μ" for t in TREATMENTS) + " |",
                  "| --- " * (3 + len(TREATMENTS)) + "|"]
        for row in part["aus"]:
            cells = [f"{row[t]['r_min']:.3f} / {row[t]['r_median']:.3f}, {row[t]['sum_over_logit']:.3g}, "
                     f"{row[t]['mu']:.3f}" for t in TREATMENTS]
            lines.append(f"| AU{row['au']} | {row['innvestigate_sum_over_logit']:.3g} | "
                         f"{row['innvestigate_mu']:.3f} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("step", choices=("export", "compare"), help="export (aujax venv) or compare (iNNvestigate)")
    parser.add_argument("--workdir", required=True, help="a trained run's work directory")
    parser.add_argument("--images", type=int, default=16, help="held-out images of the best fold (export)")
    args = parser.parse_args(argv)
    if args.step == "export":
        export(args.workdir, args.images)
    else:
        compare(args.workdir)


if __name__ == "__main__":
    main(sys.argv[1:])
