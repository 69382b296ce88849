"""TensorFlow-Datasets builders for the face datasets, written as array_record without TensorFlow.

Every builder writes one 'train' split whose examples are

  image      uint8   (112, 112, 3)  RGB face crop
  landmarks  float32 (68, 2)        (x, y) pixels in the crop, iBUG-68 order
  labels     uint8   (k,)           binary AU labels, in the order of the build's `au_ids`
  intensity  float32 (k,)           FACS intensity 0-5 (present AUs 1-5 or 0 where unknown; DISFA every AU's)
  subject    text                   subject id
  source     text                   image path relative to the manual directory (or the generator's key)

plus extras: `peak` bool (ck_plus: the FACS-coded frame itself), `pspi` float32 (unbc_mcmaster, NaN if missing),
and, in builds whose landmarks come from MediaPipe (landmarks="mediapipe"), `blendshapes` float32 (52,): MediaPipe's
blendshape scores of the face, `blendshapes.BLENDSHAPE_NAMES` order. Builds with landmarks="dataset" and
synthetic_faces have no `blendshapes` feature (MediaPipe did not run), and neither have builds made before the
feature existed: `preprocess.load_records` tells them apart by the feature's presence, not by the values.

The k AUs of the label and intensity columns are every AU the dataset codes (`layouts.Scan.au_ids`, ascending), not
only the 8 pain AUs; the build's metadata (`info.metadata["au_ids"]`, metadata.json) lists them, and training picks
its `config.aus` from them. Builds made before the metadata existed hold the 8 pain AUs (`facs.PAIN_AUS`).

Builders (`BUILDERS`): ck_plus, unbc_mcmaster, disfa (frames of the left-camera videos, decoded with OpenCV, cropped
in one process), bp4d, manifest, actor_study (a manifest without participant 16), synthetic_faces (the embedded
generator). Data lands in `<data_dir>/<name>/<config name>/1.0.0/`; the config name
spells out the options that shape the data, so differently built variants live side by side.

Importing this module registers the builders with TFDS (`import aujax` does not, to stay light), so that

  import aujax.data.builders, tensorflow_datasets as tfds
  tfds.builder("ck_plus", data_dir=...)                          # the default variant; "ck_plus/<config name>"
  tfds build --imports=aujax.data.builders ck_plus --manual_dir=... --data_dir=...

find them. Each builder's `BUILDER_CONFIGS` are the documented variants (e.g. ck_plus: the default, landmarks=dataset,
label_frames=all), the first its default; `make_config` names any other combination of options. The builders write
array_record unless told otherwise (tfrecord would need TensorFlow).

Faces are cropped with MediaPipe (`faces.crop_files`, landmarks="mediapipe") or around the dataset's own landmarks
(`faces.crop_around_landmarks`, landmarks="dataset", no MediaPipe). Every input file ends up as one row of the
builder's `report_rows` (see `layouts.Issue`); a bad file never stops the build.

Only this module and `preprocess` import tensorflow_datasets; training reads `FaceRecords`.
"""

import codecs
import dataclasses
import itertools
import json
import os
import re
import types
import typing
from typing import Any, Iterator

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from aujax import facs
from aujax.data import blendshapes, layouts
from aujax.progress import Progress

VERSION = "1.0.0"
_BUILD_ONLY_OPTIONS = ("workers", "encoding")  # how a dataset is built, not what it holds: not in the config name
BLENDSHAPE_FEATURE = "blendshapes"  # present only in builds whose faces MediaPipe found (FaceConfig.has_blendshapes)


AU_IDS_METADATA = "au_ids"  # the build's AU columns, in info.metadata


