"""Face records: the one in-memory form every dataset takes on its way to training.

A `FaceRecords` holds n faces as numpy arrays:

  image        uint8   (n, 112, 112, 3)  RGB crop
  landmarks    float32 (n, 68, 2)        (x, y) pixels in the crop, Multi-PIE / iBUG-300W order, 0-based ids
  labels       uint8   (n, A)            binary AU labels, columns in `au_ids` order
  intensity    float32 (n, A)            AU intensities (0 where unknown), columns in `au_ids` order
  subject      str     (n,)              subject id
  source       str     (n,)              file (or generator key) the face came from
  name         str                       the dataset's name
  au_ids       tuple[int, ...]           the A AUs the labels and intensity columns hold, in column order (FACS ids)
  blendshapes  float32 (n, 52) or None   MediaPipe's 52 blendshape scores in [0, 1], `blendshapes.BLENDSHAPE_NAMES`
                                         order; None where MediaPipe did not run (synthetic faces, datasets built
                                         with landmarks="dataset")

AU sets. A dataset's records keep every AU it codes (`au_ids`, e.g. all of CK+'s); a run picks its AU set
(`config.aus`) with `with_aus(aus)`, which returns records whose columns are exactly `aus` in that order and refuses,
naming the dataset and the AU, an AU the dataset does not code. Records written before `au_ids` existed (directories
without "au_ids" in records.json, .npz files without an `au_ids` member) hold the 8 pain AUs, `facs.PAIN_AUS`; so does
a `FaceRecords` built without `au_ids`.

On disk (`FaceRecords.save`, `load`, without pickle) records are a directory, made for reading by row:

  <path>/records.json      {"format": "aujax-face-records", "version": 1, "name": ..., "count": n, "au_ids": [...]}
  <path>/<column>.npy      one .npy file per column above (string columns as numpy unicode arrays), blendshapes.npy
                           only when present

or, for a path ending in `.npz`, one uncompressed `.npz` file of the same columns, a `name` and an `au_ids` member (the
format before directories; still written and read, but read whole). Reading records (`load`;
`preprocess.load_records` for built datasets) refuses, with a ValueError naming the file, the column and the first
bad row, what breaks this contract (`validate`): no records, labels other than 0/1, intensities outside [0, 5] or not
finite, landmarks or blendshapes that are not finite, au_ids that are not distinct positive integers or do not match
the label columns; `load` also checks every column's shape and dtype from its .npy header before it reads or maps any
(no object arrays), and names a directory that is not records as such.

The image column need not be in memory: `load` memory-maps it from a records directory, the synthetic generator can
render rows when they are asked for, and a built TFDS dataset reads them by random access (`LazyImages`). Indexing it
(`image[rows]`) reads just those rows, so a process of a multi-host run reads only the images its devices hold;
`select` and `concatenate` read none; `np.asarray(image)` reads all of them. Every other column is always in memory.
"""

import contextlib
import dataclasses
import json
import os
import shutil
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


