"""Synthetic AU faces: aujax's embedded default data, deterministic from a seed, no downloads.

`generate` draws subjects, then per image a label set, a pose and a scene, and renders 112x112 RGB faces with
68 landmarks (Multi-PIE / iBUG-300W order, 0-based; "right" = the subject's right = image left). Pure numpy,
vectorised over chunks of images.

Rendering. Every face is drawn in a canonical, upright frame from explicit curves (jaw and head outline, brow
centre lines, eyelid arcs, lip contours, nostril ellipses ...). The landmarks are sampled from the same curves, so
they sit on the drawn features. The face layer (premultiplied RGBA) is warped by the image's pose (rotation,
scale, shift about (55.5, 62)) with bilinear sampling, the landmarks are moved by the same affine map, and the face
is composited over the background before occlusion, lighting, blur, noise and JPEG-like compression. Pixel centres
are at integer coordinates while drawing; the landmarks returned follow aujax's convention (as faces.py and
regions.py): continuous pixel coordinates where pixel (row i, column j) covers [j, j+1) x [i, i+1), so they are
shifted by +0.5 on output and landmark (x, y) lies in pixel row floor(y), column floor(x).

Each AU changes only the curves and marks of its own facial area; its effect scales with the intensity through
`effect_amount` = 0.8 + 0.2 (intensity - 1) / 4 (intensity 1..5; 0 when absent). A face shows the AUs of the set it
is generated for (`aus`, any of `facs.KNOWN_AUS`; the pain set by default) and no others. At amount 1:

  AU1   inner brow ends raised by 3.5 px (outer by 0.6 px), two horizontal wrinkles over the middle of the forehead
  AU2   outer brow ends raised by 3.5 px (inner by 0.5 px), arch +30 %, a crease above each outer brow
  AU4   brows lowered (inner ends by 3.5 px, outer by 1.5 px), drawn together (2.5 px) and flattened; vertical
        furrows between the brows
  AU6   lower lids pushed up (-45 %), cheeks raised and lit, infraorbital furrow, crow's feet at the outer corners
  AU5   upper lids raised (upper aperture +55 %): white shows above the iris
  AU7   lids tightened (upper aperture -40 %, lower -50 %), tension line under the lower lid
  AU9   horizontal wrinkles on the nose bridge, nostrils and alar base raised by 2.5 px, tip by 0.7 px
  AU10  upper lip raised by 3 px (its inner edge by 1 px), nasolabial folds deepened above the mouth
  AU12  lip corners pulled up by 3 px and out (mouth 10 % wider)
  AU14  lip corners drawn in (mouth 6 % narrower), a dimple beside each corner
  AU15  lip corners pulled down by 2.5 px
  AU17  chin boss raised: chin and jaw line up by 2 px, the lower lip pushed up (middle of the mouth 1.2 px up, lower
        lip 30 % thinner), dimples on the chin
  AU20  lips stretched sideways (mouth 22 % wider, lips 30 % thinner), corners 0.8 px down
  AU23  lips tightened: 45 % thinner, mouth 6 % narrower, their borders drawn in
  AU24  lips pressed: 35 % / 30 % thinner, the skin bulging above and below them
  AU25  lips parted (inner upper lip 0.8 px up, lower lip 1.5 px down)
  AU26  jaw dropped by 6.5 px: chin, jaw line and lower lip move down, the mouth opens
  AU27  jaw dropped by 11 px, mouth stretched open (taller, 8 % wider)
  AU43  eyes closed: the upper lids come down 97 % of the way to the lower lids

Label model (per image, conditioned on at least one AU by rejection, as the paper keeps only such frames):

  a latent "pain expression" is present with probability 0.55;
  AU4 / AU6 / AU7 are present with probability 0.55 / 0.60 / 0.65 given the expression, 0.12 / 0.08 / 0.15 without;
  AU9 / AU10 with probability 0.22 / 0.25 when AU6 or AU7 is present, 0.02 / 0.03 otherwise;
  the mouth is closed / AU25 / AU25+AU26 / AU25+AU27 with probability 0.50 / 0.28 / 0.16 / 0.06,
  so AU26 and AU27 imply AU25 and exclude each other;
  a present AU has intensity 1 + 4 u^1.4, u uniform (low intensities are the more common).
  Resulting frequencies: AU4 0.42, AU6 0.44, AU7 0.51, AU9 0.16, AU10 0.19, AU25 0.60, AU26 0.19, AU27 0.07.

  For a set with AUs outside the pain set, more is drawn after that (the pain set's draws stay as they are): four
  latent expressions, each with its AUs' probabilities (`_OTHER_EXPRESSIONS`): a smile (0.30: AU12, with AU6, AU14,
  AU25), surprise (0.15: AU1, AU2, AU5, AU25), sadness (0.15: AU1, AU4, AU15, AU17) and tensed lips (0.15: AU23,
  AU24, AU20, AU4), and AU20 / AU43 with the pain expression and AU6 or AU7 (`_PAIN_EXTRAS`). Only the set's AUs are
  kept, at least one of them (by rejection), and then those a face cannot show beside another one present are left
  out (`_EXCLUDED_BY`: AU15 with AU12, AU5 with AU7 or AU43, AU7 with AU43, AU14 with AU20, AU17 / AU23 / AU24 with
  an open mouth).

Domains: `posed` (plain background, even light, small pose jitter, little noise; like CK+ and the Actor Study) and
`wild` (cluttered textured background, uneven light with a light or shadow spot, larger pose jitter, blur, more
noise, JPEG-like compression (quantised luma DCT, 4:2:0 chroma), an opaque occluder over a random face part in 30 %
of the images; like UNBC-McMaster).

Spurious cue: `generate(..., spurious_cue_au=a)` puts a white square with a black rim in the top-left corner
(centre within 7..11 px of both edges, 9 px wide) of an image showing AU a, with the given probability; it is
drawn after the lighting so that it is equally clear in every image. Images without AU a never carry it.

Randomness. Subject k's appearance comes from a generator seeded by (seed, domain, subject_prefix, k); image j of
subject k from one seeded by (seed, domain, subject_prefix, k, j). So the same arguments give identical data, a
subject looks the same in all its images, and an image does not depend on how many others are generated.
"""

import concurrent.futures
import contextlib
import multiprocessing
import zlib

import numpy as np

from aujax import facs
from aujax.data import available_cores, records

DOMAINS = ("posed", "wild")

_SIZE = facs.IMAGE_SIZE
_COORDS = np.arange(_SIZE, dtype=np.float32)
_CENTRE_X = (_SIZE - 1) / 2
_POSE_PIVOT = np.array([_CENTRE_X, 62.0], np.float32)
_CHUNK = 32
_CHUNKS_PER_TASK = 8  # chunks rendered by one task of a worker process
_PARALLEL_FROM = 2048  # images; smaller sets render in the calling process (starting workers costs seconds)
_GAUSS_TAIL = float(np.exp(-6.25))  # blobs are cut to exactly 0 beyond 2.5 sigma

# Subject parameters: name -> (shape, low, high), uniform; lengths in canonical pixels.
_SUBJECT_SPEC = {
        "face_half_width": ((), 33.0, 38.0),
        "jaw_exponent": ((), 2.0, 3.0),  # superellipse exponent of the jaw: larger is squarer
        "eye_y": ((), 42.0, 46.0),
        "jaw_top_below_eyes": ((), 0.0, 3.0),
        "chin_below_eyes": ((), 45.0, 50.0),
        "head_height": ((), 34.0, 39.0),
        "eye_gap": ((), 15.0, 17.5),  # distance of each eye centre from the face axis
        "eye_half_width": ((), 6.0, 7.3),
        "eye_upper": ((), 2.7, 3.6),
        "eye_lower": ((), 1.8, 2.5),
        "eye_tilt": ((), -0.3, 1.0),  # outer corners higher by this much
        "iris_radius": ((), 2.9, 3.4),
        "brow_height_inner": ((), 7.5, 10.0),
        "brow_height_outer": ((), 6.5, 9.5),
        "brow_gap": ((), 5.0, 7.5),
        "brow_length": ((), 17.0, 21.0),
        "brow_thick_inner": ((), 2.4, 3.8),
        "brow_thick_outer": ((), 1.2, 2.2),
        "brow_arch": ((), 1.0, 3.5),
        "nose_tip_below_eyes": ((), 17.0, 21.0),
        "nose_half_width": ((), 6.5, 9.0),
        "nose_base_below_tip": ((), 2.0, 3.0),
        "mouth_below_tip": ((), 13.0, 16.0),
        "mouth_half_width": ((), 11.0, 14.0),
        "upper_lip": ((), 2.8, 4.2),
        "lower_lip": ((), 3.6, 5.6),
        "fold_depth": ((), 0.03, 0.13),
        "blush": ((), 0.0, 0.25),
        "hairline": ((), 0.5, 0.8),  # fraction of the head height above the jaw top
        "hair_recession": ((), 0.0, 5.0),
        "hair_length": ((), 0.0, 8.0),  # how far side hair reaches below the jaw top
        "hair_volume": ((), 1.5, 7.0),
        "hair_phase": ((), 0.0, 6.3),
        "hair_style": ((), 0.0, 1.0),
        "hair_colour": ((), 0.0, 1.0),
        "iris_colour": ((), 0.0, 1.0),
        "skin_tone": ((), 0.0, 1.0),
        "skin_jitter": ((3,), -0.03, 0.03),
        "colour_jitter": ((3,), -0.04, 0.04),
        "clothes": ((3,), 0.08, 0.9),
}
_SKIN_LIGHT = np.array([0.96, 0.80, 0.69], np.float32)
_SKIN_DARK = np.array([0.36, 0.23, 0.16], np.float32)
# (cumulative probability, colour): black, dark brown, brown, blonde, auburn, grey
_HAIR_PALETTE = ((0.30, (0.09, 0.07, 0.07)), (0.55, (0.22, 0.14, 0.10)), (0.73, (0.42, 0.28, 0.18)),
                 (0.85, (0.78, 0.64, 0.42)), (0.92, (0.55, 0.26, 0.14)), (1.00, (0.60, 0.60, 0.60)))
# dark brown, brown, hazel, green, blue, grey
_IRIS_PALETTE = ((0.35, (0.18, 0.11, 0.07)), (0.60, (0.35, 0.22, 0.12)), (0.72, (0.45, 0.38, 0.18)),
                 (0.80, (0.30, 0.42, 0.25)), (0.94, (0.28, 0.45, 0.65)), (1.00, (0.45, 0.50, 0.55)))
