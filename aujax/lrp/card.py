"""The model card of a network trained elsewhere: how its input is laid out and normalised, which output is which AU.

A card is a JSON object (a file beside the model, `<model>.card.json`, or the same fields given one by one):

    {"input_size": [112, 112],              # [h, w] of the model's input
     "layout": "NCHW",                      # "NCHW" (PyTorch) or "NHWC" (Keras / tf2onnx)
     "channel_order": "RGB",                # "RGB" or "BGR" (caffe-style models)
     "mean": [0.485, 0.456, 0.406],         # the model's own input normalisation, (pixel - mean) / std per channel
     "std": [0.229, 0.224, 0.225],          #   in the model's channel order, for pixels in [0, 1]
     "outputs": {"4": 0, "6": 1},           # AU id -> index of the model output that detects it
     "output_activation": "sigmoid"}        # what turns an output into the score compared with the threshold

Every field is required. A model that takes pixels in [0, 255] is described with mean and std divided by 255 (a
caffe-style model with mean [103.94, 116.78, 123.68] and std 1 has mean [0.4076, 0.4580, 0.4850], std [1/255] * 3).
`output_activation` is "sigmoid", "softmax" or "none" (outputs thresholded as they are); where the file itself ends in a
Sigmoid or Softmax, the card must name that activation (relevance starts at its input, the logit).
"""

import dataclasses
import json
import math
import os
from collections.abc import Mapping

LAYOUTS = ("NCHW", "NHWC")
CHANNEL_ORDERS = ("RGB", "BGR")
OUTPUT_ACTIVATIONS = ("sigmoid", "softmax", "none")
FIELDS = ("input_size", "layout", "channel_order", "mean", "std", "outputs", "output_activation")


@dataclasses.dataclass(frozen=True)
class ModelCard:
    """A checked model card; `mean` and `std` in the model's channel order, `outputs` {AU id: output index}."""

    input_size: tuple[int, int]
    layout: str
    channel_order: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    outputs: Mapping[int, int]
    output_activation: str
    where: str = "the model card"  # how messages name the card: its file, or the flags it came from

    @property
    def au_ids(self) -> tuple[int, ...]:
        """The AUs of the card in the order of their output indices."""
        return tuple(sorted(self.outputs, key=self.outputs.get))

    def to_json(self) -> dict:
        """The card as its JSON object (AU ids as string keys)."""
        return {"input_size": list(self.input_size), "layout": self.layout, "channel_order": self.channel_order,
                "mean": list(self.mean), "std": list(self.std),
                "outputs": {str(au): index for au, index in self.outputs.items()},
                "output_activation": self.output_activation}


def card_path(model_path: str) -> str:
    """Where the card of `model_path` lies when none is named: `m.onnx` -> `m.card.json`."""
    return os.path.splitext(model_path)[0] + ".card.json"


def read_card(path: str) -> ModelCard:
    """The card in the JSON file `path`; ValueError naming the file for one that is missing, not JSON or invalid."""
    try:
        with open(path) as f:
            fields = json.load(f)
    except FileNotFoundError:
        raise ValueError(f"model card {path}: no such file (write one: see docs/onnx.md)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"model card {path}: not a JSON file ({e})") from None
    return make_card(fields, where=f"model card {path}")


def make_card(fields, where: str = "the model card") -> ModelCard:
    """A `ModelCard` from its JSON object `fields`; ValueError naming `where` and the field for each bad value."""
    if isinstance(fields, ModelCard):
        return fields
    if not isinstance(fields, Mapping):
        raise ValueError(f"{where}: a JSON object with the fields {', '.join(FIELDS)} expected, got {fields!r}")
    missing = [name for name in FIELDS if name not in fields]
    unknown = sorted(set(fields) - set(FIELDS))
    if missing or unknown:
        problems = ([f"lacks {', '.join(missing)}"] if missing else []) + (
                [f"has unknown fields {', '.join(unknown)}"] if unknown else [])
        raise ValueError(f"{where} {' and '.join(problems)}: the fields are {', '.join(FIELDS)} (docs/onnx.md)")

    def bad(name, expected):
        return ValueError(f"{where}: {name}={json.dumps(fields[name])}, expected {expected}")

    size = fields["input_size"]
    if not (isinstance(size, list | tuple) and len(size) == 2 and all(_is_int(s) and s > 0 for s in size)):
        raise bad("input_size", "[h, w], two positive integers")
    for name, choices in (("layout", LAYOUTS), ("channel_order", CHANNEL_ORDERS),
                          ("output_activation", OUTPUT_ACTIVATIONS)):
        if fields[name] not in choices:
            raise bad(name, " or ".join(f'"{c}"' for c in choices))
    mean, std = (_three_numbers(fields[name]) for name in ("mean", "std"))
    if mean is None:
        raise bad("mean", "3 numbers, one per channel")
    if std is None or min(std) <= 0:
        raise bad("std", "3 positive numbers, one per channel")
    return ModelCard(tuple(size), fields["layout"], fields["channel_order"], mean, std,
                     _outputs(fields["outputs"], bad), fields["output_activation"], where)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _three_numbers(value) -> tuple[float, float, float] | None:
    if not isinstance(value, list | tuple) or len(value) != 3:
        return None
    if not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in value):
        return None
    return tuple(float(v) for v in value)


def _outputs(value, bad) -> dict[int, int]:
    """{"4": 0, "AU6": 1} -> {4: 0, 6: 1}."""
    expected = 'an object {"<AU id>": <output index>, ...} with distinct indices >= 0, e.g. {"4": 0, "6": 1}'
    if not isinstance(value, Mapping) or not value:
        raise bad("outputs", expected)
    outputs = {}
    for key, index in value.items():
        au = str(key).removeprefix("AU")
        if not au.isdigit() or int(au) < 1 or not _is_int(index) or index < 0:
            raise bad("outputs", expected)
        outputs[int(au)] = index
    if len(set(outputs.values())) != len(outputs) or len(outputs) != len(value):
        raise bad("outputs", expected)
    return outputs
