"""The on-disk layouts of CK+, UNBC-McMaster, DISFA, BP4D and CSV manifests, read in pure python.

A scan walks a dataset's directory tree, parses its FACS, PSPI, AU and landmark text files, applies the label options
(pain-AU filter, which CK+ frames carry the peak frame's code, excluded subjects, DISFA's positive intensity, frame
sampling) and says what it did with every file. It reads no image and runs no face detector: the result is a list of
`FaceFile`s (images or video frames to crop, with their AU codes), a list of `Issue`s (files skipped, filtered out or
only partly usable, each with a reason and a message naming the file) and the AUs the dataset codes (`Scan.au_ids`,
every one of them, not only the 8 pain AUs: the AU set is chosen at training time). Paths in both are relative to the
dataset's root, '/'-separated; a video frame's source is `<video>#<frame number>`.

Layouts (the distributions' own):

  ck_plus         cohn-kanade-images/S005/001/S005_001_00000011.png
                  FACS/S005/001/S005_001_00000011_facs.txt          one per sequence: its peak (last) frame
                  Landmarks/S005/001/S005_001_00000011_landmarks.txt  68 "x y" lines, one per frame
  unbc_mcmaster   Images/<subject>/<sequence>/<frame>.png
                  Frame_Labels/FACS/<subject>/<sequence>/<frame>_facs.txt   one per frame
                  Frame_Labels/PSPI/<subject>/<sequence>/<frame>_facs.txt   one float per frame
                  AAM_landmarks/<subject>/<sequence>/<frame>_aam.txt        66 "x y" lines per frame
  disfa           ActionUnit_Labels/SN001/SN001_au1.txt ... SN001_au26.txt  "frame,intensity" per line (frame from 1)
                  Videos_LeftCamera/LeftVideoSN001_comp.avi                  label frame k is the video's k-th frame
  bp4d            AUCoding/AU_OCC/F001_T1.csv     header "0,1,2,...,99": frame number, then one column per AU
                                                  (1 present, 0 absent, 9 not coded)
                  2D+3D/F001/T1/0001.jpg ...      the task's frames, named by frame number (any zero padding)
  manifest        manifest.csv with columns image, subject, AU<n>..., optional x0,y0,...,x67,y67

AU columns: CK+, UNBC and manifests store the 8 pain AUs and every AU coded present anywhere in the build (a FACS file
lists what is present, so any AU it does not list is absent), a manifest also its every AU<n> column; DISFA its 12 AU
files; BP4D every AU column that codes some frame 0 or 1 (or the `aus` option's).

FACS files hold one "AU intensity" line per coded action unit, numbers as floats (`4.0000000e+00 3.0000000e+00`);
UNBC adds two more columns, which are ignored. A listed AU is present; its intensity is 1-5 (A-E), 0 where the
coders gave none.

Text files are read as UTF-8 (a leading byte-order mark is dropped), a manifest in the encoding it is given as: a
file that does not decode is an error naming the file and line, never read with characters replaced.
"""

import collections
import csv
import dataclasses
import io
import math
import os
import re
from typing import Any, Callable, Iterable, Mapping, NoReturn

import numpy as np

from aujax import facs

_IMAGE_DIRS = {"ck_plus": "cohn-kanade-images", "unbc_mcmaster": "Images"}
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
VIDEO_EXTENSIONS = (".avi", ".mp4", ".mov", ".mkv", ".wmv")
DISFA_LABELS, DISFA_VIDEOS = "ActionUnit_Labels", "Videos_LeftCamera"
DEFAULT_POSITIVE_INTENSITY = 2.0  # DISFA: an AU of intensity >= this (B on the A-E scale) is present, as is usual
BP4D_CODING = "AUCoding/AU_OCC"
BP4D_FRAME_DIRS = ("2D+3D", "Sequences(2D+3D)")  # the frames' folder, as the distribution and its mirrors name it
BP4D_NOT_CODED = 9
LANDMARK_CHOICES = ("mediapipe", "dataset")
DEFAULT_LABEL_FRAMES = "last_fraction:0.33"
MAX_INTENSITY = 5.0  # FACS intensity E

EXPECTED_TREES = {
        "ck_plus": """\
<manual_dir>/
  cohn-kanade-images/S005/001/S005_001_00000001.png ... S005_001_00000011.png
  FACS/S005/001/S005_001_00000011_facs.txt          (one per sequence, for its peak frame; lines "AU intensity")
  Landmarks/S005/001/S005_001_00000001_landmarks.txt (68 lines "x y" per frame; for landmarks="dataset")""",
        "unbc_mcmaster": """\
<manual_dir>/
  Images/<subject>/<sequence>/<frame>.png
  Frame_Labels/FACS/<subject>/<sequence>/<frame>_facs.txt  (per frame; lines "AU intensity [...]", empty if none)
  Frame_Labels/PSPI/<subject>/<sequence>/<frame>_facs.txt  (per frame; one number)
  AAM_landmarks/<subject>/<sequence>/<frame>_aam.txt       (66 lines "x y" per frame; for landmarks="dataset")""",
        "disfa": """\
<manual_dir>/
  ActionUnit_Labels/SN001/SN001_au1.txt ... SN001_au26.txt  (one per AU; lines "frame,intensity", frames from 1,
                                                            intensity 0-5)
  Videos_LeftCamera/LeftVideoSN001_comp.avi                 (the left camera's video of SN001)""",
        "bp4d": """\
<manual_dir>/
  AUCoding/AU_OCC/F001_T1.csv   (one per subject and task; header "0,1,2,...": frame, then one column per AU;
                                 rows "frame,0|1|9,...")
  2D+3D/F001/T1/0001.jpg ...    (the task's frames, named by frame number; also read from Sequences(2D+3D)/)""",
        "manifest": """\
<manual_dir>/                      (the data root; every image path in the CSV is relative to it)
  manifest.csv                     header: image,subject,AU4,AU6,...[,x0,y0,...,x67,y67]
  <any sub-folders>/<images>       e.g. images/p01/0001.png""",
}