def _features(extras: dict[str, Any]) -> tfds.features.FeaturesDict:
    size = facs.IMAGE_SIZE
    return tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(shape=(size, size, 3), dtype=np.uint8),
            "landmarks": tfds.features.Tensor(shape=(facs.NUM_LANDMARKS, 2), dtype=np.float32),
            "labels": tfds.features.Tensor(shape=(None,), dtype=np.uint8),  # one per AU of the metadata's au_ids
            "intensity": tfds.features.Tensor(shape=(None,), dtype=np.float32),
            "subject": tfds.features.Text(),
            "source": tfds.features.Text(),
            **extras,
    })


# --- configs ------------------------------------------------------------------------------------------------------

@dataclasses.dataclass(eq=False)
class FaceConfig(tfds.core.BuilderConfig):
    """Options every real-image dataset takes.

    landmarks  "mediapipe" (crop and landmarks from MediaPipe) or "dataset" (the dataset's own landmarks)
    pain_only  keep only faces with at least one of the 8 pain AUs (as the paper)
    margin     crop margin around the landmarks' box, as a fraction of its side
    workers    processes cropping with MediaPipe (None: faces.crop_files' default); does not change the data
    """
    landmarks: str = "mediapipe"
    pain_only: bool = True
    margin: float = 0.25
    workers: int | None = None

    @property
    def has_blendshapes(self) -> bool:
        """Whether the build stores MediaPipe's blendshapes (only MediaPipe computes them)."""
        return self.landmarks == "mediapipe"

    def validate(self) -> None:
        if self.landmarks not in layouts.LANDMARK_CHOICES:
            raise ValueError(f"landmarks={self.landmarks!r}: expected one of {layouts.LANDMARK_CHOICES}")
        if not 0 <= self.margin <= 2:
            raise ValueError(f"margin={self.margin}: expected a fraction in [0, 2]")

    def name_parts(self) -> list[str]:
        return [self.landmarks, "pain" if self.pain_only else "all", f"margin{self.margin:g}"]


@dataclasses.dataclass(eq=False)
class CkPlusConfig(FaceConfig):
    """label_frames: which frames of a sequence take its peak frame's FACS code: "peak", "last_fraction:F", "all"."""
    label_frames: str = layouts.DEFAULT_LABEL_FRAMES

    def validate(self) -> None:
        super().validate()
        layouts.parse_label_frames(self.label_frames)

    def name_parts(self) -> list[str]:
        return super().name_parts() + [self.label_frames.replace("last_fraction:", "last")]


@dataclasses.dataclass(eq=False)
class FrameConfig(FaceConfig):
    """Options of the datasets of frame sequences (DISFA, BP4D): frame_step keeps every k-th labelled frame of each
    sequence (1: all). Their AUs are not the pain AUs, so every frame is kept by default (pain_only=False); the faces
    are found by MediaPipe (the datasets' own landmarks, .mat files, are not read)."""
    pain_only: bool = False
    frame_step: int = 1

    def validate(self) -> None:
        super().validate()
        if self.landmarks != "mediapipe":
            raise ValueError(f"landmarks={self.landmarks!r}: this dataset's landmarks are not read; only 'mediapipe'")
        layouts.check_sampling(self.frame_step)

    def name_parts(self) -> list[str]:
        return super().name_parts() + ([f"step{self.frame_step}"] if self.frame_step > 1 else [])


@dataclasses.dataclass(eq=False)
class DisfaConfig(FrameConfig):
    """positive_intensity: an AU of DISFA intensity (0-5) at least this is present (default 2, B on FACS' A-E)."""
    positive_intensity: float = layouts.DEFAULT_POSITIVE_INTENSITY

    def validate(self) -> None:
        super().validate()
        layouts.check_sampling(self.frame_step, self.positive_intensity)

    def name_parts(self) -> list[str]:
        return super().name_parts() + [f"pos{self.positive_intensity:g}"]


@dataclasses.dataclass(eq=False)
class Bp4dConfig(FrameConfig):
    """aus: the AU columns to store (default: every AU some frame codes 0 or 1); a frame not coded (9) for one of them
    is skipped."""
    aus: tuple[int, ...] = ()

    def validate(self) -> None:
        super().validate()
        self.aus = _au_list(self.aus)

    def name_parts(self) -> list[str]:
        return super().name_parts() + (["au" + "_".join(map(str, self.aus))] if self.aus else [])


