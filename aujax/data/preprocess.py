"""The preprocess stage: build a face dataset from its manual directory, and say what happened to every file.

`preprocess(dataset, manual_dir, data_dir, report_path, **options)` checks the manual directory's layout, builds
the dataset with its TFDS builder (array_record under `data_dir`, rebuilt if it was there), prints a summary and
writes one CSV row per input file to `report_path`:

  source   path relative to the manual directory (a manifest row is "<manifest>:<line>")
  status   ok (written) | skipped (unusable) | filtered (dropped by an option) | warning (label file partly used)
  reason   why, e.g. no_face, unreadable, too_small, no_facs, malformed_facs_line, no_pain_au; ';'-joined notes on
           ok rows (several_faces, no_pspi)
  message  what exactly, naming the file (and line)

`load_records(dataset, data_dir, **options)` reads a built dataset back into `FaceRecords` for training, with
MediaPipe's blendshapes when the build has them (a `blendshapes` feature: landmarks="mediapipe" builds), else None,
and the build's AU columns as `au_ids` (its metadata's; the 8 pain AUs for builds made before it listed them).
tensorflow_datasets is imported only inside these functions.
"""

import collections
import csv
import dataclasses
import logging
import os

import numpy as np

from aujax import facs
from aujax.data import layouts, records
from aujax.progress import Progress

REPORT_COLUMNS = ("source", "status", "reason", "message")
READ_FAILURES = ("unreadable", "empty_file", "too_small", "too_large")  # faces.FaceError reasons before a face search
FACE_FAILURES = ("no_face", "bad_landmarks")
_READ_CHUNK = 512


class PreprocessError(ValueError):
    """A dataset could not be built (e.g. no face was kept); the message points at the report."""


@dataclasses.dataclass(frozen=True)
class PreprocessReport:
    """What a preprocess run did with every input file (`rows`) and where the dataset went."""
    dataset: str
    config_name: str
    data_path: str
    rows: tuple[layouts.Issue, ...]
    other_aus: dict[int, int]
    au_ids: tuple[int, ...] = ()

    def reasons(self, status: str) -> collections.Counter:
        """reason -> number of rows with `status` (each ';'-joined reason counted once)."""
        return collections.Counter(reason for row in self.rows if row.status == status
                                   for reason in (row.reason.split(";") if row.reason else [""]))

    @property
    def num_examples(self) -> int:
        """Faces written to the dataset."""
        return sum(row.status == "ok" for row in self.rows)

    def summary(self) -> str:
        """A few lines for the terminal: files found, read, faces kept, and why the others were not."""
        counts = {status: self.reasons(status) for status in ("ok", "skipped", "filtered", "warning")}
        read = self.num_examples + sum(counts["skipped"][r] for r in FACE_FAILURES)
        other = ", ".join(f"AU{au} x{n}" for au, n in sorted(self.other_aus.items())) or "none"
        lines = [
                f"preprocess {self.dataset} ({self.config_name}) -> {self.data_path}",
                f"  files reported        {len(self.rows):7d}",
                _count_line("filtered by options", counts["filtered"]),
                f"  images read           {read:7d}",
                _count_line("faces kept", counts["ok"]),
                _count_line("skipped", counts["skipped"]),
                _count_line("label-file warnings", counts["warning"]),
                f"  AU columns stored: {', '.join(map(str, self.au_ids)) or 'none'} "
                f"(choose a set at training time with --config.aus)",
                f"  AU codes outside the 8 pain AUs: {other}",
        ]
        return "\n".join(lines)

    def write_csv(self, path: str) -> None:
        """One row per input file, columns `REPORT_COLUMNS`, written atomically."""
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        tmp = path + ".tmp"
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(REPORT_COLUMNS)
            writer.writerows(dataclasses.astuple(row) for row in self.rows)
        os.replace(tmp, path)


def _count_line(what: str, reasons: collections.Counter) -> str:
    """'  what   total  (reason: n, ...)' with the reasons by decreasing count."""
    named = sorted(((n, r) for r, n in reasons.items() if r), key=lambda nr: -nr[0])
    breakdown = "  (" + ", ".join(f"{r}: {n}" for n, r in named) + ")" if named else ""
    return f"  {what:<20}  {sum(reasons.values()):7d}{breakdown}"


