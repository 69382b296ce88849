"""Score heatmaps made elsewhere (`--mode=score`): μ and the other localisation metrics of relevance maps from any
explainer (Zennit, Captum, iNNvestigate, ...), with aujax's AU regions, written as Table 3, figures and the report,
as for aujax's own heatmaps.

  --heatmaps=FILE     .npy, or .npz with a `heatmaps` member (or a single array): float (n, h, w) for one AU
                      (`--config.aus` names it) or (n, A, h, w) for the A AUs of `--config.aus`, in that order;
                      the relevance of the face crop the landmarks refer to, at any resolution
  --data=PATH         face records (a records directory or .npz, `aujax.data.records`: their images, landmarks and
                      labels), or a folder of images, sorted by file name, each the face crop its heatmap explains
                      (MediaPipe finds its 68 landmarks; an image without a face is refused, naming it)
  --labels=FILE       optional .npy (n, A) of 0/1 labels (records bring their own)
  --predictions=FILE  optional .npy (n, A) of 0/1 decisions or probabilities (`--threshold` decides)

Row i of the heatmaps is image i of the data; a different count is refused naming both. Which pairs μ counts: with
labels and predictions the correctly predicted AUs (label 1 and prediction 1), as for aujax's own heatmaps; with
labels only every labelled AU (the predictions are taken to be the labels, so F1 beside μ is 1 by construction);
with neither every pair.

Resampling: the landmarks' frame is the 112 x 112 face crop (records), or the image with its landmarks scaled to
112 x 112 along each axis (a folder). Every heatmap is resized to 112 x 112 with OpenCV, by area averaging where it
has more pixels (INTER_AREA) and bilinear interpolation where it has fewer (INTER_LINEAR); the regions are never
resampled. μ of a heatmap equal to a region's mask at another resolution stays 1 within interpolation error (at
the mask's edge pixels).
"""

import os

import jax
import numpy as np

from aujax import facs, figures, html_report, localisation, protocol, regions, report, rundir
from aujax import explain as explain_lib
from aujax.data import layouts
from aujax.data import records as records_lib

COMPOSITE = "external"  # the method name of the scored heatmaps in Table 3
ROLE = "score"
_CHUNK = 256  # images scored at a time (their region masks are (chunk, A, 112, 112))


def load_heatmaps(path: str, num_aus: int) -> np.ndarray:
    """float32 (n, num_aus, h, w) from a .npy or .npz file (see the module docstring); ValueError naming the file
    where it holds no such array."""
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ValueError(f"--heatmaps={path}: not a readable .npy or .npz file ({e})") from None
    if isinstance(loaded, np.lib.npyio.NpzFile):
        with loaded:
            names = loaded.files
            if "heatmaps" not in names and len(names) != 1:
                raise ValueError(f"--heatmaps={path}: an .npz needs a 'heatmaps' member or a single array; it holds "
                                 f"{', '.join(names)}")
            loaded = loaded["heatmaps" if "heatmaps" in names else names[0]]
    heatmaps = np.asarray(loaded)
    if heatmaps.ndim == 3 and num_aus == 1:
        heatmaps = heatmaps[:, None]
    if heatmaps.ndim != 4 or heatmaps.shape[1] != num_aus or heatmaps.dtype.kind not in "fiu":
        raise ValueError(f"--heatmaps={path}: {heatmaps.dtype} {heatmaps.shape}; expected numbers shaped (n, h, w) "
                         f"for one AU or (n, {num_aus}, h, w) for the {num_aus} AUs of --config.aus")
    if not np.all(np.isfinite(heatmaps)):
        raise ValueError(f"--heatmaps={path}: holds values that are not finite")
    return heatmaps.astype(np.float32)


def resample(heatmaps: np.ndarray, size: int = facs.IMAGE_SIZE) -> np.ndarray:
    """(n, A, h, w) heatmaps as (n, A, size, size): area averaging when shrinking, bilinear when growing."""
    import cv2

    n, num_aus, height, width = heatmaps.shape
    if (height, width) == (size, size):
        return heatmaps
    interpolation = cv2.INTER_AREA if height * width > size * size else cv2.INTER_LINEAR
    return np.stack([np.stack([cv2.resize(m, (size, size), interpolation=interpolation) for m in maps])
                     for maps in heatmaps]).reshape(n, num_aus, size, size)


def load_data(path: str, aus: tuple[int, ...]) -> tuple[records_lib.FaceRecords, bool]:
    """(face records of the AUs `aus`, whether they bring labels): records (`records.load`, labelled) or a folder of
    face-crop images (landmarks from MediaPipe, scaled to the 112 x 112 frame; no labels: their column is 0)."""
    if not os.path.isdir(path) or os.path.isfile(os.path.join(path, "records.json")):
        return records_lib.load(path, f"--data={path}").with_aus(aus), True
    import cv2

    from aujax.data import faces  # mediapipe only here

    names = sorted(n for n in os.listdir(path) if n.lower().endswith(layouts.IMAGE_EXTENSIONS))
    if not names:
        raise ValueError(f"--data={path}: neither face records nor a folder of images")
    images, landmarks, size = [], [], facs.IMAGE_SIZE
    with faces.FaceCropper() as cropper:
        for name in names:
            image = faces.read_image(os.path.join(path, name))
            crop = cropper.crop(image, os.path.join(path, name))  # FaceError (a ValueError) names the image
            x0, y0, side = crop.box
            in_image = crop.landmarks * (side / size) + (x0, y0)
            height, width = image.shape[:2]
            images.append(cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA))
            landmarks.append(in_image * (size / width, size / height))
    n = len(names)
    return records_lib.FaceRecords(np.stack(images), np.stack(landmarks).astype(np.float32),
                                   np.zeros((n, len(aus)), np.uint8), np.zeros((n, len(aus)), np.float32),
                                   np.array(["images"] * n), np.array(names), os.path.basename(path.rstrip("/")),
                                   au_ids=aus), False