def _columns(n: int, with_blendshapes: bool, num_aus: int) -> dict[str, tuple[tuple[int, ...], np.dtype | None]]:
    """field -> (shape, dtype) of the columns of n records of `num_aus` AUs; dtype None for a numpy str column."""
    columns = {
            "image": ((n,) + _IMAGE_SHAPE, np.dtype(np.uint8)),
            "landmarks": ((n, facs.NUM_LANDMARKS, 2), np.dtype(np.float32)),
            "labels": ((n, num_aus), np.dtype(np.uint8)),
            "intensity": ((n, num_aus), np.dtype(np.float32)),
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
    au_ids: tuple[int, ...] = facs.PAIN_AUS

    def __post_init__(self):
        object.__setattr__(self, "au_ids", _check_au_ids(self.au_ids, f"dataset {self.name!r}"))
        for field, column in _columns(len(self.image), self.blendshapes is not None, len(self.au_ids)).items():
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
        return FaceRecords(image=image, **{f: a[index] for f, a in arrays.items()}, name=self.name,
                           au_ids=self.au_ids)

    def with_aus(self, aus) -> "FaceRecords":
        """These records with the label and intensity columns of exactly the AUs `aus` (a sequence of FACS ids), in
        that order; ValueError naming the dataset and the AU for an AU it does not code. Images are not read."""
        aus = tuple(int(au) for au in aus)
        missing = [au for au in aus if au not in self.au_ids]
        if missing:
            raise ValueError(f"dataset {self.name!r} does not code AU{missing[0]} (it codes AUs "
                             f"{', '.join(map(str, self.au_ids))})")
        if aus == self.au_ids:
            return self
        columns = [self.au_ids.index(au) for au in aus]
        return dataclasses.replace(self, labels=self.labels[:, columns], intensity=self.intensity[:, columns],
                                   au_ids=aus)

    def save(self, path: str) -> None:
        """Write to `path`, atomically, without pickle; every image is read.

        A path ending in `.npz` gets one uncompressed .npz file; any other path a records directory (one .npy file
        per column and `records.json`, read by row when loaded), written as `<path>.tmp/` and renamed to `path`.
        An existing directory at `path` is replaced only if it is a records directory (ValueError otherwise).
        """
        arrays = self._present_arrays()
        if path.endswith(".npz"):
            files.write_npz(path, name=np.array(self.name), au_ids=np.array(self.au_ids, np.int64),
                            **{**arrays, "image": np.asarray(arrays["image"])})
        else:
            _save_directory(path, arrays, self.name, self.au_ids)


def _check_au_ids(au_ids, where: str) -> tuple[int, ...]:
    """`au_ids` as a tuple of ints, or ValueError naming `where` unless they are distinct positive integers."""
    values = tuple(au_ids)
    if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0 for v in values) \
            or len(set(values)) != len(values):
        raise ValueError(f"{where}: au_ids must be distinct positive AU numbers, got {list(values)}")
    return tuple(int(v) for v in values)


def concatenate(parts: list[FaceRecords], name: str) -> FaceRecords:
    """One `FaceRecords` holding all of `parts` in order; blendshapes only if every part has them. The parts must
    hold the same AUs in the same order (ValueError naming the first that does not; `with_aus` makes them so).

    Images that are not all in memory stay where they are: the result's image column reads from the parts.
    """
    for part in parts[1:]:
        if part.au_ids != parts[0].au_ids:
            raise ValueError(f"cannot join {part.name!r} (AUs {', '.join(map(str, part.au_ids))}) to "
                             f"{parts[0].name!r} (AUs {', '.join(map(str, parts[0].au_ids))}): select one AU set "
                             "with with_aus first")
    fields = _ARRAY_FIELDS[1:] + (("blendshapes",) if all(p.blendshapes is not None for p in parts) else ())
    images = [p.image for p in parts]
    image = np.concatenate(images) if all(map(_in_memory, images)) else _concatenated_images(images)
    return FaceRecords(image=image, **{f: np.concatenate([getattr(p, f) for p in parts]) for f in fields}, name=name,
                       au_ids=parts[0].au_ids if parts else facs.PAIN_AUS)


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


_FORMAT, _VERSION = "aujax-face-records", 1  # a records directory's format and version, in `_META_FILE`
_META_FILE = "records.json"
_WRITE_ROWS = 1024  # rows of a column written at a time: a column of lazy images is read in these pieces


def _save_directory(path: str, arrays: dict, name: str, au_ids: tuple[int, ...]) -> None:
    """Write `arrays` (column -> array of n rows; the image column may be `LazyImages`), `name` and `au_ids` as a
    records directory at `path`: `<column>.npy` files and `_META_FILE`, in `<path>.tmp/` renamed to `path` once
    complete."""
    path = os.path.normpath(path)
    if os.path.exists(path) and not _is_records_directory(path):
        raise ValueError(f"{path}: exists and is not an aujax face-records directory; not replacing it")
    tmp = path + ".tmp"
    _remove_partial(tmp)
    needed = sum(int(np.prod(a.shape)) * a.dtype.itemsize for a in arrays.values())
    with files.disk_full_named(path, needed):
        try:
            os.makedirs(tmp)
            for field, column in arrays.items():
                _write_npy(os.path.join(tmp, f"{field}.npy"), column)
            meta = {"format": _FORMAT, "version": _VERSION, "name": name, "count": len(arrays["image"]),
                    "au_ids": list(au_ids)}
            with open(os.path.join(tmp, _META_FILE), "w") as f:
                json.dump(meta, f, indent=2)
            _rename_directory(tmp, path)
        except BaseException:  # KeyboardInterrupt too: no partial directory is left behind
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def _write_npy(file: str, column) -> None:
    """Write `column` (an array, or `LazyImages`) as a C-order .npy file, `_WRITE_ROWS` rows at a time."""
    header = {"descr": np.lib.format.dtype_to_descr(column.dtype), "fortran_order": False, "shape": column.shape}
    with open(file, "wb") as f:
        np.lib.format.write_array_header_2_0(f, header)
        for start in range(0, len(column), _WRITE_ROWS):
            f.write(np.ascontiguousarray(column[start:start + _WRITE_ROWS]).tobytes())