class LayoutError(ValueError):
    """The manual directory is missing or not laid out as the dataset expects; the message shows the expected tree."""


@dataclasses.dataclass(frozen=True)
class Issue:
    """What happened to one input file that did not simply become a face.

    status: "ok" (written, with a note), "skipped" (unusable), "filtered" (dropped by an option), "warning" (a
    label file partly unusable; the rest of it was used).
    """
    source: str
    status: str
    reason: str
    message: str


@dataclasses.dataclass(frozen=True)
class FaceFile:
    """One image to crop, with what the dataset says about it.

    present    the AUs coded present
    intensity  AU -> FACS intensity 0-5 where the dataset gives one (a present AU of unknown intensity: 0)
    landmarks  float32 (68, 2) (x, y) pixels in the image, the dataset's own; None unless asked for
    extras     dataset-specific example features, e.g. {"pspi": 3.0}
    notes      (reason, message) pairs that did not stop the face from being used
    frame      0-based index of the frame in the video at `path`; None for an image file
    """
    path: str
    source: str
    subject: str
    present: frozenset[int]
    intensity: Mapping[int, float]
    landmarks: np.ndarray | None = None
    extras: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    notes: tuple[tuple[str, str], ...] = ()
    frame: int | None = None

    @classmethod
    def coded(cls, path: str, source: str, subject: str, codes: Mapping[int, float], **kwargs) -> "FaceFile":
        """A face whose listed AUs (`codes`: AU -> intensity) are present, every other one absent (FACS files,
        manifests)."""
        return cls(path, source, subject, frozenset(codes), dict(codes), **kwargs)

    def labels(self, au_ids: Iterable[int]) -> np.ndarray:
        """uint8 (len(au_ids),) binary labels in `au_ids` order."""
        return np.array([au in self.present for au in au_ids], np.uint8)

    def intensities(self, au_ids: Iterable[int]) -> np.ndarray:
        """float32 (len(au_ids),) intensities in `au_ids` order, 0 where unknown or absent."""
        return np.array([self.intensity.get(au, 0.0) for au in au_ids], np.float32)


@dataclasses.dataclass(frozen=True)
class Scan:
    """A dataset's faces to crop, what happened to every other file, how often each non-pain AU code was seen, and
    the AUs the dataset codes (`au_ids`, ascending: the label and intensity columns of its build)."""
    faces: list[FaceFile]
    issues: list[Issue]
    other_aus: collections.Counter
    au_ids: tuple[int, ...] = facs.PAIN_AUS


@dataclasses.dataclass(frozen=True)
class FacsCodes:
    """A parsed FACS file: AU number -> intensity, and the lines that could not be used as (line number, why)."""
    codes: dict[int, float]
    malformed: list[tuple[int, str]]


# --- text files ---------------------------------------------------------------------------------------------------

def parse_facs(path: str) -> FacsCodes:
    """Read a FACS file ("AU intensity [more columns]" per line, floats); OSError if it cannot be opened, ValueError
    naming the file and line if it is not UTF-8 text.

    Blank lines are skipped. A line is malformed (reported, ignored) when it has fewer than two numbers, a
    non-numeric or non-integer AU, or an intensity outside [0, 5]. An AU listed twice keeps its larger intensity.
    """
    codes: dict[int, float] = {}
    malformed = []
    for number, line, fields in _numbered_fields(path):
        try:
            au, intensity = _facs_line(fields)
        except ValueError as e:
            malformed.append((number, f"{line.strip()[:80]!r}: {e}"))
            continue
        codes[au] = max(intensity, codes.get(au, 0.0))
    return FacsCodes(codes, malformed)


