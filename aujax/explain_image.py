"""Explain photos and videos (`--mode=explain_image`): face crops, AU probabilities, per-AU heatmaps with regions and
μ, under `workdir/explain_image/<name>/`.

`--image` is one of
  a photo            face_crop.png, heatmaps.png (the crop, then each AU's heatmap with its region), result.json
  a folder, a glob   every image file in it (sorted; a folder's own files, not its sub-folders)
  a video            its frames at `--fps` (frame i at i / fps seconds), read with OpenCV; MediaPipe runs in VIDEO
                     mode, so the landmarks track the face from frame to frame
The many-image forms write

  frames.csv         one row per image or sampled frame: `frame` (the file, or the frame's index in the video),
                     `time_s` (video), `status` ok | skipped, `reason` (why skipped: no_face, unreadable, too_small,
                     ...; never left out silently), `faces_found`, then per AU `AU<n>_p`, `AU<n>_present`, `AU<n>_mu`
  heatmaps.npz       the explained faces: `heatmaps` float16 (k, A, 112, 112) pixel relevance, `frame` (k,) str as in
                     frames.csv, `au_ids` (A,), `images` uint8 (k, 112, 112, 3) crops, `landmarks` float32 (k, 68, 2)
  contact_sheet.png  up to `SHEET_FRAMES` explained faces, evenly spaced: one column each, one row per AU
  annotated.mp4      (video) every sampled frame with its face box and present AUs (p, μ), at `--fps`
  result.json        what was explained, with which model, how many faces and frames skipped

The model is the best fold's of the trained run in `workdir` (from `results/summary.json`), the newest checkpoint
in `--checkpoint` (an orbax directory such as `<workdir>/checkpoints/fold_03/latest`), or a model trained elsewhere
(`--model_file=m.onnx` with its card, `ExternalModel`): then the AUs are the card's, in the order of their output
indices, and result.json names the model file and the card instead of a checkpoint. `<name>` is the input's stem
for the first input of that stem, `<stem>-<8 hex digits of a SHA-256 of its absolute path>` for another of the same
stem elsewhere (`explain_image_dir`); explaining the same input again replaces its earlier result, and says so. μ is
given for every AU (no label is known: it says where the model looks for each AU, whatever it decided). A model whose
run trained on synthetic faces only (its config.json) says, with every result, that its decisions on real faces mean
nothing (`synthetic_only_warning`); a model trained elsewhere has no run record, and no such warning.
"""

import csv
import dataclasses
import glob
import hashlib
import os
import re
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from aujax import checkpoints, distributed, facs, files, localisation, lrp, protocol, regions, rundir
from aujax.data import layouts
from aujax.data import records as records_lib

SHEET_FRAMES = 16  # the contact sheet's most columns
DEFAULT_FPS = 2.0
_GLOB_CHARACTERS = re.compile(r"[*?\[]")


class ExternalModel(NamedTuple):
    """A model trained elsewhere: its `network` (an `aujax.graph.ExplainableNetwork`, outputs the card's AUs) and
    `card` (`aujax.lrp.card.ModelCard`), from `model_file` and `model_card` (a card file, the card's JSON text, or
    None for the file beside the model) as the flags gave them."""

    network: object
    card: object
    model_file: str
    model_card: str | None

    def describe(self) -> dict:
        """What result.json says of the model: `model_file` and `model_card` (absolute paths; the card's fields
        where they were given as JSON text)."""
        from aujax.lrp import card as card_lib

        inline = self.model_card is not None and self.model_card.lstrip().startswith("{")
        card = self.card.to_json() if inline else os.path.abspath(self.model_card or
                                                                  card_lib.card_path(self.model_file))
        return {"model_file": os.path.abspath(self.model_file), "model_card": card}


