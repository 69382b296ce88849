"""Small file helpers shared by the stages: results are written atomically, so a crash never leaves half a file."""

import json
import os


def write_json(path: str, value) -> None:
    """Write `value` as indented JSON to `path` (parents created), atomically."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(value, f, indent=2)
    os.replace(tmp, path)


def read_json(path: str, default=None):
    """The JSON value in `path`, or `default` when the file does not exist."""
    if not os.path.isfile(path):
        return default
    with open(path) as f:
        return json.load(f)
