"""Face preprocessing: image files -> square 112x112 face crops with 68 landmarks and 52 blendshapes.

Faces are found with MediaPipe's FaceLandmarker (Tasks API; IMAGE mode, or VIDEO mode where the frames of one video
follow each other so that landmarks track across frames) run on the vendored, SHA-256-checked
`models/face_landmarker.task`. Its 478-point mesh is reduced to the 68-point Multi-PIE / iBUG-300W scheme by
`MP478_TO_IBUG68`, and the crop is the square around those 68 points grown by `margin` on each side, exactly
as `crop_around_landmarks` does for a dataset's own landmarks, so both paths frame faces alike.

Coordinates are continuous pixels: pixel (row i, column j) covers x in [j, j+1), y in [i, i+1).

Decisions:
- Images over `MAX_IMAGE_PIXELS` are rejected from their header, before decoding ("too_large"): a
  10000x10000 RGB image would take 300 MB decoded, and no face dataset needs more than a camera's 50 MP.
- Images under `MIN_IMAGE_SIDE` pixels on a side are rejected ("too_small").
- Transparent images are composited over white; 16-bit images keep their high byte; grayscale is
  repeated to 3 channels; EXIF orientation is applied.
- Where the crop leaves the image, the border pixels are repeated (not zeros), so that no black frame,
  whose presence would depend on how a dataset framed its faces, becomes a cue for the model.
- A `model_path` other than the vendored file is used as given, with a logged warning when its SHA-256
  differs from `MODEL_SHA256`; the vendored file itself must match, or FaceCropper refuses to start.

mediapipe and cv2 are imported only inside the functions that need them (the training path never does).
"""

import collections
import concurrent.futures
import dataclasses
import hashlib
import inspect
import multiprocessing
import os
import struct
import warnings
from collections.abc import Iterator, Sequence

import numpy as np
from absl import logging
from PIL import Image, ImageOps

from aujax import facs
from aujax.data import available_cores
from aujax.data import blendshapes as blendshapes_lib

MODEL_PATH = os.path.join(os.path.dirname(__file__), "models", "face_landmarker.task")
MODEL_SHA256 = "64184e229b263107bc2b804c6625db1341ff2bb731874b0bcc2fe6544e0bc9ff"

MAX_IMAGE_PIXELS = 50_000_000
MIN_IMAGE_SIDE = 32
MIN_LANDMARK_EXTENT = 4.0  # pixels: 68 landmarks spanning less than this are not a face
FACE_CHOICES = ("largest", "first")
REASONS = ("unreadable", "empty_file", "too_small", "too_large", "no_face", "bad_landmarks")

# iBUG-68 point i is MediaPipe mesh vertex MP478_TO_IBUG68[i]. Public mappings disagree (py-feat's
# DLIB68_FROM_MP478, for one, puts the chin, iBUG 8, at mesh vertex 176 and vertex 152 at iBUG 10). This one
# was chosen on the astronaut test photo, by rules rather than by eye:
# - jaw 0-16: 9 points spaced evenly by arc length along the mesh's face oval from vertex 127 (at eye level,
#   like iBUG 0) through the chin 152 (iBUG 8) to 356, the same on both sides (the mesh is symmetric);
# - brows 17-26: the upper brow edge, outer to inner on the image-left brow, inner to outer on the right;
# - nose 27-30: bridge from 168 (between the eyes) to 4, the visible tip, at even spacing; 4 rather than 1,
#   because 1 projects almost onto the subnasale in frontal photos while iBUG keeps 30 and 33 a bridge step
#   apart; 31-35: the nostril base 98, 97, subnasale 2, 326, 327;
# - eyes 36-47: corners 33/133 and 362/263, lids at a third and two thirds (160, 158; 153, 144; ...);
# - lips 48-67: corners 61/291 and 78/308; outer lip 40, 37 | 267, 270 (the Cupid's-bow peaks at 37, 267),
#   321, 314 | 84, 91 at thirds of the lower arc; inner lip midway between corner and centre (81, 311; 402, 178).
MP478_TO_IBUG68 = np.array([
        127, 234, 132, 58, 172, 136, 149, 148, 152, 377, 378, 365, 397, 288, 361, 454, 356,  # jaw 0-16
        70, 63, 105, 66, 107,  # image-left brow 17-21, outer to inner
        336, 296, 334, 293, 300,  # image-right brow 22-26, inner to outer
        168, 197, 195, 4,  # nose bridge 27-30
        98, 97, 2, 326, 327,  # nostril base 31-35
        33, 160, 158, 133, 153, 144,  # image-left eye 36-41
        362, 385, 387, 263, 373, 380,  # image-right eye 42-47
        61, 40, 37, 0, 267, 270, 291, 321, 314, 17, 84, 91,  # outer lip 48-59
        78, 81, 13, 311, 308, 402, 14, 178,  # inner lip 60-67
])