_LIP_RED = np.array([0.75, 0.35, 0.35], np.float32)
_EYE_WHITE = np.array([0.94, 0.93, 0.91], np.float32)
_TEETH = np.array([0.93, 0.91, 0.84], np.float32)
_MOUTH_INSIDE = np.array([0.25, 0.08, 0.09], np.float32)
_PUPIL = np.array([0.03, 0.03, 0.03], np.float32)
_WHITE = np.ones(3, np.float32)
_LONG_HAIR_PROBABILITY = 0.3
_BALD_PROBABILITY = 0.08

_POSE_SPEC = {
        "posed": {"angle_deg": ((), -6.0, 6.0), "scale": ((), 0.96, 1.04), "shift": ((2,), -2.5, 2.5)},
        "wild": {"angle_deg": ((), -14.0, 14.0), "scale": ((), 0.92, 1.04), "shift": ((2,), -5.0, 5.0)},
}
_TEXTURE_CELLS = 5
_CLUTTER_RECTS = 5
_CLUTTER_DISCS = 3
_SCENE_SPEC_COMMON = {
        "gaze": ((2,), -1.0, 1.0),
        "background_gradient": ((), -0.15, 0.15),
        "texture": ((_TEXTURE_CELLS, _TEXTURE_CELLS, 3), 0.0, 1.0),
        "rects": ((_CLUTTER_RECTS, 7), 0.0, 1.0),  # centre x, y, half width, half height, rgb
        "discs": ((_CLUTTER_DISCS, 6), 0.0, 1.0),  # centre x, y, radius, rgb
        "occluder": ((9,), 0.0, 1.0),  # present, face part, offset x, y, radius x, y, rgb
        "spot": ((3,), 0.0, 1.0),  # centre x, y, radius of a light / shadow blob
        "cue_position": ((2,), 7.0, 11.0),
        "cue_draw": ((), 0.0, 1.0),
}
_SCENE_SPEC = {
        "posed": {
                "background_grey": ((), 0.3, 0.85),
                "background_tint": ((3,), -0.08, 0.08),
                "texture_strength": ((), 0.0, 0.0),
                "clutter": ((), 0.0, 0.0),  # 1: draw the clutter shapes (a constant per domain)
                "brightness": ((), -0.05, 0.05),
                "contrast": ((), 0.92, 1.08),
                "light_gradient": ((2,), -0.08, 0.08),
                "spot_gain": ((), 0.0, 0.0),
                "blur_sigma": ((), 0.0, 0.0),
                "noise_sigma": ((), 0.004, 0.012),
                "jpeg_quality": ((), 0.0, 0.0),  # 0: no compression
                "occluder_probability": ((), 0.0, 0.0),
        },
        "wild": {
                "background_grey": ((), 0.1, 0.8),
                "background_tint": ((3,), -0.25, 0.25),
                "texture_strength": ((), 0.15, 0.5),
                "clutter": ((), 1.0, 1.0),
                "brightness": ((), -0.18, 0.1),
                "contrast": ((), 0.65, 1.1),
                "light_gradient": ((2,), -0.35, 0.35),
                "spot_gain": ((), -0.35, 0.3),
                "blur_sigma": ((), 0.0, 1.3),
                "noise_sigma": ((), 0.012, 0.035),
                "jpeg_quality": ((), 25.0, 85.0),
                "occluder_probability": ((), 0.3, 0.3),
        },
}
# Face parts an occluder may cover, as landmark ids.
_OCCLUDED_PARTS = (tuple(range(36, 42)), tuple(range(42, 48)), tuple(range(27, 36)), tuple(range(48, 68)),
                   (1, 2, 3, 31, 48), (13, 14, 15, 35, 54), tuple(range(17, 27)), (6, 7, 8, 9, 10, 57))
_CUE_OUTER, _CUE_INNER = 4.5, 3.0

# Label model, see the module docstring.
_PAIN_EXPRESSION_PROBABILITY = 0.55
_UPPER_FACE_PROBABILITY = {4: (0.55, 0.12), 6: (0.60, 0.08), 7: (0.65, 0.15)}  # (with, without) expression
_EYE_CLOSURE_PROBABILITY = {9: (0.22, 0.02), 10: (0.25, 0.03)}  # (with, without) AU6 or AU7
_MOUTH_STATES = ((), (25,), (25, 26), (25, 27))
_MOUTH_STATE_PROBABILITIES = (0.50, 0.28, 0.16, 0.06)
_INTENSITY_SKEW = 1.4
# Drawn only for sets with AUs outside the pain set: (probability of a latent expression, AU probabilities with it,
# AU probabilities without it).
_OTHER_EXPRESSIONS = (
        (0.30, {12: 0.90, 6: 0.40, 14: 0.25, 25: 0.30}, {12: 0.06, 14: 0.08}),  # smile
        (0.15, {1: 0.85, 2: 0.80, 5: 0.60, 25: 0.40}, {1: 0.06, 2: 0.05, 5: 0.05}),  # surprise
        (0.15, {1: 0.60, 4: 0.40, 15: 0.70, 17: 0.50}, {15: 0.05, 17: 0.08}),  # sadness
        (0.15, {23: 0.60, 24: 0.55, 20: 0.30, 4: 0.30}, {23: 0.05, 24: 0.06, 20: 0.06}),  # lips tensed
)
_PAIN_EXTRAS = {20: (0.30, 0.04), 43: (0.30, 0.03)}  # (with, without) the pain expression and AU6 or AU7
# An AU is left out where one of these shows too (the face cannot show both; the one kept is the stronger cue).
_EXCLUDED_BY = {15: {12}, 5: {7, 43}, 7: {43}, 14: {20}, 17: {25, 26, 27}, 23: {25, 26, 27}, 24: {25, 26, 27}}

# JPEG (ITU T.81 Annex K) luminance quantisation table and an orthonormal 8-point DCT-II.
_JPEG_LUMA = np.array([
        [16, 11, 10, 16, 24, 40, 51, 61], [12, 12, 14, 19, 26, 58, 60, 55],
        [14, 13, 16, 24, 40, 57, 69, 56], [14, 17, 22, 29, 51, 87, 80, 62],
        [18, 22, 37, 56, 68, 109, 103, 77], [24, 35, 55, 64, 81, 104, 113, 92],
        [49, 64, 78, 87, 103, 121, 120, 101], [72, 92, 95, 98, 112, 100, 103, 99]], np.float32)
_DCT = (np.sqrt(np.where(np.arange(8)[:, None] == 0, 1 / 8, 2 / 8))
        * np.cos((2 * np.arange(8)[None, :] + 1) * np.arange(8)[:, None] * np.pi / 16)).astype(np.float32)
_RGB_TO_YCC = np.array([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]],
                       np.float32)
_YCC_TO_RGB = np.linalg.inv(_RGB_TO_YCC).astype(np.float32)


# ---------------------------------------------------------------------------------------------------------------
# Public API


def generate(num_subjects: int, images_per_subject: int, domain: str = "posed", seed: int = 0,
             subject_prefix: str = "S", spurious_cue_au: int | None = None,
             spurious_cue_probability: float = 0.9, name: str = "synthetic",
             workers: int | None = None, images_on_demand: bool = False,
             aus: tuple[int, ...] = facs.PAIN_AUS) -> records.FaceRecords:
    """`num_subjects * images_per_subject` synthetic faces, subject after subject, showing and labelled with the AUs
    of the set `aus` (any of `facs.KNOWN_AUS`; the records' `au_ids`): AUs outside the set never show.

    Subject ids are f"{subject_prefix}{k:03d}", sources f"synthetic:{domain}:seed{seed}:{subject}:{j:04d}".
    With `spurious_cue_au=a`, an image showing AU a carries the cue (a white square with a black rim in the
    top-left corner) with probability `spurious_cue_probability`; images without AU a never do.
    workers: processes that render (None: one per CPU core for `_PARALLEL_FROM` images or more at once, else 1).
    The images do not depend on it (each is drawn from its own generator).
    images_on_demand: the image column (`records.LazyImages`) renders the rows that are read, each with the other rows
    of its block of 32 (so that its pixels do not depend on which rows are read with it), and keeps them, instead of
    rendering every image now; labels, intensities and landmarks need no rendering and are there at once.
    """
    aus = facs.resolve_aus(aus)
    _check_arguments(num_subjects, images_per_subject, domain, seed, spurious_cue_au, spurious_cue_probability, aus)
    subjects = sample_subjects(num_subjects, seed, domain, subject_prefix)
    subject_index = np.repeat(np.arange(num_subjects), images_per_subject)
    image_index = np.tile(np.arange(images_per_subject), num_subjects)
    image_subjects = select(subjects, subject_index)
    labels, intensity, pose = _labels_and_poses(
        [_image_rng(seed, domain, subject_prefix, k, j) for k, j in zip(subject_index, image_index)], domain, aus)
    renderer = _Renderer(image_subjects, list(zip(subject_index, image_index)), seed, domain, subject_prefix,
                         spurious_cue_au, spurious_cue_probability, aus, workers)
    n = len(subject_index)
    subject_ids = np.array([f"{subject_prefix}{k:03d}" for k in range(num_subjects)])[subject_index]
    sources = np.array([f"synthetic:{domain}:seed{seed}:{s}:{j:04d}" for s, j in zip(subject_ids, image_index)])
    return records.FaceRecords(
        image=records.LazyImages(n, _kept(renderer.render, n)) if images_on_demand else renderer.render(np.arange(n)),
        landmarks=face_landmarks(image_subjects, intensity, pose, aus), labels=labels, intensity=intensity,
        subject=subject_ids, source=sources, name=name, au_ids=aus)


def sample_subjects(num_subjects: int, seed: int = 0, domain: str = "posed",
                    subject_prefix: str = "S") -> dict[str, np.ndarray]:
    """Appearance of subjects 0..num_subjects-1: {name: (num_subjects,) or (num_subjects, 3) float32}."""
    rngs = [_subject_rng(seed, domain, subject_prefix, k) for k in range(num_subjects)]
    params = _sample_uniform(rngs, _SUBJECT_SPEC)
    skin = _SKIN_LIGHT + params["skin_tone"][:, None] * (_SKIN_DARK - _SKIN_LIGHT) + params["skin_jitter"]
    hair = _palette(_HAIR_PALETTE, params["hair_colour"]) + params["colour_jitter"]
    params.update(
            skin=skin,
            hair=np.clip(hair, 0.0, 1.0),
            brows=np.clip(np.minimum(0.7 * hair + 0.03, 0.5 * skin), 0.0, 1.0),  # brows darker than the skin
            lashes=np.clip(np.minimum(0.25 * hair + 0.03, 0.3 * skin), 0.0, 1.0),
            iris=_palette(_IRIS_PALETTE, params["iris_colour"]),
            lips=(skin + 0.45 * (_LIP_RED - skin)) * 0.9,
            long_hair=(params["hair_style"] < _LONG_HAIR_PROBABILITY).astype(np.float32),
            front_hair=(params["hair_style"] < 1 - _BALD_PROBABILITY).astype(np.float32),
    )
    return {key: value.astype(np.float32) for key, value in params.items()}