@dataclasses.dataclass(eq=False)
class ManifestConfig(FaceConfig):
    """manifest: CSV file (relative to the data root); encoding: its text encoding (UTF-8 with or without a
    byte-order mark by default; e.g. latin-1); exclude_subjects: subject ids left out."""
    manifest: str = "manifest.csv"
    encoding: str = "utf-8"
    exclude_subjects: tuple[str, ...] = ()

    def validate(self) -> None:
        super().validate()
        try:
            codecs.lookup(self.encoding)
        except (LookupError, TypeError):
            raise ValueError(f"encoding={self.encoding!r}: not a text encoding Python knows") from None
        self.exclude_subjects = _subject_list(self.exclude_subjects)

    def name_parts(self) -> list[str]:
        excluded = ["excl_" + "_".join(self.exclude_subjects)] if self.exclude_subjects else []
        return super().name_parts() + [re.sub(r"\.csv$", "", self.manifest)] + excluded


@dataclasses.dataclass(eq=False)
class ActorStudyConfig(ManifestConfig):
    """The Actor Study's manifest; participant 16 is left out by default, as in the paper."""
    exclude_subjects: tuple[str, ...] = ("16",)


@dataclasses.dataclass(eq=False)
class SyntheticConfig(tfds.core.BuilderConfig):
    """Arguments of `synthetic.generate`."""
    num_subjects: int = 8
    images_per_subject: int = 10
    domain: str = "posed"
    seed: int = 0
    subject_prefix: str = "S"
    spurious_cue_au: int | None = None
    spurious_cue_probability: float = 0.9

    def validate(self) -> None:
        if self.num_subjects < 1 or self.images_per_subject < 1:
            raise ValueError(f"synthetic_faces: num_subjects={self.num_subjects} and "
                             f"images_per_subject={self.images_per_subject} must be >= 1")

    def name_parts(self) -> list[str]:
        cue = [f"cue_au{self.spurious_cue_au}_p{self.spurious_cue_probability:g}"] if self.spurious_cue_au else []
        return [f"{self.num_subjects}x{self.images_per_subject}", self.domain, f"seed{self.seed}",
                f"subj{self.subject_prefix}"] + cue


def _au_list(aus) -> tuple[int, ...]:
    """AU ids from a tuple/list, a comma-separated string ("1,2,AU12") or one id, as a sorted tuple of int."""
    if isinstance(aus, (str, int)):
        aus = str(aus).split(",")
    items = [str(a).strip().upper().removeprefix("AU") for a in aus if str(a).strip()]
    if not all(item.isdigit() for item in items):
        raise ValueError(f"aus={aus!r}: expected AU numbers, e.g. 1,2,4 or AU1,AU2")
    return tuple(sorted({int(item) for item in items}))


def _subject_list(subjects) -> tuple[str, ...]:
    """Subject ids from a tuple/list, a comma-separated string or one id, as a sorted tuple of str."""
    if isinstance(subjects, (str, int)):
        subjects = str(subjects).split(",")
    return tuple(sorted({str(s).strip() for s in subjects if str(s).strip()}))


def _options(config: tfds.core.BuilderConfig) -> dict[str, Any]:
    """The options a config was made from (its own dataclass fields, not tfds' bookkeeping)."""
    base = {f.name for f in dataclasses.fields(tfds.core.BuilderConfig)}
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.name not in base}


def _build_options(config: tfds.core.BuilderConfig) -> dict[str, Any]:
    """The options of `config` that change how a dataset is built, not what it holds (`_BUILD_ONLY_OPTIONS`)."""
    return {k: v for k, v in _options(config).items() if k in _BUILD_ONLY_OPTIONS}