def selection(shape: tuple[int, int], labels: np.ndarray | None, predictions: np.ndarray | None,
              threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(labels, predictions, selected) (n, A) = `shape` of the pairs μ counts (see the module docstring); labels
    None: every pair is labelled present."""
    for name, array in (("labels", labels), ("predictions", predictions)):
        if array is not None and array.shape != shape:
            raise ValueError(f"--{name}: shape {array.shape}, expected {shape} (images, AUs of --config.aus)")
    if labels is not None and not np.isin(labels, (0, 1)).all():
        raise ValueError("--labels: expected 0 or 1 everywhere")
    labels = np.ones(shape, np.uint8) if labels is None else np.asarray(labels, np.uint8)
    predictions = labels if predictions is None else np.asarray(np.asarray(predictions) >= threshold, np.uint8)
    return labels, predictions, localisation.correct_positives(labels, predictions)


def score_heatmaps(heatmaps: np.ndarray, records: records_lib.FaceRecords, cfg) -> localisation.LocalisationScores:
    """The localisation metrics `cfg.metrics` ((n, A) each) of (n, A, 112, 112) heatmaps against the regions of
    `records`' landmarks, `_CHUNK` images at a time."""
    names = tuple(cfg.metrics)
    parts = []
    for start in range(0, len(records), _CHUNK):
        rows = slice(start, start + _CHUNK)
        masks = regions.au_region_masks(records.landmarks[rows], aus=records.au_ids)
        parts.append(jax.device_get(localisation.localisation_metrics(heatmaps[rows].swapaxes(0, 1), masks,
                                                                      names=names)))
    return localisation.concatenate_scores(parts, len(records.au_ids), names)


def score(config, workdir: str, heatmaps_path: str, data: str, labels: str | None = None,
          predictions: str | None = None) -> explain_lib.RoleResult:
    """Score the heatmaps of `heatmaps_path` on `data`, write Table 3, the metrics, figures and the report under
    `workdir` (which must hold no trained run), print Table 3, and return the result."""
    if protocol.holds_trained_state(workdir):
        raise ValueError(f"--workdir={workdir} holds a trained run; score external heatmaps in a new --workdir")
    aus = facs.resolve_aus(config.aus)
    records, labelled = load_data(data, aus)
    heatmaps = load_heatmaps(heatmaps_path, len(aus))
    if len(heatmaps) != len(records):
        raise ValueError(f"--heatmaps={heatmaps_path} holds {len(heatmaps)} heatmaps but --data={data} holds "
                         f"{len(records)} images; row i of the heatmaps must explain image i")
    heatmaps = resample(heatmaps)
    label_array, prediction_array = (None if p is None else np.load(p, allow_pickle=False)
                                     for p in (labels, predictions))
    if label_array is None and labelled:
        label_array = records.labels
    label_array, prediction_array, selected = selection(records.labels.shape, label_array, prediction_array,
                                                        config.model.threshold)
    records = records_lib.FaceRecords(records.image, records.landmarks, label_array, records.intensity,
                                      records.subject, records.source, records.name, au_ids=aus)
    scores = score_heatmaps(heatmaps, records, config.explain)
    result = explain_lib.RoleResult(records, prediction_array.astype(np.float32), scores, prediction_array, selected,
                                    localisation.summarise_scores(scores, selected, aus))
    run = rundir.RunDir(workdir)
    os.makedirs(run.results, exist_ok=True)
    explained = explain_lib.Explained((COMPOSITE,), (ROLE,), {(COMPOSITE, ROLE): result})
    print(report.write_explained(run.results, explained, config.explain, config.protocol.min_support, "external"),
          flush=True)
    _write_figures(run, result, heatmaps, config.explain.grid_images)
    print(f"\nReport: {os.path.abspath(html_report.write_report(workdir))}", flush=True)
    return result


def _write_figures(run: rundir.RunDir, result: explain_lib.RoleResult, heatmaps: np.ndarray, count: int) -> None:
    """Figure 1 (the first face, every AU's region), the first `count` heatmaps as a grid, the μ distributions."""
    from aujax.lrp import heatmaps as heatmap_figures

    records, aus = result.records, result.records.au_ids
    figures.figure1_regions(records.image[0], records.landmarks[0], aus, run.figure(rundir.FIGURE1))
    shown = np.arange(min(count, len(records)))
    heatmap_figures.save_heatmap_grid(run.figure(rundir.heatmap_grid(ROLE)), heatmaps[shown].swapaxes(0, 1),
                                      records.image[shown] / 255.0, [str(s) for s in records.source[shown]],
                                      au_ids=aus)
    keep = result.selected & result.scores.defined["mu"]
    figures.mu_distributions({records.name: figures.mu_by_au(result.scores.values["mu"], keep, aus)},
                             run.figure(rundir.MU_DISTRIBUTIONS))