def _is_records_directory(path: str) -> bool:
    """Whether `path` is a records directory that `load` reads (its columns unchecked)."""
    try:
        _read_meta(path, path)
    except ValueError:
        return False
    return True


def _remove_partial(path: str) -> None:
    """Remove `path`, what an interrupted `_save_directory` left; ValueError where it holds anything else."""
    if not os.path.lexists(path):
        return
    ours = {_META_FILE} | {f"{f}.npy" for f in _ARRAY_FIELDS + ("blendshapes",)}
    if not os.path.isdir(path) or os.path.islink(path) or not set(os.listdir(path)) <= ours:
        raise ValueError(f"{path}: exists and is not a partly written aujax face-records directory; remove it")
    shutil.rmtree(path)


def _rename_directory(tmp: str, path: str) -> None:
    """Move the complete directory `tmp` to `path`, replacing the records directory there (moved to `<path>.old`
    first, removed last)."""
    if not os.path.exists(path):
        os.rename(tmp, path)
        return
    old = path + ".old"
    _remove_partial(old)
    os.rename(path, old)
    try:
        os.rename(tmp, path)
    except BaseException:
        os.rename(old, path)
        raise
    shutil.rmtree(old)


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
                             f"({_ENTRY_NAMES[field](faces, *entry)}); {rule}")
    return faces


_ENTRY_NAMES = {  # what the entries after the row of a column are, for error messages
        "labels": lambda faces, column: f"AU{faces.au_ids[column]}",
        "intensity": lambda faces, column: f"AU{faces.au_ids[column]}",
        "landmarks": lambda faces, point, axis: f"point {point} {'xy'[axis]}",
        "blendshapes": lambda faces, score: blendshapes_lib.BLENDSHAPE_NAMES[score],
}


def load(path: str, where: str | None = None) -> FaceRecords:
    """Read records written by `FaceRecords.save`, a records directory or a .npz file, checked by `validate`; errors
    name the records as `where` says (default `path`, e.g. "--cv_data=cv.records").

    Every column's shape and dtype is checked from its .npy header before any array is read or mapped (object
    arrays are refused there). A directory's image column stays on disk, memory-mapped (read when indexed); a .npz
    file is read whole, images included (it is not memory-mapped).
    """
    where = where or path
    faces = _load_directory(path, where) if os.path.isdir(path) else _load_npz(path, where)
    return validate(faces, where)


@contextlib.contextmanager
def _not_records(where: str, kind: str = "file", part: str | None = None):
    """Turns the errors of reading a damaged or foreign file or directory (`kind`) into one ValueError naming
    `where` and the `part` of it read (a file in a directory)."""
    try:
        yield
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise ValueError(f"{where}: not an aujax face-records {kind} ({f'{part}: ' if part else ''}{e})") from e


