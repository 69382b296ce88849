"""Verification stage: explain the best fold's model on the datasets of all three roles, score every heatmap with
the AU regions (μ and the other localisation metrics), and write Table 3, the μ-beside-F1 table, per-subject μ and
the figures.

For each composite in `config.explain.composites` (the first is the main one, the rest are compared with it) and
each role, the first `config.explain.max_images` images are explained in batches split over all devices of all
hosts; one jitted function per batch runs the forward pass, the LRP backward pass for all 8 AUs, the region masks
and the metrics, so heatmaps never leave the device. μ counts only correctly predicted AUs (label 1 and prediction
1), as in the paper.
"""

import csv
import functools
import hashlib
import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from aujax import facs, files, localisation, lrp, metrics, regions, report, train
from aujax.data import records as records_lib

OTHER_METRICS = ("mass_accuracy", "rank_accuracy", "pointing_game", "top_k_intersection", "roc_auc")


@functools.lru_cache(maxsize=None)
def explain_and_score_fn(composite: str, epsilon: float, metrics: tuple[str, ...] = localisation.METRIC_NAMES,
                         mesh: Mesh | None = None):
    """jitted `(canonical, images uint8 (b,112,112,3), landmarks (b,68,2)) -> (probabilities (b,8), scores)`,
    scores holding the localisation `metrics`; with `mesh`, the outputs are replicated over it (so that every process
    can read them whatever the inputs' sharding)."""
    explain_fn = lrp.make_explain_fn(composite, epsilon)

    def explain_and_score(canonical, images, landmarks):
        logits, relevance = explain_fn(canonical, images.astype(jnp.float32) / 255.0)
        scores = localisation.localisation_metrics(lrp.pixel_heatmaps(relevance), regions.au_region_masks(landmarks),
                                                   names=metrics)
        return jax.nn.sigmoid(logits), scores

    return jax.jit(explain_and_score, out_shardings=None if mesh is None else NamedSharding(mesh, P()))


def explain_records(canonical: dict, records: records_lib.FaceRecords, composites: tuple[str, ...], epsilon: float,
                    batch_size: int, mesh: Mesh, metrics: tuple[str, ...] = localisation.METRIC_NAMES
                    ) -> dict[str, tuple[np.ndarray, localisation.LocalisationScores]]:
    """{composite: (probabilities (n, 8), localisation scores ((n, 8) per metric))} of every image of `records`.

    Each batch is split over the devices of `mesh` (data parallel; `batch_size` a multiple of their number); each
    process reads only the images and landmarks of its own devices, once per batch for all `composites`. Batches come
    from `records.padded_batches`, so one compiled function per composite serves all of them.
    """
    fns = {composite: explain_and_score_fn(composite, epsilon, metrics, mesh) for composite in composites}
    probabilities, parts, read = {c: [] for c in composites}, {c: [] for c in composites}, 0
    for index, valid in records_lib.padded_batches(np.arange(len(records)), batch_size):
        (images, held), (landmarks, _) = (train.put_rows(column, index, mesh)
                                          for column in (records.image, records.landmarks))
        read += held
        for composite, fn in fns.items():
            prob, scores = fn(canonical, images, landmarks)
            probabilities[composite].append(np.asarray(prob)[:valid])
            parts[composite].append(jax.tree_util.tree_map(lambda a: np.asarray(a)[:valid], scores))
    logging.info("%s: process %d read %d of %d images", records.name, jax.process_index(), read, len(records))
    return {c: (np.concatenate(probabilities[c]), localisation.concatenate_scores(parts[c], facs.NUM_AUS, metrics))
            for c in composites}


def _scores_row(summaries: dict, keys: tuple[str, ...]) -> dict:
    """{'AU4': {key: value, 'reason': ...}, ...} for `report.write_table` from {metric: tuple of AUSummary}."""
    row = {}
    for j, au in enumerate(facs.AU_IDS):
        mu = summaries["mu"][j]
        entry = {"n": mu.n, "n_excluded": mu.n_excluded, "reason": mu.reason or ""}
        for key in keys:
            if key not in ("n", "n_excluded"):
                entry[key] = summaries[key][j].mean
        row[f"AU{au}"] = entry
    return row


