"""The explain step's checks of a trained aujax model (`config.analysis`): faithfulness (`faithfulness`) on the first
`faithfulness_images` explained images of each role in `faithfulness_roles`, and the cascading-randomisation sanity
check (`sanity`) on the first `sanity_images` of `sanity_role`, under every composite of `config.explain` (or those in
`config.analysis.composites`). Both use the model through its public API only (`model.apply` for logits,
`lrp.canonize` + `lrp.make_explain_fn` for heatmaps, with `config.explain`'s batch-norm treatment and dtype, and
`model.init` for the random parameters), so they work for every architecture of `aujax.model`. Values, no files: `report.write_model_checks` writes them.
"""

import dataclasses
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from aujax import distributed, facs, lrp
from aujax.analysis import faithfulness as faithfulness_lib
from aujax.analysis import sanity as sanity_lib


@dataclasses.dataclass
class ModelChecks:
    """faithfulness: {role: `faithfulness.Faithfulness`}; sanity: {role: `sanity.SanityResult`}; threshold: the
    sanity flag's; seconds: {"faithfulness" | "sanity": wall time}."""

    faithfulness: dict
    sanity: dict
    threshold: float
    seconds: dict


def composites_of(config) -> tuple[str, ...]:
    """`config.analysis.composites`, or every composite of `config.explain` (the main one first) where it is empty."""
    chosen = tuple(config.analysis.composites)
    return chosen or (config.explain.composite, *[c for c in config.explain.compare if c != config.explain.composite])


def check_settings(config, roles) -> None:
    """ValueError in one line for `config.analysis` settings that cannot work; `roles` the protocol's role names."""
    cfg = config.analysis
    for role in (*cfg.faithfulness_roles, *([cfg.sanity_role] if cfg.sanity_images else [])):
        if role not in roles:
            raise ValueError(f"--config.analysis: role {role!r} is not one of the roles {', '.join(roles)}")
    for composite in composites_of(config):
        if composite not in lrp.COMPOSITES:
            raise ValueError(f"--config.analysis.composites: {composite!r} is not one of {', '.join(lrp.COMPOSITES)}")
    if cfg.fill not in faithfulness_lib.FILLS:
        raise ValueError(f"--config.analysis.fill={cfg.fill!r}: expected one of {', '.join(faithfulness_lib.FILLS)}")
    if cfg.flip_steps < 1 or not 0.0 < cfg.flip_max_fraction <= 1.0:
        raise ValueError(f"--config.analysis.flip_steps={cfg.flip_steps}, flip_max_fraction={cfg.flip_max_fraction}: "
                         "expected at least 1 step and a fraction in (0, 1]")
    if cfg.sanity_granularity not in sanity_lib.GRANULARITIES:
        raise ValueError(f"--config.analysis.sanity_granularity={cfg.sanity_granularity!r}: expected one of "
                         f"{', '.join(sanity_lib.GRANULARITIES)}")
    if cfg.batch_size < 1 or cfg.faithfulness_images < 0 or cfg.sanity_images < 0:
        raise ValueError(f"--config.analysis: batch_size={cfg.batch_size} must be positive, faithfulness_images="
                         f"{cfg.faithfulness_images} and sanity_images={cfg.sanity_images} at least 0")


def _apply(net, variables, images):
    return net.apply(variables, images, train=False)


def run_checks(net, variables: dict, explained, config) -> ModelChecks:
    """Faithfulness and the sanity check of the model `net` (a Flax module of `aujax.model`) with `variables`, on the
    images `explained` (an `explain.Explained`) explained; every process runs it (the batches span all devices)."""
    cfg = config.analysis
    composites = composites_of(config)
    mesh = distributed.make_mesh()
    batch_size = -(-cfg.batch_size // mesh.size) * mesh.size  # a multiple of the devices
    epsilon = config.explain.epsilon
    key = jax.random.PRNGKey(config.seed)

    def explainer(model_variables):  # as the explain stage explains (its batch-norm treatment and dtype)
        canonical = lrp.canonize(model_variables, net.graph, batch_norm=config.explain.batch_norm)
        fns = [lrp.make_explain_fn(c, epsilon, config.explain.dtype) for c in composites]
        return lambda images: jnp.stack([lrp.pixel_heatmaps(fn(canonical, images)[1]) for fn in fns])

    started = time.perf_counter()
    faithfulness, heatmaps, logits_fn = {}, explainer(variables), functools.partial(_apply, net)
    for role in cfg.faithfulness_roles if cfg.faithfulness_images else ():
        result = explained.main[role]
        count = min(len(result.records), cfg.faithfulness_images)
        records = result.records.select(np.arange(count))
        faithfulness[role] = faithfulness_lib.faithfulness(
                logits_fn, variables, heatmaps, records, result.selected[:count],
                records.au_ids, steps=cfg.flip_steps, max_fraction=cfg.flip_max_fraction, fill=cfg.fill,
                batch_size=batch_size, mesh=mesh, key=jax.random.fold_in(key, 1), composites=composites)
    middle = time.perf_counter()
    sanity = {}
    if cfg.sanity_images:
        records = explained.main[cfg.sanity_role].records
        records = records.select(np.arange(min(len(records), cfg.sanity_images)))
        init = lambda k: dict(net.init(k, jnp.zeros((1, facs.IMAGE_SIZE, facs.IMAGE_SIZE, 3)), train=False))
        sanity[cfg.sanity_role] = sanity_lib.randomisation_check(
                explainer, variables, init, records, records.au_ids, granularity=cfg.sanity_granularity,
                batch_size=batch_size, mesh=mesh, key=jax.random.fold_in(key, 2), composites=composites)
    seconds = {"faithfulness": middle - started, "sanity": time.perf_counter() - middle}
    logging.info("faithfulness %.0f s, sanity check %.0f s", seconds["faithfulness"], seconds["sanity"])
    return ModelChecks(faithfulness, sanity, cfg.sanity_threshold, seconds)