def _named_config(config_class: type, **options) -> tfds.core.BuilderConfig:
    """A `config_class` with `options` (valid ones), named after the options that shape the data, which its
    description lists as JSON."""
    config = config_class(name="-", **options)
    config.validate()
    data_options = {k: v for k, v in _options(config).items() if k not in _BUILD_ONLY_OPTIONS}
    name = re.sub(r"[^\w.+-]+", "-", ".".join(config.name_parts()))
    return dataclasses.replace(config, name=name, description=json.dumps(data_options, sort_keys=True))


def _variants(config_class: type, *variants: dict[str, Any]) -> list[tfds.core.BuilderConfig]:
    """BUILDER_CONFIGS: the default config of `config_class`, then one per dict of options."""
    return [_named_config(config_class, **options) for options in ({}, *variants)]


_LANDMARKS_FROM_DATASET = {"landmarks": "dataset"}


# --- builders -----------------------------------------------------------------------------------------------------

class _Builder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """What every aujax builder shares: the version, array_record by default, the build-only options, the report.

    build_options: options that change how the dataset is built, not what it holds (workers, encoding), over the
    config's own; they let a build use one of the registered `BUILDER_CONFIGS` (tfds takes only the very objects).
    """
    VERSION = tfds.core.Version(VERSION)
    # tfds derives this from the package, which on Python >= 3.9 needs the importlib_resources backport; it only
    # serves to find a download-checksums file, and these datasets download nothing.
    code_path = epath.Path(__file__)
    HOMEPAGE = ""
    CITATION = ""
    report_rows: list[layouts.Issue]
    other_aus: dict[int, int]
    au_ids: tuple[int, ...] = facs.PAIN_AUS

    def __init__(self, *, file_format: str = "array_record", build_options: dict[str, Any] | None = None,
                 **kwargs):
        super().__init__(file_format=file_format, **kwargs)
        self.build_options = {**_build_options(self.builder_config), **(build_options or {})}

    def _dataset_info(self, description: str, extras: dict[str, Any]) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(builder=self, description=description, features=_features(extras),
                                     homepage=self.HOMEPAGE or None, citation=self.CITATION or None,
                                     metadata=tfds.core.MetadataDict())

    def _record_au_ids(self, au_ids) -> None:
        """Keep the build's AU columns, in its metadata and as `au_ids` (for the preprocess report)."""
        self.au_ids = tuple(int(au) for au in au_ids)
        self.info.metadata[AU_IDS_METADATA] = list(self.au_ids)


class _FaceBuilder(_Builder, skip_registration=True):
    """A face dataset read from a manual directory; subclasses name their layout scan and extras."""
    CONFIG_CLASS = FaceConfig
    EXTRA_FEATURES: dict[str, Any] = {}
    DESCRIPTION = ""

    def _info(self) -> tfds.core.DatasetInfo:
        blendshape_feature = {BLENDSHAPE_FEATURE: tfds.features.Tensor(shape=(blendshapes.NUM_BLENDSHAPES,),
                                                                      dtype=np.float32)}
        extras = {**(blendshape_feature if self.builder_config.has_blendshapes else {}), **self.EXTRA_FEATURES}
        return self._dataset_info(self.DESCRIPTION, extras)

    def _split_generators(self, dl_manager):
        manual_dir = str(dl_manager.manual_dir)  # tfds' MANUAL_DOWNLOAD_INSTRUCTIONS if none was given
        self.check_manual_dir(manual_dir)  # for builds through tfds itself (preprocess checks before it builds)
        return {"train": self._generate_examples(manual_dir)}

    def check_manual_dir(self, manual_dir: str) -> None:
        """LayoutError, with the expected tree, if `manual_dir` is not laid out for this dataset."""
        layouts.check_layout(self.name, manual_dir, self.builder_config.landmarks == "dataset",
                             **self._layout_options())

    def _layout_options(self) -> dict[str, str]:
        return {}

    def scan(self, root: str) -> layouts.Scan:
        raise NotImplementedError

    def _generate_examples(self, root: str) -> Iterator[tuple[str, dict]]:
        scan = self.scan(root)
        self.report_rows, self.other_aus = list(scan.issues), dict(scan.other_aus)
        self._record_au_ids(scan.au_ids)
        with Progress(len(scan.faces), f"preprocess {self.name}: cropping", "faces") as progress:
            for face, crop in _crop(scan.faces, self.builder_config, self.build_options["workers"]):
                progress.advance()
                if not isinstance(crop, tuple):
                    self.report_rows.append(layouts.Issue(face.source, "skipped", crop.reason,
                                                          f"{face.source}: {crop.detail}"))
                    continue
                yield face.source, self._example(face, *crop)

    def _example(self, face: layouts.FaceFile, image: np.ndarray, landmarks: np.ndarray,
                 blendshape_scores: np.ndarray | None, num_faces: int) -> dict:
        """The example of one cropped face (its report row added)."""
        self.report_rows.append(_ok_row(face, num_faces))
        example = {"image": image, "landmarks": landmarks.astype(np.float32), "labels": face.labels(self.au_ids),
                   "intensity": face.intensities(self.au_ids), "subject": face.subject, "source": face.source,
                   **face.extras}
        if self.builder_config.has_blendshapes:
            example[BLENDSHAPE_FEATURE] = blendshape_scores
        return example