@dataclasses.dataclass(frozen=True)
class Frame:
    """One image file or sampled video frame: `name` (the file, or the frame's index), `time_s` (video; None for a
    file), and its `crop` (a `faces.FaceCrop`) or, where no face was found, the `faces.FaceError` saying why."""
    name: str
    time_s: float | None
    crop: object


def explain_faces(canonical: dict, images: np.ndarray, landmarks: np.ndarray, cfg,
                  aus: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(probabilities (n, A), pixel heatmaps float32 (n, A, 112, 112), μ (n, A), NaN where undefined) of n face crops,
    images uint8 (n, 112, 112, 3) and landmarks (n, 68, 2), under `cfg.composite` (`config.explain`), in padded
    batches of at most `cfg.batch_size` so that one compiled function serves all of them."""
    explain_fn = lrp.make_explain_fn(cfg.composite, cfg.epsilon)
    batch_size = max(1, min(cfg.batch_size, len(images)))
    parts = []
    for index, valid in records_lib.padded_batches(np.arange(len(images)), batch_size):
        logits, relevance = explain_fn(canonical, jnp.asarray(images[index], jnp.float32) / 255.0)
        heatmaps = lrp.pixel_heatmaps(relevance)
        scores = localisation.localisation_metrics(heatmaps, regions.au_region_masks(landmarks[index], aus=aus),
                                                   names=("mu",))
        mu = np.where(np.asarray(scores.defined["mu"]), np.asarray(scores.values["mu"]), np.nan)
        parts.append((np.asarray(jax.nn.sigmoid(logits))[:valid], np.asarray(heatmaps).swapaxes(0, 1)[:valid],
                      mu[:valid]))
    return tuple(np.concatenate(column) for column in zip(*parts))


def best_checkpoint(run: rundir.RunDir) -> str:
    """The `latest/` checkpoint directory of the best fold of the trained run in `run`."""
    summary = files.read_json(run.summary)
    if summary is None:
        raise FileNotFoundError(f"--workdir={run.root} holds no trained run (no results/summary.json): train with "
                                "--mode=all first, or pass --checkpoint")
    return run.fold(summary["best_fold"]).latest


def synthetic_only_warning(run: rundir.RunDir) -> str | None:
    """The warning for a model whose run (its config.json) trained on synthetic faces only, else None."""
    record = files.read_json(run.config) or {}
    data = record.get("data", {})
    if not data or any(data.get(role) != "synthetic" for role in ("train", "cv")):
        return None
    return (f"warning: this model was trained on synthetic faces only ({run.config}: data.train and data.cv are "
            "'synthetic'); its decisions on real faces mean nothing. To train on real faces, build a dataset "
            "(--mode=preprocess --dataset=ck_plus --manual_dir=... --data_dir=...; see docs/data.md) and train with "
            "--train_data=ck_plus --cv_data=actor_study (or another built dataset or records file).")


def explain_image(config, workdir: str, image_path: str, checkpoint: str | None, fps: float = DEFAULT_FPS,
                  external: ExternalModel | None = None) -> dict:
    """Explain `image_path` (a photo, a folder or glob of images, or a video; see the module docstring) with the
    model `external`, else that of `checkpoint` (None: the run's best fold); write and print the result, and return
    result.json's content."""
    kind, inputs = resolve_inputs(image_path)
    run = rundir.RunDir(workdir)
    if external is None:
        checkpoint = checkpoint or best_checkpoint(run)
        aus = facs.resolve_aus(config.aus)
        network = checkpoints.restore_variables(protocol.create_model(config), checkpoint, distributed.make_mesh())
        model = {"checkpoint": os.path.abspath(checkpoint)}
    else:
        aus, network, model = _external_aus(external), external.network, external.describe()
    canonical = lrp.canonize(network, batch_norm=config.explain.batch_norm)
    frames = find_faces(kind, inputs, fps)
    faces = [f for f in frames if not _skipped(f)]
    if kind == "photo" and not faces:
        raise frames[0].crop
    explained = None
    if faces:
        explained = explain_faces(canonical, np.stack([f.crop.image for f in faces]),
                                  np.stack([f.crop.landmarks for f in faces]), config.explain, aus)
    warning = None if external else synthetic_only_warning(run)
    result = {"image": os.path.abspath(image_path), "kind": kind, **model, "composite": config.explain.composite,
              "au_ids": list(aus), "warning": warning}
    out_dir = explain_image_dir(run.explain_image, image_path)
    if os.path.isfile(os.path.join(out_dir, "result.json")):
        print(f"Replacing the earlier result of {image_path} in {os.path.abspath(out_dir)}", flush=True)
    os.makedirs(out_dir, exist_ok=True)
    text = _write_outputs(out_dir, result, inputs, frames, faces, explained, config.model.threshold, fps)
    files.write_json(os.path.join(out_dir, "result.json"), result)
    if warning:
        logging.warning("%s", warning)
        text += "\n\n" + warning
    print(text + f"\n\nOutputs in {os.path.abspath(out_dir)}", flush=True)
    return result


def _external_aus(external: ExternalModel) -> tuple[int, ...]:
    """The card's AUs; ValueError naming the card where one has no region to measure μ in."""
    unknown = [au for au in external.network.au_ids if au not in facs.KNOWN_AUS]
    if unknown:
        raise ValueError(f"{external.card.where}: AUs {', '.join(map(str, unknown))} have no region (aujax knows "
                         f"{', '.join(map(str, facs.KNOWN_AUS))}); leave them out of its outputs")
    return tuple(external.network.au_ids)


def _write_outputs(out_dir: str, result: dict, inputs, frames: list[Frame], faces: list[Frame], explained,
                   threshold: float, fps: float) -> str:
    """Write the outputs of `result["kind"]` under `out_dir`, add their summary to `result`; returns what to print."""
    kind, aus, image_path = result["kind"], tuple(result["au_ids"]), result["image"]
    if kind == "photo":
        probabilities, heatmaps, mu = (column[0] for column in explained)
        result.update(_photo_result(faces[0].crop, probabilities, mu, threshold, aus))
        _write_photo(out_dir, faces[0].crop, probabilities, heatmaps, mu, threshold, aus)
        return _table(image_path, faces[0].crop.num_faces, result)
    skipped = {f.name: f.crop.reason for f in frames if _skipped(f)}
    result.update(frames=len(frames), explained=len(faces), skipped=skipped, fps=fps if kind == "video" else None)
    _write_many(out_dir, kind, inputs, frames, faces, explained, threshold, aus, fps)
    return _summary(image_path, frames, faces, explained, threshold, aus)


def resolve_inputs(spec: str) -> tuple[str, str | list[str]]:
    """("photo", path), ("video", path) or ("images", sorted paths) for `--image=spec`; FileNotFoundError naming spec
    where it names nothing, ValueError where a folder or glob holds no image."""
    if _GLOB_CHARACTERS.search(spec) and not os.path.exists(spec):
        paths = sorted(p for p in glob.glob(spec)
                       if os.path.isfile(p) and p.lower().endswith(layouts.IMAGE_EXTENSIONS))
        if not paths:
            raise ValueError(f"--image={spec}: the pattern matches no image file "
                             f"({', '.join(layouts.IMAGE_EXTENSIONS)})")
        return "images", paths
    if os.path.isdir(spec):
        paths = sorted(os.path.join(spec, n) for n in os.listdir(spec)
                       if n.lower().endswith(layouts.IMAGE_EXTENSIONS) and not n.startswith(".")
                       and os.path.isfile(os.path.join(spec, n)))
        if not paths:
            raise ValueError(f"--image={spec}: the folder holds no image file ({', '.join(layouts.IMAGE_EXTENSIONS)})")
        return "images", paths
    if not os.path.isfile(spec):
        raise FileNotFoundError(f"--image={spec}: no such photo, folder, glob match or video")
    return ("video" if spec.lower().endswith(layouts.VIDEO_EXTENSIONS) else "photo"), spec


def find_faces(kind: str, inputs, fps: float) -> list[Frame]:
    """The `Frame` of every input: each image file (IMAGE mode), or the video's frames at `fps` (VIDEO mode)."""
    from aujax.data import faces  # mediapipe and OpenCV only here

    if kind != "video":
        paths = [inputs] if kind == "photo" else inputs
        with faces.FaceCropper() as cropper:
            return [Frame(path, None, _crop_or_error(lambda: cropper.crop_file(path))) for path in paths]
    video_fps, count = faces.video_properties(inputs)
    indices = sampled_frames(video_fps, count, fps, inputs)
    found = []
    with faces.FaceCropper(video=True) as cropper:
        for index, image in faces.video_frames(inputs, indices):
            time_s = index / video_fps
            crop = image if isinstance(image, faces.FaceError) else _crop_or_error(
                    lambda: cropper.crop(image, f"{inputs}#{index}", round(time_s * 1000)))
            found.append(Frame(str(index), time_s, crop))
    return found


def sampled_frames(video_fps: float, count: int, fps: float, path: str = "the video") -> list[int]:
    """The 0-based indices of the frames nearest to 0, 1/fps, 2/fps, ... seconds of a video of `count` frames at
    `video_fps` (each frame at most once: every frame where fps >= video_fps); ValueError naming `path` for a video
    without a frame rate or frames, or an fps that is not positive."""
    if not fps > 0:
        raise ValueError(f"--fps={fps}: expected frames per second > 0")
    if not (video_fps > 0 and count > 0):
        raise ValueError(f"{path}: the video declares {video_fps:g} frames per second and {count} frames; "
                         "cannot sample it")
    duration = count / video_fps
    times = np.arange(0.0, duration, 1.0 / fps)
    return sorted({int(i) for i in np.minimum(np.rint(times * video_fps), count - 1)})


def _crop_or_error(crop):
    from aujax.data import faces

    try:
        return crop()
    except faces.FaceError as error:
        return error


def _skipped(frame: Frame) -> bool:
    return isinstance(frame.crop, Exception)


def _photo_result(crop, probabilities, mu, threshold: float, aus) -> dict:
    return {"faces_found": crop.num_faces, "face_box_xy_side": list(crop.box),
            "aus": {f"AU{au}": {"name": facs.AU_NAMES.get(au, ""), "probability": float(probabilities[j]),
                                "present": bool(probabilities[j] >= threshold),
                                "mu": None if np.isnan(mu[j]) else float(mu[j])}
                    for j, au in enumerate(aus)}}


def _write_photo(out_dir: str, crop, probabilities, heatmaps, mu, threshold: float, aus) -> None:
    """face_crop.png and heatmaps.png of one explained face."""
    from PIL import Image  # pillow comes with matplotlib

    from aujax import figures  # matplotlib only here

    Image.fromarray(crop.image).save(os.path.join(out_dir, "face_crop.png"))
    figures.save_figure(figures.explained_image_figure(crop.image, heatmaps, crop.landmarks, probabilities, mu,
                                                       threshold, aus),
                        os.path.join(out_dir, "heatmaps.png"), dpi=150)


def _table(image_path: str, num_faces: int, result: dict) -> str:
    lines = [f"{image_path}: {num_faces} face(s), explained with {result['composite']}",
             f"{'AU':<24}{'p':>6}  present  {'μ':>6}"]
    for key, entry in result["aus"].items():
        mu_text = "n/a" if entry["mu"] is None else f"{entry['mu']:.3f}"
        lines.append(f"{key + ' ' + entry['name']:<24}{entry['probability']:>6.3f}  "
                     f"{'yes' if entry['present'] else 'no':<7}  {mu_text:>6}")
    return "\n".join(lines)


def frames_table(frames: list[Frame], explained, threshold: float, aus) -> list[list]:
    """The rows of frames.csv (header first; see the module docstring)."""
    header = ["frame", "time_s", "status", "reason", "faces_found"]
    header += [f"AU{au}_{what}" for au in aus for what in ("p", "present", "mu")]
    rows, k = [header], 0
    for frame in frames:
        time = "" if frame.time_s is None else f"{frame.time_s:.3f}"
        if _skipped(frame):
            rows.append([frame.name, time, "skipped", frame.crop.reason, 0] + [""] * (3 * len(aus)))
            continue
        probabilities, _, mu = (column[k] for column in explained)
        k += 1
        rows.append([frame.name, time, "ok", "", frame.crop.num_faces] +
                    [v for j in range(len(aus)) for v in (f"{probabilities[j]:.4f}", int(probabilities[j] >= threshold),
                                                         "" if np.isnan(mu[j]) else f"{mu[j]:.4f}")])
    return rows


def _write_many(out_dir: str, kind: str, inputs, frames: list[Frame], faces: list[Frame], explained, threshold: float,
                aus, fps: float) -> None:
    """frames.csv, heatmaps.npz, contact_sheet.png and, for a video, annotated.mp4."""
    with open(os.path.join(out_dir, "frames.csv"), "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(frames_table(frames, explained, threshold, aus))
    if not faces:
        return
    probabilities, heatmaps, mu = explained
    files.write_npz(os.path.join(out_dir, "heatmaps.npz"), heatmaps=heatmaps.astype(np.float16),
                    frame=np.array([f.name for f in faces]), au_ids=np.array(aus, np.int64),
                    images=np.stack([f.crop.image for f in faces]),
                    landmarks=np.stack([f.crop.landmarks for f in faces]).astype(np.float32))
    _write_contact_sheet(os.path.join(out_dir, "contact_sheet.png"), faces, heatmaps, aus)
    if kind == "video":
        write_annotated_video(os.path.join(out_dir, "annotated.mp4"), inputs, frames, explained, threshold, aus, fps)


def _write_contact_sheet(path: str, faces: list[Frame], heatmaps: np.ndarray, aus) -> None:
    from aujax import figures  # matplotlib only here
    from aujax.lrp import heatmaps as heatmap_figures

    shown = np.unique(np.linspace(0, len(faces) - 1, min(len(faces), SHEET_FRAMES)).round().astype(int))
    images = np.stack([faces[i].crop.image for i in shown]) / 255.0
    titles = [faces[i].name if faces[i].time_s is None else f"{faces[i].time_s:.2f} s" for i in shown]
    titles = [os.path.basename(t) for t in titles]
    figure = heatmap_figures.heatmap_grid_figure(heatmaps[shown].swapaxes(0, 1), images, titles, au_ids=aus)
    figures.save_figure(figure, path, dpi=100)


def write_annotated_video(path: str, video: str, frames: list[Frame], explained, threshold: float, aus,
                          fps: float) -> None:
    """Every sampled frame of `video` with its face box and present AUs (p and μ), or why no face was found, as an
    MP4 at `fps`, written to `path.tmp.mp4` and renamed."""
    import cv2

    from aujax.data import faces as face_crops

    indices = [int(f.name) for f in frames]
    rows = {f.name: k for k, f in enumerate(f for f in frames if not _skipped(f))}
    tmp, writer = path + ".tmp.mp4", None
    try:
        for (index, image), frame in zip(face_crops.video_frames(video, indices), frames):
            if isinstance(image, face_crops.FaceError):
                continue
            bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
            if writer is None:
                writer = cv2.VideoWriter(tmp, cv2.VideoWriter_fourcc(*"mp4v"), fps, (bgr.shape[1], bgr.shape[0]))
            _annotate(bgr, frame, None if _skipped(frame) else [c[rows[frame.name]] for c in explained], threshold, aus)
            writer.write(bgr)
    finally:
        if writer is not None:
            writer.release()
    if writer is not None:
        os.replace(tmp, path)


def _annotate(bgr: np.ndarray, frame: Frame, explained, threshold: float, aus) -> None:
    """Draw the face box and the present AUs (or why there is no face) on the BGR frame, in place."""
    import cv2

    scale = max(bgr.shape[0] / 480.0, 0.4)
    lines = [f"t={frame.time_s:.2f}s"]
    if explained is None:
        lines.append(f"skipped: {frame.crop.reason}")
    else:
        probabilities, _, mu = explained
        x0, y0, side = frame.crop.box
        cv2.rectangle(bgr, (int(x0), int(y0)), (int(x0 + side), int(y0 + side)), (0, 255, 255), max(1, int(2 * scale)))
        present = [j for j in np.argsort(-probabilities) if probabilities[j] >= threshold]
        lines += [f"AU{aus[j]} p={probabilities[j]:.2f} mu={'n/a' if np.isnan(mu[j]) else f'{mu[j]:.2f}'}"
                  for j in present] or ["no AU present"]
    for i, line in enumerate(lines):
        position = (int(8 * scale), int((22 + 20 * i) * scale))
        cv2.putText(bgr, line, position, cv2.FONT_HERSHEY_SIMPLEX, 0.5 * scale, (0, 0, 0), max(2, int(3 * scale)))
        cv2.putText(bgr, line, position, cv2.FONT_HERSHEY_SIMPLEX, 0.5 * scale, (255, 255, 255), max(1, int(scale)))


def _summary(image_path: str, frames: list[Frame], faces: list[Frame], explained, threshold: float, aus) -> str:
    """What the terminal shows of a folder or video: counts, how often each AU was present, every skipped frame."""
    lines = [f"{image_path}: {len(frames)} image(s)/frame(s), {len(faces)} explained, {len(frames) - len(faces)} "
             "skipped"]
    if faces:
        probabilities, _, mu = explained
        lines.append(f"{'AU':<24}{'present':>8}  {'mean p':>6}  {'mean μ':>6}")
        for j, au in enumerate(aus):
            defined = mu[:, j][~np.isnan(mu[:, j])]
            mean_mu = f"{defined.mean():.3f}" if len(defined) else "n/a"
            lines.append(f"{facs.au_label(au):<24}{int((probabilities[:, j] >= threshold).sum()):>8}  "
                         f"{probabilities[:, j].mean():>6.3f}  {mean_mu:>6}")
    lines += [f"skipped {f.name}: {f.crop.reason} ({f.crop.detail})" for f in frames if _skipped(f)]
    return "\n".join(lines)


def explain_image_dir(root: str, image_path: str) -> str:
    """The directory under `root` for the results of the input `image_path`, never one holding another input's.

    It is `root/<stem>` or `root/<stem>-<8 hex digits of a SHA-256 of the absolute path>` (a glob's stem: its
    pattern with every character other than letters, digits, '.', '-' and '_' as '_'): the one whose result.json
    names this input, else the first without a result.json. ValueError where both hold other inputs' results.
    """
    path = os.path.abspath(image_path)
    stem = re.sub(r"[^\w.-]", "_", os.path.splitext(os.path.basename(path.rstrip(os.sep)))[0]) or "input"
    digest = hashlib.sha256(path.encode()).hexdigest()[:8]
    candidates = [os.path.join(root, stem), os.path.join(root, f"{stem}-{digest}")]
    owners = [files.read_json(os.path.join(c, "result.json"), {}).get("image") for c in candidates]
    for wanted in (path, None):
        if wanted in owners:
            return candidates[owners.index(wanted)]
    raise ValueError(f"{' and '.join(candidates)} hold the results of other inputs ({', '.join(owners)}); move one "
                     f"away to explain {path}")
