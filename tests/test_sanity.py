"""Sanity check: cascading randomisation, the rank correlation and SSIM against scipy and scikit-image, and
gradient x input of a fully randomised model uncorrelated with the original's."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats
from skimage.metrics import structural_similarity

from aujax import distributed, facs, model
from aujax.analysis import sanity
from aujax.data.records import FaceRecords
from tests.support import TINY_WIDTHS

SIZE = facs.IMAGE_SIZE
RESNET_MODULES = ["stem_conv", "stem_bn", *(f"stage{s}_block{b}" for s in range(1, 5) for b in (1, 2)), "head"]


def test_levels_run_from_the_head_down_and_end_with_every_module():
    levels = sanity.cascade_levels(RESNET_MODULES, "stage")
    assert [label for label, _ in levels] == ["head", "stage4", "stage3", "stage2", "stage1", "stem"]
    assert levels[0][1] == ("head",)
    assert levels[1][1] == ("stage4_block1", "stage4_block2", "head")
    assert sorted(levels[-1][1]) == sorted(RESNET_MODULES)
    layers = sanity.cascade_levels(RESNET_MODULES, "layer")
    assert [label for label, _ in layers] == RESNET_MODULES[::-1]
    with pytest.raises(ValueError, match="sanity_granularity='conv'"):
        sanity.cascade_levels(RESNET_MODULES, "conv")


def test_randomised_takes_the_named_modules_of_every_collection_from_the_fresh_init():
    variables = {"params": {"a": 1, "b": 2, "c": 3}, "batch_stats": {"b": 20}}
    fresh = {"params": {"a": -1, "b": -2, "c": -3}, "batch_stats": {"b": -20}}
    assert sanity.randomised(variables, fresh, ("b", "c")) == {"params": {"a": 1, "b": -2, "c": -3},
                                                                "batch_stats": {"b": -20}}


def test_spearman_with_ties_equals_scipy():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 5, 500).astype(np.float32)  # many ties
    b = (a + rng.normal(size=500)).astype(np.float32)
    value, defined = sanity.spearman(jnp.asarray(a), jnp.asarray(b))
    np.testing.assert_allclose(value, stats.spearmanr(a, b).statistic, rtol=1e-5)
    assert defined
    _, constant = sanity.spearman(jnp.zeros(10), jnp.arange(10.0))
    assert not constant


@pytest.mark.parametrize("noise", [0.05, 1.0])
def test_ssim_equals_scikit_image(noise):
    rng = np.random.default_rng(1)
    x = rng.uniform(size=(40, 48)).astype(np.float32)
    y = np.clip(x + noise * rng.normal(size=x.shape), 0, 1).astype(np.float32)
    np.testing.assert_allclose(sanity.ssim(jnp.asarray(x), jnp.asarray(y)),
                               structural_similarity(x, y, data_range=1.0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(sanity.ssim(jnp.asarray(x), jnp.asarray(x)), 1.0, rtol=1e-6)


def test_similarity_of_a_heatmap_with_itself_up_to_sign_and_scale_and_undefined_pairs():
    rng = np.random.default_rng(2)
    h = rng.normal(size=(2, 3, 16, 16)).astype(np.float32)
    h[1, 2] = 0.0
    out = jax.device_get(sanity.similarity(sanity.prepare(jnp.asarray(h)), sanity.prepare(jnp.asarray(-2 * h))))
    assert out["spearman"].shape == (2, 3)
    np.testing.assert_allclose(out["spearman"][out["spearman_defined"]], 1.0, rtol=1e-5)
    np.testing.assert_allclose(out["ssim"][out["ssim_defined"]], 1.0, rtol=1e-5)
    assert out["spearman_defined"].sum() == 5 and not out["ssim_defined"][1, 2]


def _gradient_x_input(net):
    """An explainer: variables -> (images (n, H, W, 3) -> (1, A, n, H, W)), gradient x input of every logit summed
    over colour."""
    @jax.jit
    def heatmaps(variables, images):
        logits, backward = jax.vjp(lambda x: net.apply(variables, x, train=False), images)
        seeds = jnp.eye(logits.shape[1], dtype=logits.dtype)[:, None, :].repeat(logits.shape[0], axis=1)
        (gradients,) = jax.vmap(backward)(seeds)
        return (gradients * images).sum(axis=-1)[None]

    return lambda variables: lambda images: heatmaps(variables, images)


def test_fully_randomised_gradient_x_input_is_uncorrelated_with_the_original():
    aus = (4, 6)
    net = model.create_model(TINY_WIDTHS, num_outputs=len(aus))
    init = lambda key: model.init_variables(net, key)
    variables = init(jax.random.PRNGKey(0))
    n = 2
    rng = np.random.default_rng(3)
    # Grey faces with texture: the input factor of gradient x input alone would correlate two heatmaps on a
    # high-contrast image, so the test asks whether the gradients (the model's part) still agree.
    images = np.clip(128 + rng.normal(0, 12, (n, SIZE, SIZE, 3)), 0, 255).astype(np.uint8)
    labels = np.zeros((n, len(aus)), np.uint8)
    records = FaceRecords(images, np.zeros((n, 68, 2), np.float32), labels, labels.astype(np.float32),
                          np.array(["s"] * n), np.array([f"f:{i}" for i in range(n)]), "faces", au_ids=aus)
    explainer = _gradient_x_input(net)
    result = sanity.randomisation_check(
            explainer, variables, init, records, aus, granularity="stage",
            batch_size=2 * jax.device_count(), mesh=distributed.make_mesh(), key=jax.random.PRNGKey(7),
            composites=("gradient_x_input",))
    assert result.levels == ("head", "stage4", "stage3", "stage2", "stage1", "stem")  # in the model's order
    spearman = result.values["spearman"]["gradient_x_input"]  # (K, n, A)
    assert spearman.shape == (6, n, len(aus))
    assert result.defined["spearman"]["gradient_x_input"].all()
    assert np.all(np.abs(spearman[-1]) < 0.2)
    curve = result.curve("spearman", "gradient_x_input")
    assert curve[0] > curve[-1]  # the head alone changes less than everything
    assert result.flagged(0.5) == []
    # The trained model's own heatmaps as "randomised" ones: flagged, similarity 1.
    same = sanity.randomisation_check(explainer, variables, lambda key: variables, records, aus,
                                      granularity="stage", batch_size=2 * jax.device_count(),
                                      mesh=distributed.make_mesh(), key=jax.random.PRNGKey(7),
                                      composites=("gradient_x_input",))
    np.testing.assert_allclose(same.curve("spearman", "gradient_x_input"), 1.0, rtol=1e-5)
    assert same.flagged(0.5) == ["gradient_x_input"]
    rows = sanity.table_rows(result)
    assert len(rows) == 6 and rows[0]["method"] == "faces gradient_x_input, randomised down to head"
    assert set(rows[0]["scores"]) == {"AU4", "AU6"}
