"""Each LRP rule against an independent dense-matrix implementation, on a small convolution and a dense layer.

The reference unfolds the convolution into an explicit weight matrix M (inputs x outputs) and applies each rule in
its contribution form z_jk = x_j M_jk (numpy, float64), the way the rules are written in the LRP literature.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aujax.lrp import rules

GAMMA, EPSILON, LOW, HIGH = 0.25, 0.1, -0.5, 1.5
ALL_RULES = {
        "z": rules.z_rule(),
        "epsilon": rules.epsilon_rule(EPSILON),
        "zplus": rules.zplus_rule(),
        "alpha2_beta1": rules.alpha_beta_rule(2.0, 1.0),
        "flat": rules.flat_rule(),
        "wsquare": rules.wsquare_rule(),
        "zbox": rules.zbox_rule(LOW, HIGH),
        "gamma": rules.gamma_rule(GAMMA),
}


def unfold_conv(kernel: np.ndarray, in_shape: tuple, strides: int, padding: int) -> np.ndarray:
    """The convolution (cross-correlation, zero padding) as a dense (h*w*c_in, h_out*w_out*c_out) matrix."""
    kh, kw, _, _ = kernel.shape
    h, w, _ = in_shape
    h_out, w_out = (h + 2 * padding - kh) // strides + 1, (w + 2 * padding - kw) // strides + 1
    matrix = np.zeros(in_shape + (h_out, w_out, kernel.shape[-1]))
    for i in range(h_out):
        for j in range(w_out):
            for a in range(kh):
                for b in range(kw):
                    y, x = i * strides - padding + a, j * strides - padding + b
                    if 0 <= y < h and 0 <= x < w:
                        matrix[y, x, :, i, j, :] = kernel[a, b]
    return matrix.reshape(h * w * in_shape[-1], -1)


def stabilized(d: np.ndarray, e: float) -> np.ndarray:
    return d + e * np.where(d >= 0, 1.0, -1.0)


def spread(numerators: np.ndarray, denominators: np.ndarray, relevance: np.ndarray, e: float) -> np.ndarray:
    """R_j = sum_k n_jk / stabilized(d_k) R_k."""
    return (numerators / stabilized(denominators, e) * relevance).sum(axis=1)


def reference_relevance(name: str, matrix: np.ndarray, connected: np.ndarray, x: np.ndarray, bias: np.ndarray,
                        relevance: np.ndarray, e: float = rules.STABILIZER) -> np.ndarray:
    """Textbook rules on an explicit weight matrix; `connected` marks which input feeds which output."""
    contributions = x[:, None] * matrix
    positive, negative = np.maximum(contributions, 0), np.minimum(contributions, 0)
    if name == "z":
        return spread(contributions, contributions.sum(0) + bias, relevance, rules.Z_RULE_STABILIZER)
    if name == "epsilon":
        return spread(contributions, contributions.sum(0) + bias, relevance, EPSILON)
    if name == "zplus":
        return spread(positive, positive.sum(0) + np.maximum(bias, 0), relevance, e)
    if name == "alpha2_beta1":
        return (2.0 * spread(positive, positive.sum(0) + np.maximum(bias, 0), relevance, e)
                - 1.0 * spread(negative, negative.sum(0) + np.minimum(bias, 0), relevance, e))
    if name == "flat":
        return spread(connected, connected.sum(0), relevance, e)
    if name == "wsquare":
        return spread(matrix ** 2, (matrix ** 2).sum(0), relevance, e)
    if name == "zbox":
        numerators = contributions - LOW * np.maximum(matrix, 0) - HIGH * np.minimum(matrix, 0)
        return spread(numerators, numerators.sum(0), relevance, e)
    if name == "gamma":
        z = contributions.sum(0) + bias
        favour_positive = contributions + GAMMA * positive
        favour_negative = contributions + GAMMA * negative
        return (spread(favour_positive, favour_positive.sum(0) + bias + GAMMA * np.maximum(bias, 0),
                       relevance * (z > 0), e)
                + spread(favour_negative, favour_negative.sum(0) + bias + GAMMA * np.minimum(bias, 0),
                         relevance * (z < 0), e))
    raise AssertionError(name)


def lrp_backward(spec, rule, x, kernel, bias, relevance_out):
    _, backward = jax.vjp(lambda v: rules.lrp_linear(spec, rule, v, kernel, bias), x)
    return backward(relevance_out)[0]


def conv_case(rng, nonnegative: bool):
    """A 3x3 stride-2 padded conv on a (1, 5, 6, 2) input with 3 output channels, and its dense matrix."""
    x = rng.normal(size=(1, 5, 6, 2))
    x = np.abs(x) if nonnegative else x
    kernel, bias = rng.normal(size=(3, 3, 2, 3)), np.array([0.3, -0.4, 0.2])  # biases of both signs
    spec = rules.conv_spec(2, 1, nonnegative_input=nonnegative)
    out_shape = rules.linear(spec, jnp.asarray(x), jnp.asarray(kernel)).shape
    relevance_out = rng.normal(size=out_shape)
    n_out = int(np.prod(out_shape))
    matrix = unfold_conv(kernel, x.shape[1:], 2, 1)
    connected = unfold_conv(np.ones_like(kernel), x.shape[1:], 2, 1)
    bias_flat = np.broadcast_to(bias, out_shape).reshape(n_out)
    return spec, x, kernel, bias, relevance_out, matrix, connected, bias_flat


def dense_case(rng, nonnegative: bool):
    x = rng.normal(size=(1, 6))
    x = np.abs(x) if nonnegative else x
    kernel, bias = rng.normal(size=(6, 4)), np.array([0.4, -0.3, 0.25, -0.5])
    relevance_out = rng.normal(size=(1, 4))
    return rules.dense_spec(nonnegative), x, kernel, bias, relevance_out, kernel, np.ones_like(kernel), bias


@pytest.mark.parametrize("layer", ["conv", "dense"])
@pytest.mark.parametrize("name", sorted(ALL_RULES))
def test_rule_matches_dense_matrix_reference(name, layer):
    rng = np.random.default_rng(sorted(ALL_RULES).index(name))
    spec, x, kernel, bias, relevance_out, matrix, connected, bias_flat = (conv_case if layer == "conv"
                                                                          else dense_case)(rng, False)
    # forward: the unfolded matrix is the layer
    np.testing.assert_allclose(
            np.asarray(rules.linear(spec, jnp.asarray(x), jnp.asarray(kernel), jnp.asarray(bias))).reshape(-1),
            x.reshape(-1) @ matrix + bias_flat, rtol=1e-5, atol=1e-5)
    expected = reference_relevance(name, matrix, connected, x.reshape(-1), bias_flat, relevance_out.reshape(-1))
    with jax.enable_x64(True):
        got64 = lrp_backward(spec, ALL_RULES[name], *(jnp.asarray(a, jnp.float64) for a in
                                                     (x, kernel, bias, relevance_out)))
    np.testing.assert_allclose(np.asarray(got64).reshape(-1), expected, rtol=1e-9, atol=1e-12)
    got32 = lrp_backward(spec, ALL_RULES[name], *(jnp.asarray(a, jnp.float32) for a in
                                                 (x, kernel, bias, relevance_out)))
    assert got32.dtype == jnp.float32
    if layer == "conv":  # jit versus eager (the dense layer runs the same code)
        jitted = jax.jit(lrp_backward, static_argnums=(0, 1))(
                spec, ALL_RULES[name], *(jnp.asarray(a, jnp.float32) for a in (x, kernel, bias, relevance_out)))
        np.testing.assert_allclose(jitted, got32, rtol=1e-5, atol=1e-6 * float(np.abs(got32).max()))
    np.testing.assert_allclose(np.asarray(got32).reshape(-1), expected, rtol=1e-4,
                               atol=1e-4 * np.abs(expected).max())


@pytest.mark.parametrize("name", sorted(ALL_RULES))
def test_nonnegative_fast_path_equals_general_path(name):
    rng = np.random.default_rng(7)
    spec, x, kernel, bias, relevance_out, *_ = conv_case(rng, nonnegative=True)
    args = [jnp.asarray(a, jnp.float32) for a in (x, kernel, bias, relevance_out)]
    fast = lrp_backward(spec, ALL_RULES[name], *args)
    general = lrp_backward(spec._replace(nonnegative_input=False), ALL_RULES[name], *args)
    np.testing.assert_allclose(fast, general, rtol=1e-6, atol=1e-6)
    dense_spec, *dense_args = dense_case(rng, nonnegative=True)[:5]
    np.testing.assert_allclose(lrp_backward(dense_spec, ALL_RULES[name], *dense_args),
                               lrp_backward(dense_spec._replace(nonnegative_input=False), ALL_RULES[name],
                                            *dense_args), rtol=1e-6, atol=1e-6)


def test_forward_is_the_ordinary_layer_and_rules_jit_and_vmap():
    rng = np.random.default_rng(3)
    spec, x, kernel, bias, _, *_ = conv_case(rng, False)
    xs = jnp.asarray(rng.normal(size=(4,) + x.shape), jnp.float32)
    kernel, bias = jnp.asarray(kernel, jnp.float32), jnp.asarray(bias, jnp.float32)
    rule = ALL_RULES["alpha2_beta1"]
    np.testing.assert_array_equal(rules.lrp_linear(spec, rule, xs[0], kernel, bias),
                                  rules.linear(spec, xs[0], kernel, bias))
    relevance = jnp.asarray(rng.normal(size=(4,) + rules.linear(spec, xs[0], kernel).shape), jnp.float32)
    one = lambda v, r: lrp_backward(spec, rule, v, kernel, bias, r)  # noqa: E731
    batched = jax.jit(jax.vmap(one))(xs, relevance)
    for i in range(4):
        np.testing.assert_allclose(batched[i], one(xs[i], relevance[i]), rtol=1e-5, atol=1e-6)


def test_zero_denominators_drop_relevance_without_nan():
    """A unit that never fires under z+ (all weights <= 0, bias <= 0): its relevance is dropped, nothing is NaN."""
    spec = rules.dense_spec(nonnegative_input=True)
    x = jnp.array([[0.5, 1.0, 0.0]])
    kernel = jnp.array([[1.0, -1.0], [2.0, -0.5], [0.3, -2.0]])
    bias = jnp.array([0.0, -0.2])
    relevance_out = jnp.array([[1.5, -0.7]])
    for rule in ALL_RULES.values():
        relevance_in = lrp_backward(spec, rule, x, kernel, bias, relevance_out)
        assert np.isfinite(np.asarray(relevance_in)).all(), rule
    zplus = ALL_RULES["zplus"]
    relevance_in = lrp_backward(spec, zplus, x, kernel, bias, relevance_out)
    dropped = rules.dropped_relevance(spec, zplus, x, kernel, bias, relevance_out)
    np.testing.assert_allclose(dropped, [[0.0, -0.7]])
    np.testing.assert_allclose(relevance_in.sum(), 1.5, rtol=1e-5)  # unit 0 conserved, unit 1 dropped
    # all-zero input: every z+ denominator is zero
    zero_in = lrp_backward(spec, zplus, jnp.zeros_like(x), kernel, bias, relevance_out)
    np.testing.assert_array_equal(zero_in, 0.0)


def test_sum_pool_and_relu_rules_eager_and_jitted():
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=(2, 3, 3, 4)), rng.normal(size=(2, 3, 3, 4))
    relevance = rng.normal(size=(2, 3, 3, 4))
    stabilizer = 1e-6
    expected_a = a * relevance / stabilized(a + b, stabilizer)
    expected_b = b * relevance / stabilized(a + b, stabilizer)
    x = rng.uniform(0, 1, (2, 3, 4, 5))
    pooled_relevance = rng.normal(size=(2, 5))
    expected_pool = x / 12 * (pooled_relevance / stabilized(x.mean(axis=(1, 2)), stabilizer))[:, None, None, :]

    def backward(a, b, relevance, x, pooled_relevance):
        _, add_backward = jax.vjp(lambda u, v: rules.lrp_add(stabilizer, u, v), a, b)
        _, pool_backward = jax.vjp(lambda v: rules.lrp_global_mean_pool(stabilizer, v), x)
        _, relu_backward = jax.vjp(rules.relu_pass, a)
        return add_backward(relevance) + pool_backward(pooled_relevance) + relu_backward(relevance)

    args = [jnp.asarray(v, jnp.float32) for v in (a, b, relevance, x, pooled_relevance)]
    for got in (backward(*args), jax.jit(backward)(*args)):
        for value, reference in zip(got, (expected_a, expected_b, expected_pool, relevance)):
            np.testing.assert_allclose(value, reference, rtol=1e-4, atol=1e-5 * np.abs(reference).max())
    np.testing.assert_array_equal(rules.relu_pass(args[0]), jax.nn.relu(args[0]))
    np.testing.assert_allclose(rules.lrp_global_mean_pool(stabilizer, args[3]), x.mean(axis=(1, 2)), rtol=1e-6)


def test_stabilize_keeps_sign_and_moves_zero_up():
    d = jnp.array([-2.0, 0.0, 3.0])
    np.testing.assert_allclose(rules.stabilize(d, 0.5), [-2.5, 0.5, 3.5])


@pytest.mark.parametrize("make_rule, message", [
        (lambda: rules.alpha_beta_rule(2.0, 0.5), "alpha - beta = 1"),
        (lambda: rules.epsilon_rule(0.0), "epsilon"),
        (lambda: rules.zbox_rule(1.0, 0.0), "below"),
        (lambda: rules.gamma_rule(-1.0), "gamma"),
        (lambda: rules.Rule("sideways"), "sideways"),
])
def test_invalid_rule_parameters_are_named(make_rule, message):
    with pytest.raises(ValueError, match=message):
        make_rule()
