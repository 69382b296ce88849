"""A zero-training AU baseline from MediaPipe's 52 face blendshapes.

MediaPipe's FaceLandmarker scores 52 ARKit-style blendshapes in [0, 1] per face (`FaceCrop.blendshapes`,
float32 (52,) in `BLENDSHAPE_NAMES` order). This module maps them onto the 8 pain AUs with fixed rules and
thresholds (`AU_RULES`; other AUs have none), to stand beside the trained ResNet the way the paper puts OpenFace
beside it. Nothing is fitted: the thresholds are named constants chosen by hand, not tuned on any dataset.

Rules (bilateral blendshapes: the larger of Left/Right, since an AU also counts when one-sided):

  AU4  brow lowerer      max(browDownLeft, browDownRight)                          >= BROW_DOWN_THRESHOLD
  AU6  cheek raiser      max(cheekSquintLeft, cheekSquintRight)                    >= CHEEK_SQUINT_THRESHOLD
  AU7  lid tightener     max(eyeSquintLeft, eyeSquintRight)                        >= EYE_SQUINT_THRESHOLD
  AU9  nose wrinkler     max(noseSneerLeft, noseSneerRight)                        >= NOSE_SNEER_THRESHOLD
  AU10 upper lip raiser  max(mouthUpperUpLeft, mouthUpperUpRight)                  >= UPPER_LIP_UP_THRESHOLD
  AU25 lips part         max(jawOpen - mouthClose, mouthUpperUp*, mouthLowerDown*) >= LIPS_APART_THRESHOLD
  AU26 jaw drop          jawOpen in [JAW_DROP_THRESHOLD, MOUTH_STRETCH_THRESHOLD)
  AU27 mouth stretch     jawOpen                                                   >= MOUTH_STRETCH_THRESHOLD

`mouthClose` is ARKit's "lips together although the jaw is open", so jawOpen - mouthClose is the part of
the jaw opening that also parts the lips; a raised upper or lowered lower lip parts them with the jaw shut.
AU26 and AU27 are exclusive (FACS codes the stronger one), both on jawOpen.
"""

import numpy as np

from aujax import facs

# The FaceLandmarker's output order (category index 0..51) of the float16 v1 bundle.
BLENDSHAPE_NAMES = (
        "_neutral", "browDownLeft", "browDownRight", "browInnerUp", "browOuterUpLeft", "browOuterUpRight",
        "cheekPuff", "cheekSquintLeft", "cheekSquintRight", "eyeBlinkLeft", "eyeBlinkRight",
        "eyeLookDownLeft", "eyeLookDownRight", "eyeLookInLeft", "eyeLookInRight", "eyeLookOutLeft",
        "eyeLookOutRight", "eyeLookUpLeft", "eyeLookUpRight", "eyeSquintLeft", "eyeSquintRight",
        "eyeWideLeft", "eyeWideRight", "jawForward", "jawLeft", "jawOpen", "jawRight", "mouthClose",
        "mouthDimpleLeft", "mouthDimpleRight", "mouthFrownLeft", "mouthFrownRight", "mouthFunnel", "mouthLeft",
        "mouthLowerDownLeft", "mouthLowerDownRight", "mouthPressLeft", "mouthPressRight", "mouthPucker",
        "mouthRight", "mouthRollLower", "mouthRollUpper", "mouthShrugLower", "mouthShrugUpper",
        "mouthSmileLeft", "mouthSmileRight", "mouthStretchLeft", "mouthStretchRight", "mouthUpperUpLeft",
        "mouthUpperUpRight", "noseSneerLeft", "noseSneerRight",
)
NUM_BLENDSHAPES = len(BLENDSHAPE_NAMES)

BROW_DOWN_THRESHOLD = 0.3
CHEEK_SQUINT_THRESHOLD = 0.3
EYE_SQUINT_THRESHOLD = 0.5
NOSE_SNEER_THRESHOLD = 0.3
UPPER_LIP_UP_THRESHOLD = 0.5
LIPS_APART_THRESHOLD = 0.2
JAW_DROP_THRESHOLD = 0.25
MOUTH_STRETCH_THRESHOLD = 0.6

# AU -> (lower, upper) score bounds: an AU fires when lower <= score < upper. The AUs with a rule.
AU_RULES = {
        4: (BROW_DOWN_THRESHOLD, np.inf),
        6: (CHEEK_SQUINT_THRESHOLD, np.inf),
        7: (EYE_SQUINT_THRESHOLD, np.inf),
        9: (NOSE_SNEER_THRESHOLD, np.inf),
        10: (UPPER_LIP_UP_THRESHOLD, np.inf),
        25: (LIPS_APART_THRESHOLD, np.inf),
        26: (JAW_DROP_THRESHOLD, MOUTH_STRETCH_THRESHOLD),
        27: (MOUTH_STRETCH_THRESHOLD, np.inf),
}


def _check_blendshapes(blendshapes) -> np.ndarray:
    array = np.asarray(blendshapes, dtype=np.float32)
    if array.ndim != 2 or array.shape[1] != NUM_BLENDSHAPES:
        raise ValueError(f"blendshapes must have shape (n, {NUM_BLENDSHAPES}), got {array.shape}")
    return array


def _check_aus(aus) -> tuple[int, ...]:
    missing = [au for au in aus if au not in AU_RULES]
    if missing:
        raise ValueError(f"no blendshape rule for AU{missing[0]}: rules exist for AUs {', '.join(map(str, AU_RULES))}")
    return tuple(aus)


def blendshape_au_scores(blendshapes, aus=facs.PAIN_AUS) -> np.ndarray:
    """Per-AU evidence from blendshapes.

    blendshapes: (n, 52) scores in [0, 1], `BLENDSHAPE_NAMES` order; aus: AUs of `AU_RULES` (A of them).
    Returns float32 (n, A) in `aus` order, each in [0, 1] (the left-hand sides of the module's rules).
    """
    aus = _check_aus(aus)
    array = _check_blendshapes(blendshapes)
    column = {name: array[:, i] for i, name in enumerate(BLENDSHAPE_NAMES)}

    def either_side(stem: str) -> np.ndarray:
        return np.maximum(column[stem + "Left"], column[stem + "Right"])

    jaw_open = column["jawOpen"]
    lips_apart = np.maximum.reduce([
            np.clip(jaw_open - column["mouthClose"], 0.0, 1.0),
            either_side("mouthUpperUp"),
            either_side("mouthLowerDown"),
    ])
    scores = {
            4: either_side("browDown"),
            6: either_side("cheekSquint"),
            7: either_side("eyeSquint"),
            9: either_side("noseSneer"),
            10: either_side("mouthUpperUp"),
            25: lips_apart,
            26: jaw_open,
            27: jaw_open,
    }
    return np.stack([scores[au] for au in aus] or [np.zeros((len(array), 0))], axis=1).reshape(
        len(array), len(aus)).astype(np.float32)


def blendshape_au_labels(blendshapes, aus=facs.PAIN_AUS) -> np.ndarray:
    """Binary AU decisions from blendshapes: uint8 (n, A) in `aus` order (AUs of `AU_RULES`).

    blendshapes: (n, 52) scores in [0, 1], `BLENDSHAPE_NAMES` order. Thresholds: `AU_RULES`.
    """
    aus = _check_aus(aus)
    scores = blendshape_au_scores(blendshapes, aus)
    lower, upper = np.asarray([AU_RULES[au] for au in aus], dtype=np.float32).reshape(len(aus), 2).T
    return ((scores >= lower) & (scores < upper)).astype(np.uint8)