def sample_labels(rng: np.random.Generator, aus: tuple[int, ...] = facs.PAIN_AUS) -> tuple[np.ndarray, np.ndarray]:
    """One image's AUs of the set `aus` from the label model: labels uint8 (A,) with at least one 1, intensity float32
    (A,). The pain AUs are drawn first, as they were before other AUs existed (so the pain set's draws, and with them
    every later draw of the image, are unchanged); the other AUs only where the set holds some."""
    wanted = set(aus)
    present = set()
    while not present:
        expression = rng.random() < _PAIN_EXPRESSION_PROBABILITY
        drawn = {au for au, p in _UPPER_FACE_PROBABILITY.items() if rng.random() < p[0 if expression else 1]}
        eyes_closing = bool(drawn & {6, 7})
        drawn |= {au for au, p in _EYE_CLOSURE_PROBABILITY.items() if rng.random() < p[0 if eyes_closing else 1]}
        drawn |= set(_MOUTH_STATES[rng.choice(len(_MOUTH_STATES), p=_MOUTH_STATE_PROBABILITIES)])
        if wanted - set(facs.PAIN_AUS):
            drawn |= _other_aus(rng, expression, eyes_closing)
        present = _compatible(drawn & wanted)
    labels = np.array([au in present for au in aus], np.uint8)
    intensity = labels * (1.0 + 4.0 * rng.random(len(aus)) ** _INTENSITY_SKEW)
    return labels, intensity.astype(np.float32)


def _other_aus(rng: np.random.Generator, pain_expression: bool, eyes_closing: bool) -> set[int]:
    """The AUs outside the pain set (and a few pain AUs that go with them), from the latent expressions of
    `_OTHER_EXPRESSIONS` and the pain expression's AU20 and AU43 (see the module docstring)."""
    drawn = set()
    for probability, with_expression, without in _OTHER_EXPRESSIONS:
        shown = rng.random() < probability
        drawn |= {au for au, p in (with_expression if shown else without).items() if rng.random() < p}
    closure = pain_expression and eyes_closing
    drawn |= {au for au, p in _PAIN_EXTRAS.items() if rng.random() < p[0 if closure else 1]}
    return drawn


def _compatible(present: set[int]) -> set[int]:
    """`present` without the AUs a face cannot show beside others in it (`_EXCLUDED_BY`: eyes shut, open mouth)."""
    return {au for au in present if not present & _EXCLUDED_BY.get(au, set())}


def sample_poses(rngs: list[np.random.Generator], domain: str) -> dict[str, np.ndarray]:
    """Pose jitter, one per generator: angle (n,) radians, scale (n,), shift (n, 2) pixels."""
    params = _sample_uniform(rngs, _POSE_SPEC[domain])
    return {"angle": np.deg2rad(params["angle_deg"]), "scale": params["scale"], "shift": params["shift"]}


def sample_scenes(rngs: list[np.random.Generator], domain: str) -> dict[str, np.ndarray]:
    """Background, light, occluder, degradations and pixel noise, one per generator: {name: (n, ...)}.

    `cue` (n,) bool starts all False; `cue_draw` (n,) uniform is what `generate` compares with the cue probability.
    """
    params = _sample_uniform(rngs, {**_SCENE_SPEC_COMMON, **_SCENE_SPEC[domain]})
    num_bytes = 2 * _SIZE * _SIZE * 3
    noise = np.stack([np.frombuffer(rng.bytes(num_bytes), np.uint8) for rng in rngs])
    params["noise_bytes"] = noise.reshape(len(rngs), 2, 3, _SIZE, _SIZE)
    params["background"] = np.clip(params.pop("background_grey")[:, None] + params.pop("background_tint"), 0, 1)
    params["cue"] = np.zeros(len(rngs), bool)
    return params


def render(subjects: dict[str, np.ndarray], intensity: np.ndarray, pose: dict[str, np.ndarray],
           scene: dict[str, np.ndarray], aus: tuple[int, ...] = facs.PAIN_AUS) -> tuple[np.ndarray, np.ndarray]:
    """n faces: subjects {name: (n, ...)}, intensity (n, A) in 0..5 of the AUs `aus` (A of them, in that order; AUs
    outside the set are absent), pose and scene (n, ...).

    Returns images uint8 (n, 112, 112, 3) and landmarks float32 (n, 68, 2) as (x, y) pixels. Rendering the same
    subjects, pose and scene with different intensities changes only what the AUs change (the pixel noise is part
    of the scene).
    """
    geometry = face_geometry(subjects, intensity, aus)
    forward = _pose_matrices(pose)
    landmarks = _apply_affine(forward, canonical_landmarks(geometry))
    face = _warp(_draw_face(subjects, geometry, scene["gaze"]), forward)
    image = face[:3] + (1.0 - face[3]) * _draw_background(scene)
    image = _draw_occluder(image, landmarks, scene)
    image = _apply_light(image, scene)
    image = _draw_cue(image, scene)  # after the light, so the mark stays equally clear in every image
    image = _blur(image, scene["blur_sigma"])
    image = _add_noise(image, scene["noise_bytes"], scene["noise_sigma"])
    image = _jpeg_like(image, scene["jpeg_quality"])
    return _to_uint8(image), _pixel_convention(landmarks)


def face_landmarks(subjects: dict[str, np.ndarray], intensity: np.ndarray, pose: dict[str, np.ndarray],
                   aus: tuple[int, ...] = facs.PAIN_AUS) -> np.ndarray:
    """The landmarks `render` returns for these faces, without rendering: float32 (n, 68, 2) (x, y) pixels."""
    geometry = face_geometry(subjects, intensity, aus)
    return _pixel_convention(_apply_affine(_pose_matrices(pose), canonical_landmarks(geometry)))


def _pixel_convention(landmarks: np.ndarray) -> np.ndarray:
    return (landmarks + 0.5).astype(np.float32)  # drawn at integer pixel centres; aujax's convention: see docstring


def select(params: dict[str, np.ndarray], index) -> dict[str, np.ndarray]:
    """The entries of subject / pose / scene parameters at `index` (integer array or boolean mask)."""
    return {key: value[index] for key, value in params.items()}


def effect_amount(intensity: np.ndarray) -> np.ndarray:
    """How strongly an AU of `intensity` (0 absent, 1..5) shows: 0, or 0.8 (intensity 1) to 1.0 (intensity 5).

    Even a trace AU shows clearly: with weaker traces a small model on a CPU budget could not learn the AUs from a
    few hundred faces, and the verification stage needs a model that does.
    """
    return np.where(intensity > 0, 0.8 + 0.2 * (np.clip(intensity, 1.0, 5.0) - 1.0) / 4.0, 0.0).astype(np.float32)


def face_geometry(subjects: dict[str, np.ndarray], intensity: np.ndarray,
                  aus: tuple[int, ...] = facs.PAIN_AUS) -> dict[str, np.ndarray]:
    """Canonical-frame shape of n faces after their AUs: {name: (n, 1, 1) float32}, pixels or AU amounts.

    intensity: (n, A) of the AUs `aus`; an AU outside the set is absent. Each AU outside the pain set adds a term
    that is exactly 0 when it is absent, so faces of the pain AUs come out bit for bit as before those AUs existed.
    """
    p = {key: value[:, None, None] for key, value in subjects.items() if value.ndim == 1}
    amount = effect_amount(intensity)
    absent = np.zeros((len(intensity), 1, 1), np.float32)
    a = {au: amount[:, aus.index(au), None, None] if au in aus else absent for au in facs.KNOWN_AUS}
    a4, a6, a7, a9, a10, a25, a26, a27 = (a[au] for au in facs.PAIN_AUS)
    eye_y = p["eye_y"]
    jaw_top = eye_y + p["jaw_top_below_eyes"]
    chin = eye_y + p["chin_below_eyes"]
    nose_tip = eye_y + p["nose_tip_below_eyes"]
    mouth_y = np.minimum(nose_tip + p["mouth_below_tip"], chin - 13.0)
    drop = 6.5 * a26 + 11.0 * a27
    lip_lift = 3.0 * a10
    return dict(
            jaw_half_width=p["face_half_width"], jaw_exponent=p["jaw_exponent"], jaw_top=jaw_top,
            jaw_depth=chin - jaw_top, jaw_drop=drop, head_top=jaw_top - p["head_height"],
            brow_inner_x=p["brow_gap"] - 2.5 * a4,
            brow_outer_x=p["brow_gap"] + p["brow_length"] - 1.0 * a4,
            brow_inner_y=eye_y - p["brow_height_inner"] + 3.5 * a4 - 3.5 * a[1] - 0.5 * a[2],
            brow_outer_y=eye_y - p["brow_height_outer"] + 1.5 * a4 - 0.6 * a[1] - 3.5 * a[2],
            brow_arch=p["brow_arch"] * (1.0 - 0.6 * a4) * (1.0 + 0.3 * a[2]),
            brow_thick_inner=p["brow_thick_inner"] * (1.0 + 0.25 * a4), brow_thick_outer=p["brow_thick_outer"],
            eye_x=p["eye_gap"], eye_y=eye_y, eye_half_width=p["eye_half_width"], eye_tilt=p["eye_tilt"],
            eye_upper=p["eye_upper"] * (1.0 - 0.4 * a7) * (1.0 + 0.55 * a[5]), lid_closure=0.97 * a[43],
            eye_lower=p["eye_lower"] * (1.0 - 0.5 * a7) * (1.0 - 0.45 * a6),
            eye_lower_neutral=p["eye_lower"], iris_radius=p["iris_radius"],
            nose_top=eye_y - 1.0, nose_tip=nose_tip - 0.7 * a9,
            nose_base=nose_tip + p["nose_base_below_tip"] - 2.5 * a9,
            nose_base_neutral=nose_tip + p["nose_base_below_tip"], nose_half_width=p["nose_half_width"],
            mouth_y=mouth_y,
            mouth_half_width=p["mouth_half_width"] * (1.0 + 0.08 * a27 + 0.10 * a[12] + 0.22 * a[20] - 0.06 * a[14]
                                                      - 0.06 * a[23]),
            mouth_half_width_neutral=p["mouth_half_width"],
            upper_lip=p["upper_lip"] * (1.0 - 0.3 * a[20] - 0.45 * a[23] - 0.35 * a[24]),
            lower_lip=p["lower_lip"] * (1.0 - 0.3 * a[20] - 0.45 * a[23] - 0.3 * a[24] - 0.3 * a[17]),
            lip_lift=lip_lift, corner_lift=3.0 * a[12] - 2.5 * a[15] - 0.8 * a[20], lip_push=1.2 * a[17],
            chin_lift=2.0 * a[17],
            gap_upper=0.8 * a25 + 0.1 * drop + 1.5 * a27 + 0.35 * lip_lift,
            gap_lower=1.5 * a25 + 0.85 * drop,
            glabella_furrows=a4, cheek_raise=a6, lid_tension=a7, nose_wrinkles=a9, fold_deepening=a10,
            inner_brow_raise=a[1], outer_brow_raise=a[2], dimples=a[14], lip_press=a[24], lip_tension=a[23],
            chin_boss=a[17],
    )