class FaceError(ValueError):
    """An image that gives no usable face; `reason` is one of `REASONS`, `source` the file."""

    def __init__(self, source: str, reason: str, detail: str):
        if reason not in REASONS:
            raise ValueError(f"unknown FaceError reason {reason!r}, expected one of {REASONS}")
        super().__init__(source, reason, detail)
        self.source = source
        self.reason = reason
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.source}: {self.detail} [{self.reason}]"


@dataclasses.dataclass(frozen=True)
class FaceCrop:
    """One face: `image` uint8 (112, 112, 3) RGB; `landmarks` float32 (68, 2) (x, y) crop pixels, iBUG-68
    order; `blendshapes` float32 (52,) in `blendshapes.BLENDSHAPE_NAMES` order (zeros if not computed);
    `box` (x0, y0, side) of the square crop in source pixels; `num_faces` faces found in the source."""
    image: np.ndarray
    landmarks: np.ndarray
    blendshapes: np.ndarray
    box: tuple
    num_faces: int


def _rgb8(image: Image.Image, path: str) -> np.ndarray:
    """A decoded PIL image of any common mode as uint8 (H, W, 3) RGB."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        gray = np.asarray(image, dtype=np.float32) / 257.0  # 16-bit range onto 8 bits
        return np.repeat(np.clip(np.rint(gray), 0, 255).astype(np.uint8)[..., None], 3, axis=2)
    if image.mode == "F":
        raise FaceError(path, "unreadable", "floating-point pixels (mode F) have no defined range")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.array(Image.alpha_composite(white, rgba).convert("RGB"))
    return np.array(image.convert("RGB"))


def read_image(path: str, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """The image at `path` as uint8 (H, W, 3) RGB, EXIF-rotated.

    Grayscale is repeated to 3 channels, alpha composited over white, 16-bit reduced to 8-bit.
    Raises FaceError: "empty_file" (0 bytes), "too_large" (over `max_pixels`, checked before decoding),
    "unreadable" (missing, not an image, truncated or corrupt).
    """
    try:
        num_bytes = os.path.getsize(path)
    except OSError as e:
        raise FaceError(path, "unreadable", f"cannot open: {e.strerror or e}") from None
    if num_bytes == 0:
        raise FaceError(path, "empty_file", "the file is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
                if width * height > max_pixels:
                    raise FaceError(path, "too_large",
                                    f"{width}x{height} pixels is over the limit of {max_pixels}")
                return _rgb8(ImageOps.exif_transpose(image), path)
    except FaceError:
        raise
    except Image.DecompressionBombError as e:
        raise FaceError(path, "too_large", str(e)) from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as e:
        raise FaceError(path, "unreadable", f"not a readable image ({type(e).__name__}: {e})") from None


def _check_image(image: np.ndarray, source: str) -> None:
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"{source}: expected a uint8 (H, W, 3) RGB image, got {image.dtype} {image.shape}")
    height, width = image.shape[:2]
    if min(height, width) < MIN_IMAGE_SIDE:
        raise FaceError(source, "too_small", f"{width}x{height} pixels is under {MIN_IMAGE_SIDE} on a side")


def _square_box(landmarks68: np.ndarray, margin: float, source: str) -> tuple[int, int, int]:
    """(x0, y0, side) in whole pixels: the square around the landmarks' bounding box, grown by
    `margin` times the face size on each side."""
    landmarks68 = np.asarray(landmarks68, dtype=np.float64)
    if landmarks68.shape != (facs.NUM_LANDMARKS, 2):
        raise FaceError(source, "bad_landmarks", f"expected ({facs.NUM_LANDMARKS}, 2) landmarks, "
                                                 f"got shape {landmarks68.shape}")
    if not np.all(np.isfinite(landmarks68)):
        raise FaceError(source, "bad_landmarks", "landmarks are not all finite")
    low, high = landmarks68.min(axis=0), landmarks68.max(axis=0)
    face_size = float(np.max(high - low))
    if face_size < MIN_LANDMARK_EXTENT:
        raise FaceError(source, "bad_landmarks", f"landmarks span only {face_size:.1f} pixels")
    side = int(np.ceil(face_size * (1.0 + 2.0 * margin)))
    x0, y0 = np.rint((low + high) / 2.0 - side / 2.0).astype(int)
    return int(x0), int(y0), side


def _cut_box(image: np.ndarray, box: tuple[int, int, int], size: int, source: str) -> np.ndarray:
    """The square `box` of `image`, border pixels repeated where it leaves the image, resized to `size`."""
    import cv2

    x0, y0, side = box
    height, width = image.shape[:2]
    inner_x0, inner_y0 = max(x0, 0), max(y0, 0)
    inner_x1, inner_y1 = min(x0 + side, width), min(y0 + side, height)
    if inner_x0 >= inner_x1 or inner_y0 >= inner_y1:
        raise FaceError(source, "bad_landmarks", f"crop box {box} lies outside the {width}x{height} image")
    padding = ((inner_y0 - y0, y0 + side - inner_y1), (inner_x0 - x0, x0 + side - inner_x1), (0, 0))
    patch = np.pad(image[inner_y0:inner_y1, inner_x0:inner_x1], padding, mode="edge")
    interpolation = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
    return cv2.resize(patch, (size, size), interpolation=interpolation)


def _crop_with_box(image, landmarks68, margin, size, source):
    box = _square_box(landmarks68, margin, source)
    crop = _cut_box(image, box, size, source)
    x0, y0, side = box
    crop_landmarks = (np.asarray(landmarks68, np.float64) - (x0, y0)) * (size / side)
    return crop, crop_landmarks.astype(np.float32), box


def crop_around_landmarks(image: np.ndarray, landmarks68: np.ndarray, margin: float = 0.25,
                          size: int = facs.IMAGE_SIZE, source: str = "<array>") -> tuple[np.ndarray, np.ndarray]:
    """Square crop around given landmarks, as FaceCropper frames its faces.

    image: uint8 (H, W, 3) RGB; landmarks68: (68, 2) (x, y) source pixels, iBUG-68 order.
    Returns (uint8 (size, size, 3) crop, float32 (68, 2) landmarks in crop pixels).
    Raises FaceError "too_small" or "bad_landmarks" (wrong shape, not finite, degenerate, off the image),
    naming `source`.
    """
    _check_image(image, source)
    crop, crop_landmarks, _ = _crop_with_box(image, landmarks68, margin, size, source)
    return crop, crop_landmarks


def load_model_bundle(model_path: str | None = None) -> bytes:
    """The FaceLandmarker bundle's bytes, checked against `MODEL_SHA256`.

    The vendored file (model_path None) must match, else ValueError naming it; another file is
    accepted with a logged warning when it differs.
    """
    path = MODEL_PATH if model_path is None else model_path
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ValueError(f"{path}: cannot read the face landmarker model ({e.strerror or e})") from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != MODEL_SHA256:
        if model_path is None:
            raise ValueError(f"{path}: SHA-256 {digest} differs from the vendored model's {MODEL_SHA256}; "
                             f"the file is damaged or was replaced (restore it from the repository)")
        logging.warning("%s: not the vendored face_landmarker.task (SHA-256 %s); using it as given", path, digest)
    return data


class FaceCropper:
    """Finds faces and crops them; one MediaPipe FaceLandmarker (IMAGE mode). Use as a context manager.

    margin: crop margin on each side, as a fraction of the face size (the 68 landmarks' larger extent).
    face_choice: "largest" (largest mesh bounding box) or "first" (MediaPipe's first) when several faces.
    max_faces: most faces MediaPipe looks for; `FaceCrop.num_faces` counts up to it.
    video: MediaPipe's VIDEO mode: `crop` takes each frame's time, increasing, and tracks the face across frames.
    """

    def __init__(self, model_path: str | None = None, margin: float = 0.25, face_choice: str = "largest",
                 max_faces: int = 4, max_pixels: int = MAX_IMAGE_PIXELS, video: bool = False):
        check_cropper_options(margin, face_choice, max_faces)
        from mediapipe.tasks.python import BaseOptions, vision

        self.model_path = MODEL_PATH if model_path is None else model_path
        self.margin = margin
        self.face_choice = face_choice
        self.max_pixels = max_pixels
        self.video = video
        options = vision.FaceLandmarkerOptions(
                base_options=BaseOptions(model_asset_buffer=load_model_bundle(model_path)),
                running_mode=vision.RunningMode.VIDEO if video else vision.RunningMode.IMAGE,
                num_faces=max_faces,
                output_face_blendshapes=True)
        self._landmarker = vision.FaceLandmarker.create_from_options(options)
        self._blendshape_names_checked = False

    def close(self) -> None:
        self._landmarker.close()

    def __enter__(self) -> "FaceCropper":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _blendshape_vector(self, categories) -> np.ndarray:
        """float32 (52,) from MediaPipe's per-face category list (checked once against BLENDSHAPE_NAMES)."""
        names = tuple(c.category_name for c in sorted(categories, key=lambda c: c.index))
        if not self._blendshape_names_checked:
            if names != blendshapes_lib.BLENDSHAPE_NAMES:
                raise ValueError(f"{self.model_path}: the model's blendshapes {names} are not the "
                                 f"{blendshapes_lib.NUM_BLENDSHAPES} expected in BLENDSHAPE_NAMES order")
            self._blendshape_names_checked = True
        vector = np.zeros(blendshapes_lib.NUM_BLENDSHAPES, np.float32)
        vector[[c.index for c in categories]] = [c.score for c in categories]
        return vector

    def crop(self, image: np.ndarray, source: str, time_ms: int | None = None) -> FaceCrop:
        """The chosen face of uint8 (H, W, 3) RGB `image`; FaceError ("too_small", "no_face",
        "bad_landmarks") names `source`. A video cropper needs the frame's `time_ms`, greater than the last one's."""
        import mediapipe as mp

        _check_image(image, source)
        height, width = image.shape[:2]
        picture = mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(image))
        if self.video:
            if time_ms is None:
                raise ValueError(f"{source}: a video FaceCropper needs the frame's time_ms")
            result = self._landmarker.detect_for_video(picture, int(time_ms))
        else:
            result = self._landmarker.detect(picture)
        if not result.face_landmarks:
            raise FaceError(source, "no_face", "no face found")
        meshes = [np.array([(p.x * width, p.y * height) for p in face], np.float64)
                  for face in result.face_landmarks]
        chosen = choose_face(meshes, self.face_choice)
        crop, landmarks, box = _crop_with_box(image, meshes[chosen][MP478_TO_IBUG68], self.margin,
                                              facs.IMAGE_SIZE, source)
        if result.face_blendshapes:
            blendshape_scores = self._blendshape_vector(result.face_blendshapes[chosen])
        else:
            blendshape_scores = np.zeros(blendshapes_lib.NUM_BLENDSHAPES, np.float32)
        return FaceCrop(crop, landmarks, blendshape_scores, box, len(meshes))

    def crop_file(self, path: str) -> FaceCrop:
        """`crop` of the image file at `path`; FaceError for every reason in `REASONS`."""
        return self.crop(read_image(path, self.max_pixels), path)


def choose_face(meshes: list[np.ndarray], face_choice: str) -> int:
    """Index of the face to crop among `meshes` ((478, 2) pixels each, MediaPipe's order): "first", or
    "largest" by the area of the mesh's bounding box."""
    if face_choice == "first":
        return 0
    areas = [np.prod(mesh.max(axis=0) - mesh.min(axis=0)) for mesh in meshes]
    return int(np.argmax(areas))


def check_cropper_options(margin: float, face_choice: str, max_faces: int) -> None:
    """ValueError naming the bad option, before any model is loaded."""
    if face_choice not in FACE_CHOICES:
        raise ValueError(f"face_choice={face_choice!r}: expected one of {FACE_CHOICES}")
    if not margin >= 0.0:
        raise ValueError(f"margin={margin!r}: expected a fraction >= 0")
    if max_faces < 1:
        raise ValueError(f"max_faces={max_faces!r}: expected >= 1")


_worker_cropper: FaceCropper | None = None


def _start_worker(cropper_kwargs: dict) -> None:
    global _worker_cropper
    _worker_cropper = FaceCropper(**cropper_kwargs)


def _crop_or_error(cropper: FaceCropper, path: str) -> FaceCrop | FaceError:
    try:
        return cropper.crop_file(path)
    except FaceError as e:
        return e


def _crop_chunk(paths: list[str]) -> list[FaceCrop | FaceError]:
    return [_crop_or_error(_worker_cropper, path) for path in paths]


def crop_files(paths: list[str], workers: int | None = None, chunk_size: int = 8,
               **cropper_kwargs) -> Iterator[tuple[str, FaceCrop | FaceError]]:
    """(path, FaceCrop or FaceError) for each of `paths`, in input order.

    workers: processes, each with its own FaceCropper (None: one per CPU core; 1: in this process).
    Processes are started with 'spawn' (MediaPipe is not fork-safe once initialised), so a calling
    script needs the `if __name__ == "__main__":` guard; at most
    2 * workers chunks of `chunk_size` paths are in flight, so memory stays bounded for long lists.
    cropper_kwargs: FaceCropper options (model_path, margin, face_choice, max_faces, max_pixels).
    """
    paths = list(paths)
    workers = available_cores() if workers is None else workers
    if workers <= 1 or len(paths) <= chunk_size:
        with FaceCropper(**cropper_kwargs) as cropper:
            for path in paths:
                yield path, _crop_or_error(cropper, path)
        return
    options = inspect.signature(FaceCropper).bind(**cropper_kwargs)  # TypeError on an unknown option
    options.apply_defaults()
    check_cropper_options(options.arguments["margin"], options.arguments["face_choice"],
                          options.arguments["max_faces"])
    load_model_bundle(options.arguments["model_path"])  # fail here, not in every worker
    chunks = [paths[i:i + chunk_size] for i in range(0, len(paths), chunk_size)]
    workers = min(workers, len(chunks))
    pool = concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                                  initializer=_start_worker, initargs=(cropper_kwargs,))
    try:
        in_flight = collections.deque()
        for chunk in chunks:
            in_flight.append((chunk, pool.submit(_crop_chunk, chunk)))
            if len(in_flight) >= 2 * workers:
                yield from _finished(*in_flight.popleft())
        while in_flight:
            yield from _finished(*in_flight.popleft())
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _finished(chunk: list[str], future: concurrent.futures.Future):
    yield from zip(chunk, future.result())