def _ok_row(face: layouts.FaceFile, num_faces: int) -> layouts.Issue:
    """The report row of a face written to the dataset, with its notes (e.g. several faces in the image)."""
    several = (("several_faces", f"{face.source}: {num_faces} faces; kept the largest"),) if num_faces > 1 else ()
    notes = face.notes + several
    return layouts.Issue(face.source, "ok", ";".join(r for r, _ in notes), "; ".join(m for _, m in notes))


def _crop(faces: list[layouts.FaceFile], config: FaceConfig, workers: int | None):
    """(face, (image, landmarks, blendshapes or None, num_faces) or faces.FaceError) for each face, in order;
    blendshapes (float32 (52,)) come from MediaPipe (`workers` processes), None with the dataset's own landmarks."""
    if not faces:
        return
    from aujax.data import faces as face_crops  # MediaPipe and OpenCV only where images are cropped

    def found(result):
        if isinstance(result, face_crops.FaceError):
            return result
        return result.image, result.landmarks, result.blendshapes, result.num_faces

    if config.landmarks == "mediapipe" and faces[0].frame is not None:  # video frames: one video at a time
        for path, group in itertools.groupby(faces, key=lambda f: f.path):
            group = list(group)
            results = face_crops.crop_video_frames(path, [f.frame for f in group], margin=config.margin)
            for face, (_, result) in zip(group, results):
                yield face, found(result)
        return
    if config.landmarks == "mediapipe":
        results = face_crops.crop_files([f.path for f in faces], workers=workers, margin=config.margin)
        for face, (_, result) in zip(faces, results):
            yield face, found(result)
        return
    for face in faces:
        try:
            image = face_crops.read_image(face.path)
            crop, landmarks = face_crops.crop_around_landmarks(image, face.landmarks, config.margin, source=face.path)
            yield face, (crop, landmarks, None, 1)
        except face_crops.FaceError as error:
            yield face, error


