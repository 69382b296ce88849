"""Mixed precision (config.model.dtype, config.explain.dtype): bfloat16 computation with float32 state, bfloat16
LRP heatmaps close to float32 and conserving, unknown dtypes refused, the float32 default untouched."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aujax import distributed, lrp, model, pipeline, train
from aujax.lrp import explainer
from tests.support import TINY_WIDTHS, _cfg, config_with, patch_records, randomized_variables, sample_images

BF16_ROUNDOFF = 2.0 ** -8  # unit roundoff of bfloat16 (8 significand bits)


def _conv_dtypes(jaxpr) -> set:
    """{(lhs dtype, rhs dtype)} of every convolution in a closed jaxpr, nested jaxprs (custom VJPs, jit) included."""
    found = set()

    def visit(inner):
        for eqn in inner.eqns:
            if eqn.primitive.name == "conv_general_dilated":
                found.add(tuple(str(v.aval.dtype) for v in eqn.invars))
            for param in eqn.params.values():
                for sub in param if isinstance(param, (tuple, list)) else (param,):
                    if isinstance(sub, jax.extend.core.ClosedJaxpr):
                        visit(sub.jaxpr)
                    elif isinstance(sub, jax.extend.core.Jaxpr):
                        visit(sub)

    visit(jaxpr.jaxpr)
    return found


def test_bfloat16_model_computes_its_convolutions_in_bfloat16_and_returns_float32_logits():
    images = jnp.zeros((2, 112, 112, 3), jnp.float32)
    for dtype, expected in (("bfloat16", {("bfloat16", "bfloat16")}), ("float32", {("float32", "float32")})):
        network = model.create_model(TINY_WIDTHS, dtype=dtype)
        variables = jax.eval_shape(lambda network=network: model.init_variables(network, jax.random.key(0)))
        assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(variables)} == {jnp.dtype("float32")}
        for mode in (False, True):
            forward = jax.make_jaxpr(lambda v, x, network=network, mode=mode: network.apply(
                    v, x, train=mode, mutable=["batch_stats"] if mode else False))(variables, images)
            assert _conv_dtypes(forward) == expected, (dtype, mode)
            logits = forward.out_avals[0]
            assert logits.dtype == jnp.float32 and logits.shape == (2, 8)


def test_bfloat16_training_keeps_parameters_statistics_and_optimizer_state_float32():
    cfg = _cfg(batch_size=8)
    mesh = distributed.make_mesh()
    trainer = train.Trainer(model.create_model(TINY_WIDTHS, dtype="bfloat16"), cfg, mesh)
    records = patch_records(2, 8, seed=5, prefix="A")
    data = train.put_on_devices(records, mesh)
    pos_weight = jnp.asarray(train.positive_weights(records.labels, cfg.pos_weight_max))
    # the state of `train.init_state`, from variables drawn in numpy (flax's initialisers take 17 s to compile here)
    variables = randomized_variables(widths=TINY_WIDTHS)
    state = {"params": variables["params"], "batch_stats": variables["batch_stats"],
             "opt_state": trainer.optimizer.init(variables["params"]), "step": jnp.zeros((), jnp.int32),
             "epoch_loss_sum": jnp.zeros((), jnp.float32)}
    initial = jax.tree_util.tree_map(np.asarray, state["params"])
    losses = []
    for batch in train.epoch_order(np.arange(len(records)), 0, 0, 0, cfg.batch_size)[:2].tolist() * 2:
        state, loss = trainer.train_step(state, data.images, data.labels, pos_weight, train.put_index(batch, mesh))
        losses.append(float(loss))
    for part in ("params", "batch_stats", "opt_state", "epoch_loss_sum"):
        dtypes = {leaf.dtype for leaf in jax.tree_util.tree_leaves(state[part])}
        assert dtypes == {jnp.dtype("float32")}, (part, dtypes)
    assert int(state["step"]) == 4 and np.all(np.isfinite(losses)), losses
    moved = [np.abs(np.asarray(a) - b).max() for a, b in zip(jax.tree_util.tree_leaves(state["params"]),
                                                             jax.tree_util.tree_leaves(initial))]
    assert min(moved) > 0  # every parameter was trained (no update lost to bfloat16 rounding)


def test_bfloat16_lrp_runs_its_convolutions_in_bfloat16_and_the_default_stays_float32():
    canonical = lrp.canonize(randomized_variables(2))
    images = sample_images(2, seed=4)
    for dtype in ("bfloat16", "float32"):
        traced = jax.make_jaxpr(lambda c, x, dtype=dtype: explainer.explain_canonical(
                c, x, lrp.get_composite("paper"), dtype=dtype))(canonical, images)
        assert _conv_dtypes(traced) == {(dtype, dtype)}  # forward and backward (the transposed products)
        assert [a.dtype for a in traced.out_avals] == [jnp.float32, jnp.float32]


@pytest.fixture(scope="module")
def heatmaps():
    """paper heatmaps of a small ResNet-18 in float32 'highest' and bfloat16, and the bias-free all_z ones in
    bfloat16 with their logits: (A, n, h, w) float64 each."""
    canonical, images = lrp.canonize(randomized_variables(2)), sample_images(4, seed=4)
    with jax.default_matmul_precision("highest"):
        reference = lrp.make_explain_fn("paper")(canonical, images)[1]
    bfloat16 = lrp.make_explain_fn("paper", dtype="bfloat16")(canonical, images)[1]
    logits, all_z = lrp.make_explain_fn("all_z", dtype="bfloat16")(lrp.without_biases(canonical), images)
    as_pixels = lambda relevance: np.asarray(lrp.pixel_heatmaps(relevance), np.float64)  # noqa: E731
    return as_pixels(reference), as_pixels(bfloat16), np.asarray(logits, np.float64).T, as_pixels(all_z)


@pytest.mark.slow  # compiles three LRP functions of a ResNet-18: about 40 s on 2 cores
def test_bfloat16_heatmaps_are_close_to_float32_and_all_z_conserves(heatmaps):
    reference, bfloat16, logits, all_z = heatmaps
    # Per AU, relative L2 to float32 'highest'. Each of the 21 linear layers rounds its two operands (forward) and its
    # quotients and transposed products (backward) to bfloat16, relative <= 2^-8 each; z+ denominators of weakly
    # active units magnify that (as TF32 does: docs/benchmarks.md). Measured 0.02-0.07 on this model; heatmaps of an
    # unrelated explanation (a lost term, another image) are >= 1 apart.
    flat = lambda h: h.reshape(h.shape[0], -1)  # noqa: E731
    relative = np.linalg.norm(flat(bfloat16 - reference), axis=1) / np.linalg.norm(flat(reference), axis=1)
    print(f"\nbfloat16 vs float32 'highest', paper, relative L2 per AU: {np.array2string(relative, precision=3)}")
    assert relative.max() < 0.25
    correlation = [np.corrcoef(a.ravel(), b.ravel())[0, 1] for a, b in zip(bfloat16, reference)]
    assert min(correlation) > 0.97
    # Conservation of bias-free LRP-0: the denominators and quotients are float32 and the input kept rounded as the
    # products saw it, so a layer loses only the roundings of its quotients and products to bfloat16 (<= 2^-8 of
    # the relevance passing it, each); 2 x 21 independent roundings add up in quadrature to sqrt(42) 2^-8 of the
    # absolute relevance (0.025). Measured 2e-4; with the biases left in, which absorb relevance,
    # the same ratio is 3e-2.
    totals, absolute = all_z.sum(axis=(2, 3)), np.abs(all_z).sum(axis=(2, 3))
    error = np.abs(totals - logits) / absolute
    print(f"all_z bfloat16: |sum R - logit| / sum |R| up to {error.max():.1e}")
    assert error.max() < np.sqrt(42) * BF16_ROUNDOFF


def test_an_unknown_dtype_is_refused_naming_the_flag_and_the_choices():
    with pytest.raises(ValueError, match=r"^--config\.model\.dtype='float16': expected one of float32, bfloat16$"):
        model.create_model(TINY_WIDTHS, dtype="float16")
    with pytest.raises(ValueError, match=r"^--config\.model\.dtype='fp8': expected one of float32, bfloat16$"):
        pipeline.check_settings(config_with(**{"model.dtype": "fp8"}))
    with pytest.raises(ValueError, match=r"^--config\.explain\.dtype='half': expected one of float32, bfloat16$"):
        pipeline.check_settings(config_with(**{"explain.dtype": "half"}))
    with pytest.raises(ValueError, match=r"--config\.explain\.dtype='float16'"):
        lrp.make_explain_fn("paper", dtype="float16")
