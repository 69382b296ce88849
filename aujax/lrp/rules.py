"""LRP rules as layer functions whose custom backward pass redistributes relevance ("gradient trick").

Every function here computes the ordinary layer in its forward pass. Its `jax.custom_vjp` backward pass reads the
incoming cotangent as the relevance `R_k` of the layer's outputs and returns the relevance `R_j` of its inputs, so
`jax.vjp` of a network built from these layers, seeded with the output relevance, yields the LRP explanation.

A linear layer (convolution or dense) `z_k = sum_j x_j w_jk + b_k` is explained by a `Rule`. Each rule is a sum of
groups; a group has a coefficient c, an output mask m_k and terms (input modifier, parameter modifier, sign s):

    d_k  = sum_terms s * (sum_j in(x)_j mod(w)_jk [+ mod(b)_k])           computed once, in the forward pass
    R_j += sum_terms s * in(x)_j * sum_k mod(w)_jk * c * m_k * R_k / stabilize(d_k)

The transposed products `sum_k w_jk (...)_k` are computed with `jax.linear_transpose` of the layer itself (a
transposed convolution), never with a materialised weight matrix. `stabilize(d) = d + e * sign(d)` with
sign(0) = +1, so no denominator is zero: where d_k = 0 the numerators of a z+ group are all zero too, and the
relevance of unit k is dropped instead of turning into NaN or Inf.

The parameter modifiers follow Zennit (the reference implementation the tests compare against): for z+ and αβ the
positive part keeps max(b, 0) in its denominator and the negative part min(b, 0), so a bias absorbs its share of
relevance; flat, w² and zB use no bias.

Mixed precision (`LayerSpec.compute_dtype` 'bfloat16', config.explain.dtype): a linear layer's products run on
operands rounded to bfloat16 and accumulate into float32, in the forward pass and in the transposed products of the
backward pass; its input is kept (as a residual) rounded, so numerators and denominators see the same input values.
Everything else stays float32: the layer outputs, the stabilised denominators, the relevance quotients R_k / d_k and
the sum over terms, the sums and pools.
"""

import dataclasses
import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from aujax import graph as graph_lib

STABILIZER = 1e-6  # Zennit's default for every rule but ε, and for sums and pools
Z_RULE_STABILIZER = 1e-12  # LRP-0: guards 0/0 only, far below float32 resolution of typical pre-activations
RULE_NAMES = ("z", "epsilon", "zplus", "alpha_beta", "flat", "wsquare", "zbox", "gamma")


@dataclasses.dataclass(frozen=True)
class Rule:
    """A hashable LRP rule for linear layers; build it with the `*_rule` functions below.

    `stabilizer` is the e of `stabilize` (for the ε-rule it is ε itself); `alpha`/`beta` are used by
    `alpha_beta`, `gamma` by `gamma`, `low`/`high` (the input's value bounds) by `zbox`.
    """

    name: str
    stabilizer: float = STABILIZER
    alpha: float = 1.0
    beta: float = 0.0
    gamma: float = 0.0
    low: float = 0.0
    high: float = 1.0

    def __post_init__(self):
        if self.name not in RULE_NAMES:
            raise ValueError(f"LRP rule {self.name!r}: expected one of {RULE_NAMES}")
        if self.stabilizer < 0:
            raise ValueError(f"LRP rule {self.name}: stabilizer {self.stabilizer} must be >= 0")


def z_rule(stabilizer: float = Z_RULE_STABILIZER) -> Rule:
    """LRP-0: R_j = sum_k x_j w_jk / z_k * R_k (z_k with bias)."""
    return Rule("z", stabilizer=stabilizer)


def epsilon_rule(epsilon: float) -> Rule:
    """LRP-ε: R_j = sum_k x_j w_jk / (z_k + ε sign(z_k)) * R_k."""
    if epsilon <= 0:
        raise ValueError(f"LRP ε-rule: epsilon {epsilon} must be > 0 (use z_rule for LRP-0)")
    return Rule("epsilon", stabilizer=epsilon)