def canonical_landmarks(geometry: dict[str, np.ndarray]) -> np.ndarray:
    """The 68 landmarks of n faces in the canonical (upright) frame: (n, 68, 2) float32 (x, y)."""
    g = geometry
    n = len(g["jaw_top"])
    parts = [_jaw_landmarks(g)]
    for side in (-1, 1):  # right brow 17-21 runs outer -> inner, left brow 22-26 inner -> outer
        t = np.array([0.0, 0.25, 0.5, 0.75, 1.0], np.float32)[None, None, ::-side]
        x_out, x_in = _CENTRE_X + side * g["brow_outer_x"], _CENTRE_X + side * g["brow_inner_x"]
        parts.append((x_out + t * (x_in - x_out), _brow_centre(t, g)))
    bridge = np.linspace(0.0, 1.0, 4, dtype=np.float32)[None, None, :]
    parts.append((np.broadcast_to(_CENTRE_X, bridge.shape), g["nose_top"] + bridge * (g["nose_tip"] - g["nose_top"])))
    base = np.array([-0.8, -0.42, 0.0, 0.42, 0.8], np.float32)[None, None, :]
    parts.append((_CENTRE_X + base * g["nose_half_width"], g["nose_base"] + 0.7 - 1.6 * np.abs(base)))
    eye_s = np.array([-1.0, -1 / 3, 1 / 3, 1.0, 1 / 3, -1 / 3], np.float32)[None, None, :]
    on_upper = np.array([True, True, True, False, False, False])
    for side in (-1, 1):  # both eyes: corner at s=-1, upper lid, corner at s=1, lower lid back
        upper, lower = _eyelids(eye_s, g, side)
        parts.append((_CENTRE_X + side * g["eye_x"] + eye_s * g["eye_half_width"], np.where(on_upper, upper, lower)))
    outer_s = np.array([-1, -2 / 3, -1 / 3, 0, 1 / 3, 2 / 3, 1, 2 / 3, 1 / 3, 0, -1 / 3, -2 / 3], np.float32)
    outer_u = outer_s[None, None, :] * g["mouth_half_width"]
    upper_top, _, _, lower_bottom = _lip_curves(outer_u, g)
    parts.append((_CENTRE_X + outer_u, np.where(np.arange(12) < 7, upper_top, lower_bottom)))
    inner_s = np.array([-1, -0.5, 0, 0.5, 1, 0.5, 0, -0.5], np.float32)
    inner_u = inner_s[None, None, :] * _inner_mouth_half_width(g)
    _, inner_upper, inner_lower, _ = _lip_curves(inner_u, g)
    parts.append((_CENTRE_X + inner_u, np.where(np.arange(8) < 5, inner_upper, inner_lower)))
    xs = np.concatenate([np.broadcast_to(x, (n, 1, y.shape[-1])) for x, y in parts], axis=-1)
    ys = np.concatenate([np.broadcast_to(y, (n, 1, y.shape[-1])) for _, y in parts], axis=-1)
    return np.stack([xs[:, 0], ys[:, 0]], axis=-1).astype(np.float32)


# ---------------------------------------------------------------------------------------------------------------
# Sampling