class CkPlus(_FaceBuilder):
    """Extended Cohn-Kanade (CK+): posed expression sequences from neutral to peak, FACS-coded at the peak."""
    name = "ck_plus"
    CONFIG_CLASS = CkPlusConfig
    BUILDER_CONFIGS = _variants(CkPlusConfig, _LANDMARKS_FROM_DATASET, {"label_frames": "all"})
    HOMEPAGE = "https://www.jeffcohn.net/Resources/"
    CITATION = """\
@inproceedings{lucey2010ckplus,
  author = {Lucey, Patrick and Cohn, Jeffrey F. and Kanade, Takeo and Saragih, Jason and Ambadar, Zara and
            Matthews, Iain},
  title = {The Extended Cohn-Kanade Dataset ({CK+}): A complete dataset for action unit and emotion-specified
           expression},
  booktitle = {IEEE Computer Society Conference on Computer Vision and Pattern Recognition Workshops (CVPRW)},
  year = {2010},
}"""
    EXTRA_FEATURES = {"peak": tfds.features.Tensor(shape=(), dtype=np.bool_)}
    DESCRIPTION = "CK+ face crops with every AU coded, labels propagated from each sequence's peak frame."
    MANUAL_DOWNLOAD_INSTRUCTIONS = ("Extract the CK+ distribution (cohn-kanade-images, FACS, Landmarks) so that:\n"
                                    + layouts.EXPECTED_TREES["ck_plus"])

    def scan(self, root: str) -> layouts.Scan:
        config = self.builder_config
        return layouts.scan_ck_plus(root, config.label_frames, config.pain_only, config.landmarks == "dataset")


class UnbcMcmaster(_FaceBuilder):
    """UNBC-McMaster Shoulder Pain Expression Archive: spontaneous pain, FACS-coded per frame, with PSPI."""
    name = "unbc_mcmaster"
    BUILDER_CONFIGS = _variants(FaceConfig, _LANDMARKS_FROM_DATASET)
    HOMEPAGE = "https://www.jeffcohn.net/Resources/"
    CITATION = """\
@inproceedings{lucey2011painful,
  author = {Lucey, Patrick and Cohn, Jeffrey F. and Prkachin, Kenneth M. and Solomon, Patricia E. and
            Matthews, Iain},
  title = {Painful data: The {UNBC-McMaster} shoulder pain expression archive database},
  booktitle = {IEEE International Conference on Automatic Face and Gesture Recognition (FG)},
  year = {2011},
}"""
    EXTRA_FEATURES = {"pspi": tfds.features.Tensor(shape=(), dtype=np.float32)}
    DESCRIPTION = "UNBC-McMaster face crops with every AU coded and the frame's PSPI score."
    MANUAL_DOWNLOAD_INSTRUCTIONS = ("Extract the UNBC-McMaster distribution so that:\n"
                                    + layouts.EXPECTED_TREES["unbc_mcmaster"])

    def scan(self, root: str) -> layouts.Scan:
        config = self.builder_config
        return layouts.scan_unbc(root, config.pain_only, config.landmarks == "dataset")


class Disfa(_FaceBuilder):
    """DISFA: spontaneous expressions while watching video clips, 12 AUs coded per frame at intensity 0-5."""
    name = "disfa"
    CONFIG_CLASS = DisfaConfig
    BUILDER_CONFIGS = _variants(DisfaConfig, {"positive_intensity": 1.0}, {"frame_step": 5})
    HOMEPAGE = "http://mohammadmahoor.com/disfa/"
    CITATION = """\
@article{mavadati2013disfa,
  author = {Mavadati, S. Mohammad and Mahoor, Mohammad H. and Bartlett, Kevin and Trinh, Philip and Cohn, Jeffrey F.},
  title = {{DISFA}: A Spontaneous Facial Action Intensity Database},
  journal = {IEEE Transactions on Affective Computing},
  volume = {4},
  number = {2},
  pages = {151--160},
  year = {2013},
}"""
    DESCRIPTION = ("DISFA face crops of the left camera's video frames with its 12 AUs: present at intensity >= "
                   "positive_intensity, the intensity (0-5) kept.")
    MANUAL_DOWNLOAD_INSTRUCTIONS = ("Extract DISFA's ActionUnit_Labels and Videos_LeftCamera archives so that:\n"
                                    + layouts.EXPECTED_TREES["disfa"])

    def scan(self, root: str) -> layouts.Scan:
        config = self.builder_config
        return layouts.scan_disfa(root, config.positive_intensity, config.frame_step, config.pain_only)