def preprocess(dataset: str, manual_dir: str | None, data_dir: str, report_path: str,
               **options) -> PreprocessReport:
    """Build `dataset` ("ck_plus", "unbc_mcmaster", "disfa", "bp4d", "manifest", "actor_study", "synthetic_faces") from
    `manual_dir` into `data_dir`, print a summary and write the per-file report CSV to `report_path`.

    options: see `builders.option_names(dataset)`. LayoutError (showing the expected tree) if `manual_dir` is not
    laid out for the dataset; PreprocessError if no face was kept. The report is written even when the build fails.
    """
    import tensorflow_datasets as tfds

    from aujax.data import builders

    builder = builders.make_builder(dataset, data_dir, **options)
    builder.check_manual_dir(manual_dir)
    builder.report_rows, builder.other_aus, builder.au_ids = [], {}, ()
    download_config = tfds.download.DownloadConfig(
            manual_dir=manual_dir, download_mode=tfds.download.GenerateMode.REUSE_CACHE_IF_EXISTS)
    try:
        builder.download_and_prepare(download_config=download_config)
    except AssertionError as error:  # tfds refuses to write a split with no examples
        failure = error
    else:
        failure = None
    finally:
        report = PreprocessReport(dataset, builder.builder_config.name, str(builder.data_path),
                                  tuple(builder.report_rows), dict(builder.other_aus), tuple(builder.au_ids))
        report.write_csv(report_path)
        print(report.summary())
        print(f"  report: {report_path}")
    if report.num_examples == 0:
        raise PreprocessError(f"{dataset}: no face kept from {manual_dir}; see {report_path} for why") from failure
    if failure is not None:
        raise failure
    return report


def load_records(dataset: str, data_dir: str, **options) -> records.FaceRecords:
    """The built `dataset` under `data_dir` as `FaceRecords` (name = dataset), sorted by source.

    Every record is read once for the labels, landmarks and ids; the images are read by random access when their rows
    are indexed (`records.LazyImages`), so they are not all held in memory. The first read shows its progress
    (`aujax.progress`).

    With options, the dataset built with those options; without, the default build, or the only one there is.
    `blendshapes` is float32 (n, 52) when the build stored them (landmarks="mediapipe"), None when it has no such
    feature (landmarks="dataset", synthetic_faces, or a build older than the feature).
    ValueError listing what is built if the requested one is not; ValueError naming the dataset, column and row if a
    value breaks the records contract (`records.validate`).
    """
    import tensorflow_datasets as tfds

    from aujax.data import builders

    path = _built_path(dataset, data_dir, options)
    builder = tfds.builder_from_directory(path)
    has_blendshapes = builders.BLENDSHAPE_FEATURE in builder.info.features
    au_ids = tuple((builder.info.metadata or {}).get(builders.AU_IDS_METADATA, facs.PAIN_AUS))  # older builds: pain
    source = builder.as_data_source(split="train")
    fields = ["landmarks", "labels", "intensity", "subject", "source"] + \
        ([builders.BLENDSHAPE_FEATURE] if has_blendshapes else [])
    examples = []
    with Progress(len(source), f"{dataset}: reading records", "records") as progress:
        for start in range(0, len(source), _READ_CHUNK):
            chunk = source.__getitems__(range(start, min(start + _READ_CHUNK, len(source))))
            examples += [{field: example[field] for field in fields} for example in chunk]  # images: read by row later
            progress.advance(len(chunk))
    order = np.argsort(_texts(examples, "source"), kind="stable")
    examples = [examples[i] for i in order]

    def read_images(rows: np.ndarray) -> np.ndarray:
        return _stack(source.__getitems__([int(i) for i in order[rows]]), "image", np.uint8)

    faces = records.FaceRecords(image=records.LazyImages(len(examples), read_images),
                                landmarks=_stack(examples, "landmarks", np.float32),
                                labels=_stack(examples, "labels", np.uint8),
                                intensity=_stack(examples, "intensity", np.float32),
                                subject=_texts(examples, "subject"), source=_texts(examples, "source"), name=dataset,
                                blendshapes=_stack(examples, builders.BLENDSHAPE_FEATURE, np.float32)
                                if has_blendshapes else None, au_ids=au_ids)
    return records.validate(faces, f"{dataset} ({path})")


def _stack(examples: list[dict], field: str, dtype) -> np.ndarray:
    return np.stack([np.asarray(example[field], dtype) for example in examples])


def _texts(examples: list[dict], field: str) -> np.ndarray:
    """A numpy str array of a text feature (TFDS returns bytes)."""
    return np.array([v.decode("utf-8") if isinstance(v, bytes) else str(v)
                     for v in (example[field] for example in examples)], dtype=str)


def _built_path(dataset: str, data_dir: str, options: dict) -> str:
    from aujax.data import builders

    built = builders.built_config_names(dataset, data_dir)
    wanted = builders.make_config(dataset, **options).name
    if wanted not in built:
        if options or len(built) != 1:
            raise ValueError(f"{dataset} ({wanted}) is not built under {data_dir}; built there: {built or 'none'}. "
                             f"Build it with --mode=preprocess --dataset={dataset}")
        (wanted,) = built
        logging.info("%s: using its only build under %s, %s", dataset, data_dir, wanted)
    return os.path.join(data_dir, builders.BUILDERS[dataset].name, wanted, builders.VERSION)
