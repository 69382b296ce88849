"""Role datasets: turn a dataset spec from the config into `FaceRecords`.

A spec is one of
  "synthetic"            the embedded generator, sized by `config.synthetic.<role>`
  "<name>"               a dataset built with `--mode=preprocess` (ck_plus, unbc_mcmaster, actor_study, manifest,
                         synthetic builder), read from `config.data.data_dir`
  "path/to/records"      a records directory saved with `FaceRecords.save` (images read by row), or a `.npz` records
                         file (read whole)

A spec that is neither "synthetic" nor a built dataset's name is a path when it ends in `.npz` or `.records`, holds a
path separator, or exists; other specs are unknown datasets.
"""

import os

from aujax import facs
from aujax.data import records

ROLES = ("train", "cv", "cross")
_SUBJECT_PREFIX = {"train": "C", "cv": "A", "cross": "U"}  # CK+, Actor Study, UNBC stand-ins
BUILT_DATASETS = ("ck_plus", "unbc_mcmaster", "actor_study", "manifest", "synthetic_faces")


def load_role(role: str, spec: str, config) -> records.FaceRecords:
    """The dataset playing `role` ('train', 'cv' or 'cross') in the protocol; records read from a file or a built
    dataset are checked by `records.validate` (a ValueError naming the file, or the flag, says what is wrong)."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; roles are {ROLES}")
    if spec == "synthetic":
        return synthetic_role(role, config.synthetic, facs.resolve_aus(config.aus))
    if spec in BUILT_DATASETS:
        from aujax.data import preprocess  # tensorflow-datasets only where a built dataset is asked for
        return preprocess.load_records(spec, os.path.expanduser(config.data.data_dir))
    if _is_path(spec):
        if not os.path.exists(spec):
            raise ValueError(f"--{role}_data={spec}: no such file or directory")
        return records.load(spec, where=f"--{role}_data={spec}")
    raise ValueError(f"--{role}_data={spec!r}: unknown dataset; use 'synthetic', one of {BUILT_DATASETS} "
                     "(built with --mode=preprocess) or the path of a records directory or .npz records file")


def _is_path(spec: str) -> bool:
    """Whether the role spec `spec` names records on disk rather than a dataset."""
    return spec.endswith((".npz", ".records")) or os.sep in spec or os.path.exists(spec)


def synthetic_role(role: str, synthetic_config, aus: tuple[int, ...]) -> records.FaceRecords:
    """The synthetic stand-in for `role`, faces of the AU set `aus`; the spurious cue, when asked for, goes into the
    training roles only.

    Its images are rendered when first read, so a process renders only those its devices hold (and the ones it
    explains)."""
    from aujax.data import synthetic

    sizes = synthetic_config[role]
    cue_au = synthetic_config.spurious_cue_au if role in ("train", "cv") else None
    return synthetic.generate(
        num_subjects=sizes.num_subjects, images_per_subject=sizes.images_per_subject, domain=sizes.domain,
        seed=synthetic_config.seed * 1000 + ROLES.index(role), subject_prefix=_SUBJECT_PREFIX[role],
        spurious_cue_au=cue_au or None, spurious_cue_probability=synthetic_config.spurious_cue_probability,
        name=f"synthetic_{role}", images_on_demand=True, aus=aus)