def zplus_rule(stabilizer: float = STABILIZER) -> Rule:
    """LRP-z+ (= α1β0): only positive contributions (x_j w_jk)^+ and max(b_k, 0)."""
    return Rule("zplus", stabilizer=stabilizer)


def alpha_beta_rule(alpha: float = 2.0, beta: float = 1.0, stabilizer: float = STABILIZER) -> Rule:
    """LRP-αβ: α times the z+ redistribution minus β times the same for negative contributions; α - β = 1."""
    if alpha < 0 or beta < 0 or abs(alpha - beta - 1.0) > 1e-9:
        raise ValueError(f"LRP αβ-rule: alpha={alpha}, beta={beta}; need alpha, beta >= 0 and alpha - beta = 1")
    return Rule("alpha_beta", stabilizer=stabilizer, alpha=alpha, beta=beta)


def flat_rule(stabilizer: float = STABILIZER) -> Rule:
    """Flat: every connected input gets an equal share, R_j = sum_k 1 / n_k * R_k (n_k inputs feed unit k)."""
    return Rule("flat", stabilizer=stabilizer)


def wsquare_rule(stabilizer: float = STABILIZER) -> Rule:
    """w²: R_j = sum_k w_jk^2 / sum_i w_ik^2 * R_k."""
    return Rule("wsquare", stabilizer=stabilizer)


def zbox_rule(low: float = 0.0, high: float = 1.0, stabilizer: float = STABILIZER) -> Rule:
    """zB (box rule) for inputs bounded by [low, high]: numerators x_j w_jk - low w_jk^+ - high w_jk^-."""
    if not low < high:
        raise ValueError(f"LRP zB-rule: low={low} must be below high={high}")
    return Rule("zbox", stabilizer=stabilizer, low=low, high=high)


def gamma_rule(gamma: float = 0.25, stabilizer: float = STABILIZER) -> Rule:
    """γ (generalised, as Zennit): favours contributions of the output's sign by γ times their part."""
    if gamma < 0:
        raise ValueError(f"LRP γ-rule: gamma {gamma} must be >= 0")
    return Rule("gamma", stabilizer=stabilizer, gamma=gamma)


class LayerSpec(NamedTuple):
    """Static geometry of a linear layer.

    kind: 'conv' (NHWC input, HWIO kernel (kh, kw, c_in / groups, c_out); strides and dilation (h, w), padding
        ((top, bottom), (left, right))) or 'dense' ((..., in) @ (in, out)).
    nonnegative_input: the layer's input is known to be >= 0 by the network's structure (it follows a ReLU);
        rule terms on the negative input part are then skipped, which keeps the backward pass lean.
    compute_dtype: None (the operands' dtype) or 'bfloat16': the products' operands rounded to it, accumulated and
        returned in float32 (see the module docstring).
    """

    kind: str
    strides: tuple = (1, 1)
    padding: tuple = ((0, 0), (0, 0))
    nonnegative_input: bool = False
    dilation: tuple = (1, 1)
    groups: int = 1
    compute_dtype: str | None = None


def conv_spec(strides: int, padding: int, nonnegative_input: bool = False) -> LayerSpec:
    """A square conv with symmetric padding."""
    return LayerSpec("conv", (strides, strides), ((padding, padding), (padding, padding)), nonnegative_input)


def dense_spec(nonnegative_input: bool = False) -> LayerSpec:
    return LayerSpec("dense", nonnegative_input=nonnegative_input)


def node_spec(node, nonnegative_input: bool = False) -> LayerSpec:
    """The spec of a `graph.Conv` or `graph.Dense` node."""
    if isinstance(node, graph_lib.Dense):
        return dense_spec(nonnegative_input)
    return LayerSpec("conv", node.strides, node.padding, nonnegative_input, node.dilation, node.groups)


