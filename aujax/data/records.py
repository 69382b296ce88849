"""Face records: the one in-memory form every dataset takes on its way to training.

A `FaceRecords` holds n faces as numpy arrays:

  image        uint8   (n, 112, 112, 3)  RGB crop
  landmarks    float32 (n, 68, 2)        (x, y) pixels in the crop, Multi-PIE / iBUG-300W order, 0-based ids
  labels       uint8   (n, 8)            binary AU labels in `facs.AU_IDS` order
  intensity    float32 (n, 8)            AU intensities (0 where unknown)
  subject      str     (n,)              subject id
  source       str     (n,)              file (or generator key) the face came from
  name         str                       the dataset's name
  blendshapes  float32 (n, 52) or None   MediaPipe's 52 blendshape scores in [0, 1], `blendshapes.BLENDSHAPE_NAMES`
                                         order; None where MediaPipe did not run (synthetic faces, datasets built
                                         with landmarks="dataset")

Saved and loaded as `.npz` without pickle (string columns are numpy unicode arrays; `blendshapes` is stored only
when present).
"""

import dataclasses
import os
from collections.abc import Iterator

import numpy as np

from aujax import facs
from aujax.data import blendshapes as blendshapes_lib

_ARRAY_FIELDS = ("image", "landmarks", "labels", "intensity", "subject", "source")


@dataclasses.dataclass(frozen=True)
class FaceRecords:
    image: np.ndarray
    landmarks: np.ndarray
    labels: np.ndarray
    intensity: np.ndarray
    subject: np.ndarray
    source: np.ndarray
    name: str
    blendshapes: np.ndarray | None = None

    def __post_init__(self):
        n = len(self.image)
        expected = {
            "image": ((n, facs.IMAGE_SIZE, facs.IMAGE_SIZE, 3), np.uint8),
            "landmarks": ((n, facs.NUM_LANDMARKS, 2), np.float32),
            "labels": ((n, facs.NUM_AUS), np.uint8),
            "intensity": ((n, facs.NUM_AUS), np.float32),
            "subject": ((n,), None),
            "source": ((n,), None),
        }
        if self.blendshapes is not None:
            expected["blendshapes"] = ((n, blendshapes_lib.NUM_BLENDSHAPES), np.float32)
        for field, (shape, dtype) in expected.items():
            value = getattr(self, field)
            if value.shape != shape:
                raise ValueError(f"dataset {self.name!r}: {field} has shape {value.shape}, expected {shape}")
            if dtype is not None and value.dtype != dtype:
                raise ValueError(f"dataset {self.name!r}: {field} has dtype {value.dtype}, expected {np.dtype(dtype)}")
            if dtype is None and value.dtype.kind != "U":
                raise ValueError(f"dataset {self.name!r}: {field} must be a numpy str array, got {value.dtype}")

    def __len__(self) -> int:
        return len(self.image)

    @property
    def subjects(self) -> list[str]:
        """Distinct subject ids in order of first appearance."""
        _, first = np.unique(self.subject, return_index=True)
        return [str(self.subject[i]) for i in sorted(first)]

    def _present_arrays(self) -> dict[str, np.ndarray]:
        """The array fields, with `blendshapes` only when present."""
        arrays = {f: getattr(self, f) for f in _ARRAY_FIELDS}
        if self.blendshapes is not None:
            arrays["blendshapes"] = self.blendshapes
        return arrays

    def select(self, index) -> "FaceRecords":
        """The records at `index` (a boolean mask or an integer array)."""
        return FaceRecords(**{f: a[index] for f, a in self._present_arrays().items()}, name=self.name)

    def save(self, path: str) -> None:
        """Write to `path` (.npz, no pickle), atomically."""
        tmp = path + ".tmp.npz"
        np.savez(tmp, name=np.array(self.name), **self._present_arrays())
        os.replace(tmp, path)


def concatenate(parts: list[FaceRecords], name: str) -> FaceRecords:
    """One `FaceRecords` holding all of `parts` in order; blendshapes only if every part has them."""
    fields = _ARRAY_FIELDS + (("blendshapes",) if all(p.blendshapes is not None for p in parts) else ())
    return FaceRecords(**{f: np.concatenate([getattr(p, f) for p in parts]) for f in fields}, name=name)


def load(path: str) -> FaceRecords:
    """Read records written by `FaceRecords.save`; a clear error names the file if it is not one."""
    try:
        with np.load(path, allow_pickle=False) as data:
            blendshapes = data["blendshapes"] if "blendshapes" in data.files else None
            return FaceRecords(**{f: data[f] for f in _ARRAY_FIELDS}, name=str(data["name"]),
                               blendshapes=blendshapes)
    except (OSError, KeyError, ValueError) as e:
        raise ValueError(f"{path}: not an aujax face-records file ({e})") from e


def padded_batches(index, batch_size: int) -> Iterator[tuple[np.ndarray, int]]:
    """(batch, valid) for consecutive `batch_size` slices of the record indices `index`.

    The last batch is filled up by repeating its own entries, so that one compiled function serves every batch;
    `valid` counts its real entries (outputs past it are dropped by the caller).
    """
    index = np.asarray(index)
    for start in range(0, len(index), batch_size):
        chunk = index[start:start + batch_size]
        yield np.resize(chunk, batch_size), len(chunk)
