"""Composites: which LRP rule explains which layer, by layer kind and position.

The first layer is the stem convolution (it sees the pixels); 'conv' is every other convolution (BatchNorm folded
in); 'dense' is the head. Residual additions and global average pooling always use the z-rule with the composite's
stabilizer, ReLUs pass relevance through and max pooling gives it to the winner of each window.

| name | first layer | other convolutions | dense | counterpart |
| --- | --- | --- | --- | --- |
| paper (default) | flat | z+ | ε | iNNvestigate LRPSequentialPresetAFlat; Zennit EpsilonPlusFlat |
| epsilon_alpha2_beta1_flat | flat | α2β1 | ε | iNNvestigate ...PresetBFlat; Zennit EpsilonAlpha2Beta1Flat |
| epsilon_gamma_box | zB on [0, 1] | γ (0.25) | ε | Zennit EpsilonGammaBox |
| all_z | z | z | z | LRP-0, equals gradient x input on this ReLU network |
| all_epsilon | ε | ε | ε | |
| gradient | - | - | - | plain gradient of the logit (seed: one-hot) |
| gradient_x_input | - | - | - | gradient of the logit times the input (seed: one-hot) |

LRP composites start from one-hot x logit (the relevance of AU a is its logit), so with all_z and no biases the
relevance of every layer sums to the logit.
"""

import dataclasses

from aujax.lrp import rules

DEFAULT_EPSILON = 0.1  # iNNvestigate's LRPSequentialPresetA/B default for the dense layers
DEFAULT_GAMMA = 0.25  # Zennit's EpsilonGammaBox default
PIXEL_LOW, PIXEL_HIGH = 0.0, 1.0  # the model's input range, the box of the zB rule

COMPOSITES = ("paper", "epsilon_alpha2_beta1_flat", "epsilon_gamma_box", "all_z", "all_epsilon", "gradient",
              "gradient_x_input")


@dataclasses.dataclass(frozen=True)
class Composite:
    """A named assignment of rules; a rule of None means the layer's ordinary gradient.

    relevance_seed: 'logit' (LRP: one-hot x logit) or 'one_hot' (gradients).
    times_input: multiply the result by the input image (gradient x input).
    """

    name: str
    first_layer: rules.Rule | None
    conv: rules.Rule | None
    dense: rules.Rule | None
    sum: rules.Rule | None  # residual additions and global average pooling
    relevance_seed: str = "logit"
    times_input: bool = False

    @property
    def is_lrp(self) -> bool:
        """True when ReLUs, sums and pools redistribute relevance rather than pass gradients."""
        return self.sum is not None

    def linear_rule(self, kind: str, first: bool) -> rules.Rule | None:
        """The rule of a linear layer of `kind` ('conv' or 'dense'); `first` for the layer that sees the pixels."""
        if first:
            return self.first_layer
        return {"conv": self.conv, "dense": self.dense}[kind]


def get_composite(name: str, epsilon: float = DEFAULT_EPSILON, gamma: float = DEFAULT_GAMMA,
                  stabilizer: float = rules.STABILIZER) -> Composite:
    """The preset `name` (one of `COMPOSITES`) with ε for its ε-layers, γ for its γ-layers and `stabilizer` for
    every other denominator; ValueError naming the choices for an unknown name."""
    if name not in COMPOSITES:
        raise ValueError(f"LRP composite {name!r}: expected one of {', '.join(COMPOSITES)}")
    sums = rules.z_rule(stabilizer)
    dense = rules.epsilon_rule(epsilon)
    flat = rules.flat_rule(stabilizer)
    if name == "paper":
        return Composite(name, flat, rules.zplus_rule(stabilizer), dense, sums)
    if name == "epsilon_alpha2_beta1_flat":
        return Composite(name, flat, rules.alpha_beta_rule(2.0, 1.0, stabilizer), dense, sums)
    if name == "epsilon_gamma_box":
        return Composite(name, rules.zbox_rule(PIXEL_LOW, PIXEL_HIGH, stabilizer),
                         rules.gamma_rule(gamma, stabilizer), dense, sums)
    if name == "all_z":
        z = rules.z_rule()
        return Composite(name, z, z, z, z)
    if name == "all_epsilon":
        return Composite(name, dense, dense, dense, sums)
    return Composite(name, None, None, None, None, relevance_seed="one_hot", times_input=name == "gradient_x_input")
