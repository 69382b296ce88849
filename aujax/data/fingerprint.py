"""Data fingerprints: what a run records of each role's records, so that a later mode can tell other data.

`fingerprint(records)` is a JSON-able dict:

  count        int   the number of records
  name         str   the dataset's name
  sources, subjects, labels, intensity, landmarks, blendshapes
               str   16 hex digits of a SHA-256 of the column (blendshapes: None where the records have none)
  images       str   16 hex digits of a SHA-256 of `SAMPLE_SIZE` rows spread evenly over the image column (all rows
                     where there are fewer), and of their row numbers

Every column but the images is hashed whole (they are always in memory). The images are sampled, never read whole:
synthetic roles render them on demand and built datasets read them by random access, so a changed image outside the
sample goes unnoticed (its labels, landmarks or sources rarely stay the same). `differences(saved, current)` names
the fields in which two fingerprints differ.
"""

import hashlib
import json

import numpy as np

from aujax.data import records as records_lib

SAMPLE_SIZE = 32
FIELDS = ("count", "name", "sources", "subjects", "labels", "intensity", "landmarks", "blendshapes", "images")


def fingerprint(records: records_lib.FaceRecords) -> dict:
    """The fingerprint of `records` (the module docstring lists its fields); reads `SAMPLE_SIZE` images at most."""
    rows = sample_rows(len(records))
    return {
        "count": len(records), "name": records.name,
        "sources": _digest(_strings(records.source)), "subjects": _digest(_strings(records.subject)),
        "labels": _digest(_array(records.labels)), "intensity": _digest(_array(records.intensity)),
        "landmarks": _digest(_array(records.landmarks)),
        "blendshapes": None if records.blendshapes is None else _digest(_array(records.blendshapes)),
        "images": _digest(_array(rows) + _array(records.image[rows])),
    }


def sample_rows(num_records: int) -> np.ndarray:
    """(min(num_records, SAMPLE_SIZE),) int64: distinct row numbers spread evenly from the first to the last."""
    return np.unique(np.linspace(0, num_records - 1, min(num_records, SAMPLE_SIZE)).round().astype(np.int64))


def differences(saved: dict, current: dict) -> list[str]:
    """The fields of `FIELDS` in which the fingerprints `saved` and `current` differ, in that order."""
    return [field for field in FIELDS if saved.get(field) != current.get(field)]


def _strings(column: np.ndarray) -> bytes:
    """A numpy str column as bytes that do not depend on its dtype's width."""
    return json.dumps(column.tolist()).encode()


def _array(array: np.ndarray) -> bytes:
    array = np.ascontiguousarray(array)
    return f"{array.dtype.str}{array.shape}".encode() + array.tobytes()


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]