def video_frames(path: str, indices: Sequence[int]) -> Iterator[tuple[int, np.ndarray | FaceError]]:
    """(index, uint8 (H, W, 3) RGB frame) for each of the ascending 0-based frame `indices` of the video at `path`,
    read with OpenCV in one pass; FaceError "unreadable" (naming `path#index`) in place of a frame the video does
    not have or that does not decode, and of every frame of a file OpenCV cannot open as a video."""
    import cv2

    capture = cv2.VideoCapture(path)
    try:
        opened, position, ended = capture.isOpened(), 0, False
        for index in indices:
            while opened and not ended and position < index:
                ended = not capture.grab()
                position += not ended
            frame = None
            if opened and not ended and position == index:
                ended = not capture.grab()
                position += not ended
                ok, bgr = capture.retrieve() if not ended else (False, None)
                frame = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB) if ok else None
            if frame is not None:
                yield index, frame
            else:
                why = ("not a video OpenCV can open" if not opened else
                       f"the video ends after {position} frames" if ended else "the frame does not decode")
                yield index, FaceError(f"{path}#{index}", "unreadable", why)
    finally:
        capture.release()


def video_properties(path: str) -> tuple[float, int]:
    """(frames per second, frame count) that the video at `path` declares; ValueError naming it if OpenCV cannot open
    it as a video."""
    import cv2

    capture = cv2.VideoCapture(path)
    try:
        if not capture.isOpened():
            raise ValueError(f"{path}: not a video OpenCV can open")
        return float(capture.get(cv2.CAP_PROP_FPS)), int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    finally:
        capture.release()


def crop_video_frames(path: str, indices: Sequence[int],
                      **cropper_kwargs) -> Iterator[tuple[int, FaceCrop | FaceError]]:
    """(index, FaceCrop or FaceError) for each of the ascending 0-based frame `indices` of the video at `path`, each
    frame cropped on its own (IMAGE mode, as image files are) in this process; cropper_kwargs as `crop_files`'."""
    with FaceCropper(**cropper_kwargs) as cropper:
        for index, frame in video_frames(path, indices):
            if isinstance(frame, FaceError):
                yield index, frame
                continue
            try:
                yield index, cropper.crop(frame, f"{path}#{index}")
            except FaceError as e:
                yield index, e
