"""Explain one photo (`--mode=explain_image`): face crop, AU probabilities, per-AU heatmaps with regions and μ, as
PNG and JSON under `workdir/explain_image/<name>/`.

The model is the best fold's of the trained run in `workdir` (from `results/summary.json`), or the newest checkpoint
in `--checkpoint` (an orbax directory such as `<workdir>/checkpoints/fold_03/latest`). `<name>` is the image's stem
for the first photo of that stem, `<stem>-<8 hex digits of a SHA-256 of its absolute path>` for a photo of the same
stem elsewhere (`explain_image_dir`); explaining the same path again replaces its earlier result, and says so. μ is
given for every AU (no label is known: it says where the model looks for each AU, whatever it decided).
"""

import hashlib
import os

import jax
import numpy as np

from aujax import checkpoints, distributed, facs, files, localisation, lrp, regions, rundir
from aujax import model as model_lib


def explain_face(variables: dict, image: np.ndarray, landmarks: np.ndarray, cfg) -> tuple[np.ndarray, ...]:
    """(probabilities (8,), pixel heatmaps (8, 112, 112), μ (8,), NaN where undefined) of one face crop, image
    (112, 112, 3) uint8 and landmarks (68, 2), under `cfg.composite` (`config.explain`)."""
    logits, relevance = lrp.explain_with_logits(variables, image[None] / 255.0, cfg.composite, cfg.epsilon)
    heatmaps = np.asarray(lrp.pixel_heatmaps(relevance))[:, 0]
    scores = localisation.localisation_metrics(heatmaps[:, None], regions.au_region_masks(landmarks[None]),
                                               names=tuple(cfg.metrics))
    mu = np.where(np.asarray(scores.defined["mu"])[0], np.asarray(scores.values["mu"])[0], np.nan)
    return np.asarray(jax.nn.sigmoid(logits))[0], heatmaps, mu


def best_checkpoint(run: rundir.RunDir) -> str:
    """The `latest/` checkpoint directory of the best fold of the trained run in `run`."""
    summary = files.read_json(run.summary)
    if summary is None:
        raise FileNotFoundError(f"--workdir={run.root} holds no trained run (no results/summary.json): train with "
                                "--mode=all first, or pass --checkpoint")
    return run.fold(summary["best_fold"]).latest


def explain_image(config, workdir: str, image_path: str, checkpoint: str | None) -> dict:
    """Explain the photo `image_path` with the model of `checkpoint` (None: the run's best fold); write and print
    the result, and return result.json's content."""
    from aujax.data import faces  # mediapipe only here

    run = rundir.RunDir(workdir)
    checkpoint = checkpoint or best_checkpoint(run)
    variables = checkpoints.restore_variables(model_lib.create_model(config.model.widths), checkpoint,
                                              distributed.make_mesh())
    with faces.FaceCropper() as cropper:
        crop = cropper.crop_file(image_path)
    probabilities, heatmaps, mu = explain_face(variables, crop.image, crop.landmarks, config.explain)
    threshold = config.model.threshold
    result = {
        "image": os.path.abspath(image_path), "checkpoint": os.path.abspath(checkpoint),
        "composite": config.explain.composite, "faces_found": crop.num_faces, "face_box_xy_side": list(crop.box),
        "aus": {f"AU{au}": {"name": facs.AU_NAMES[au], "probability": float(probabilities[j]),
                            "present": bool(probabilities[j] >= threshold),
                            "mu": None if np.isnan(mu[j]) else float(mu[j])}
                for j, au in enumerate(facs.AU_IDS)},
    }
    out_dir = explain_image_dir(run.explain_image, image_path)
    if os.path.isfile(os.path.join(out_dir, "result.json")):
        print(f"Replacing the earlier result of {image_path} in {os.path.abspath(out_dir)}", flush=True)
    _write(out_dir, crop, heatmaps, probabilities, mu, threshold)
    files.write_json(os.path.join(out_dir, "result.json"), result)
    print(_table(image_path, crop.num_faces, result) + f"\n\nOutputs in {os.path.abspath(out_dir)}", flush=True)
    return result


def _write(out_dir: str, crop, heatmaps: np.ndarray, probabilities: np.ndarray, mu: np.ndarray,
           threshold: float) -> None:
    """face_crop.png and heatmaps.png of one explained face."""
    from PIL import Image  # pillow comes with matplotlib

    from aujax import figures  # matplotlib only here

    os.makedirs(out_dir, exist_ok=True)
    Image.fromarray(crop.image).save(os.path.join(out_dir, "face_crop.png"))
    figures.save_figure(figures.explained_image_figure(crop.image, heatmaps, crop.landmarks, probabilities, mu,
                                                       threshold),
                        os.path.join(out_dir, "heatmaps.png"), dpi=150)


def _table(image_path: str, num_faces: int, result: dict) -> str:
    lines = [f"{image_path}: {num_faces} face(s), explained with {result['composite']}",
             f"{'AU':<24}{'p':>6}  present  {'μ':>6}"]
    for key, entry in result["aus"].items():
        mu_text = "n/a" if entry["mu"] is None else f"{entry['mu']:.3f}"
        lines.append(f"{key + ' ' + entry['name']:<24}{entry['probability']:>6.3f}  "
                     f"{'yes' if entry['present'] else 'no':<7}  {mu_text:>6}")
    return "\n".join(lines)


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