def _npy_header(f) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) of the .npy array whose file `f` is open at its start, from its header alone."""
    version = np.lib.format.read_magic(f)
    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, _, dtype = read_header(f)
    return shape, dtype


def _check_headers(headers: dict[str, tuple[tuple[int, ...], np.dtype]], where: str, kind: str, num_aus: int,
                   count: int | None = None, extra: dict | None = None) -> None:
    """ValueError naming `where` and the column unless `headers` (column -> (shape, dtype)) hold records' columns
    for `count` records (None: as many as the image column holds) of `num_aus` AUs and the `extra` columns
    (column -> (shape, dtype)); `blendshapes` is optional, other columns are ignored."""
    extra = extra or {}
    missing = [f for f in (*extra, *_ARRAY_FIELDS) if f not in headers]
    if missing:
        what = f"{', '.join(missing)} member" if kind == "file" else ", ".join(f"{f}.npy" for f in missing)
        raise ValueError(f"{where}: not an aujax face-records {kind} (no {what})")
    if count is None:
        count = headers["image"][0][0] if headers["image"][0] else 0
    for field, column in {**extra, **_columns(count, "blendshapes" in headers, num_aus)}.items():
        _check_column(where, field, *headers[field], column)


def _present_fields(headers) -> tuple[str, ...]:
    return _ARRAY_FIELDS + (("blendshapes",) if "blendshapes" in headers else ())


def _load_npz(path: str, where: str) -> FaceRecords:
    """The records in the .npz file at `path` (`save`'s single-file format), read whole."""
    if os.path.isfile(path) and not os.path.getsize(path):
        raise ValueError(f"{where}: empty file (0 bytes), not an aujax face-records file")
    with _not_records(where):
        npz = np.load(path, allow_pickle=False)
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise ValueError(f"{where}: not an aujax face-records file (one .npy array, not a .npz archive)")
    with npz:
        with _not_records(where):
            headers = {}
            for member in npz.files:
                with npz.zip.open(f"{member}.npy") as f:
                    headers[member] = _npy_header(f)
        au_ids = facs.PAIN_AUS
        if "au_ids" in headers:
            shape, dtype = headers["au_ids"]
            if len(shape) != 1 or dtype.kind not in "iu":
                raise ValueError(f"{where}: au_ids has shape {shape} and dtype {dtype}, expected a 1-D integer array")
            with _not_records(where):
                au_ids = _check_au_ids(npz["au_ids"].tolist(), where)
        _check_headers(headers, where, "file", len(au_ids), extra={"name": ((), None)})
        with _not_records(where):
            arrays = {f: npz[f] for f in _present_fields(headers)}
            name = str(npz["name"])
    return FaceRecords(**arrays, name=name, au_ids=au_ids)


def _load_directory(path: str, where: str) -> FaceRecords:
    """The records in the records directory at `path`; the image column memory-mapped."""
    meta = _read_meta(path, where)
    headers = {}
    for field in _ARRAY_FIELDS + ("blendshapes",):
        file = os.path.join(path, f"{field}.npy")
        if os.path.isfile(file):
            with _not_records(where, "directory", f"{field}.npy"), open(file, "rb") as f:
                headers[field] = _npy_header(f)
    au_ids = _check_au_ids(meta.get("au_ids", facs.PAIN_AUS), f"{where}: {_META_FILE}")
    _check_headers(headers, where, "directory", len(au_ids), count=meta["count"])
    arrays = {}
    for field in _present_fields(headers):
        mapped = field == "image" and meta["count"] > 0  # a memory map cannot map zero bytes
        with _not_records(where, "directory", f"{field}.npy"):
            arrays[field] = np.load(os.path.join(path, f"{field}.npy"), mmap_mode="r" if mapped else None,
                                    allow_pickle=False)
    return FaceRecords(**arrays, name=meta["name"], au_ids=au_ids)


def _read_meta(path: str, where: str) -> dict:
    """The records directory's `_META_FILE` ({"format", "version", "name", "count"} and, written since AU sets
    exist, "au_ids"), or ValueError naming `where` and what is wrong."""
    meta_path = os.path.join(path, _META_FILE)
    if not os.path.isfile(meta_path):
        raise ValueError(f"{where}: not an aujax face-records directory (no {_META_FILE})")
    with _not_records(where, "directory", _META_FILE), open(meta_path) as f:
        meta = json.load(f)
    if not (isinstance(meta, dict) and meta.get("format") == _FORMAT):
        raise ValueError(f"{where}: not an aujax face-records directory ({_META_FILE} does not say "
                         f"format {_FORMAT!r})")
    if meta.get("version") != _VERSION:
        raise ValueError(f"{where}: records format version {meta.get('version')!r}; this aujax reads version "
                         f"{_VERSION}")
    if not (isinstance(meta.get("name"), str) and type(meta.get("count")) is int and meta["count"] >= 0
            and isinstance(meta.get("au_ids", []), list)):
        raise ValueError(f"{where}: not an aujax face-records directory ({_META_FILE} needs a str name, an int "
                         "count and, if any, a list of au_ids)")
    return meta


def padded_batches(index, batch_size: int) -> Iterator[tuple[np.ndarray, int]]:
    """(batch, valid) for consecutive `batch_size` slices of the record indices `index`.

    The last batch is filled up by repeating its own entries, so that one compiled function serves every batch;
    `valid` counts its real entries (outputs past it are dropped by the caller).
    """
    index = np.asarray(index)
    for start in range(0, len(index), batch_size):
        chunk = index[start:start + batch_size]
        yield np.resize(chunk, batch_size), len(chunk)