def linear(spec: LayerSpec, x: jax.Array, kernel: jax.Array, bias: jax.Array | None = None) -> jax.Array:
    """The ordinary layer: conv (x (n, h, w, c_in), kernel (kh, kw, c_in / groups, c_out)) or dense
    (x (..., in) @ (in, out)); `bias` broadcasts against the output (a conv's may vary with the position). With
    `spec.compute_dtype`, x and kernel are rounded to it and the product is accumulated and returned in float32."""
    accumulate = None
    if spec.compute_dtype is not None:
        x, kernel, accumulate = x.astype(spec.compute_dtype), kernel.astype(spec.compute_dtype), jnp.float32
    if spec.kind == "conv":
        z = jax.lax.conv_general_dilated(x, kernel, spec.strides, spec.padding, rhs_dilation=spec.dilation,
                                         feature_group_count=spec.groups, dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                         preferred_element_type=accumulate)
    elif spec.kind == "dense":
        z = jnp.matmul(x, kernel, preferred_element_type=accumulate)
    else:
        raise ValueError(f"layer kind {spec.kind!r}: expected 'conv' or 'dense'")
    return z if bias is None else z + bias


def stabilize(denominator: jax.Array, stabilizer: float) -> jax.Array:
    """d + e * sign(d) with sign(0) = +1: moves every denominator away from zero, keeping its sign."""
    return denominator + stabilizer * jnp.where(denominator >= 0, 1.0, -1.0).astype(denominator.dtype)


def _identity(p):
    return p


def _positive(p):
    return jnp.maximum(p, 0)


def _negative(p):
    return jnp.minimum(p, 0)


def _ones(p):
    return jnp.ones_like(p)


def _square(p):
    return p * p


class Term(NamedTuple):
    inputs: str  # 'x', 'positive', 'negative', 'ones', 'low' or 'high'
    params: Callable  # modifier applied to the kernel and, when use_bias, the bias
    use_bias: bool
    sign: float = 1.0
    transpose: Callable | None = None  # (spec, modified kernel, x, cotangent) -> input-shaped; None: `_transpose`


class Group(NamedTuple):
    terms: tuple
    coefficient: float = 1.0
    outputs: str = "all"  # which output units the group serves, by the sign of z: 'all', 'positive', 'negative'


_PLAIN = Term("x", _identity, True)


def _gamma_groups(gamma: float) -> tuple:
    def favour_positive(p):
        return p + gamma * jnp.maximum(p, 0)

    def favour_negative(p):
        return p + gamma * jnp.minimum(p, 0)

    return (Group((Term("positive", favour_positive, True), Term("negative", favour_negative, False)),
                  outputs="positive"),
            Group((Term("positive", favour_negative, True), Term("negative", favour_positive, False)),
                  outputs="negative"))


def rule_groups(rule: Rule, nonnegative_input: bool = False) -> tuple:
    """The groups that make up `rule` (see the module docstring); terms on x^- are left out for nonnegative inputs."""
    positive_part = (Term("positive", _positive, True), Term("negative", _negative, False))
    negative_part = (Term("positive", _negative, True), Term("negative", _positive, False))
    groups = {
            "z": lambda: (Group((_PLAIN,)),),
            "epsilon": lambda: (Group((_PLAIN,)),),
            "zplus": lambda: (Group(positive_part),),
            "alpha_beta": lambda: (Group(positive_part, rule.alpha), Group(negative_part, -rule.beta)),
            "flat": lambda: (Group((Term("ones", _ones, False, transpose=_transpose_ones),)),),
            "wsquare": lambda: (Group((Term("ones", _square, False),)),),
            "zbox": lambda: (Group((Term("x", _identity, False), Term("low", _positive, False, -1.0),
                                    Term("high", _negative, False, -1.0))),),
            "gamma": lambda: _gamma_groups(rule.gamma),
    }[rule.name]()
    groups = tuple(group for group in groups if group.coefficient != 0)  # e.g. beta = 0
    if nonnegative_input:
        groups = tuple(group._replace(terms=tuple(term._replace(inputs="x") if term.inputs == "positive" else term
                                                  for term in group.terms if term.inputs != "negative"))
                       for group in groups)
    return groups