class RoleResult:
    """One role's explained subset under one composite."""

    def __init__(self, records, probabilities, scores, threshold):
        self.records = records
        self.probabilities = probabilities
        self.scores = scores
        self.predictions = metrics.decisions(probabilities, threshold)
        self.selected = localisation.correct_positives(records.labels, self.predictions)
        self.summaries = localisation.summarise_scores(scores, self.selected)


def run_explain(config, workdir: str, roles: dict, variables: dict, best_subject: str,
                histories: dict) -> None:
    """Explain, score and draw; everything lands under `workdir/results`."""
    from aujax import figures, html_report  # matplotlib only where figures are drawn

    results_dir = os.path.join(workdir, "results")
    figures_dir = os.path.join(results_dir, "figures")
    cfg = config.explain
    canonical = lrp.canonize(variables)
    mesh = train.make_mesh()
    composites = [cfg.composite] + [c for c in cfg.compare if c != cfg.composite]
    by_composite = {}
    for role, records in roles.items():
        subset = records.select(np.arange(min(len(records), cfg.max_images or len(records))))
        logging.info("explaining %s (%s role, %d images) with %s", records.name, role, len(subset),
                     ", ".join(composites))
        explained = explain_records(canonical, subset, tuple(composites), cfg.epsilon, cfg.batch_size, mesh,
                                    tuple(cfg.metrics))
        for composite, (probabilities, scores) in explained.items():
            by_composite[composite, role] = RoleResult(subset, probabilities, scores, config.model.threshold)
    if jax.process_index() != 0:
        return
    canonical = jax.device_get(canonical)  # the figures' few heatmaps: this process alone, on its default device
    main = {role: by_composite[cfg.composite, role] for role in roles}
    table3 = report.write_table(
        results_dir, "table3_mu", f"Table 3: μ (share of positive relevance inside the AU's region) and n "
        f"(correctly predicted AUs), model of the best fold ({best_subject})",
        [{"method": f"{by_composite[c, r].records.name} {c}", "scores": _scores_row(by_composite[c, r].summaries,
                                                                                  ("mu", "n"))}
         for c in composites for r in roles], ("mu", "n"))
    others = tuple(name for name in ("mu_weighted",) + OTHER_METRICS if name in cfg.metrics)
    if others:
        report.write_table(
            results_dir, "table3_all_metrics", f"Localisation metrics of the {cfg.composite} heatmaps (correctly "
            "predicted AUs)",
            [{"method": main[r].records.name, "scores": _scores_row(main[r].summaries, others)} for r in roles],
            others + ("n_excluded",))
    mu_f1 = report.write_table(
        results_dir, "table_mu_f1", f"μ beside F1 ({cfg.composite}, model of the best fold)",
        [row for r in roles for row in _mu_f1_rows(main[r], config.protocol.min_support)], ("value",))
    _write_per_subject(os.path.join(results_dir, "mu_per_subject.csv"), main)
    print(table3, mu_f1, sep="\n\n", flush=True)

    first = main["cv"].records
    figures.figure1_regions(first.image[0], first.landmarks[0], os.path.join(figures_dir, figures.FIGURE1_FILE))
    _figure2_panels(canonical, main["cv"], cfg, figures_dir)
    for role, result in main.items():
        _heatmap_grid(canonical, result.records, cfg,
                      os.path.join(figures_dir, f"{figures.HEATMAP_GRID_PREFIX}_{role}.png"))
    figures.training_curves(histories, os.path.join(figures_dir, figures.TRAINING_CURVES_FILE))
    figures.mu_distributions(
        {main[r].records.name: figures.mu_by_au(main[r].scores.values["mu"],
                                                main[r].selected & main[r].scores.defined["mu"]) for r in roles},
        os.path.join(figures_dir, figures.MU_DISTRIBUTIONS_FILE))
    path = html_report.write_report(workdir)
    print(f"\nReport: {os.path.abspath(path)}", flush=True)


def _mu_f1_rows(result: RoleResult, min_support: int) -> list[dict]:
    f1 = metrics.per_au_scores(result.records.labels, result.predictions, min_support)
    mu = _scores_row(result.summaries, ("mu",))
    name = result.records.name
    return [{"method": f"{name} F1", "scores": {au: {"value": s["f1"], "reason": s["reason"]} for au, s in f1.items()}},
            {"method": f"{name} μ", "scores": {au: {"value": s["mu"], "reason": s["reason"]} for au, s in mu.items()}}]


