"""Composites: which LRP rule explains which node of a graph, as Zennit assigns them.

A composite maps node kinds to rules (Zennit's LayerMapComposite): 'conv' (every convolution, depthwise included,
BatchNorm folded in), 'dense', and 'sum' (residual additions, average and global average pooling: the z-rule with
the composite's stabilizer). The first layer (the linear node(s) that see the pixels) can take its own rule
(Zennit's SpecialFirstLayerMapComposite), and node-name patterns (`fnmatch`, e.g. 'stage4_*/conv2' or 'head') override
both (Zennit's NameMapComposite; the first matching pattern wins). Element-wise nodes (ReLU, ReLU6, leaky ReLU, an
affine map that could not be folded) pass relevance through, max pooling gives it to the winner of each window,
concatenation splits it, flatten reshapes it.

| name | first layer | other convolutions | dense | counterpart |
| --- | --- | --- | --- | --- |
| paper (default) | flat | z+ | ε | Zennit EpsilonPlusFlat; iNNvestigate ...PresetAFlat, batch_norm="innvestigate" |
| epsilon_alpha2_beta1_flat | flat | α2β1 | ε | Zennit EpsilonAlpha2Beta1Flat; iNNvestigate ...PresetBFlat (idem) |
| epsilon_gamma_box | zB on [0, 1] | γ (0.25) | ε | Zennit EpsilonGammaBox |
| all_z | z | z | z | LRP-0, equals gradient x input on a ReLU network |
| all_epsilon | ε | ε | ε | |
| gradient | - | - | - | plain gradient of the logit (seed: one-hot) |
| gradient_x_input | - | - | - | gradient of the logit times the input (seed: one-hot) |

iNNvestigate explains a BatchNorm with a rule of its own where Zennit (and aujax by default) folds it into the
convolution before it: `canonize(..., batch_norm="innvestigate")` reproduces that (docs/lrp.md).
LRP composites start from one-hot x logit (the relevance of output a is its logit), so with all_z and no biases the
relevance of every layer sums to the logit. More presets: `register_composite(name, factory)`.
"""

import dataclasses
import fnmatch
from collections.abc import Callable

from aujax.lrp import rules

DEFAULT_EPSILON = 0.1  # iNNvestigate's LRPSequentialPresetA/B default for the dense layers
DEFAULT_GAMMA = 0.25  # Zennit's EpsilonGammaBox default
PIXEL_LOW, PIXEL_HIGH = 0.0, 1.0  # the model's input range, the box of the zB rule
NODE_KINDS = ("conv", "dense", "sum")


@dataclasses.dataclass(frozen=True)
class Composite:
    """A named, hashable assignment of rules to nodes; a rule of None means the node's ordinary gradient.

    layer_map: (kind, rule) pairs for the kinds of `NODE_KINDS`.
    first_map: (kind, rule) pairs for the first layer, overriding layer_map there.
    name_map: (fnmatch pattern of node names, rule) pairs, overriding both; the first match wins.
    relevance_seed: 'logit' (LRP: one-hot x logit) or 'one_hot' (gradients).
    times_input: multiply the result by the input image (gradient x input).
    """

    name: str
    layer_map: tuple[tuple[str, rules.Rule | None], ...]
    first_map: tuple[tuple[str, rules.Rule | None], ...] = ()
    name_map: tuple[tuple[str, rules.Rule], ...] = ()
    relevance_seed: str = "logit"
    times_input: bool = False

    def __post_init__(self):
        for kind, _ in self.layer_map + self.first_map:
            if kind not in NODE_KINDS:
                raise ValueError(f"composite {self.name}: node kind {kind!r}, expected one of {NODE_KINDS}")

    @property
    def is_lrp(self) -> bool:
        """True when element-wise nodes, sums and pools redistribute relevance rather than pass gradients."""
        return self.rule("sum") is not None

    def rule(self, kind: str, name: str = "", first: bool = False) -> rules.Rule | None:
        """The rule of the node `name` of `kind`; `first` for a linear node that sees the pixels."""
        for pattern, rule in self.name_map:
            if fnmatch.fnmatchcase(name, pattern):
                return rule
        if first and kind in dict(self.first_map):
            return dict(self.first_map)[kind]
        return dict(self.layer_map).get(kind)

    def with_names(self, *name_map: tuple[str, rules.Rule]) -> "Composite":
        """This composite with name-pattern overrides put before its own."""
        return dataclasses.replace(self, name_map=tuple(name_map) + self.name_map)


def _lrp(name, first, conv, dense, stabilizer) -> Composite:
    return Composite(name, (("conv", conv), ("dense", dense), ("sum", rules.z_rule(stabilizer))),
                     (("conv", first), ("dense", first)))


def _paper(epsilon, gamma, stabilizer):
    return _lrp("paper", rules.flat_rule(stabilizer), rules.zplus_rule(stabilizer), rules.epsilon_rule(epsilon),
                stabilizer)


def _alpha_beta(epsilon, gamma, stabilizer):
    return _lrp("epsilon_alpha2_beta1_flat", rules.flat_rule(stabilizer), rules.alpha_beta_rule(2.0, 1.0, stabilizer),
                rules.epsilon_rule(epsilon), stabilizer)


def _gamma_box(epsilon, gamma, stabilizer):
    return _lrp("epsilon_gamma_box", rules.zbox_rule(PIXEL_LOW, PIXEL_HIGH, stabilizer),
                rules.gamma_rule(gamma, stabilizer), rules.epsilon_rule(epsilon), stabilizer)


def _all_z(epsilon, gamma, stabilizer):
    z = rules.z_rule()
    return Composite("all_z", (("conv", z), ("dense", z), ("sum", z)))


def _all_epsilon(epsilon, gamma, stabilizer):
    rule = rules.epsilon_rule(epsilon)
    return _lrp("all_epsilon", rule, rule, rule, stabilizer)


def _gradient(times_input: bool) -> Callable:
    name = "gradient_x_input" if times_input else "gradient"
    return lambda epsilon, gamma, stabilizer: Composite(name, (), relevance_seed="one_hot", times_input=times_input)


# name -> factory(epsilon, gamma, stabilizer) -> Composite
PRESETS: dict[str, Callable[[float, float, float], Composite]] = {
    "paper": _paper, "epsilon_alpha2_beta1_flat": _alpha_beta, "epsilon_gamma_box": _gamma_box, "all_z": _all_z,
    "all_epsilon": _all_epsilon, "gradient": _gradient(False), "gradient_x_input": _gradient(True),
}
COMPOSITES = tuple(PRESETS)  # the built-in presets


def register_composite(name: str, factory: Callable[[float, float, float], Composite]) -> None:
    """Make `factory(epsilon, gamma, stabilizer) -> Composite` the preset `name` of `get_composite`."""
    PRESETS[name] = factory


def get_composite(name: str, epsilon: float = DEFAULT_EPSILON, gamma: float = DEFAULT_GAMMA,
                  stabilizer: float = rules.STABILIZER) -> Composite:
    """The preset `name` with ε for its ε-layers, γ for its γ-layers and `stabilizer` for every other denominator;
    ValueError naming the choices for an unknown name."""
    if name not in PRESETS:
        raise ValueError(f"LRP composite {name!r}: expected one of {', '.join(PRESETS)}")
    return PRESETS[name](epsilon, gamma, stabilizer)