def _modified_input(term: Term, rule: Rule, x: jax.Array) -> jax.Array:
    return {
            "x": lambda: x,
            "positive": lambda: jnp.maximum(x, 0),
            "negative": lambda: jnp.minimum(x, 0),
            "ones": lambda: jnp.ones_like(x),
            "low": lambda: jnp.full_like(x, rule.low),
            "high": lambda: jnp.full_like(x, rule.high),
    }[term.inputs]()


def _group_denominator(spec, rule, group, x, kernel, bias, z) -> jax.Array:
    if group.terms == (_PLAIN,):
        return z
    return sum(term.sign * linear(spec, _modified_input(term, rule, x), term.params(kernel),
                                  term.params(bias) if term.use_bias else None)
               for term in group.terms)


def _output_mask(group: Group, z: jax.Array) -> jax.Array | float:
    if group.outputs == "positive":
        return (z > 0).astype(z.dtype)
    if group.outputs == "negative":
        return (z < 0).astype(z.dtype)
    return 1.0


def _transpose(spec: LayerSpec, kernel: jax.Array, x: jax.Array, cotangent: jax.Array) -> jax.Array:
    """sum_k kernel_jk cotangent_k for every input j: the layer's linear map transposed (a transposed conv), in the
    dtype of `cotangent`; with `spec.compute_dtype`, on kernel and cotangent rounded to it (JAX's own transpose of
    the mixed-precision product would run in float32)."""
    dtype = spec.compute_dtype or cotangent.dtype
    plain = spec._replace(compute_dtype=None)
    (result,) = jax.linear_transpose(lambda v: linear(plain, v, kernel.astype(dtype)), x.astype(dtype))(
            cotangent.astype(dtype))
    return result.astype(cotangent.dtype)


def _transpose_ones(spec: LayerSpec, kernel: jax.Array, x: jax.Array, cotangent: jax.Array) -> jax.Array:
    """`_transpose` for an all-ones kernel: the output channels summed first, then one channel transposed.

    Every input channel then receives the same sum, so this equals `_transpose(spec, ones_like(kernel), ...)` with
    1 / (c_in c_out) of its work. It also keeps XLA from compiling the transpose of a constant kernel into a generic
    convolution: for the stem (flat rule, 7x7/2, 3 input channels) that took half of the explain time on an H100.
    A grouped conv takes the general transpose: there an input channel feeds only its group's outputs.
    """
    if spec.groups != 1:
        return _transpose(spec, jnp.ones_like(kernel), x, cotangent)
    summed = jnp.sum(cotangent, axis=-1, keepdims=True)
    one_channel = x[..., :1]
    ones = jnp.ones(kernel.shape[:-2] + (1, 1), kernel.dtype)
    return jnp.broadcast_to(_transpose(spec, ones, one_channel, summed), x.shape)


def _denominators(spec, rule, x, kernel, bias, z) -> tuple:
    return tuple(_group_denominator(spec, rule, group, x, kernel, bias, z)
                 for group in rule_groups(rule, spec.nonnegative_input))


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def lrp_linear(spec: LayerSpec, rule: Rule, x: jax.Array, kernel: jax.Array, bias: jax.Array) -> jax.Array:
    """`linear(spec, x, kernel, bias)`, whose backward pass applies `rule` to the relevance of its outputs."""
    return linear(spec, x, kernel, bias)


def _lrp_linear_fwd(spec, rule, x, kernel, bias):
    z = linear(spec, x, kernel, bias)
    rounded = x if spec.compute_dtype is None else x.astype(spec.compute_dtype)  # the input the products saw
    return z, (rounded, kernel, bias, z, _denominators(spec, rule, rounded, kernel, bias, z))