def _write_per_subject(path: str, results: dict) -> None:
    rows = []
    for result in results.values():
        per_subject = localisation.summarise_per_subject(result.scores.values["mu"], result.selected,
                                                         result.scores.defined["mu"], result.records.subject)
        for subject, summaries in per_subject.items():
            for s in summaries:
                rows.append({"dataset": result.records.name, "subject": subject, "au": f"AU{s.au}",
                             "mu": "" if s.mean is None else f"{s.mean:.4f}", "n": s.n, "n_excluded": s.n_excluded})
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["dataset", "subject", "au", "mu", "n", "n_excluded"])
        writer.writeheader()
        writer.writerows(rows)


def _pixel_heatmaps_of(canonical, images: np.ndarray, cfg) -> np.ndarray:
    """(8, k, 112, 112) pixel heatmaps of k uint8 images under the main composite, in padded batches of
    `cfg.batch_size` so that one compiled function serves every call."""
    explain_fn = lrp.make_explain_fn(cfg.composite, cfg.epsilon)
    parts = []
    for index, valid in records_lib.padded_batches(np.arange(len(images)), cfg.batch_size):
        _, relevance = explain_fn(canonical, jnp.asarray(images[index], jnp.float32) / 255)
        parts.append(np.asarray(lrp.pixel_heatmaps(relevance))[:, :valid])
    return np.concatenate(parts, axis=1)


def _figure2_panels(canonical, result: RoleResult, cfg, figures_dir: str) -> None:
    """Per AU: the `examples_per_panel` lowest and highest μ among correctly predicted, defined pairs."""
    from aujax import figures

    mu = result.scores.values["mu"]
    chosen = {}
    for j, au in enumerate(facs.AU_IDS):
        usable = np.flatnonzero(result.selected[:, j] & result.scores.defined["mu"][:, j])
        if not len(usable):
            logging.info("figure 2: no correctly predicted AU%d to show", au)
            continue
        order = usable[np.argsort(mu[usable, j], kind="stable")]
        picked = np.unique(np.concatenate([order[: cfg.examples_per_panel], order[-cfg.examples_per_panel:]]))
        chosen[j] = picked[np.argsort(mu[picked, j], kind="stable")]
    if not chosen:
        return
    needed = np.unique(np.concatenate(list(chosen.values())))
    heatmaps = _pixel_heatmaps_of(canonical, result.records.image[needed], cfg)
    for j, picked in chosen.items():
        columns = np.searchsorted(needed, picked)
        figures.figure2_panel(facs.AU_IDS[j], result.records.image[picked], heatmaps[j, columns],
                              result.records.landmarks[picked], mu[picked, j],
                              os.path.join(figures_dir, figures.figure2_file(facs.AU_IDS[j])))


def _heatmap_grid(canonical, records, cfg, path: str) -> None:
    count = min(len(records), cfg.grid_images)
    heatmaps = _pixel_heatmaps_of(canonical, records.image[:count], cfg)
    titles = [f"{records.subject[i]} " + ",".join(str(a) for a, l in zip(facs.AU_IDS, records.labels[i]) if l)
              for i in range(count)]
    lrp.heatmaps.save_heatmap_grid(path, heatmaps, records.image[:count] / 255.0, titles)


