"""aujax: train facial Action Unit detectors and verify their decisions with LRP.

`import aujax` stays light (no JAX, no TensorFlow Datasets) and still makes `tfds.builder("ck_plus", ...)` and
`tfds build --imports=aujax ck_plus` find the face datasets' builders (ck_plus, unbc_mcmaster, manifest, actor_study,
synthetic_faces, ...): they are registered by `aujax.data.builders`, which is imported here when TensorFlow Datasets
is already loaded, or else right after TensorFlow Datasets is first imported (by `_RegisterBuildersOnTfdsImport`).
"""

import importlib.abc
import importlib.util
import sys

_TFDS = "tensorflow_datasets"


def _register_builders() -> None:
    import aujax.data.builders  # noqa: F401  (registration happens as its classes are defined)


class _RegisterBuildersOnTfdsImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: when `tensorflow_datasets` is about to be imported, wraps its loader so that aujax's
    builders are registered once the package has been executed; then leaves `sys.meta_path`."""

    def find_spec(self, name, path=None, target=None):
        if name != _TFDS:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_register(module):
            exec_module(module)
            _register_builders()

        spec.loader.exec_module = exec_then_register
        return spec


if _TFDS in sys.modules:
    _register_builders()
elif not any(isinstance(finder, _RegisterBuildersOnTfdsImport) for finder in sys.meta_path):
    sys.meta_path.insert(0, _RegisterBuildersOnTfdsImport())