def _lrp_linear_bwd(spec, rule, residuals, relevance):
    x, kernel, bias, z, denominators = residuals
    x = x.astype(relevance.dtype)
    relevance_in = jnp.zeros_like(x)
    for group, denominator in zip(rule_groups(rule, spec.nonnegative_input), denominators):
        scaled = group.coefficient * _output_mask(group, z) * relevance / stabilize(denominator, rule.stabilizer)
        for term in group.terms:
            contribution = (term.transpose or _transpose)(spec, term.params(kernel), x, scaled)
            relevance_in += term.sign * _modified_input(term, rule, x) * contribution
    return relevance_in, jnp.zeros_like(kernel), jnp.zeros_like(bias)


lrp_linear.defvjp(_lrp_linear_fwd, _lrp_linear_bwd)


def dropped_relevance(spec: LayerSpec, rule: Rule, x: jax.Array, kernel: jax.Array, bias: jax.Array,
                      relevance_out: jax.Array) -> jax.Array:
    """Relevance the rule drops: the part of `relevance_out` sent to groups whose denominator is exactly zero.

    `relevance_out` is shaped like the layer output, optionally with leading axes (e.g. one per explained AU);
    the result has its shape. For z+ this is the relevance of units whose positive pre-activation is zero.
    """
    z = linear(spec, x, kernel, bias)
    return sum(group.coefficient * _output_mask(group, z) * jnp.where(denominator == 0, relevance_out, 0.0)
               for group, denominator in zip(rule_groups(rule, spec.nonnegative_input),
                                             _denominators(spec, rule, x, kernel, bias, z)))


@jax.custom_vjp
def relu_pass(x: jax.Array) -> jax.Array:
    """ReLU whose backward pass hands the relevance through unchanged."""
    return jax.nn.relu(x)


relu_pass.defvjp(lambda x: (jax.nn.relu(x), None), lambda _, relevance: (relevance,))


@jax.custom_vjp
def pass_relevance(x: jax.Array, y: jax.Array) -> jax.Array:
    """`y`, an element-wise function of `x` (ReLU6, leaky ReLU, a per-channel affine map), whose backward pass hands
    the relevance of y to x unchanged (y's own cotangent is zero: pass it through `jax.lax.stop_gradient`)."""
    return y


pass_relevance.defvjp(lambda x, y: (y, None), lambda _, relevance: (relevance, jnp.zeros_like(relevance)))


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def lrp_affine(stabilizer: float, x: jax.Array, scale: jax.Array, shift: jax.Array) -> jax.Array:
    """y = x * scale + shift per channel (the last axis), explained by its z-rule: the shift absorbs its share,
    R_x = x * scale / stabilize(y) * R_y (iNNvestigate's BatchNorm rule)."""
    return x * scale + shift


def _lrp_affine_fwd(stabilizer, x, scale, shift):
    y = x * scale + shift
    return y, (x * scale, y)


def _lrp_affine_bwd(stabilizer, residuals, relevance):
    scaled_x, y = residuals
    return (scaled_x * relevance / stabilize(y, stabilizer), jnp.zeros(scaled_x.shape[-1:], y.dtype),
            jnp.zeros(scaled_x.shape[-1:], y.dtype))


lrp_affine.defvjp(_lrp_affine_fwd, _lrp_affine_bwd)


