"""The explain computation in process: every role under every composite explained and scored, μ averaged over the
correctly predicted AUs only, and the heatmaps of the figures' examples."""

import jax
import numpy as np
import pytest

from aujax import explain, facs, lrp
from aujax import model as model_lib
from aujax.configs import default
from tests.support import TINY_WIDTHS, patch_records


def explain_config(**overrides):
    cfg = default.get_config().explain
    cfg.compare = ("gradient_x_input",)
    cfg.max_images, cfg.batch_size, cfg.examples_per_panel, cfg.grid_images = 6, 4, 2, 3
    cfg.metrics = ("mu", "pointing_game")  # the rank-based metrics would triple the compile time
    cfg.update(overrides)
    return cfg


MODEL = model_lib.create_model(TINY_WIDTHS)


@pytest.fixture(scope="module")
def variables():
    return model_lib.init_variables(MODEL, jax.random.key(1))


@pytest.fixture(scope="module")
def canonical(variables):
    return lrp.canonize(variables)


@pytest.fixture(scope="module")
def roles():
    return {"cv": patch_records(2, 4, seed=0, prefix="A", name="cv"),
            "cross": patch_records(1, 5, seed=1, prefix="U", name="cross")}


@pytest.fixture(scope="module")
def explained(canonical, roles):
    return explain.explain_roles(canonical, roles, explain_config(), threshold=0.5)


def test_every_role_is_explained_under_every_composite_on_its_first_images(explained, roles):
    assert explained.composites == ("paper", "gradient_x_input") and explained.roles == ("cv", "cross")
    assert set(explained.results) == {(c, r) for c in explained.composites for r in roles}
    for (composite, role), result in explained.results.items():
        n = min(len(roles[role]), 6)
        np.testing.assert_array_equal(result.records.source, roles[role].source[:n])
        assert result.probabilities.shape == result.predictions.shape == (n, len(facs.PAIN_AUS))
        assert set(result.scores.values) == set(result.summaries) == {"mu", "pointing_game"}
        assert all(v.shape == (n, len(facs.PAIN_AUS)) for v in result.scores.values.values())
    assert explained.main == {r: explained.results["paper", r] for r in roles}


def test_mu_is_the_mean_over_correctly_predicted_defined_aus_only(explained):
    for result in explained.results.values():
        np.testing.assert_array_equal(result.selected, (result.records.labels == 1) & result.predictions)
        mu, defined = result.scores.values["mu"], result.scores.defined["mu"]
        for j, summary in enumerate(result.summaries["mu"]):
            used = result.selected[:, j] & defined[:, j]
            assert summary.n == used.sum()
            if used.any():
                assert summary.mean == pytest.approx(float(np.mean(mu[used, j])), rel=1e-6)
            else:
                assert summary.mean is None


def test_a_model_that_predicts_nothing_has_no_mu(canonical, roles):
    nothing = explain.explain_roles(canonical, roles, explain_config(compare=()), threshold=1.0 - 1e-7)
    assert nothing.composites == ("paper",)
    for result in nothing.results.values():
        assert not result.selected.any()
        assert all(s.n == 0 and s.mean is None for s in result.summaries["mu"])


def test_the_probabilities_are_the_model_s_and_the_figures_heatmaps_those_of_the_main_composite(explained, variables,
                                                                                                 canonical):
    cv = explained.main["cv"]
    logits = MODEL.apply(variables, cv.records.image / np.float32(255), train=False)
    np.testing.assert_allclose(cv.probabilities, jax.nn.sigmoid(logits), rtol=0, atol=1e-5)
    heatmaps = explain.pixel_heatmaps_of(canonical, cv.records.image, explain_config())
    assert heatmaps.shape == (len(facs.PAIN_AUS), len(cv.records), facs.IMAGE_SIZE, facs.IMAGE_SIZE)
    grid = explain.heatmap_grid(canonical, cv.records, explain_config())
    assert grid.heatmaps.shape == (len(facs.PAIN_AUS), 3, facs.IMAGE_SIZE, facs.IMAGE_SIZE)
    assert len(grid.titles) == 3 and grid.au_ids == facs.PAIN_AUS
    np.testing.assert_allclose(grid.heatmaps, heatmaps[:, :3], rtol=1e-5, atol=1e-6)
    for example in explain.figure2_examples(canonical, cv, explain_config()):
        j = facs.au_column(example.au, cv.records.au_ids)
        assert 1 <= len(example.index) <= 4 and cv.selected[example.index, j].all()
        assert np.all(np.diff(example.mu) >= 0)
        np.testing.assert_allclose(example.heatmaps, heatmaps[j, example.index], rtol=1e-5, atol=1e-6)