def explain_image(config, workdir: str, image_path: str, checkpoint: str | None) -> dict:
    """Explain one photo: face crop, AU probabilities, per-AU heatmaps with regions and μ, as PNG and JSON.

    The model is the best fold's of the trained run in `workdir` (from `results/summary.json`), or the newest
    checkpoint in `checkpoint` (an orbax directory such as `<workdir>/checkpoints/fold_03/latest`). Outputs land in
    `workdir/explain_image/<name>/` (`explain_image_dir`): `<name>` is the image's stem for the first photo of that
    stem, `<stem>-<8 hex digits of a SHA-256 of its absolute path>` for a photo of the same stem elsewhere; explaining
    the same path again replaces its earlier result, and says so. μ is given for every AU (no label is known: it says
    where the model looks for each AU, whatever it decided).
    """
    from aujax import figures, protocol
    from aujax import model as model_lib
    from aujax.data import faces  # mediapipe only here

    if checkpoint is None:
        summary = files.read_json(os.path.join(workdir, "results", "summary.json"))
        if summary is None:
            raise FileNotFoundError(f"--workdir={workdir} holds no trained run (no results/summary.json): train with "
                                    "--mode=all first, or pass --checkpoint")
        checkpoint = os.path.join(protocol.fold_dir(workdir, summary["best_fold"]), "latest")
    trainer = train.Trainer(model_lib.create_model(config.model.widths), protocol.train_config(config),
                            train.make_mesh())
    variables = protocol.restore_variables(trainer, checkpoint)
    with faces.FaceCropper() as cropper:
        crop = cropper.crop_file(image_path)
    logits, relevance = lrp.explain_with_logits(variables, crop.image[None] / 255.0, config.explain.composite,
                                                config.explain.epsilon)
    heatmaps = np.asarray(lrp.pixel_heatmaps(relevance))[:, 0]
    scores = localisation.localisation_metrics(heatmaps[:, None], regions.au_region_masks(crop.landmarks[None]),
                                               names=tuple(config.explain.metrics))
    probabilities = np.asarray(jax.nn.sigmoid(logits))[0]
    mu = np.where(np.asarray(scores.defined["mu"])[0], np.asarray(scores.values["mu"])[0], np.nan)

    out_dir = explain_image_dir(os.path.join(workdir, "explain_image"), image_path)
    if os.path.isfile(os.path.join(out_dir, "result.json")):
        print(f"Replacing the earlier result of {image_path} in {os.path.abspath(out_dir)}", flush=True)
    os.makedirs(out_dir, exist_ok=True)
    from PIL import Image  # pillow comes with matplotlib

    Image.fromarray(crop.image).save(os.path.join(out_dir, "face_crop.png"))
    figures.save_figure(figures.explained_image_figure(crop.image, heatmaps, crop.landmarks, probabilities, mu,
                                                       config.model.threshold),
                        os.path.join(out_dir, "heatmaps.png"), dpi=150)
    result = {
        "image": os.path.abspath(image_path), "checkpoint": os.path.abspath(checkpoint),
        "composite": config.explain.composite, "faces_found": crop.num_faces, "face_box_xy_side": list(crop.box),
        "aus": {f"AU{au}": {"name": facs.AU_NAMES[au], "probability": float(probabilities[j]),
                            "present": bool(probabilities[j] >= config.model.threshold),
                            "mu": None if np.isnan(mu[j]) else float(mu[j])}
                for j, au in enumerate(facs.AU_IDS)},
    }
    files.write_json(os.path.join(out_dir, "result.json"), result)
    lines = [f"{image_path}: {crop.num_faces} face(s), explained with {config.explain.composite}",
             f"{'AU':<24}{'p':>6}  present  {'μ':>6}"]
    for key, entry in result["aus"].items():
        mu_text = "n/a" if entry["mu"] is None else f"{entry['mu']:.3f}"
        lines.append(f"{key + ' ' + entry['name']:<24}{entry['probability']:>6.3f}  {'yes' if entry['present'] else 'no':<7}"
                     f"  {mu_text:>6}")
    print("\n".join(lines) + f"\n\nOutputs in {os.path.abspath(out_dir)}", flush=True)
    return result


def explain_image_dir(root: str, image_path: str) -> str:
    """The directory under `root` for the results of the photo `image_path`, never one holding another photo's.

    It is `root/<stem>` or `root/<stem>-<8 hex digits of a SHA-256 of the absolute path>`: the one whose result.json
    names this photo, else the first without a result.json. ValueError where both hold other photos' results.
    """
    path = os.path.abspath(image_path)
    stem = os.path.splitext(os.path.basename(path))[0]
    digest = hashlib.sha256(path.encode()).hexdigest()[:8]
    candidates = [os.path.join(root, stem), os.path.join(root, f"{stem}-{digest}")]
    owners = [files.read_json(os.path.join(c, "result.json"), {}).get("image") for c in candidates]
    for wanted in (path, None):
        if wanted in owners:
            return candidates[owners.index(wanted)]
    raise ValueError(f"{' and '.join(candidates)} hold the results of other photos ({', '.join(owners)}); move one "
                     f"away to explain {path}")