def _safe_divide(a: jax.Array, b: jax.Array, epsilon: float) -> jax.Array:
    """a / b with b = 0 replaced by `epsilon` (iNNvestigate's safe_divide)."""
    return a / (b + epsilon * (b == 0).astype(b.dtype))


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def lrp_affine_x2m100(epsilon: float, x, scale, shift, rule_scale, rule_shift) -> jax.Array:
    """y = x * scale + shift per channel, explained as iNNvestigate 2.1.2's LRPSequentialPreset A/B explain a
    BatchNorm: its AlphaBetaX2m100 rule (α = (2, 0), β = (1, 0)) on the map x * k + b (k = `rule_scale`,
    b = `rule_shift`), R_x = 2 x+ k+ / (x+ k+ + b+) R - x+ k- / (x+ k- + b-) R (x+ = max(x, 0), b+ = max(b, 0), ...)."""
    return x * scale + shift


def _lrp_affine_x2m100_fwd(epsilon, x, scale, shift, rule_scale, rule_shift):
    return x * scale + shift, (x, rule_scale, rule_shift)


def _lrp_affine_x2m100_bwd(epsilon, residuals, relevance):
    x, k, b = residuals
    positive_x = jnp.maximum(x, 0)
    relevance_in = 0
    for coefficient, k_part, b_part in ((2.0, jnp.maximum(k, 0), jnp.maximum(b, 0)),
                                        (-1.0, jnp.minimum(k, 0), jnp.minimum(b, 0))):
        z = positive_x * k_part
        relevance_in = relevance_in + coefficient * z * _safe_divide(relevance, z + b_part, epsilon)
    zeros = jnp.zeros_like(k)
    return relevance_in, zeros, zeros, zeros, zeros


lrp_affine_x2m100.defvjp(_lrp_affine_x2m100_fwd, _lrp_affine_x2m100_bwd)


def _sum(terms):
    return functools.reduce(jnp.add, terms)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def lrp_add(stabilizer: float, *terms: jax.Array) -> jax.Array:
    """The sum of `terms`; relevance is split in proportion to the summands (z-rule): R_a = a / stabilize(sum) * R."""
    return _sum(terms)


def _lrp_add_fwd(stabilizer, *terms):
    total = _sum(terms)
    return total, (terms, total)


def _lrp_add_bwd(stabilizer, residuals, relevance):
    terms, total = residuals
    scaled = relevance / stabilize(total, stabilizer)
    return tuple(term * scaled for term in terms)


lrp_add.defvjp(_lrp_add_fwd, _lrp_add_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def lrp_global_mean_pool(stabilizer: float, x: jax.Array) -> jax.Array:
    """Global average pooling (n, h, w, c) -> (n, c) explained by the z-rule:
    R_j = (x_j / hw) / stabilize(mean) * R_c."""
    return graph_lib.global_avg_pool(x)


def _lrp_pool_fwd(stabilizer, x):
    pooled = graph_lib.global_avg_pool(x)
    return pooled, (x, pooled)


def _lrp_pool_bwd(stabilizer, residuals, relevance):
    x, pooled = residuals
    scaled = relevance / stabilize(pooled, stabilizer) / (x.shape[-3] * x.shape[-2])
    return (x * scaled[..., None, None, :],)


lrp_global_mean_pool.defvjp(_lrp_pool_fwd, _lrp_pool_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def lrp_avg_pool(stabilizer: float, node: graph_lib.AvgPool, x: jax.Array) -> jax.Array:
    """`graph.avg_pool` explained by the z-rule: R_j = sum_k x_j w_jk / stabilize(z_k) * R_k (w_jk: the weight of
    input j in window k, 1 / the window's divisor)."""
    return graph_lib.avg_pool(node, x)


def _lrp_avg_pool_fwd(stabilizer, node, x):
    pooled = graph_lib.avg_pool(node, x)
    return pooled, (x, pooled)


def _lrp_avg_pool_bwd(stabilizer, node, residuals, relevance):
    x, pooled = residuals
    scaled = relevance / stabilize(pooled, stabilizer)
    (spread,) = jax.linear_transpose(lambda v: graph_lib.avg_pool(node, v), x)(scaled)
    return (x * spread,)


lrp_avg_pool.defvjp(_lrp_avg_pool_fwd, _lrp_avg_pool_bwd)