def read_text(path: str, encoding: str = "utf-8") -> str:
    """The text of the file at `path` in `encoding`, without a leading byte-order mark; OSError if it cannot be
    opened, ValueError naming the file and line where it is not `encoding` text."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ValueError(f"{path}: line {line}: not {encoding} text ({data[e.start:e.end]!r} at byte {e.start})") \
            from None
    return text.removeprefix("\ufeff")


def _numbered_fields(path: str):
    """(line number, line, whitespace-split fields) of every non-blank line of a UTF-8 text file."""
    for number, line in enumerate(read_text(path).splitlines(), start=1):
        fields = line.split()
        if fields:
            yield number, line, fields


def _facs_line(fields: list[str]) -> tuple[int, float]:
    if len(fields) < 2:
        raise ValueError("expected 'AU intensity'")
    if len(fields) > 4:
        raise ValueError("more than 4 columns")
    try:
        au, intensity = float(fields[0]), float(fields[1])
    except ValueError:
        raise ValueError("not numbers") from None
    if not (math.isfinite(au) and au == int(au) and au >= 0):
        raise ValueError(f"AU {fields[0]} is not a whole number")
    if not 0 <= intensity <= MAX_INTENSITY:
        raise ValueError(f"intensity {fields[1]} outside [0, {MAX_INTENSITY:g}]")
    return int(au), intensity


def parse_points(path: str, num_points: int) -> np.ndarray:
    """(num_points, 2) float32 (x, y) from a text file of "x y" lines; ValueError naming the file and line if not."""
    points = []
    for number, line, fields in _numbered_fields(path):
        try:
            point = [float(v) for v in fields]
        except ValueError:
            point = []
        if len(point) != 2 or not all(map(math.isfinite, point)):
            raise ValueError(f"{path}: line {number}: expected 'x y', got {line.strip()[:80]!r}")
        points.append(point)
    if len(points) != num_points:
        raise ValueError(f"{path}: {len(points)} points, expected {num_points}")
    return np.asarray(points, np.float32)


def parse_pspi(path: str) -> float:
    """The PSPI score in a UNBC PSPI file (one number, >= 0); ValueError naming the file if it is not one."""
    text = read_text(path).split()
    try:
        (value,) = [float(v) for v in text]
    except ValueError:
        raise ValueError(f"{path}: expected one number, got {' '.join(text)[:80]!r}") from None
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{path}: PSPI {value} is not a score >= 0")
    return value


def aam66_to_ibug68(points66: np.ndarray) -> np.ndarray:
    """(68, 2) iBUG-68 points from UNBC's (66, 2) AAM points.

    The 66-point set is iBUG-68 without the inner mouth corners 60 and 64; they are put on the outer mouth corners
    48 and 54, which they lie within a few pixels of (no geometry is invented).
    """
    p = np.asarray(points66, np.float32)
    return np.concatenate([p[:60], p[48:49], p[60:63], p[54:55], p[63:66]])




# --- layout checks ------------------------------------------------------------------------------------------------

def check_layout(dataset: str, root: str, dataset_landmarks: bool = False, manifest: str = "manifest.csv",
                 encoding: str = "utf-8") -> None:
    """LayoutError, with the expected tree, unless `root` is laid out as `dataset` ("ck_plus", "unbc_mcmaster",
    "disfa", "bp4d", "manifest") expects; "actor_study" is a manifest, read in `encoding` (ValueError if it is not such
    text)."""
    layout = "manifest" if dataset == "actor_study" else dataset
    if layout not in EXPECTED_TREES:
        raise ValueError(f"no layout for dataset {dataset!r}; known: {sorted(EXPECTED_TREES)} and 'actor_study'")
    if not root:
        _layout_error(dataset, root, "no manual directory given")
    if not os.path.isdir(root):
        _layout_error(dataset, root, f"manual directory {root!r} does not exist or is not a directory")
    required = {
            "manifest": [manifest],
            "ck_plus": ["cohn-kanade-images", "FACS"] + ["Landmarks"] * dataset_landmarks,
            "unbc_mcmaster": ["Images", "Frame_Labels/FACS", "Frame_Labels/PSPI"]
                             + ["AAM_landmarks"] * dataset_landmarks,
            "disfa": [DISFA_LABELS, DISFA_VIDEOS],
            "bp4d": [BP4D_CODING, _bp4d_frames_dir(root) or BP4D_FRAME_DIRS[0]],
    }[layout]
    missing = [name for name in required if not os.path.exists(os.path.join(root, name))]
    if missing:
        _layout_error(dataset, root, f"manual directory {root!r} lacks {', '.join(missing)}")
    if layout == "manifest":
        _read_manifest(root, manifest, dataset_landmarks, encoding)
    elif layout == "disfa":
        if not _disfa_au_files(root):
            _layout_error(dataset, root, f"no {DISFA_LABELS}/SNxxx/SNxxx_au<N>.txt files")
    elif layout == "bp4d":
        if not _bp4d_csv_names(root):
            _layout_error(dataset, root, f"no {BP4D_CODING}/<subject>_<task>.csv files (e.g. F001_T1.csv)")
        if not _sequences(os.path.join(root, _bp4d_frames_dir(root))):
            _layout_error(dataset, root, f"no frames found at the expected depth under {_bp4d_frames_dir(root)}/")
    elif not _sequences(os.path.join(root, _IMAGE_DIRS[layout])):
        _layout_error(dataset, root, f"no image files found at the expected depth under {_IMAGE_DIRS[layout]}/")


def _layout_error(dataset: str, root: str, problem: str) -> NoReturn:
    layout = "manifest" if dataset == "actor_study" else dataset
    hint = ""
    if root and os.path.isdir(root):
        entries = sorted(e for e in os.listdir(root) if not e.startswith("."))
        hint = f"\nIt holds: {', '.join(entries[:20]) or '(nothing)'}{' ...' if len(entries) > 20 else ''}"
    raise LayoutError(f"{dataset}: {problem}.{hint}\nExpected layout:\n{EXPECTED_TREES[layout]}")


def _sequences(images_dir: str) -> dict[tuple[str, str], list[str]]:
    """(subject, sequence) -> sorted image file names, for images_dir/<subject>/<sequence>/<image>."""
    found = {}
    for subject in _sorted_dirs(images_dir):
        for sequence in _sorted_dirs(os.path.join(images_dir, subject)):
            sequence_dir = os.path.join(images_dir, subject, sequence)
            names = sorted(n for n in os.listdir(sequence_dir)
                           if n.lower().endswith(IMAGE_EXTENSIONS) and not n.startswith("."))
            if names:
                found[subject, sequence] = names
    return found


def _sorted_dirs(path: str) -> list[str]:
    return sorted(e.name for e in os.scandir(path) if e.is_dir() and not e.name.startswith("."))


def _label_files(labels_dir: str, suffix: str) -> set[str]:
    """Paths relative to labels_dir of labels_dir/<subject>/<sequence>/<name><suffix>."""
    if not os.path.isdir(labels_dir):
        return set()
    return {f"{subject}/{sequence}/{name}"
            for subject in _sorted_dirs(labels_dir)
            for sequence in _sorted_dirs(os.path.join(labels_dir, subject))
            for name in os.listdir(os.path.join(labels_dir, subject, sequence)) if name.endswith(suffix)}


# --- shared steps -------------------------------------------------------------------------------------------------

class _Collector:
    """Accumulates a scan's faces, issues and non-pain AU counts."""

    def __init__(self):
        self.faces: list[FaceFile] = []
        self.issues: list[Issue] = []
        self.other_aus: collections.Counter = collections.Counter()

    def issue(self, source: str, status: str, reason: str, message: str) -> None:
        self.issues.append(Issue(source, status, reason, message))

    def read_facs(self, path: str, source: str) -> dict[int, float] | None:
        """AU -> intensity from a FACS file, counting other AUs and reporting malformed lines; None if unreadable."""
        try:
            parsed = parse_facs(path)
        except (OSError, ValueError) as e:  # ValueError: not UTF-8 text
            problem = getattr(e, "strerror", None) or e
            self.issue(source, "skipped", "unreadable_facs", f"{source}: cannot read FACS file ({problem})")
            return None
        if parsed.malformed:
            lines = "; ".join(f"line {n}: {why}" for n, why in parsed.malformed)
            self.issue(source, "warning", "malformed_facs_line", f"{source}: ignored {lines}")
        self.other_aus.update(au for au in parsed.codes if au not in facs.PAIN_AUS)
        return parsed.codes

    def read_frame_values(self, path: str, source: str) -> dict[int, float] | None:
        """frame -> intensity from a DISFA AU file, reporting malformed lines; None if unreadable."""
        try:
            values, malformed = parse_frame_values(path)
        except (OSError, ValueError) as e:
            problem = getattr(e, "strerror", None) or e
            self.issue(source, "skipped", "unreadable_au_file", f"{source}: cannot read AU file ({problem})")
            return None
        if malformed:
            lines = "; ".join(f"line {n}: {why}" for n, why in malformed)
            self.issue(source, "warning", "malformed_au_line", f"{source}: ignored {lines}")
        return values

    def keep(self, face: FaceFile, pain_only: bool) -> None:
        """Add `face`, or file it as filtered when `pain_only` and it has no pain AU."""
        if pain_only and not face.present.intersection(facs.PAIN_AUS):
            self.issue(face.source, "filtered", "no_pain_au", f"{face.source}: none of AUs {facs.PAIN_AUS} coded")
        else:
            self.faces.append(face)

    def scan(self, au_ids: Iterable[int] | None = None) -> Scan:
        """The scan, its AU columns `au_ids` (default: the pain AUs and every AU coded present on a kept face)."""
        if au_ids is None:
            au_ids = set(facs.PAIN_AUS).union(*(face.present for face in self.faces))
        return Scan(self.faces, self.issues, self.other_aus, tuple(sorted(au_ids)))


