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
when present). Reading records (`load`; `preprocess.load_records` for built datasets) refuses, with a ValueError
naming the file, the column and the first bad row, what breaks this contract (`validate`): no records, labels other
than 0/1, intensities outside [0, 5] or not finite, landmarks or blendshapes that are not finite; `load` also checks
every member's shape and dtype from its .npy header before it reads or maps any (no object arrays).

The image column need not be in memory: `load` memory-maps it, the synthetic generator can render rows when they are
asked for, and a built TFDS dataset reads them by random access (`LazyImages`). Indexing it (`image[rows]`) reads
just those rows, so a process of a multi-host run reads only the images its devices hold; `select` and `concatenate`
read none; `np.asarray(image)` reads all of them. Every other column is always in memory.
"""

import contextlib
import dataclasses
import os
import struct
import zipfile
from collections.abc import Callable, Iterator

import numpy as np

from aujax import facs, files
from aujax.data import blendshapes as blendshapes_lib
from aujax.data.layouts import MAX_INTENSITY

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


def _columns(n: int, with_blendshapes: bool) -> dict[str, tuple[tuple[int, ...], np.dtype | None]]:
    """field -> (shape, dtype) of the columns of n records; dtype None for a numpy str column."""
    columns = {
            "image": ((n,) + _IMAGE_SHAPE, np.dtype(np.uint8)),
            "landmarks": ((n, facs.NUM_LANDMARKS, 2), np.dtype(np.float32)),
            "labels": ((n, facs.NUM_AUS), np.dtype(np.uint8)),
            "intensity": ((n, facs.NUM_AUS), np.dtype(np.float32)),
            "subject": ((n,), None),
            "source": ((n,), None),
    }
    if with_blendshapes:
        columns["blendshapes"] = ((n, blendshapes_lib.NUM_BLENDSHAPES), np.dtype(np.float32))
    return columns


def _check_column(where: str, field: str, shape: tuple[int, ...], dtype: np.dtype,
                  column: tuple[tuple[int, ...], np.dtype | None]) -> None:
    """ValueError naming `where` and `field` unless `shape` and `dtype` are the `column`'s (shape, dtype)."""
    expected_shape, expected_dtype = column
    if shape != expected_shape:
        raise ValueError(f"{where}: {field} has shape {shape}, expected {expected_shape}")
    if expected_dtype is not None and dtype != expected_dtype:
        raise ValueError(f"{where}: {field} has dtype {dtype}, expected {expected_dtype}")
    if expected_dtype is None and dtype.kind != "U":
        raise ValueError(f"{where}: {field} must be a numpy str array, got {dtype}")


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
        for field, column in _columns(len(self.image), self.blendshapes is not None).items():
            value = getattr(self, field)
            _check_column(f"dataset {self.name!r}", field, value.shape, value.dtype, column)

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
        """Write to `path` (.npz, uncompressed, no pickle), atomically; every image is read."""
        arrays = self._present_arrays()
        files.write_npz(path, name=np.array(self.name), **{**arrays, "image": np.asarray(arrays["image"])})


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


def validate(faces: FaceRecords, where: str) -> FaceRecords:
    """`faces`, or ValueError naming `where` (the file or dataset read), the column and the first bad row (0-based).

    Refused: no records; a label other than 0 or 1; an intensity outside [0, MAX_INTENSITY] or not finite;
    landmarks or blendshapes that are not finite. The image column is not read (its uint8 dtype holds no bad value).
    """
    if not len(faces):
        raise ValueError(f"{where}: holds no records")
    rules = [("labels", faces.labels > 1, "labels must be 0 or 1"),
             ("intensity", ~((faces.intensity >= 0) & (faces.intensity <= MAX_INTENSITY)),
              f"intensities must be finite and in [0, {MAX_INTENSITY:g}]"),
             ("landmarks", ~np.isfinite(faces.landmarks), "landmarks must be finite")]
    if faces.blendshapes is not None:
        rules.append(("blendshapes", ~np.isfinite(faces.blendshapes), "blendshapes must be finite"))
    for field, bad, rule in rules:
        if bad.any():
            row, *entry = (int(i) for i in np.argwhere(bad)[0])
            value = getattr(faces, field)[(row, *entry)]
            raise ValueError(f"{where}: {field}: row {row} (source {faces.source[row]}) holds {value} "
                             f"({_ENTRY_NAMES[field](*entry)}); {rule}")
    return faces


_ENTRY_NAMES = {  # what the entries after the row of a column are, for error messages
        "labels": lambda au: f"AU{facs.AU_IDS[au]}",
        "intensity": lambda au: f"AU{facs.AU_IDS[au]}",
        "landmarks": lambda point, axis: f"point {point} {'xy'[axis]}",
        "blendshapes": lambda score: blendshapes_lib.BLENDSHAPE_NAMES[score],
}


