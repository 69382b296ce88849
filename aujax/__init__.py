"""aujax: train facial Action Unit detectors and verify their decisions with LRP.

`import aujax` stays light (no JAX, no TensorFlow Datasets); `import aujax.data.builders` registers the face
datasets' TFDS builders (ck_plus, unbc_mcmaster, manifest, actor_study, synthetic_faces) for `tfds.builder`.
"""