def _attach_landmarks(collector: _Collector, root: str, landmarks_source: Callable[[FaceFile], str],
                      read: Callable[[str], np.ndarray]) -> None:
    """Give each kept face the dataset's landmarks (file at root/landmarks_source(face)); faces without usable
    landmarks are skipped ("no_landmarks" / "bad_landmarks")."""
    with_landmarks = []
    for face in collector.faces:
        source = landmarks_source(face)
        path = os.path.join(root, source)
        if not os.path.isfile(path):
            collector.issue(face.source, "skipped", "no_landmarks", f"{face.source}: no landmarks file {source}")
            continue
        try:
            points = read(path)
        except (OSError, ValueError) as e:
            collector.issue(face.source, "skipped", "bad_landmarks", f"{face.source}: {e}")
            continue
        with_landmarks.append(dataclasses.replace(face, landmarks=points))
    collector.faces = with_landmarks


def _report_unused_facs(collector: _Collector, facs_sources: Iterable[str], images_dir: str) -> None:
    for source in sorted(facs_sources):
        collector.issue(source, "skipped", "facs_without_image",
                        f"{source}: FACS file for a frame with no image under {images_dir}/")


# --- CK+ ----------------------------------------------------------------------------------------------------------

def parse_label_frames(spec: str) -> float | None:
    """The fraction of a sequence, counted back from its peak, that takes the peak's FACS code.

    "peak" -> 0 (the peak frame only); "last_fraction:F" -> F in (0, 1]; "all" -> None (every frame but the first).
    """
    if spec == "peak":
        return 0.0
    if spec == "all":
        return None
    match = re.fullmatch(r"last_fraction:(\d*\.?\d+)", spec)
    fraction = float(match.group(1)) if match else -1.0
    if not 0 < fraction <= 1:
        raise ValueError(f"label_frames={spec!r}: expected 'peak', 'all' or 'last_fraction:F' with 0 < F <= 1")
    return fraction


def labelled_frames(num_frames: int, peak: int, label_frames: str) -> range:
    """Indices (into the sorted frames of a sequence) of the frames that take the code of frame `peak`.

    A window that ends at the peak: just the peak ("peak"), the last ceil(F * num_frames) frames ("last_fraction:F")
    or all frames ("all"); the first frame is the sequence's neutral onset and is left out unless it is the peak.
    """
    fraction = parse_label_frames(label_frames)
    length = peak + 1 if fraction is None else max(1, math.ceil(fraction * num_frames))
    return range(max(min(1, peak), peak - length + 1), peak + 1)