def _check_arguments(num_subjects, images_per_subject, domain, seed, spurious_cue_au, spurious_cue_probability, aus):
    if domain not in DOMAINS:
        raise ValueError(f"unknown synthetic domain {domain!r}; choose one of {DOMAINS}")
    if num_subjects < 1 or images_per_subject < 1:
        raise ValueError(f"need at least one subject and one image per subject, got num_subjects={num_subjects}, "
                         f"images_per_subject={images_per_subject}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if spurious_cue_au is not None:
        facs.au_column(spurious_cue_au, aus)
    if not 0.0 <= spurious_cue_probability <= 1.0:
        raise ValueError(f"spurious_cue_probability must lie in [0, 1], got {spurious_cue_probability}")


@contextlib.contextmanager
def _task_runner(workers: int):
    """A `map` over tasks: in this process for one worker, else over 'spawn' processes (safe beside JAX threads)."""
    if workers <= 1:
        yield lambda fn, tasks: (fn(*task) for task in tasks)
        return
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        yield lambda fn, tasks: pool.map(fn, *zip(*tasks))


class _Renderer:
    """Renders the images of `keys` [(subject, image), ...] (subject parameters per image in `subjects`)."""

    def __init__(self, subjects, keys, seed, domain, subject_prefix, spurious_cue_au, spurious_cue_probability, aus,
                 workers):
        self.subjects, self.keys, self.workers = subjects, keys, workers
        self.settings = (seed, domain, subject_prefix, spurious_cue_au, spurious_cue_probability, aus)

    def render(self, rows: np.ndarray) -> np.ndarray:
        """Images uint8 (len(rows), 112, 112, 3) of the images at `rows`."""
        images = np.empty((len(rows), _SIZE, _SIZE, 3), np.uint8)
        workers = self.workers or (available_cores() if len(rows) >= _PARALLEL_FROM else 1)
        step = _CHUNK * _CHUNKS_PER_TASK if workers > 1 else _CHUNK
        parts = [slice(start, start + step) for start in range(0, len(rows), step)]
        tasks = [(select(self.subjects, rows[part]), [self.keys[i] for i in rows[part]], *self.settings)
                 for part in parts]
        with _task_runner(min(workers, len(tasks))) as run:
            for part, chunk in zip(parts, run(_render_task, tasks)):
                images[part] = chunk
        return images


def _kept(render, num_images: int):
    """`render` that renders each row once, together with the other rows of its block of `_CHUNK` (rows rendered
    before are returned from memory).

    Rendering whole blocks, as `generate` renders every image, makes an image independent of which rows are read
    with it: the vectorised float32 maths of a chunk can round a pixel differently when the chunk holds other
    images, so a process reading rows 0-7 alone would otherwise see other images than one reading rows 0-31.
    """
    kept = np.zeros(num_images, bool)
    images = np.zeros((num_images, _SIZE, _SIZE, 3), np.uint8)  # pages of rows never rendered are never touched

    def read(rows: np.ndarray) -> np.ndarray:
        blocks = np.unique(rows[~kept[rows]] // _CHUNK)
        if len(blocks):
            missing = (blocks[:, None] * _CHUNK + np.arange(_CHUNK)).reshape(-1)
            missing = missing[missing < num_images]
            images[missing] = render(missing)
            kept[missing] = True
        return images[rows]

    return read


def _render_task(subjects, keys, seed, domain, subject_prefix, spurious_cue_au, spurious_cue_probability, aus):
    """Images of `keys` [(subject, image), ...], rendered in chunks of _CHUNK."""
    parts = []
    for start in range(0, len(keys), _CHUNK):
        rngs = [_image_rng(seed, domain, subject_prefix, k, j) for k, j in keys[start:start + _CHUNK]]
        parts.append(_render_chunk(select(subjects, slice(start, start + _CHUNK)), rngs, domain, spurious_cue_au,
                                   spurious_cue_probability, aus))
    return np.concatenate(parts)


def _labels_and_poses(rngs, domain, aus):
    """Labels (n, A), intensity (n, A) of the AUs `aus` and pose from each image's generator (the first things drawn
    from it)."""
    labels, intensity = (np.stack(column) for column in zip(*(sample_labels(rng, aus) for rng in rngs)))
    return labels, intensity, sample_poses(rngs, domain)


def _render_chunk(subjects, rngs, domain, spurious_cue_au, spurious_cue_probability, aus):
    """Labels, pose and scene from each image's generator, then the render: images uint8 (n, 112, 112, 3)."""
    labels, intensity, pose = _labels_and_poses(rngs, domain, aus)
    scene = sample_scenes(rngs, domain)
    if spurious_cue_au is not None:
        shows_au = labels[:, facs.au_column(spurious_cue_au, aus)] == 1
        scene["cue"] = shows_au & (scene["cue_draw"] < spurious_cue_probability)
    return render(subjects, intensity, pose, scene, aus)[0]


def _key(seed, domain, subject_prefix, subject) -> list[int]:
    return [int(seed), zlib.crc32(domain.encode()), zlib.crc32(subject_prefix.encode()), int(subject)]


def _subject_rng(seed, domain, subject_prefix, subject) -> np.random.Generator:
    return np.random.default_rng(_key(seed, domain, subject_prefix, subject) + [0])


def _image_rng(seed, domain, subject_prefix, subject, image) -> np.random.Generator:
    return np.random.default_rng(_key(seed, domain, subject_prefix, subject) + [1, int(image)])


def _sample_uniform(rngs, spec) -> dict[str, np.ndarray]:
    """One row of uniforms per generator, cut into the named blocks of `spec`: {name: (n, *shape) float32}."""
    sizes = [int(np.prod(shape)) for shape, _, _ in spec.values()]
    uniforms = np.stack([rng.random(sum(sizes)) for rng in rngs])
    out, offset = {}, 0
    for (name, (shape, low, high)), size in zip(spec.items(), sizes):
        block = uniforms[:, offset:offset + size].reshape((len(rngs),) + shape)
        out[name] = (low + (high - low) * block).astype(np.float32)
        offset += size
    return out


def _palette(palette, u) -> np.ndarray:
    """Colours (n, 3) picked from ((cumulative probability, rgb), ...) by uniforms u (n,)."""
    thresholds = np.array([p for p, _ in palette], np.float32)
    colours = np.array([c for _, c in palette], np.float32)
    return colours[np.minimum(np.searchsorted(thresholds, u, side="right"), len(palette) - 1)]


# ---------------------------------------------------------------------------------------------------------------
# Curves shared by the landmarks and the drawing. Parameters are (n, 1, 1); positions broadcast against them.


def _jaw_curve(u, g):
    """y of the jaw / chin contour at horizontal offset u from the face axis (flat at jaw_top beyond the face)."""
    r = np.clip(np.abs(u) / g["jaw_half_width"], 0.0, 1.0)
    drop_weight = np.clip(1.0 - (u / (0.8 * g["jaw_half_width"])) ** 2, 0.0, None) ** 2
    contour = g["jaw_depth"] * (1.0 - r ** g["jaw_exponent"]) ** (1.0 / g["jaw_exponent"])
    return g["jaw_top"] + contour + g["jaw_drop"] * drop_weight - g["chin_lift"] * drop_weight


def _ellipse_top(u, half_width, bottom, height):
    """Upper half of an ellipse standing on y=bottom: its top y at offset u (= bottom beyond the ellipse)."""
    return bottom - height * np.sqrt(np.clip(1.0 - (u / half_width) ** 2, 0.0, None))


def _jaw_landmarks(g):
    theta = np.linspace(-np.pi / 2, np.pi / 2, 17, dtype=np.float32)[None, None, :]
    sine = np.sin(theta)
    u = g["jaw_half_width"] * np.sign(sine) * np.abs(sine) ** (2.0 / g["jaw_exponent"])
    return _CENTRE_X + u, _jaw_curve(u, g)


def _brow_centre(t, g):
    """y of a brow's centre line at t (0 outer end, 1 inner end); the arch peaks a third of the way in."""
    return g["brow_outer_y"] + t * (g["brow_inner_y"] - g["brow_outer_y"]) \
        - g["brow_arch"] * 6.75 * t * (1.0 - t) ** 2


def _eyelids(s, g, side, upper_scale=1.0, width_scale=1.0):
    """(upper, lower) lid y at s (-1 image-left corner, 1 image-right corner) of the eye on `side` (-1 right)."""
    k = np.clip(1.0 - (s / width_scale) ** 2, 0.0, None)
    base = g["eye_y"] - side * g["eye_tilt"] * s
    upper, lower = base - upper_scale * g["eye_upper"] * k ** 0.8, base + g["eye_lower"] * k
    return upper + g["lid_closure"] * (lower - upper), lower  # AU43 brings the upper lid down to the lower


def _inner_mouth_half_width(g):
    return 0.88 * g["mouth_half_width"]


def _lip_curves(u, g):
    """(upper lip top, upper lip inner edge, lower lip inner edge, lower lip bottom) y at offset u from the axis."""
    k = np.clip(1.0 - (u / g["mouth_half_width"]) ** 2, 0.0, None)
    k_inner = np.clip(1.0 - (u / _inner_mouth_half_width(g)) ** 2, 0.0, None)
    bend = g["corner_lift"] * (1.0 - k) + g["lip_push"] * k_inner  # AU12/15/20 move the corners, AU17 the middle
    inner_upper = g["mouth_y"] - g["gap_upper"] * k_inner - bend
    inner_lower = g["mouth_y"] + g["gap_lower"] * k_inner - bend
    cupid = k ** 0.55 * (1.0 - 0.3 * np.exp(-(u / (0.2 * g["mouth_half_width"])) ** 2))
    upper_top = inner_upper - g["upper_lip"] * cupid - g["lip_lift"] * k ** 0.5
    lower_bottom = inner_lower + g["lower_lip"] * k ** 0.7
    return upper_top, inner_upper, inner_lower, lower_bottom


# ---------------------------------------------------------------------------------------------------------------
# Drawing primitives on a premultiplied RGBA canvas (4, n, 112, 112), float32 in [0, 1]. The channel axis comes
# first throughout the image pipeline: coverage maps (n, h, w) then broadcast over it, and every array operation
# runs along contiguous rows.


class _Region:
    """The window of the canvas covering a feature's box in all n faces, with its pixel coordinates.

    x: (1, 1, w) column coordinates, y: (1, h, 1) row coordinates.
    """

    def __init__(self, x_low, x_high, y_low, y_high):
        c0, c1 = _window_bounds(x_low, x_high)
        r0, r1 = _window_bounds(y_low, y_high)
        self.rows, self.cols = slice(r0, r1), slice(c0, c1)
        self.x = _COORDS[c0:c1][None, None, :]
        self.y = _COORDS[r0:r1][None, :, None]


def _window_bounds(low, high) -> tuple[int, int]:
    start = int(np.clip(np.floor(np.min(low)) - 2, 0, _SIZE))
    return start, int(np.clip(np.ceil(np.max(high)) + 3, start, _SIZE))


def _span(coord, low, high):
    """Fraction of each pixel [coord - 0.5, coord + 0.5] that lies inside [low, high]."""
    return np.clip(np.minimum(coord + 0.5, high) - np.maximum(coord - 0.5, low), 0.0, 1.0)


def _stroke(coord, centre, half_width):
    """Coverage of a line of perpendicular `half_width` around a centre curve.

    In y(x) form centre is (n, 1, w) or (n, 1, 1) and coord the rows (1, h, 1); in x(y) form centre is (n, h, 1)
    or (n, 1, 1) and coord the columns (1, 1, w).
    """
    centre = np.asarray(centre, np.float32)
    varying = [axis for axis in (-1, -2) if centre.ndim >= 2 and centre.shape[axis] > 1]
    if varying:
        slope = np.gradient(centre, axis=varying[0])
        half_width = half_width * np.sqrt(1.0 + slope * slope)
    return _span(coord, centre - half_width, centre + half_width)


def _bump(coord, centre, sigma):
    """Gaussian profile exp(-((coord - centre) / sigma)^2), cut to exactly 0 beyond 2.5 sigma."""
    z = (coord - centre) / sigma
    return np.maximum(np.exp(-z * z) - _GAUSS_TAIL, 0.0) / (1.0 - _GAUSS_TAIL)


def _blob(region, cx, cy, sx, sy):
    return _bump(region.x, cx, sx) * _bump(region.y, cy, sy)


def _spot(cx, cy, sx, sy):
    """A Gaussian blob (see `_bump`) and the region that holds it: (region, coverage (n, h, w))."""
    region = _Region(cx - 2.5 * sx, cx + 2.5 * sx, cy - 2.5 * sy, cy + 2.5 * sy)
    return region, _blob(region, cx, cy, sx, sy)


def _ellipse(region, cx, cy, rx, ry):
    half_height = ry * np.sqrt(np.clip(1.0 - ((region.x - cx) / rx) ** 2, 0.0, None))
    return _span(region.y, cy - half_height, cy + half_height)


def _rgb(colour):
    """A colour (3,) or colours (n, 3) shaped (3, 1 or n, 1, 1) to broadcast against (3, n, h, w).

    Per-pixel colours, already (3, n, h or 1, w or 1), are returned as they are.
    """
    colour = np.asarray(colour, np.float32)
    return colour if colour.ndim == 4 else colour.reshape(-1, 3).T.reshape(3, -1, 1, 1)


def _paint(canvas, region, alpha, colour):
    """Blend `colour` (see `_rgb`) over the canvas RGB inside `region` with coverage `alpha` (n, h, w)."""
    view = canvas[:3, :, region.rows, region.cols]
    change = _rgb(colour) - view
    change *= alpha
    view += change


def _paint_layer(canvas, region, alpha, colour):
    """Composite an opaque silhouette (e.g. hair, face) of `colour` over the canvas, alpha included."""
    _paint(canvas, region, alpha, colour)
    view = canvas[3, :, region.rows, region.cols]
    view += alpha * (1.0 - view)


def _shade(canvas, region, alpha, amount):
    """Darken the canvas RGB by amount * alpha (a negative amount lightens)."""
    canvas[:3, :, region.rows, region.cols] *= 1.0 - amount * alpha


# ---------------------------------------------------------------------------------------------------------------
# The face, feature by feature, in the canonical frame


def _draw_face(s, g, gaze) -> np.ndarray:
    """Face layer of n faces: premultiplied RGBA (4, n, 112, 112) in the canonical frame."""
    canvas = np.zeros((4, len(g["jaw_top"]), _SIZE, _SIZE), np.float32)
    _draw_head(canvas, s, g)
    _draw_brows(canvas, s, g)
    for side in (-1, 1):
        _draw_eye(canvas, s, g, side, gaze)
        if np.any(g["cheek_raise"] > 0):
            _draw_cheek_raise(canvas, s, g, side)
    _draw_nose(canvas, s, g)
    _draw_nasolabial_folds(canvas, s, g)
    _draw_mouth(canvas, s, g)
    return canvas


def _draw_head(canvas, s, g):
    """Long hair behind the head, ears, neck, clothes, the face with its shading and blush, the front hair."""
    half = g["jaw_half_width"]
    hair_half = half + s["hair_volume"][:, None, None]
    hair_top = g["head_top"] - s["hair_volume"][:, None, None]
    chin = g["jaw_top"] + g["jaw_depth"] + g["jaw_drop"]
    skin = s["skin"]

    region = _Region(_CENTRE_X - hair_half - 3, _CENTRE_X + hair_half + 3, hair_top, g["jaw_top"] + 34)
    u = region.x - _CENTRE_X
    alpha = _span(region.y, _ellipse_top(u, hair_half + 2, g["jaw_top"], g["jaw_top"] - hair_top), g["jaw_top"] + 32)
    alpha = alpha * _span(np.abs(u), -1.0, hair_half + 2) * s["long_hair"][:, None, None]
    _paint_layer(canvas, region, alpha, s["hair"])

    for side in (-1, 1):
        ear_x, ear_y = _CENTRE_X + side * (half + 0.3), g["jaw_top"] + 3.0
        region = _Region(ear_x - 4, ear_x + 4, ear_y - 8, ear_y + 8)
        _paint_layer(canvas, region, _ellipse(region, ear_x, ear_y, 3.5, 7.5), skin * 0.9)
        _shade(canvas, region, _ellipse(region, ear_x + side * 0.5, ear_y, 1.6, 5.0), 0.18)

    neck_half = 0.55 * half
    region = _Region(_CENTRE_X - neck_half, _CENTRE_X + neck_half, g["jaw_top"] + 10, _SIZE)
    u = region.x - _CENTRE_X
    neck = _span(u, -neck_half, neck_half) * _span(region.y, g["jaw_top"] + 10, _SIZE + 1)
    _paint_layer(canvas, region, neck, skin * 0.86)
    below_jaw = np.clip(region.y - _jaw_curve(u, g), 0.0, None)
    _shade(canvas, region, neck * np.exp(-below_jaw / 4.0), 0.35)

    neck_base = g["jaw_top"] + g["jaw_depth"] + 9.0
    region = _Region(0, _SIZE, neck_base - 1, _SIZE)
    u = np.abs(region.x - _CENTRE_X)
    shoulder = neck_base + 0.3 * np.clip(u - neck_half, 0.0, None) + 5.0 * np.clip(1 - (u / neck_half) ** 2, 0, None)
    _paint_layer(canvas, region, _span(region.y, shoulder, _SIZE + 1), s["clothes"])

    region = _Region(_CENTRE_X - half, _CENTRE_X + half, g["head_top"], chin)
    u = region.x - _CENTRE_X
    top = _ellipse_top(u, half, g["jaw_top"], g["jaw_top"] - g["head_top"])
    alpha = _span(region.y, top, _jaw_curve(u, g)) * _span(u, -half, half)
    lateral_shading = 1.0 - 0.2 * np.clip(np.abs(u) / half, 0.0, 1.0) ** 4
    _paint_layer(canvas, region, alpha, _rgb(skin) * lateral_shading)
    for side in (-1, 1):
        region, blush = _spot(_CENTRE_X + side * g["eye_x"], g["eye_y"] + 13.0, 6.0, 4.0)
        _paint(canvas, region, blush * s["blush"][:, None, None], s["lips"])

    side_end = g["jaw_top"] + s["hair_length"][:, None, None]
    region = _Region(_CENTRE_X - hair_half, _CENTRE_X + hair_half, hair_top, side_end)
    u = region.x - _CENTRE_X
    hairline_centre = g["jaw_top"] - (g["jaw_top"] - g["head_top"]) * s["hairline"][:, None, None]
    r = np.abs(u) / half
    hairline = (hairline_centre - s["hair_recession"][:, None, None] * np.clip(r, 0, 1) ** 2
                + (side_end - hairline_centre) * np.clip((r - 0.78) / 0.22, 0.0, 1.0) ** 1.5)
    alpha = _span(region.y, _ellipse_top(u, hair_half, g["jaw_top"], g["jaw_top"] - hair_top), hairline)
    alpha = alpha * _span(u, -hair_half, hair_half) * s["front_hair"][:, None, None]
    strands = 1.0 - 0.12 * np.sin(1.3 * u + s["hair_phase"][:, None, None]) ** 2
    _paint_layer(canvas, region, alpha, _rgb(s["hair"]) * strands)


def _draw_brows(canvas, s, g):
    """Both brows along their centre lines, and the AU4 furrows between them."""
    for side in (-1, 1):
        x_out, x_in = _CENTRE_X + side * g["brow_outer_x"], _CENTRE_X + side * g["brow_inner_x"]
        top = np.minimum(g["brow_outer_y"], g["brow_inner_y"]) - g["brow_arch"] - g["brow_thick_inner"]
        region = _Region(np.minimum(x_out, x_in), np.maximum(x_out, x_in), top,
                         np.maximum(g["brow_outer_y"], g["brow_inner_y"]) + g["brow_thick_inner"])
        t = (region.x - x_out) / (x_in - x_out)
        inside = np.clip(t, 0.0, 1.0)
        taper = np.sqrt(np.clip(np.minimum(t, 1.0 - t) * 6.0, 0.0, 1.0))
        half = 0.5 * (g["brow_thick_outer"] + inside * (g["brow_thick_inner"] - g["brow_thick_outer"])) * taper
        _paint(canvas, region, 0.9 * _stroke(region.y, _brow_centre(inside, g), half), s["brows"])
    furrows = g["glabella_furrows"]
    if np.any(furrows > 0):
        region = _Region(_CENTRE_X - g["brow_inner_x"], _CENTRE_X + g["brow_inner_x"],
                         g["brow_inner_y"] - 5, g["brow_inner_y"] + 4)
        along = _span(region.y, g["brow_inner_y"] - 4.0, g["brow_inner_y"] + 3.0)
        for side in (-1, 1):
            line_x = _CENTRE_X + side * (0.45 * g["brow_inner_x"] + 0.3)
            _shade(canvas, region, _stroke(region.x, line_x, 0.45) * along, 0.4 * furrows)
    inner = g["inner_brow_raise"]
    if np.any(inner > 0):  # AU1: horizontal wrinkles over the middle of the forehead, above the raised inner brows
        half, top = g["brow_inner_x"] + 4.0, g["brow_inner_y"] - 0.5 * g["brow_thick_inner"]
        region = _Region(_CENTRE_X - half, _CENTRE_X + half, top - 8.0, top)
        u = region.x - _CENTRE_X
        for rise in (3.5, 6.5):
            line = _stroke(region.y, top - rise + 0.015 * u * u, 0.45) * _span(u, -half, half)
            _shade(canvas, region, line, 0.35 * inner)
    outer = g["outer_brow_raise"]
    if np.any(outer > 0):  # AU2: a crease above the outer half of each raised brow
        for side in (-1, 1):
            x_out, x_in = _CENTRE_X + side * g["brow_outer_x"], _CENTRE_X + side * g["brow_inner_x"]
            x_mid = x_out + 0.55 * (x_in - x_out)
            region = _Region(np.minimum(x_out, x_mid), np.maximum(x_out, x_mid),
                             g["brow_outer_y"] - g["brow_arch"] - g["brow_thick_inner"] - 4.0, g["brow_outer_y"])
            t = np.clip((region.x - x_out) / (x_in - x_out), 0.0, 1.0)
            crease = _brow_centre(t, g) - g["brow_thick_outer"] - 2.2
            along = _span(region.x, np.minimum(x_out, x_mid), np.maximum(x_out, x_mid))
            _shade(canvas, region, _stroke(region.y, crease, 0.45) * along, 0.35 * outer)


def _draw_eye(canvas, s, g, side, gaze):
    """The eye on `side` (-1 right = image left): socket, crease, white, iris, lids and the AU7 tension line."""
    centre_x, half = _CENTRE_X + side * g["eye_x"], g["eye_half_width"]
    region, socket = _spot(centre_x, g["eye_y"] - 2.5, 0.9 * half, 3.5)
    _shade(canvas, region, socket, 0.12)

    tilt = np.abs(g["eye_tilt"])
    region = _Region(centre_x - 1.1 * half, centre_x + 1.1 * half, g["eye_y"] - tilt - g["eye_upper"] - 3.5,
                     g["eye_y"] + tilt + g["eye_lower"] + 2.5)
    s_x = (region.x - centre_x) / half
    upper, lower = _eyelids(s_x, g, side)
    across = _span(s_x, -1.05, 1.05)
    crease, _ = _eyelids(s_x, g, side, upper_scale=1.0 + 2.6 / g["eye_upper"], width_scale=1.05)
    _shade(canvas, region, _stroke(region.y, crease, 0.45) * across, 0.18)
    aperture = _span(region.y, upper, lower)
    _paint(canvas, region, aperture, _EYE_WHITE)
    iris_x = centre_x + 1.2 * gaze[:, 0, None, None]
    iris_y = g["eye_y"] + 0.5 * gaze[:, 1, None, None]
    for radius, colour in ((g["iris_radius"], s["iris"]), (0.42 * g["iris_radius"], _PUPIL)):
        disc_half = radius * np.sqrt(np.clip(1.0 - ((region.x - iris_x) / radius) ** 2, 0.0, None))
        disc = _span(region.y, np.maximum(iris_y - disc_half, upper), np.minimum(iris_y + disc_half, lower))
        _paint(canvas, region, disc, colour)
    _paint(canvas, region, 0.7 * aperture * _blob(region, iris_x - 1.1, iris_y - 1.1, 0.7, 0.7), _WHITE)
    _paint(canvas, region, 0.9 * _stroke(region.y, upper, 0.65) * across, s["lashes"])
    _shade(canvas, region, _stroke(region.y, lower, 0.4) * across, 0.25)
    tension = g["lid_tension"]
    if np.any(tension > 0):
        _shade(canvas, region, _stroke(region.y, lower + 1.6, 0.5) * _span(s_x, -0.8, 0.8), 0.2 * tension)


def _draw_cheek_raise(canvas, s, g, side):
    """AU6 around the eye on `side`: infraorbital furrow, raised lit cheek, crow's feet at the outer corner."""
    amount = g["cheek_raise"]
    centre_x, half = _CENTRE_X + side * g["eye_x"], g["eye_half_width"]
    tilt = np.abs(g["eye_tilt"])
    region = _Region(centre_x - half, centre_x + half, g["eye_y"] - tilt,
                     g["eye_y"] + tilt + g["eye_lower_neutral"] + 4.5)
    s_x = (region.x - centre_x) / half
    neutral_lower = _eyelids(s_x, {**g, "eye_lower": g["eye_lower_neutral"]}, side)[1]
    furrow = _stroke(region.y, neutral_lower + 3.2 - 0.8 * amount, 0.6) * _span(s_x, -0.9, 0.9)
    _shade(canvas, region, furrow, 0.3 * amount)

    region, cheek = _spot(centre_x + side * 2.0, g["eye_y"] + 10.5 - 2.5 * amount, 5.0, 2.6)
    _paint(canvas, region, 0.4 * amount * cheek, np.clip(s["skin"] * 1.18 + 0.04, 0.0, 1.0))

    corner_x = centre_x + side * half
    corner_y = _eyelids(np.float32(side), g, side)[0]
    region = _Region(np.minimum(corner_x, corner_x + 8 * side), np.maximum(corner_x, corner_x + 8 * side),
                     corner_y - 4.5, corner_y + 4.5)
    outward = (region.x - corner_x) * side
    for slope in (-0.45, 0.05, 0.5):
        line = _stroke(region.y, corner_y + slope * outward, 0.42)
        _shade(canvas, region, line * _span(outward, 1.5, 7.5 - 1.5 * abs(slope)), 0.5 * amount)


def _draw_nose(canvas, s, g):
    """Bridge shading, AU9 wrinkles, tip highlight, alar wings, nostrils and the shadow under the nose."""
    half, tip, top, base = g["nose_half_width"], g["nose_tip"], g["nose_top"], g["nose_base"]
    region = _Region(_CENTRE_X - 0.6 * half - 1.5, _CENTRE_X + 0.6 * half + 1.5, top + 2, tip)
    t = np.clip((region.y - top - 3.0) / (tip - top - 3.0), 0.0, 1.0)
    along = _span(region.y, top + 3.0, tip - 1.0)
    for side in (-1, 1):
        side_line = _CENTRE_X + side * (2.2 + (0.6 * half - 2.2) * t)
        _shade(canvas, region, _stroke(region.x, side_line, 0.8) * along, 0.12)

    wrinkles = g["nose_wrinkles"]
    if np.any(wrinkles > 0):
        region = _Region(_CENTRE_X - 5, _CENTRE_X + 5, top, tip)
        u = region.x - _CENTRE_X
        for f in (0.3, 0.45, 0.6):
            line = _stroke(region.y, top + f * (tip - top) + 0.06 * u * u, 0.45) * _span(u, -4.5, 4.5)
            _shade(canvas, region, line, 0.4 * wrinkles)

    region, highlight = _spot(_CENTRE_X, tip - 1.5, 2.8, 2.2)
    _paint(canvas, region, 0.35 * highlight, np.clip(s["skin"] * 1.12, 0.0, 1.0))
    region = _Region(_CENTRE_X - half - 1, _CENTRE_X + half + 1, base - 5, base + 1)
    for side in (-1, 1):
        wing_x = _CENTRE_X + side * (half - 2.2)
        wing = _ellipse_top(region.x - wing_x, 2.6, base - 1.6, 2.6)
        _shade(canvas, region, _stroke(region.y, wing, 0.5) * _span(region.x, wing_x - 2.6, wing_x + 2.6), 0.3)
        nostril = _ellipse(region, _CENTRE_X + side * 0.42 * half, base - 0.5, 0.27 * half, 1.1)
        _paint(canvas, region, nostril, s["skin"] * 0.3)
    region, shadow = _spot(_CENTRE_X, base + 1.3, 0.75 * half, 1.2)
    _shade(canvas, region, shadow, 0.18)


def _draw_nasolabial_folds(canvas, s, g):
    """Folds from the nose wings past the mouth corners, deepened above the mouth by AU10."""
    start_y, end_y = g["nose_base_neutral"] - 1.5, g["mouth_y"] + 6.0
    start_x, end_x = g["nose_half_width"] + 0.5, g["mouth_half_width_neutral"] + 2.5
    region = _Region(_CENTRE_X - end_x - 2, _CENTRE_X + end_x + 2, start_y, end_y)
    t = np.clip((region.y - start_y) / (end_y - start_y), 0.0, 1.0)
    depth = s["fold_depth"][:, None, None] + 0.25 * g["fold_deepening"] * (region.y < g["mouth_y"])
    along = _span(region.y, start_y, end_y)
    for side in (-1, 1):
        fold = _CENTRE_X + side * (start_x + (end_x - start_x) * t ** 0.7)
        _shade(canvas, region, _stroke(region.x, fold, 0.6) * along, depth)


def _draw_mouth(canvas, s, g):
    """Philtrum, lips, the opening with teeth, lip highlight, the shadow under the lower lip, chin highlight."""
    half, mouth_y = g["mouth_half_width"], g["mouth_y"]
    inner_half = _inner_mouth_half_width(g)
    centre = np.zeros((1, 1, 1), np.float32)
    upper_top_centre, _, _, lower_bottom_centre = _lip_curves(centre, g)
    region = _Region(_CENTRE_X - 2.5, _CENTRE_X + 2.5, g["nose_base"] + 1, upper_top_centre)
    philtrum = _span(region.y, g["nose_base"] + 1.0, upper_top_centre)
    for side in (-1, 1):
        _shade(canvas, region, _stroke(region.x, _CENTRE_X + side * 1.6, 0.5) * philtrum, 0.08)

    region = _Region(_CENTRE_X - half, _CENTRE_X + half,
                     mouth_y - g["gap_upper"] - g["upper_lip"] - g["lip_lift"] - np.maximum(g["corner_lift"], 0.0)
                     - g["lip_push"], mouth_y + g["gap_lower"] + g["lower_lip"] + np.maximum(-g["corner_lift"], 0.0))
    u = region.x - _CENTRE_X
    upper_top, inner_upper, inner_lower, lower_bottom = _lip_curves(u, g)
    _paint(canvas, region, _span(region.y, upper_top, inner_upper), s["lips"])
    _paint(canvas, region, _span(region.y, inner_lower, lower_bottom), np.clip(s["lips"] * 1.08, 0.0, 1.0))
    opening = _span(region.y, inner_upper - 0.45, inner_lower + 0.45) * _span(u, -inner_half, inner_half)
    _paint(canvas, region, 0.9 * opening, _MOUTH_INSIDE)
    upper_teeth = _span(region.y, inner_upper, np.minimum(inner_upper + 2.8, inner_lower))
    _paint(canvas, region, upper_teeth * _span(u, -0.8 * inner_half, 0.8 * inner_half), _TEETH)
    lower_teeth = _span(region.y, np.maximum(inner_lower - 1.8, inner_upper + 2.8), inner_lower)
    _paint(canvas, region, lower_teeth * _span(u, -0.6 * inner_half, 0.6 * inner_half), _TEETH * 0.9)
    if np.any(g["lip_tension"] > 0):  # AU23: the tightened lips' borders drawn in
        across = _span(u, -0.85 * half, 0.85 * half)
        for border in (upper_top, lower_bottom):
            _shade(canvas, region, _stroke(region.y, border, 0.4) * across, 0.3 * g["lip_tension"])
    _draw_lip_marks(canvas, s, g)

    region, highlight = _spot(_CENTRE_X, mouth_y + g["gap_lower"] + 0.45 * g["lower_lip"], 4.0, 1.0)
    _paint(canvas, region, 0.15 * highlight, _WHITE)
    region, shadow = _spot(_CENTRE_X, lower_bottom_centre + 3.0, 6.0, 1.5)
    _shade(canvas, region, shadow, 0.14)
    region, highlight = _spot(_CENTRE_X, g["jaw_top"] + g["jaw_depth"] + g["jaw_drop"] - 6.0 - g["chin_lift"], 5.0,
                              2.0)
    _paint(canvas, region, 0.15 * highlight, np.clip(s["skin"] * 1.1, 0.0, 1.0))


def _draw_lip_marks(canvas, s, g):
    """What AU14, AU24 and AU17 draw around the lips: dimples beside the corners, the bulges of pressed lips, the
    dimpled chin boss under a pushed-up lower lip."""
    half, mouth_y = g["mouth_half_width"], g["mouth_y"]
    if np.any(g["dimples"] > 0):  # AU14: a short crescent beside each tightened corner
        corner_y = mouth_y - g["corner_lift"]
        for side in (-1, 1):
            x = _CENTRE_X + side * (half + 2.0)
            region = _Region(x - 2.5, x + 2.5, corner_y - 3.5, corner_y + 3.5)
            curve = x + side * 0.12 * (region.y - corner_y) ** 2
            dimple = _stroke(region.x, curve, 0.5) * _span(region.y, corner_y - 3.0, corner_y + 3.0)
            _shade(canvas, region, dimple, 0.4 * g["dimples"])
    if np.any(g["lip_press"] > 0):  # AU24: skin bulging above and below the pressed lips
        region = _Region(_CENTRE_X - half, _CENTRE_X + half, mouth_y - g["upper_lip"] - 4.0,
                         mouth_y + g["lower_lip"] + 4.0)
        u = region.x - _CENTRE_X
        upper_top, _, _, lower_bottom = _lip_curves(u, g)
        across = _span(u, -0.8 * half, 0.8 * half)
        _paint(canvas, region, 0.35 * g["lip_press"] * _stroke(region.y, upper_top - 1.4, 0.7) * across,
               np.clip(s["skin"] * 1.15, 0.0, 1.0))
        _shade(canvas, region, _stroke(region.y, lower_bottom + 1.3, 0.7) * across, 0.3 * g["lip_press"])
    if np.any(g["chin_boss"] > 0):  # AU17: the raised chin boss, dimpled
        boss_y = g["jaw_top"] + g["jaw_depth"] + g["jaw_drop"] - g["chin_lift"] - 6.0
        region = _Region(_CENTRE_X - 6.0, _CENTRE_X + 6.0, boss_y - 4.0, boss_y + 4.0)
        for dx, dy in ((-3.0, -1.0), (0.0, 0.5), (3.0, -1.0), (-1.5, 2.2), (1.5, 2.2)):
            _shade(canvas, region, _blob(region, _CENTRE_X + dx, boss_y + dy, 0.9, 0.9), 0.3 * g["chin_boss"])


# ---------------------------------------------------------------------------------------------------------------
# Pose, background and the image-space steps


def _pose_matrices(pose) -> np.ndarray:
    """Canonical -> image affine maps (n, 2, 3): rotate and scale about the pose pivot, then shift."""
    cos, sin = np.cos(pose["angle"]) * pose["scale"], np.sin(pose["angle"]) * pose["scale"]
    linear = np.stack([np.stack([cos, -sin], -1), np.stack([sin, cos], -1)], -2)
    offset = _POSE_PIVOT + pose["shift"] - linear @ _POSE_PIVOT
    return np.concatenate([linear, offset[..., None]], axis=-1).astype(np.float32)


def _apply_affine(matrices, points) -> np.ndarray:
    """points (n, k, 2) mapped by matrices (n, 2, 3)."""
    return points @ np.swapaxes(matrices[:, :, :2], 1, 2) + matrices[:, None, :, 2]


def _warp(canvas, forward) -> np.ndarray:
    """Resample canvases (C, n, H, W) so that canonical point p lands at forward(p); bilinear, edges clamped."""
    channels, n, height, width = canvas.shape
    linear_inverse = np.linalg.inv(forward[:, :, :2])
    offset_inverse = -np.einsum("nij,nj->ni", linear_inverse, forward[:, :, 2])
    m = np.concatenate([linear_inverse, offset_inverse[..., None]], axis=-1)[:, :, :, None, None]
    xs, ys = _COORDS[None, None, :], _COORDS[:, None]
    u = np.clip((m[:, 0, 0] * xs + m[:, 0, 2]) + m[:, 0, 1] * ys, 0, width - 1)
    v = np.clip((m[:, 1, 0] * xs + m[:, 1, 2]) + m[:, 1, 1] * ys, 0, height - 1)
    x0 = np.minimum(np.floor(u), width - 2)
    y0 = np.minimum(np.floor(v), height - 2)
    fx, fy = u - x0, v - y0
    index = (np.arange(n) * (height * width))[:, None, None] + (y0 * width + x0).astype(np.intp)
    corners = (index, index + 1, index + width, index + width + 1)
    weights = ((1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy)
    out = np.empty_like(canvas)
    for c in range(channels):
        flat = canvas[c].reshape(-1)
        out[c] = sum(np.take(flat, corner, mode="wrap") * weight for corner, weight in zip(corners, weights))
    return out


def _draw_background(scene) -> np.ndarray:
    """(3, n, 112, 112): a plain colour with a vertical gradient, plus texture and clutter where asked for."""
    n = len(scene["background"])
    ramp = 1.0 + scene["background_gradient"][:, None, None] * (_COORDS[:, None] / _SIZE - 0.5)
    background = np.broadcast_to(_rgb(scene["background"]) * ramp, (3, n, _SIZE, _SIZE)).copy()
    if np.any(scene["texture_strength"] > 0):
        cells = np.linspace(0, _TEXTURE_CELLS - 1, _SIZE, dtype=np.float32)
        upsample = np.clip(1.0 - np.abs(cells[:, None] - np.arange(_TEXTURE_CELLS)), 0.0, 1.0)  # (112, cells)
        texture = upsample @ (scene["texture"].transpose(3, 0, 1, 2) - 0.5) @ upsample.T  # bilinear, (3, n, H, W)
        background += scene["texture_strength"][:, None, None] * texture
    if np.any(scene["clutter"] > 0):
        _draw_clutter(background, scene)
    return background


def _draw_clutter(background, scene):
    """Random hard-edged rectangles and discs, later ones on top, in place on background (3, n, 112, 112)."""
    n = background.shape[1]
    xs, ys = _COORDS[None, None, :], _COORDS[None, :, None]
    rects, discs = scene["rects"], scene["discs"]
    topmost = np.full((n, _SIZE, _SIZE), -1, np.int8)  # index of the shape seen at each pixel, -1 none
    for k in range(_CLUTTER_RECTS):
        cx, cy, half_width, half_height = (rects[:, k, i, None, None] for i in range(4))
        inside = ((np.abs(xs - _SIZE * cx) <= 3 + 25 * half_width)
                  & (np.abs(ys - _SIZE * cy) <= 3 + 25 * half_height))
        np.putmask(topmost, inside, k)
    for k in range(_CLUTTER_DISCS):
        cx, cy, radius = (discs[:, k, i, None, None] for i in range(3))
        inside = (xs - _SIZE * cx) ** 2 + (ys - _SIZE * cy) ** 2 <= (3 + 15 * radius) ** 2
        np.putmask(topmost, inside, _CLUTTER_RECTS + k)
    shown = (topmost >= 0) & (scene["clutter"] > 0)[:, None, None]
    colours = np.concatenate([rects[:, :, 4:], discs[:, :, 3:]], axis=1)  # (n, shapes, 3)
    index = np.maximum(topmost, 0) + (np.arange(n) * colours.shape[1])[:, None, None]
    for c in range(3):
        np.copyto(background[c], np.take(colours[:, :, c].reshape(-1), index), where=shown)


def _draw_occluder(image, landmarks, scene) -> np.ndarray:
    """An opaque ellipse over a random face part in the images (3, n, 112, 112) whose occluder is drawn."""
    present = scene["occluder"][:, 0] < scene["occluder_probability"]
    if not np.any(present):
        return image
    u = scene["occluder"]
    part = np.minimum((u[:, 1] * len(_OCCLUDED_PARTS)).astype(int), len(_OCCLUDED_PARTS) - 1)
    centres = np.stack([landmarks[:, list(ids)].mean(axis=1) for ids in _OCCLUDED_PARTS], axis=1)
    centre = centres[np.arange(len(part)), part] + 8.0 * (u[:, 2:4] - 0.5)
    whole = _Region(0, _SIZE, 0, _SIZE)
    alpha = _ellipse(whole, centre[:, 0, None, None], centre[:, 1, None, None],
                     (7 + 9 * u[:, 4])[:, None, None], (5 + 7 * u[:, 5])[:, None, None])
    return image + alpha * present[:, None, None] * (_rgb(u[:, 6:9]) - image)


def _draw_cue(image, scene) -> np.ndarray:
    """The spurious cue: a white square with a black rim in the top-left corner, where scene["cue"]."""
    if not np.any(scene["cue"]):
        return image
    image = image.copy()
    region = _Region(0, 20, 0, 20)
    corner = image[:, :, region.rows, region.cols]
    cx, cy = (scene["cue_position"][:, i, None, None] for i in range(2))
    shown = scene["cue"][:, None, None]
    for half, value in ((_CUE_OUTER, 0.0), (_CUE_INNER, 1.0)):
        alpha = _span(region.x, cx - half, cx + half) * _span(region.y, cy - half, cy + half) * shown
        corner += alpha * (value - corner)
    return image


def _apply_light(image, scene) -> np.ndarray:
    """Contrast, brightness and a multiplicative light field (linear gradient plus a light / shadow spot)."""
    gradient = scene["light_gradient"]
    centred = (_COORDS - _CENTRE_X) / _SIZE
    field = 1.0 + gradient[:, 0, None, None] * centred[None, None, :] + gradient[:, 1, None, None] * centred[:, None]
    if np.any(scene["spot_gain"] != 0):
        whole = _Region(0, _SIZE, 0, _SIZE)
        spot = scene["spot"]
        radius = (20 + 40 * spot[:, 2])[:, None, None]
        field = field + scene["spot_gain"][:, None, None] * _blob(whole, _SIZE * spot[:, 0, None, None],
                                                                  _SIZE * spot[:, 1, None, None], radius, radius)
    contrast = scene["contrast"][:, None, None]
    offset = (0.5 - 0.5 * contrast + scene["brightness"][:, None, None]) * field
    image *= contrast * field
    image += offset
    return image


def _blur(image, sigma) -> np.ndarray:
    """Separable Gaussian blur with a per-image sigma (n,) in pixels (0: unchanged), 5 taps, edges clamped."""
    if not np.any(sigma > 0):
        return image
    taps = np.arange(-2, 3, dtype=np.float32)
    weights = np.exp(-0.5 * (taps / np.maximum(sigma[:, None], 1e-3)) ** 2)
    weights = (weights / weights.sum(axis=1, keepdims=True)).T[:, :, None, None]  # (5, n, 1, 1)
    for axis in (2, 3):
        padded = np.pad(image, [(2, 2) if a == axis else (0, 0) for a in range(4)], mode="edge")
        shifted = [padded[(slice(None),) * axis + (slice(k, k + _SIZE),)] for k in range(5)]
        image = (weights[2] * shifted[2] + weights[1] * (shifted[1] + shifted[3])
                 + weights[0] * (shifted[0] + shifted[4]))
    return image


def _add_noise(image, noise_bytes, sigma) -> np.ndarray:
    """image (3, n, 112, 112) plus zero-mean triangular noise of standard deviation sigma (n,).

    The noise comes from two uniform bytes per value, noise_bytes (n, 2, 3, 112, 112); their sum minus 255 has
    standard deviation 104.2.
    """
    noise = np.add(noise_bytes[:, 0], noise_bytes[:, 1], dtype=np.float32).transpose(1, 0, 2, 3)
    noise -= 255.0
    noise *= (sigma / np.float32(104.2))[:, None, None]
    image += noise
    return image


def _to_uint8(image) -> np.ndarray:
    """(3, n, H, W) float in [0, 1] (clipped) -> (n, H, W, 3) uint8, rounded."""
    image *= 255.0
    image += 0.5
    np.clip(image, 0.0, 255.0, out=image)
    out = np.empty(image.shape[1:] + (3,), np.uint8)
    np.copyto(out.transpose(3, 0, 1, 2), image, casting="unsafe")
    return out


def _jpeg_like(image, quality) -> np.ndarray:
    """JPEG-like compression of image (3, n, 112, 112) float at `quality` (n,) in 1..100; 0 leaves an image as is.

    In YCbCr: the luma's 8x8 block DCT is quantised with the JPEG luminance table scaled to the quality, the chroma
    is subsampled 2x2 (its quantisation, which matters less to the eye, is left out). The image is clipped to
    [0, 1] first, as a camera would.
    """
    compress = quality > 0
    if not np.any(compress):
        return image
    image = np.clip(image, 0.0, 1.0) * 255.0
    q = np.clip(quality, 1.0, 100.0)
    scale = np.where(q < 50, 5000.0 / q, 200.0 - 2.0 * q)[:, None]
    steps = np.clip(np.floor((_JPEG_LUMA.reshape(1, 64) * scale + 50.0) / 100.0), 1.0, 255.0)
    ycc = [sum(_RGB_TO_YCC[k, c] * image[c] for c in range(3)) for k in range(3)]
    luma = _quantise_blocks(ycc[0] - 128.0, steps) + 128.0
    chroma = [_subsample_2x2(plane) for plane in ycc[1:]]
    rgb = np.stack([_YCC_TO_RGB[c, 0] * luma + _YCC_TO_RGB[c, 1] * chroma[0] + _YCC_TO_RGB[c, 2] * chroma[1]
                    for c in range(3)])
    if not np.all(compress):
        rgb = np.where(compress[:, None, None], rgb, image)
    return rgb * np.float32(1 / 255)


def _subsample_2x2(plane) -> np.ndarray:
    """plane (n, h, w) with each 2x2 block replaced by its mean."""
    mean = 0.25 * (plane[:, 0::2, 0::2] + plane[:, 1::2, 0::2] + plane[:, 0::2, 1::2] + plane[:, 1::2, 1::2])
    n, height, width = plane.shape
    out = np.empty((n, height // 2, 2, width // 2, 2), np.float32)
    out[...] = mean[:, :, None, :, None]
    return out.reshape(plane.shape)


def _quantise_blocks(plane, steps) -> np.ndarray:
    """plane (n, h, w) with h, w multiples of 8, each 8x8 block's DCT rounded to multiples of steps (n, 64).

    Written as sums of array products rather than matrix products: BLAS would start threads for these shapes,
    which only costs time on a shared machine.
    """
    n, height, width = plane.shape
    blocks = plane.reshape(n, height // 8, 8, width // 8, 8).transpose(2, 4, 0, 1, 3).reshape(8, 8, n, -1)
    coefficients = _transform_blocks(blocks, _DCT)
    steps = steps.reshape(n, 8, 8).transpose(1, 2, 0)[..., None]
    restored = _transform_blocks(np.round(coefficients / steps) * steps, _DCT.T)
    return restored.reshape(8, 8, n, height // 8, width // 8).transpose(2, 3, 0, 4, 1).reshape(n, height, width)


def _transform_blocks(blocks, basis) -> np.ndarray:
    """basis @ block @ basis.T for blocks laid out (8 rows, 8 columns, ...)."""
    rows = sum(basis[:, a, None, None, None] * blocks[a][None] for a in range(8))
    return sum(basis[None, :, c, None, None] * rows[:, c][:, None] for c in range(8))