class Bp4d(_FaceBuilder):
    """BP4D-Spontaneous: 41 subjects in 8 tasks each, AU occurrence coded per frame."""
    name = "bp4d"
    CONFIG_CLASS = Bp4dConfig
    BUILDER_CONFIGS = _variants(Bp4dConfig, {"aus": facs.AU_SETS["bp4d"]})
    HOMEPAGE = "https://www.cs.binghamton.edu/~lijun/Research/3DFE/3DFE_Analysis.html"
    CITATION = """\
@article{zhang2014bp4d,
  author = {Zhang, Xing and Yin, Lijun and Cohn, Jeffrey F. and Canavan, Shaun and Reale, Michael and Horowitz, Andy
            and Liu, Peng and Girard, Jeffrey M.},
  title = {{BP4D-Spontaneous}: a high-resolution spontaneous 3D dynamic facial expression database},
  journal = {Image and Vision Computing},
  volume = {32},
  number = {10},
  pages = {692--706},
  year = {2014},
}"""
    DESCRIPTION = "BP4D face crops of the 2D frames AUCoding/AU_OCC codes, with every AU coded (or the aus option's)."
    MANUAL_DOWNLOAD_INSTRUCTIONS = ("Extract BP4D's AUCoding and 2D+3D (frames) archives so that:\n"
                                    + layouts.EXPECTED_TREES["bp4d"])

    def scan(self, root: str) -> layouts.Scan:
        config = self.builder_config
        return layouts.scan_bp4d(root, config.aus, config.frame_step, config.pain_only)


class Manifest(_FaceBuilder):
    """Any dataset described by a CSV manifest of images, subjects and AU codes."""
    name = "manifest"
    CONFIG_CLASS = ManifestConfig
    BUILDER_CONFIGS = _variants(ManifestConfig, _LANDMARKS_FROM_DATASET)
    DESCRIPTION = "Face crops listed by a CSV manifest (image, subject, AU<n>, optional landmarks)."
    MANUAL_DOWNLOAD_INSTRUCTIONS = "Put the images and the manifest under one data root:\n" + \
                                   layouts.EXPECTED_TREES["manifest"]

    def _layout_options(self) -> dict[str, str]:
        return {"manifest": self.builder_config.manifest, "encoding": self.build_options["encoding"]}

    def scan(self, root: str) -> layouts.Scan:
        config = self.builder_config
        return layouts.scan_manifest(root, config.manifest, config.exclude_subjects, config.pain_only,
                                     config.landmarks == "dataset", dataset=self.name,
                                     encoding=self.build_options["encoding"])


class ActorStudy(Manifest):
    """The paper's Actor Study, given as a manifest; participant 16 left out by default."""
    name = "actor_study"
    CONFIG_CLASS = ActorStudyConfig
    BUILDER_CONFIGS = _variants(ActorStudyConfig, _LANDMARKS_FROM_DATASET)
    CITATION = """\
@inproceedings{seuss2019actorstudy,
  author = {Seuss, Dominik and Dieckmann, Anja and Hassan, Teena and Garbas, Jens-Uwe and Ellgring, Johann Heinrich
            and Mortillaro, Marcello and Scherer, Klaus},
  title = {Emotion expression from different angles: A video database for facial expressions of actors shot by a
           camera array},
  booktitle = {International Conference on Affective Computing and Intelligent Interaction (ACII)},
  year = {2019},
}"""
    DESCRIPTION = "Actor Study face crops from a CSV manifest, participant 16 excluded by default."