def scan_ck_plus(root: str, label_frames: str = DEFAULT_LABEL_FRAMES, pain_only: bool = True,
                 dataset_landmarks: bool = False) -> Scan:
    """The faces of a CK+ tree at `root`, each sequence's FACS code given to the frames `label_frames` names."""
    parse_label_frames(label_frames)
    check_layout("ck_plus", root, dataset_landmarks)
    sequences = _sequences(os.path.join(root, "cohn-kanade-images"))
    unused_facs = {f"FACS/{p}" for p in _label_files(os.path.join(root, "FACS"), "_facs.txt")}
    collector = _Collector()
    for (subject, sequence), names in sequences.items():
        frames = [f"cohn-kanade-images/{subject}/{sequence}/{name}" for name in names]
        stems = [os.path.splitext(name)[0] for name in names]
        facs_sources = [s for s in sorted(f"FACS/{subject}/{sequence}/{stem}_facs.txt" for stem in stems)
                        if s in unused_facs]
        unused_facs.difference_update(facs_sources)
        if not facs_sources:
            for frame in frames:
                collector.issue(frame, "skipped", "no_facs",
                                f"{frame}: no FACS file for its sequence under FACS/{subject}/{sequence}/")
            continue
        *extra, facs_source = facs_sources  # the latest coded frame is the peak
        for source in extra:
            collector.issue(source, "warning", "several_facs_files",
                            f"{source}: sequence has several FACS files; used {facs_source}")
        codes = collector.read_facs(os.path.join(root, facs_source), facs_source)
        peak = stems.index(os.path.basename(facs_source)[:-len("_facs.txt")])
        window = labelled_frames(len(frames), peak, label_frames) if codes is not None else range(0)
        for index, (frame, name) in enumerate(zip(frames, names)):
            if codes is None:
                collector.issue(frame, "skipped", "no_facs", f"{frame}: its FACS file {facs_source} is unreadable")
            elif index not in window:
                collector.issue(frame, "filtered", "unlabelled_frame",
                                f"{frame}: outside label_frames={label_frames!r} of its sequence")
            else:
                collector.keep(FaceFile.coded(os.path.join(root, frame), frame, subject, codes,
                                              extras={"peak": index == peak}), pain_only)
    _report_unused_facs(collector, unused_facs, "cohn-kanade-images")
    if dataset_landmarks:
        _attach_landmarks(collector, root, _ck_plus_landmarks_source, lambda p: parse_points(p, facs.NUM_LANDMARKS))
    return collector.scan()


def _ck_plus_landmarks_source(face: FaceFile) -> str:
    subject_sequence, name = face.source[len("cohn-kanade-images/"):].rsplit("/", 1)
    return f"Landmarks/{subject_sequence}/{os.path.splitext(name)[0]}_landmarks.txt"


# --- UNBC-McMaster ------------------------------------------------------------------------------------------------

def scan_unbc(root: str, pain_only: bool = True, dataset_landmarks: bool = False) -> Scan:
    """The faces of a UNBC-McMaster tree at `root`, labelled from their per-frame FACS files, with their PSPI."""
    check_layout("unbc_mcmaster", root, dataset_landmarks)
    sequences = _sequences(os.path.join(root, "Images"))
    unused_facs = {f"Frame_Labels/FACS/{p}" for p in _label_files(os.path.join(root, "Frame_Labels/FACS"), "_facs.txt")}
    collector = _Collector()
    for (subject, sequence), names in sequences.items():
        for name in names:
            frame = f"Images/{subject}/{sequence}/{name}"
            label_name = f"{subject}/{sequence}/{os.path.splitext(name)[0]}_facs.txt"
            facs_source = f"Frame_Labels/FACS/{label_name}"
            if facs_source not in unused_facs:
                collector.issue(frame, "skipped", "no_facs", f"{frame}: no FACS file {facs_source}")
                continue
            unused_facs.discard(facs_source)
            codes = collector.read_facs(os.path.join(root, facs_source), facs_source)
            if codes is None:
                collector.issue(frame, "skipped", "no_facs", f"{frame}: its FACS file {facs_source} is unreadable")
                continue
            pspi, notes = _read_pspi(root, f"Frame_Labels/PSPI/{label_name}", frame)
            collector.keep(FaceFile.coded(os.path.join(root, frame), frame, subject, codes,
                                          extras={"pspi": pspi}, notes=notes), pain_only)
    _report_unused_facs(collector, unused_facs, "Images")
    if dataset_landmarks:
        _attach_landmarks(collector, root, _unbc_landmarks_source,
                          lambda p: aam66_to_ibug68(parse_points(p, facs.NUM_LANDMARKS - 2)))
    return collector.scan()


def _read_pspi(root: str, source: str, frame: str) -> tuple[float, tuple[tuple[str, str], ...]]:
    """(PSPI, notes): NaN and a note saying why when the PSPI file is missing or unreadable."""
    try:
        return parse_pspi(os.path.join(root, source)), ()
    except FileNotFoundError:
        return math.nan, (("no_pspi", f"{frame}: no PSPI file {source}; pspi stored as NaN"),)
    except (OSError, ValueError) as e:
        return math.nan, (("bad_pspi", f"{frame}: {e}; pspi stored as NaN"),)


def _unbc_landmarks_source(face: FaceFile) -> str:
    subject_sequence, name = face.source[len("Images/"):].rsplit("/", 1)
    return f"AAM_landmarks/{subject_sequence}/{os.path.splitext(name)[0]}_aam.txt"


# --- frame sequences (DISFA, BP4D) -----------------------------------------------------------------------------