def load(path: str, where: str | None = None) -> FaceRecords:
    """Read records written by `FaceRecords.save`, checked by `validate`; errors name the file as `where` says
    (default `path`, e.g. "--cv_data=cv.npz").

    Every member's shape and dtype is checked from its .npy header before any array is read or mapped (object
    arrays are refused there). The images stay on disk, memory-mapped (read when indexed), where the file stores
    them uncompressed (as `save` does); a compressed file (`np.savez_compressed`) is read whole.
    """
    where = where or path
    if os.path.isfile(path) and not os.path.getsize(path):
        raise ValueError(f"{where}: empty file (0 bytes), not an aujax face-records file")
    with _not_records_file(where):
        members = _npy_members(path)
    _check_members(members, where)
    with _not_records_file(where):
        faces = _read_members(path, members)
    return validate(faces, where)


@dataclasses.dataclass(frozen=True)
class _Member:
    """An .npz member's array as its .npy header describes it; `offset`: where the raw array starts in the .npz
    file, None where the member is compressed."""
    shape: tuple[int, ...]
    dtype: np.dtype
    fortran_order: bool
    offset: int | None


@contextlib.contextmanager
def _not_records_file(where: str):
    """Turns the errors of reading a damaged or foreign file into one ValueError naming `where`."""
    try:
        yield
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise ValueError(f"{where}: not an aujax face-records file ({e})") from e


def _npy_members(path: str) -> dict[str, _Member]:
    """member name (without '.npy') -> `_Member` of every .npy in the .npz at `path`, from the headers alone.

    An uncompressed member is a .npy file at a fixed place in the zip archive: after the member's local header
    (30 bytes, then its name and extra field) come the .npy header and the raw array.
    """
    members = {}
    with zipfile.ZipFile(path) as archive, open(path, "rb") as raw:
        for info in archive.infolist():
            if not info.filename.endswith(".npy"):
                continue
            with archive.open(info) as f:
                version = np.lib.format.read_magic(f)
                read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                    np.lib.format.read_array_header_2_0
                shape, fortran_order, dtype = read_header(f)
                header_length = f.tell()
            stored = info.compress_type == zipfile.ZIP_STORED
            offset = _member_data_offset(raw, info) + header_length if stored else None
            members[info.filename[:-len(".npy")]] = _Member(shape, dtype, fortran_order, offset)
    return members


def _member_data_offset(raw, info: zipfile.ZipInfo) -> int:
    """Where the data of the zip member `info` starts in the open archive file `raw`."""
    raw.seek(info.header_offset)
    header = raw.read(30)
    if header[:4] != b"PK\x03\x04":
        raise ValueError(f"damaged zip entry {info.filename}")
    name_length, extra_length = struct.unpack("<HH", header[26:30])
    return info.header_offset + 30 + name_length + extra_length


def _check_members(members: dict[str, _Member], where: str) -> None:
    """ValueError naming `where` and the member unless `members` hold records' columns of the right shapes and
    dtypes (and the name); other members are ignored."""
    missing = [m for m in ("name",) + _ARRAY_FIELDS if m not in members]
    if missing:
        raise ValueError(f"{where}: not an aujax face-records file (no {', '.join(missing)} member)")
    image_shape = members["image"].shape
    columns = {"name": ((), None), **_columns(image_shape[0] if image_shape else 0, "blendshapes" in members)}
    for field, column in columns.items():
        _check_column(where, field, members[field].shape, members[field].dtype, column)


def _read_members(path: str, members: dict[str, _Member]) -> FaceRecords:
    """The records in the .npz at `path`, whose `members` `_check_members` accepted; the image column
    memory-mapped where it is stored uncompressed."""
    image = members["image"]
    mapped = image.offset is not None and np.prod(image.shape) > 0  # np.memmap cannot map zero bytes
    fields = ("name", "image") + _ARRAY_FIELDS[1:] + (("blendshapes",) if "blendshapes" in members else ())
    with zipfile.ZipFile(path) as archive:
        arrays = {f: _read_array(archive, f) for f in fields if not (f == "image" and mapped)}
    if mapped:
        arrays["image"] = np.memmap(path, dtype=image.dtype, mode="r", offset=image.offset, shape=image.shape,
                                    order="F" if image.fortran_order else "C")
    name = str(arrays.pop("name"))
    return FaceRecords(**arrays, name=name)


def _read_array(archive: zipfile.ZipFile, member: str) -> np.ndarray:
    with archive.open(f"{member}.npy") as f:
        return np.lib.format.read_array(f, allow_pickle=False)


def padded_batches(index, batch_size: int) -> Iterator[tuple[np.ndarray, int]]:
    """(batch, valid) for consecutive `batch_size` slices of the record indices `index`.

    The last batch is filled up by repeating its own entries, so that one compiled function serves every batch;
    `valid` counts its real entries (outputs past it are dropped by the caller).
    """
    index = np.asarray(index)
    for start in range(0, len(index), batch_size):
        chunk = index[start:start + batch_size]
        yield np.resize(chunk, batch_size), len(chunk)
