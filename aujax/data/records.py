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

The image column need not be in memory: `load` memory-maps it, the synthetic generator can render rows when they are
asked for, and a built TFDS dataset reads them by random access (`LazyImages`). Indexing it (`image[rows]`) reads
just those rows, so a process of a multi-host run reads only the images its devices hold; `select` and `concatenate`
read none; `np.asarray(image)` reads all of them. Every other column is always in memory.
"""

import dataclasses
import os
import struct
import zipfile
from collections.abc import Callable, Iterator

import numpy as np

from aujax import facs
from aujax.data import blendshapes as blendshapes_lib

_ARRAY_FIELDS = ("image", "landmarks", "labels", "intensity", "subject", "source")
_IMAGE_SHAPE = (facs.IMAGE_SIZE, facs.IMAGE_SIZE, 3)


class LazyImages:
    """An image column whose rows are read when indexed: uint8 (n, 112, 112, 3) for `shape`, `len` and indexing.

    `read(rows)` gets a sorted int64 array of distinct row numbers and returns their images, uint8 (k, 112, 112, 3).
    Indexing with an int, a slice, an integer array or a boolean mask returns a numpy array (one image for an int).
    """

    dtype = np.dtype(np.uint8)
    ndim = 4

    def __init__(self, num_images: int, read: Callable[[np.ndarray], np.ndarray]):
        self.shape = (num_images,) + _IMAGE_SHAPE
        self._read = read

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index) -> np.ndarray:
        rows = np.arange(self.shape[0])[index]
        distinct, position = np.unique(np.atleast_1d(rows), return_inverse=True)
        images = self._read(distinct) if len(distinct) else np.zeros((0,) + _IMAGE_SHAPE, np.uint8)
        return images[position.reshape(rows.shape)]

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        images = self[:]
        return images if dtype is None else images.astype(dtype)


def _in_memory(image) -> bool:
    return type(image) is np.ndarray


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
        """The records at `index` (a boolean mask or an integer array); images not in memory are not read here."""
        arrays = self._present_arrays()
        source = arrays.pop("image")
        if _in_memory(source):
            image = source[index]
        else:
            rows = np.arange(len(source))[index]
            image = LazyImages(len(rows), lambda selected: source[rows[selected]])
        return FaceRecords(image=image, **{f: a[index] for f, a in arrays.items()}, name=self.name)

    def save(self, path: str) -> None:
        """Write to `path` (.npz, no pickle), atomically."""
        tmp = path + ".tmp.npz"
        np.savez(tmp, name=np.array(self.name), **self._present_arrays())
        os.replace(tmp, path)


def concatenate(parts: list[FaceRecords], name: str) -> FaceRecords:
    """One `FaceRecords` holding all of `parts` in order; blendshapes only if every part has them.

    Images that are not all in memory stay where they are: the result's image column reads from the parts.
    """
    fields = _ARRAY_FIELDS[1:] + (("blendshapes",) if all(p.blendshapes is not None for p in parts) else ())
    images = [p.image for p in parts]
    image = np.concatenate(images) if all(map(_in_memory, images)) else _concatenated_images(images)
    return FaceRecords(image=image, **{f: np.concatenate([getattr(p, f) for p in parts]) for f in fields}, name=name)


def _concatenated_images(images: list) -> LazyImages:
    ends = np.cumsum([len(i) for i in images])

    def read(rows: np.ndarray) -> np.ndarray:
        part = np.searchsorted(ends, rows, side="right")
        out = np.empty((len(rows),) + _IMAGE_SHAPE, np.uint8)
        for k in np.unique(part):
            mine = part == k
            out[mine] = images[k][rows[mine] - (ends[k] - len(images[k]))]
        return out

    return LazyImages(int(ends[-1]) if len(ends) else 0, read)


def load(path: str) -> FaceRecords:
    """Read records written by `FaceRecords.save`; a clear error names the file if it is not one.

    The images stay on disk, memory-mapped (read when indexed), where the file stores them uncompressed (as `save`
    does); a compressed file (`np.savez_compressed`) is read whole.
    """
    try:
        with np.load(path, allow_pickle=False) as data:
            blendshapes = data["blendshapes"] if "blendshapes" in data.files else None
            image = _mapped_member(path, "image")
            return FaceRecords(image=data["image"] if image is None else image,
                               **{f: data[f] for f in _ARRAY_FIELDS[1:]}, name=str(data["name"]),
                               blendshapes=blendshapes)
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as e:
        raise ValueError(f"{path}: not an aujax face-records file ({e})") from e


def _mapped_member(path: str, member: str) -> np.memmap | None:
    """The array `member` of the .npz at `path`, memory-mapped; None where it is stored compressed.

    An uncompressed .npz member is a .npy file at a fixed place in the zip archive: after the member's local header
    (30 bytes, then its name and extra field) come the .npy header and the raw array.
    """
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(f"{member}.npy")
    if info.compress_type != zipfile.ZIP_STORED:
        return None
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        header = f.read(30)
        if header[:4] != b"PK\x03\x04":
            raise ValueError(f"damaged zip entry {member}.npy")
        name_length, extra_length = struct.unpack("<HH", header[26:30])
        f.seek(info.header_offset + 30 + name_length + extra_length)
        version = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
            np.lib.format.read_array_header_2_0
        shape, fortran_order, dtype = read_header(f)
        offset = f.tell()
    if not shape or not np.prod(shape):
        return None  # np.memmap cannot map zero bytes
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran_order else "C")


def padded_batches(index, batch_size: int) -> Iterator[tuple[np.ndarray, int]]:
    """(batch, valid) for consecutive `batch_size` slices of the record indices `index`.

    The last batch is filled up by repeating its own entries, so that one compiled function serves every batch;
    `valid` counts its real entries (outputs past it are dropped by the caller).
    """
    index = np.asarray(index)
    for start in range(0, len(index), batch_size):
        chunk = index[start:start + batch_size]
        yield np.resize(chunk, batch_size), len(chunk)