def parse_frame_values(path: str) -> tuple[dict[int, float], list[tuple[int, str]]]:
    """(frame number -> intensity, malformed lines as (line number, why)) of a DISFA AU file ("frame,intensity" lines,
    frames from 1, intensity 0-5); OSError if it cannot be opened, ValueError naming the file and line if not UTF-8."""
    values, malformed = {}, []
    for number, line in enumerate(read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            frame, value = _frame_value([field.strip() for field in line.split(",")])
        except ValueError as e:
            malformed.append((number, f"{line.strip()[:80]!r}: {e}"))
            continue
        values[frame] = value
    return values, malformed


def _frame_value(fields: list[str]) -> tuple[int, float]:
    if len(fields) != 2:
        raise ValueError("expected 'frame,intensity'")
    try:
        frame, value = int(fields[0]), float(fields[1])
    except ValueError:
        raise ValueError("not numbers") from None
    if frame < 1:
        raise ValueError(f"frame {frame} is not a frame number (from 1)")
    if not 0 <= value <= MAX_INTENSITY:
        raise ValueError(f"intensity {fields[1]} outside [0, {MAX_INTENSITY:g}]")
    return frame, value


def _disfa_au_files(root: str) -> dict[str, dict[int, str]]:
    """subject -> AU -> source, for ActionUnit_Labels/<subject>/<subject>_au<N>.txt."""
    labels_dir = os.path.join(root, DISFA_LABELS)
    found: dict[str, dict[int, str]] = {}
    for subject in _sorted_dirs(labels_dir) if os.path.isdir(labels_dir) else ():
        for name in sorted(os.listdir(os.path.join(labels_dir, subject))):
            match = re.fullmatch(r"(?i)(.+)_au0*(\d+)\.txt", name)
            if match and match.group(1).lower() == subject.lower():
                found.setdefault(subject, {})[int(match.group(2))] = f"{DISFA_LABELS}/{subject}/{name}"
    return found


def check_sampling(frame_step: int, positive_intensity: float = DEFAULT_POSITIVE_INTENSITY) -> None:
    if not (isinstance(frame_step, int) and frame_step >= 1):
        raise ValueError(f"frame_step={frame_step!r}: expected a whole number >= 1 (1: every labelled frame)")
    if not 0 < positive_intensity <= MAX_INTENSITY:
        raise ValueError(f"positive_intensity={positive_intensity!r}: expected an intensity in (0, {MAX_INTENSITY:g}]")


def scan_disfa(root: str, positive_intensity: float = DEFAULT_POSITIVE_INTENSITY, frame_step: int = 1,
               pain_only: bool = False) -> Scan:
    """The frames of a DISFA tree at `root`: every `frame_step`-th labelled frame of each left-camera video, an AU
    present where its intensity is >= `positive_intensity`, its intensity (0-5) kept; columns: DISFA's AU files."""
    check_sampling(frame_step, positive_intensity)
    check_layout("disfa", root)
    au_files = _disfa_au_files(root)
    au_ids = tuple(sorted(set().union(*au_files.values())))
    videos = {name.lower(): name for name in os.listdir(os.path.join(root, DISFA_VIDEOS))}
    collector = _Collector()
    for subject, files in au_files.items():
        expected = f"LeftVideo{subject}_comp.avi"
        video = f"{DISFA_VIDEOS}/{videos.pop(expected.lower(), expected)}"
        if not os.path.isfile(os.path.join(root, video)):
            collector.issue(video, "skipped", "no_video",
                            f"{video}: no video for the labels in {DISFA_LABELS}/{subject}/")
            continue
        missing = [au for au in au_ids if au not in files]
        values = {au: collector.read_frame_values(os.path.join(root, source), source) for au, source in files.items()}
        if missing or None in values.values():
            why = f"no {subject}_au<N>.txt for AU {missing}" if missing else "an AU file is unreadable"
            collector.issue(video, "skipped", "missing_au_files", f"{video}: {why}; its frames are left out")
            continue
        frames = sorted(set().union(*values.values()))
        complete = [f for f in frames if all(f in values[au] for au in au_ids)]
        if len(complete) < len(frames):
            collector.issue(video, "warning", "incomplete_labels", f"{video}: {len(frames) - len(complete)} frames "
                            f"(first {sorted(set(frames) - set(complete))[0]}) lack some AU's intensity; left out")
        sampled = complete[::frame_step]
        if frame_step > 1:
            collector.issue(video, "filtered", "frame_step", f"{video}: 1 in {frame_step} labelled frames kept "
                            f"({len(sampled)} of {len(complete)})")
        for frame in sampled:
            intensity = {au: values[au][frame] for au in au_ids}
            present = frozenset(au for au, value in intensity.items() if value >= positive_intensity)
            collector.other_aus.update(au for au in present if au not in facs.PAIN_AUS)
            collector.keep(FaceFile(os.path.join(root, video), f"{video}#{frame:05d}", subject, present, intensity,
                                    frame=frame - 1), pain_only)
    for name in sorted(videos.values()):
        if name.lower().endswith(VIDEO_EXTENSIONS):
            collector.issue(f"{DISFA_VIDEOS}/{name}", "skipped", "video_without_labels",
                            f"{DISFA_VIDEOS}/{name}: no {DISFA_LABELS}/<subject>/ folder for it")
    return collector.scan(au_ids)


def _bp4d_frames_dir(root: str) -> str | None:
    """The first of `BP4D_FRAME_DIRS` under `root`, None where there is none."""
    return next((d for d in BP4D_FRAME_DIRS if os.path.isdir(os.path.join(root, d))), None)


def _bp4d_csv_names(root: str) -> dict[tuple[str, str], str]:
    """(subject, task) -> file name of each AUCoding/AU_OCC/<subject>_<task>.csv."""
    coding_dir = os.path.join(root, BP4D_CODING)
    names = sorted(os.listdir(coding_dir)) if os.path.isdir(coding_dir) else []
    return {(m.group(1), m.group(2)): name for name in names if (m := re.fullmatch(r"(\w+?)_(T\d+)\.csv", name))}


@dataclasses.dataclass(frozen=True)
class OccurrenceCodes:
    """A parsed BP4D occurrence CSV: its AU columns, frame number -> AU -> 0, 1 or 9 (not coded), malformed rows."""
    aus: tuple[int, ...]
    frames: dict[int, dict[int, int]]
    malformed: list[tuple[int, str]]


def parse_occurrence_csv(path: str) -> OccurrenceCodes:
    """Read a BP4D AU_OCC CSV (header: the frame column, then AU numbers such as "1" or "AU01"; rows of the frame
    number and 0/1/9 per AU); ValueError naming the file if its header names no AU, OSError if it cannot be opened."""
    header, *rows = list(csv.reader(io.StringIO(read_text(path), newline=""))) or [[]]
    columns = [re.fullmatch(r"(?i)\s*(?:AU)?0*(\d+)\s*", cell) for cell in header[1:]]
    if not columns or not all(columns):
        raise ValueError(f"{path}: header {header[:6]}... is not 'frame, AU numbers'")
    aus = tuple(int(m.group(1)) for m in columns)
    frames, malformed = {}, []
    for line, row in enumerate(rows, start=2):
        if not any(cell.strip() for cell in row):
            continue
        try:
            values = [int(float(cell)) for cell in row]
        except ValueError:
            values = []
        if len(values) != len(aus) + 1 or values[0] < 0 or not set(values[1:]) <= {0, 1, BP4D_NOT_CODED}:
            malformed.append((line, f"expected a frame number and {len(aus)} codes 0, 1 or 9, got {row[:6]}..."))
            continue
        frames[values[0]] = dict(zip(aus, values[1:]))
    return OccurrenceCodes(aus, frames, malformed)


def scan_bp4d(root: str, aus: Iterable[int] = (), frame_step: int = 1, pain_only: bool = False) -> Scan:
    """The frames of a BP4D tree at `root` that AUCoding/AU_OCC codes, every `frame_step`-th of each task; columns:
    `aus`, or every AU some frame codes 0 or 1. A frame whose code of one of them is 9 (not coded) is skipped."""
    check_sampling(frame_step)
    check_layout("bp4d", root)
    frames_dir = _bp4d_frames_dir(root)
    sequences = _sequences(os.path.join(root, frames_dir))
    collector = _Collector()
    codings = {}
    for (subject, task), name in _bp4d_csv_names(root).items():
        source = f"{BP4D_CODING}/{name}"
        try:
            codings[subject, task] = source, parse_occurrence_csv(os.path.join(root, source))
        except (OSError, ValueError) as e:
            collector.issue(source, "skipped", "unreadable_au_coding", f"{source}: {getattr(e, 'strerror', None) or e}")
            continue
        if codings[subject, task][1].malformed:
            lines = "; ".join(f"line {n}: {why}" for n, why in codings[subject, task][1].malformed)
            collector.issue(source, "warning", "malformed_au_coding_row", f"{source}: ignored {lines}")
    au_ids = tuple(sorted(aus)) or tuple(sorted({au for _, coding in codings.values() for codes in
                                                 coding.frames.values() for au, v in codes.items() if v < 2}))
    for (subject, task), (source, coding) in codings.items():
        folder = f"{frames_dir}/{subject}/{task}"
        names = {int(os.path.splitext(n)[0]): n for n in sequences.pop((subject, task), [])
                 if os.path.splitext(n)[0].isdigit()}
        missing = [au for au in au_ids if au not in coding.aus]
        if missing or not names:
            why = f"no column for AU {missing}" if missing else f"no frames under {folder}/"
            collector.issue(source, "skipped", "missing_au_columns" if missing else "no_frames", f"{source}: {why}")
            continue
        _keep_bp4d_frames(collector, root, folder, subject, source, coding, names, au_ids, frame_step, pain_only)
    for subject, task in sequences:
        collector.issue(f"{frames_dir}/{subject}/{task}/", "skipped", "no_au_coding",
                        f"{frames_dir}/{subject}/{task}/: no {BP4D_CODING}/{subject}_{task}.csv")
    return collector.scan(au_ids)


def _keep_bp4d_frames(collector: _Collector, root: str, folder: str, subject: str, source: str,
                      coding: OccurrenceCodes, names: dict[int, str], au_ids: tuple[int, ...], frame_step: int,
                      pain_only: bool) -> None:
    """The coded frames of one BP4D task (`names`: frame number -> image name in `folder`) to `collector`."""
    numbers = sorted(coding.frames)
    sampled = numbers[::frame_step]
    if frame_step > 1:
        collector.issue(source, "filtered", "frame_step",
                        f"{source}: 1 in {frame_step} coded frames kept ({len(sampled)} of {len(numbers)})")
    for number in sampled:
        if number not in names:
            collector.issue(f"{source}#{number}", "skipped", "no_image", f"{source}: frame {number} has no image in "
                            f"{folder}/")
            continue
        frame = f"{folder}/{names[number]}"
        codes = coding.frames[number]
        unknown = [au for au in au_ids if codes[au] == BP4D_NOT_CODED]
        if unknown:
            collector.issue(frame, "skipped", "au_not_coded", f"{frame}: AU {unknown} not coded (9) in {source}")
            continue
        present = frozenset(au for au in au_ids if codes[au] == 1)
        collector.other_aus.update(au for au in present if au not in facs.PAIN_AUS)
        collector.keep(FaceFile(os.path.join(root, frame), frame, subject, present, {}), pain_only)
    unlabelled = len(set(names) - set(numbers))
    if unlabelled:
        collector.issue(f"{folder}/", "filtered", "uncoded_frames", f"{folder}/: {unlabelled} frames have no row in "
                        f"{source}")


# --- manifests ----------------------------------------------------------------------------------------------------

_LANDMARK_COLUMNS = [f"{axis}{i}" for i in range(facs.NUM_LANDMARKS) for axis in "xy"]


def resolve_inside(root: str, relative: str) -> str:
    """The real path of `relative` under `root`; ValueError if it is absolute, has '..' or resolves outside root."""
    if not relative:
        raise ValueError("empty image path")
    if os.path.isabs(relative) or re.match(r"^[A-Za-z]:[\\/]", relative):
        raise ValueError(f"{relative!r} is an absolute path; manifest paths must be relative to the data root")
    if ".." in re.split(r"[\\/]", relative):
        raise ValueError(f"{relative!r} contains '..'; manifest paths must stay inside the data root")
    real_root = os.path.realpath(root)
    real = os.path.realpath(os.path.join(real_root, relative))
    if os.path.commonpath([real_root, real]) != real_root:
        raise ValueError(f"{relative!r} resolves to {real}, outside the data root {real_root} (a symlink?)")
    return real


def scan_manifest(root: str, manifest: str = "manifest.csv", exclude_subjects: Iterable[str] = (),
                  pain_only: bool = True, dataset_landmarks: bool = False, dataset: str = "manifest",
                  encoding: str = "utf-8") -> Scan:
    """The faces a CSV manifest lists (image paths relative to `root`), without the `exclude_subjects`.

    The manifest is `encoding` text (UTF-8 by default, with or without a byte-order mark); ValueError naming it and
    the line where it is not.

    Columns: `image`, `subject`, `AU<n>` (value > 0 means present; the value is kept as intensity), optional
    `x0,y0,...,x67,y67` (image pixels). Subject ids match exclusions exactly or as equal numbers ("016" == "16").
    A row with a bad path or value is skipped and reported; the rest goes on.
    """
    check_layout(dataset, root, dataset_landmarks, manifest, encoding)
    header, au_columns, rows = _read_manifest(root, manifest, dataset_landmarks, encoding)
    excluded = [str(s) for s in exclude_subjects]
    collector = _Collector()
    missing_aus = [au for au in facs.PAIN_AUS if au not in au_columns.values()]
    if missing_aus:
        collector.issue(manifest, "warning", "missing_au_columns",
                        f"{manifest}: no column for AU {missing_aus}; those AUs are labelled absent everywhere")
    seen: set[str] = set()
    for line, row in enumerate(rows, start=2):
        if not any(cell.strip() for cell in row):
            continue
        where = f"{manifest}:{line}"
        try:
            face = _manifest_face(root, header, au_columns, row, where, dataset_landmarks, collector.other_aus)
        except ValueError as e:
            collector.issue(where, "skipped", getattr(e, "reason", "malformed_row"), f"{where}: {e}")
            continue
        if face.source in seen:
            collector.issue(where, "skipped", "duplicate", f"{where}: {face.source} already listed above")
        elif any(_same_subject(face.subject, s) for s in excluded):
            collector.issue(face.source, "filtered", "excluded_subject",
                            f"{face.source}: subject {face.subject} is excluded")
        else:
            collector.keep(face, pain_only)
        seen.add(face.source)
    return collector.scan(set(facs.PAIN_AUS).union(au_columns.values()))


class _RowError(ValueError):
    """A manifest row that cannot be used; `reason` goes into the report."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def _read_manifest(root: str, manifest: str, dataset_landmarks: bool,
                   encoding: str) -> tuple[dict[str, int], dict[int, int], list]:
    """(column name -> index, column index -> AU number, data rows); LayoutError naming the file if columns are
    missing, ValueError naming it and the line if it is not `encoding` text."""
    path = os.path.join(root, manifest)
    try:
        text = read_text(path, encoding)
    except ValueError as e:
        raise ValueError(f"{e}; give the manifest's encoding as the option encoding, "
                         "e.g. --preprocess_option=encoding=latin-1") from None
    header, *rows = list(csv.reader(io.StringIO(text, newline=""))) or [[]]
    columns = {name.strip(): i for i, name in enumerate(header)}
    missing = [c for c in ("image", "subject") if c not in columns]
    landmark_columns = [c for c in _LANDMARK_COLUMNS if c in columns]
    if landmark_columns and len(landmark_columns) != len(_LANDMARK_COLUMNS):
        missing += [c for c in _LANDMARK_COLUMNS if c not in columns]
    elif dataset_landmarks and not landmark_columns:
        missing += ["x0,y0,...,x67,y67 (landmarks='dataset')"]
    if missing:
        raise LayoutError(f"{path}: missing columns {', '.join(missing)}; header is {header}\n"
                          f"Expected layout:\n{EXPECTED_TREES['manifest']}")
    au_columns = {i: int(m.group(1)) for name, i in columns.items() if (m := re.fullmatch(r"(?i)AU0*(\d+)", name))}
    return columns, au_columns, rows


def _manifest_face(root: str, header: dict[str, int], au_columns: dict[int, int], row: list[str], where: str,
                   dataset_landmarks: bool, other_aus: collections.Counter) -> FaceFile:
    if len(row) != len(header):
        raise ValueError(f"{len(row)} cells, header has {len(header)}")
    relative = row[header["image"]].strip()
    try:
        path = resolve_inside(root, relative)
    except ValueError as e:
        raise _RowError("path_outside_root", str(e)) from None
    if not os.path.isfile(path):
        raise _RowError("missing_image", f"image {relative!r} does not exist under the data root")
    subject = row[header["subject"]].strip()
    if not subject:
        raise ValueError("empty subject")
    codes = {}
    for column, au in au_columns.items():
        value = _number(row[column], f"AU{au}")
        if not 0 <= value <= MAX_INTENSITY:
            raise ValueError(f"AU{au} = {row[column]!r} outside [0, {MAX_INTENSITY:g}]")
        if value > 0:
            codes[au] = value
    other_aus.update(au for au in codes if au not in facs.PAIN_AUS)
    landmarks = _manifest_landmarks(row, header) if dataset_landmarks else None
    source = os.path.normpath(relative).replace(os.sep, "/")
    return FaceFile.coded(path, source, subject, codes, landmarks=landmarks)


def _manifest_landmarks(row: list[str], header: dict[str, int]) -> np.ndarray:
    cells = [row[header[c]].strip() for c in _LANDMARK_COLUMNS]
    if not all(cells):
        raise _RowError("no_landmarks", "empty landmark cells")
    return np.array([_number(c, "landmark") for c in cells], np.float32).reshape(facs.NUM_LANDMARKS, 2)


def _number(cell: str, what: str) -> float:
    try:
        value = float(cell)
    except ValueError:
        raise ValueError(f"{what} = {cell!r} is not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"{what} = {cell!r} is not finite")
    return value


def _same_subject(subject: str, excluded: str) -> bool:
    return subject == excluded or (subject.isdigit() and excluded.isdigit() and int(subject) == int(excluded))