class SyntheticFaces(_Builder):
    """The embedded synthetic face generator as a dataset (no manual directory)."""
    name = "synthetic_faces"
    CONFIG_CLASS = SyntheticConfig
    BUILDER_CONFIGS = _variants(SyntheticConfig)

    def _info(self) -> tfds.core.DatasetInfo:
        return self._dataset_info("Synthetic faces from aujax.data.synthetic.", {})

    def check_manual_dir(self, manual_dir: str) -> None:
        """The generator needs no manual directory."""

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

    def _generate_examples(self) -> Iterator[tuple[str, dict]]:
        from aujax.data import synthetic

        options = _options(self.builder_config)
        records = synthetic.generate(**options, name=self.name)
        self.report_rows, self.other_aus = [], {}
        self._record_au_ids(getattr(records, "au_ids", facs.PAIN_AUS))
        for i in range(len(records)):
            source = str(records.source[i])
            self.report_rows.append(layouts.Issue(source, "ok", "", ""))
            yield source, {field: getattr(records, field)[i]
                           for field in ("image", "landmarks", "labels", "intensity", "subject", "source")}


BUILDERS = {b.name: b for b in (CkPlus, UnbcMcmaster, Disfa, Bp4d, Manifest, ActorStudy, SyntheticFaces)}


def option_names(dataset: str) -> list[str]:
    """The options `make_builder` takes for `dataset`."""
    return list(_options(_builder_class(dataset).CONFIG_CLASS(name="-")))


def make_config(dataset: str, **options) -> tfds.core.BuilderConfig:
    """The config for `dataset` with `options` (others at their defaults), named after what shapes the data.

    ValueError naming the option if one is unknown or has a bad value.
    """
    config_class = _builder_class(dataset).CONFIG_CLASS
    known = option_names(dataset)
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ValueError(f"{dataset}: unknown option(s) {unknown}; options are {known}")
    _check_option_types(dataset, config_class, options)
    return _named_config(config_class, **options)


def _check_option_types(dataset: str, config_class: type, options: dict[str, Any]) -> None:
    """ValueError naming the first option whose value is not of its field's type (options come from the command
    line as Python literals or strings, so "pain_only=no" arrives as the string 'no')."""
    annotations = {f.name: f.type for f in dataclasses.fields(config_class)}
    for name, value in options.items():
        annotation = annotations[name]
        kinds = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else (annotation,)
        if not any(_is_a(value, kind) for kind in kinds):
            expected = " or ".join(_TYPE_NAMES.get(kind, getattr(kind, "__name__", str(kind))) for kind in kinds)
            raise ValueError(f"{dataset}: {name}={value!r}: expected {expected}")


_TYPE_NAMES = {bool: "True or False", type(None): "None"}


def _is_a(value, kind) -> bool:
    """Whether `value` serves for a field of type `kind`: a whole number does for a float, but a bool only for a bool;
    subject ids (a tuple) may be a list, a comma-separated string or one id (`_subject_list`)."""
    if typing.get_origin(kind) is tuple:
        return isinstance(value, (tuple, list, str, int)) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, kind) and (kind is bool or not isinstance(value, bool))


def make_builder(dataset: str, data_dir: str, **options) -> tfds.core.GeneratorBasedBuilder:
    """The builder of `dataset` writing array_record files under `data_dir`, configured by `options`: with the
    registered config of that name if there is one (tfds refuses another config of the same name)."""
    config = make_config(dataset, **options)
    builder_class = _builder_class(dataset)
    return builder_class(config=builder_class.builder_configs.get(config.name, config), data_dir=data_dir,
                         build_options=_build_options(config))


def built_config_names(dataset: str, data_dir: str) -> list[str]:
    """Names of the configs of `dataset` built (version 1.0.0 complete) under `data_dir`."""
    dataset_dir = os.path.join(data_dir, _builder_class(dataset).name)
    if not os.path.isdir(dataset_dir):
        return []
    return sorted(c for c in os.listdir(dataset_dir)
                  if os.path.isfile(os.path.join(dataset_dir, c, VERSION, "dataset_info.json")))


def _builder_class(dataset: str):
    if dataset not in BUILDERS:
        raise ValueError(f"unknown dataset {dataset!r}; known: {sorted(BUILDERS)}")
    return BUILDERS[dataset]
