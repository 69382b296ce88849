"""Networks trained elsewhere: an ONNX file (as `torch.onnx.export` or tf2onnx write it) and its model card
(`aujax.lrp.card`) as an `aujax.graph.ExplainableNetwork`, explained by the same LRP rules as aujax's own models.

    model = load_onnx("m.onnx", "m.card.json")                    # or a dict of the card's fields
    logits, relevance = explain_with_logits(model, images)        # (n, A), (A, n, h, w, 3): A outputs of the card

The graph's input is always aujax's: (n, h, w, 3) float32 RGB in [0, 1]. The card's normalisation becomes its first
node (an Affine, (pixel - mean) / std, which canonization folds into the first convolution); the channel order is
folded into the kernels of the convolutions that read the pixels; the layout is tracked, so that ONNX's NCHW tensors
are aujax's NHWC arrays (a Flatten of an NCHW tensor keeps ONNX's element order, a Transpose between NHWC and NCHW is
no node at all). A trailing Sigmoid / Softmax of the file is kept (relevance starts at its input); where the file has
none and the card's `output_activation` names one, it is added.

Operators (`SUPPORTED_OPS`): Conv (any padding, strides, dilation, groups), Gemm, MatMul, BatchNormalization, Add of
computed tensors, Add / Sub / Mul / Div by a per-channel constant (an Affine), Relu, Clip, LeakyRelu, MaxPool,
AveragePool, GlobalAveragePool, ReduceMean over the spatial axes, Flatten, Reshape / Squeeze to (n, features),
Transpose between NCHW and NHWC, Concat along channels, Identity, Dropout, a trailing Sigmoid / Softmax; and on
constants (a Shape chain, for example) Constant, Shape, Gather, Unsqueeze, Squeeze, Concat, Cast, Reshape and
arithmetic. Anything else is refused naming the node, the op and the supported ops.
"""

import json
import math
import os
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from aujax import graph as graph_lib
from aujax.lrp import card as card_lib

BATCH = "batch"  # the batch dimension in folded shapes (Shape of a computed tensor)
# ONNX layout of a computed tensor -> its channel axis there; aujax holds every 4-d tensor NHWC, and a globally pooled
# tensor ((n, c, 1, 1) in ONNX) as (n, c).
_CHANNEL_AXIS = {"NCHW": 1, "NHWC": 3, "pooled_NCHW": 1, "pooled_NHWC": 3, "NC": 1}
_SPATIAL_AXES = {"NCHW": (2, 3), "NHWC": (1, 2)}
_CONSTANT_OPS = ("Constant", "Shape", "Gather", "Unsqueeze", "Squeeze", "Concat", "Cast", "Reshape", "Identity",
                 "Add", "Sub", "Mul", "Div")
SUPPORTED_OPS = tuple(sorted({
        "Conv", "Gemm", "MatMul", "BatchNormalization", "Add", "Sub", "Mul", "Div", "Relu", "Clip", "LeakyRelu",
        "MaxPool", "AveragePool", "GlobalAveragePool", "ReduceMean", "Flatten", "Reshape", "Squeeze", "Transpose",
        "Concat", "Identity", "Dropout", "Sigmoid", "Softmax", *_CONSTANT_OPS}))


class _Tensor(NamedTuple):
    """A computed ONNX tensor: the graph node that holds it, its ONNX layout (`_CHANNEL_AXIS`), its channel count,
    and whether aujax holds its channels in reverse order (the pixels of a BGR model)."""

    node: str
    layout: str
    channels: int
    reversed: bool = False


class _Refused(ValueError):
    pass


def load_onnx(path: str, card=None) -> graph_lib.ExplainableNetwork:
    """The ONNX model in `path` with its card (`resolve_card`: a `card.ModelCard`, a dict of its fields, the path of
    its JSON file, or None for the file beside the model, `m.onnx` -> `m.card.json`).

    Returns an `ExplainableNetwork` whose outputs are the card's AUs in the order of their output indices (`au_ids`).
    ValueError in one line naming the file for a file that is not ONNX, an unsupported op (with the node), or a card
    that does not match the model.
    """
    card = resolve_card(path, card)
    proto = _read(path)
    graph, variables = _Converter(proto, card, path).convert()
    count = graph_lib.output_size(graph, variables, (*card.input_size, 3))
    out_of_range = {au: index for au, index in card.outputs.items() if index >= count}
    if out_of_range:
        raise ValueError(f"{card.where}: outputs {out_of_range} name output indices beyond the {count} outputs of "
                         f"{path}")
    return graph_lib.ExplainableNetwork(graph, variables, au_ids=card.au_ids,
                                        outputs=tuple(card.outputs[au] for au in card.au_ids))


def resolve_card(path: str, card=None) -> card_lib.ModelCard:
    """The card of the model in `path`: a `ModelCard`, a dict of its fields, a JSON object's text (as a flag gives
    it), the path of its JSON file, or None for the file beside the model."""
    if isinstance(card, str) and card.lstrip().startswith("{"):
        try:
            card = json.loads(card)
        except json.JSONDecodeError as e:
            raise ValueError(f"--model_card: not a JSON object ({e})") from None
        return card_lib.make_card(card, where="--model_card")
    if card is None or isinstance(card, str | os.PathLike):
        return card_lib.read_card(os.fspath(card) if card is not None else card_lib.card_path(path))
    return card_lib.make_card(card)


def _read(path: str):
    import onnx  # only where an ONNX model is read

    if not os.path.isfile(path):
        raise ValueError(f"ONNX model {path}: no such file")
    try:
        proto = onnx.load(path)
    except Exception as e:  # protobuf raises DecodeError, or RuntimeWarning-like errors, for a file that is not ONNX
        raise ValueError(f"{path} is not an ONNX model ({type(e).__name__}: {str(e).splitlines()[0][:120]})") \
            from None
    if not len(proto.graph.node):
        raise ValueError(f"{path} is not an ONNX model (it holds no graph nodes)")
    try:
        return onnx.shape_inference.infer_shapes(proto)
    except Exception:  # noqa: BLE001 - shapes are only needed for Shape chains and SAME padding; those say so
        return proto


def _attributes(node) -> dict:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _unique(name: str, taken: set) -> str:
    """`name` made unique among `taken` (and added to it), and no scope path of another: 'a' and 'a/b' would share
    their parameters' subtree."""

    def clash(candidate):
        return any(t == candidate or t.startswith(candidate + "/") or candidate.startswith(t + "/") for t in taken)

    candidate, k = name, 1
    while clash(candidate):
        k += 1
        candidate = f"{name}_{k}"
    taken.add(candidate)
    return candidate


class _Converter:
    """One pass over the ONNX nodes in order: constants are folded, every computed tensor becomes a graph node."""

    def __init__(self, proto, card: card_lib.ModelCard, path: str):
        from onnx import numpy_helper

        self.proto, self.card, self.path = proto, card, path
        self.constants = {init.name: numpy_helper.to_array(init) for init in proto.graph.initializer}
        self.shapes = {info.name: info for info in (*proto.graph.value_info, *proto.graph.input,
                                                    *proto.graph.output)}
        self.tensors: dict[str, _Tensor] = {}
        self.nodes: list = []
        self.params: dict = {}
        self.stats: dict = {}
        self.names = {graph_lib.INPUT}

    # -- the graph being built ---------------------------------------------------------------------------------

    def _add(self, kind, onnx_name: str, inputs, params=None, stats=None, **fields) -> str:
        name = _unique(onnx_name.strip("/").replace("//", "/") or kind.__name__.lower(), self.names)
        self.nodes.append(kind(name=name, inputs=tuple(inputs), **fields))
        if params:  # float32 whatever the file stores (float16, float64)
            self.params = graph_lib.with_entry(self.params, name,
                                               {k: jnp.asarray(v, jnp.float32) for k, v in params.items()})
        if stats:
            self.stats = graph_lib.with_entry(self.stats, name,
                                              {k: jnp.asarray(v, jnp.float32) for k, v in stats.items()})
        return name

    def convert(self) -> tuple[graph_lib.Graph, dict]:
        self.tensors[self._input_name()] = self._input_tensor()
        for node in self.proto.graph.node:
            try:
                self._convert_node(node)
            except _Refused as e:
                raise ValueError(f"{self.path}: node {node.name or '(unnamed)'} ({node.op_type}): {e}") from None
        output = self._output_node()
        variables = {"params": self.params, "batch_stats": self.stats}
        return graph_lib.Graph(tuple(self.nodes), output), variables

    def _input_name(self) -> str:
        inputs = [i for i in self.proto.graph.input if i.name not in self.constants]
        if len(inputs) != 1:
            raise ValueError(f"{self.path}: the model has {len(inputs)} inputs ({', '.join(i.name for i in inputs)}); "
                             "aujax explains models with one image input")
        return inputs[0].name

    def _input_tensor(self) -> _Tensor:
        """The card's preprocessing as the first node: aujax's RGB pixels in [0, 1] -> the model's input."""
        card, name = self.card, self._input_name()
        dims = _dims(self.shapes[name])
        expected = (3, *card.input_size) if card.layout == "NCHW" else (*card.input_size, 3)
        if dims is not None and (len(dims) != 4 or any(d is not None and d != e for d, e in zip(dims[1:], expected))):
            shown = "x".join("?" if d is None else str(d) for d in dims)
            raise ValueError(f"{card.where} does not match {self.path}: input_size {list(card.input_size)} and layout "
                             f"{card.layout} mean an input of shape batch x {'x'.join(map(str, expected))}, but the "
                             f"model's input {name!r} is {shown}")
        reverse = card.channel_order == "BGR"
        order = slice(None, None, -1) if reverse else slice(None)
        mean, std = np.asarray(card.mean, np.float32)[order], np.asarray(card.std, np.float32)[order]
        node = self._add(graph_lib.Affine, "input_normalization", [graph_lib.INPUT],
                         params={"scale": 1.0 / std, "shift": -mean / std})
        return _Tensor(node, card.layout, 3, reverse)

    def _output_node(self) -> str:
        outputs = list(self.proto.graph.output)
        if len(outputs) != 1:
            raise ValueError(f"{self.path}: the model has {len(outputs)} outputs; aujax explains models with one "
                             "output of shape (batch, outputs)")
        tensor = self.tensors.get(outputs[0].name)
        if tensor is None or tensor.layout != "NC":
            raise ValueError(f"{self.path}: the model's output {outputs[0].name!r} is not of shape (batch, outputs)")
        last = next(node for node in self.nodes if node.name == tensor.node)
        present = {graph_lib.Sigmoid: "sigmoid", graph_lib.Softmax: "softmax"}.get(type(last))
        wanted = self.card.output_activation
        if present is not None and present != wanted:
            raise ValueError(f"{self.card.where} does not match {self.path}: output_activation is {wanted!r}, but the "
                             f"model ends in a {type(last).__name__}")
        if present is None and wanted != "none":
            kind = graph_lib.Sigmoid if wanted == "sigmoid" else graph_lib.Softmax
            return self._add(kind, f"output_{wanted}", [tensor.node])
        return tensor.node

    # -- nodes -------------------------------------------------------------------------------------------------

    def _constant(self, name: str):
        return self.constants.get(name) if name else None

    def _computed(self, node) -> list[str]:
        return [name for name in node.input if name and name not in self.constants]

    def _convert_node(self, node) -> None:
        op = node.op_type
        if node.domain not in ("", "ai.onnx") or op not in SUPPORTED_OPS:
            raise _Refused(f"unsupported op; aujax supports {', '.join(SUPPORTED_OPS)}")
        computed = self._computed(node)
        unknown = [name for name in computed if name not in self.tensors]
        if op in _CONSTANT_OPS and (not computed or op == "Shape"):
            self.constants[node.output[0]] = self._fold(node, op)
            return
        if unknown:
            raise _Refused(f"input {unknown[0]!r} is neither a computed tensor nor a constant")
        handler = getattr(self, f"_op_{op}", None)
        if handler is None:
            raise _Refused("supported only on constants here, but its input is computed")
        x = self.tensors[computed[0]]
        result = handler(node, x, _attributes(node))
        self.tensors[node.output[0]] = result
        for extra in node.output[1:]:  # Dropout's mask, MaxPool's indices
            if extra and any(extra in other.input for other in self.proto.graph.node):
                raise _Refused(f"its output {extra!r} is used; aujax supports only its first output")

    def _fold(self, node, op: str):
        """The value of a node whose inputs are all constants (a Shape: of a computed tensor)."""
        from onnx import numpy_helper

        attrs = _attributes(node)
        values = [self._constant(name) for name in node.input]
        if op == "Constant":
            if "value" in attrs:
                return numpy_helper.to_array(attrs["value"])
            for name in ("value_float", "value_floats", "value_int", "value_ints"):
                if name in attrs:
                    return np.array(attrs[name], np.float32 if "float" in name else np.int64)
            raise _Refused("only Constant nodes with a numeric value are supported")
        if op == "Shape":
            dims = _dims(self.shapes.get(node.input[0])) if node.input[0] not in self.constants else \
                self.constants[node.input[0]].shape
            if dims is None or any(d is None for d in dims[1:]):
                raise _Refused(f"the shape of {node.input[0]!r} is not known")
            return np.array([BATCH if node.input[0] not in self.constants else dims[0], *dims[1:]], object)
        if op == "Gather":
            return np.array(np.take(values[0], values[1].astype(np.int64), axis=attrs.get("axis", 0)),
                            values[0].dtype)
        if op in ("Unsqueeze", "Squeeze"):
            axes = attrs.get("axes", values[1] if len(values) > 1 else None)
            if op == "Squeeze":
                return np.squeeze(values[0], axis=None if axes is None else tuple(int(a) for a in axes))
            result = values[0]
            for axis in sorted(int(a) % (result.ndim + len(axes)) for a in axes):
                result = np.expand_dims(result, axis)
            return result
        if op == "Concat":
            return np.concatenate([np.atleast_1d(v) for v in values], axis=attrs["axis"])
        if op == "Cast" or op == "Identity":
            return values[0]
        if op == "Reshape":
            return values[0].reshape([int(s) for s in values[1]])
        if any(v.dtype == object for v in values):
            raise _Refused("arithmetic on a symbolic shape is not supported")
        return {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide}[op](*values)

    def _per_channel(self, value: np.ndarray, x: _Tensor) -> np.ndarray:
        """A constant that broadcasts along the channel axis of `x` only, as a (c,) vector in aujax's channel order."""
        rank = 2 if x.layout == "NC" else 4
        value = np.asarray(value, np.float32)
        if value.ndim > rank:
            raise _Refused(f"a constant of shape {value.shape} on a tensor of rank {rank}")
        shape = (1,) * (rank - value.ndim) + value.shape
        axis = _CHANNEL_AXIS[x.layout]
        if any(size != 1 for i, size in enumerate(shape) if i != axis) or shape[axis] not in (1, x.channels):
            raise _Refused(f"a constant of shape {value.shape} that is not one value per channel")
        return _in_aujax_order(np.broadcast_to(value.reshape(-1), (x.channels,)), x)

    def _parameters(self, node) -> list:
        """The constant parameter inputs of a linear node (None for an absent optional one)."""
        if any(name and name not in self.constants for name in node.input[1:]):
            raise _Refused("only constant weights and biases are supported")
        return [self._constant(name) for name in (*node.input[1:], "", "")[:2]]

    def _op_Conv(self, node, x, attrs):
        weight, bias = self._parameters(node)
        if weight.ndim != 4:
            raise _Refused("only 2-d convolutions are supported")
        self._require_4d(x, "Conv")
        groups = attrs.get("group", 1)
        kernel = np.transpose(weight, (2, 3, 1, 0))  # (c_out, c_in / g, kh, kw) -> HWIO
        if x.reversed:
            if groups != 1:
                raise _Refused("channel_order BGR with a grouped convolution on the pixels is not supported")
            kernel = kernel[:, :, ::-1, :]
        strides = tuple(attrs.get("strides", (1, 1)))
        dilation = tuple(attrs.get("dilations", (1, 1)))
        padding = self._padding(node, attrs, kernel.shape[:2], strides, dilation)
        params = {"kernel": kernel} | ({"bias": bias} if bias is not None else {})
        name = self._add(graph_lib.Conv, node.name, [x.node], params=params, features=kernel.shape[-1],
                         kernel=tuple(kernel.shape[:2]), strides=strides, padding=padding, dilation=dilation,
                         groups=groups, use_bias=bias is not None)
        return _Tensor(name, "NCHW", kernel.shape[-1])

    def _padding(self, node, attrs, window, strides, dilation) -> graph_lib.Padding:
        """ONNX pads [top, left, bottom, right] or auto_pad as ((top, bottom), (left, right))."""
        auto = attrs.get("auto_pad", b"NOTSET")
        auto = auto.decode() if isinstance(auto, bytes) else auto
        if auto in ("NOTSET", "VALID"):
            pads = attrs.get("pads", (0, 0, 0, 0)) if auto == "NOTSET" else (0, 0, 0, 0)
            return (pads[0], pads[2]), (pads[1], pads[3])
        dims = _dims(self.shapes.get(node.input[0]))
        spatial = None if dims is None else [dims[a] for a in _SPATIAL_AXES["NCHW"]]
        if spatial is None or None in spatial:
            raise _Refused(f"auto_pad {auto} needs the input's spatial size, which is not known")
        pads = []
        for size, k, s, d in zip(spatial, window, strides, dilation):
            total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
            small = total // 2
            pads.append((small, total - small) if auto == "SAME_UPPER" else (total - small, small))
        return tuple(pads)

    def _op_Gemm(self, node, x, attrs):
        weight, bias = self._parameters(node)
        if attrs.get("transA", 0) or x.layout != "NC":
            raise _Refused("only Gemm of a (batch, features) tensor (transA=0) is supported")
        kernel = (weight.T if attrs.get("transB", 0) else weight) * attrs.get("alpha", 1.0)
        params = {"kernel": kernel.astype(np.float32)}
        if bias is not None:
            bias = np.asarray(bias, np.float32).reshape(-1) * attrs.get("beta", 1.0)
            params["bias"] = np.broadcast_to(bias, (kernel.shape[1],)).astype(np.float32)
        return self._dense(node, x, params)

    def _op_MatMul(self, node, x, attrs):
        weight, _ = self._parameters(node)
        if weight.ndim != 2 or x.layout != "NC":
            raise _Refused("only MatMul of a (batch, features) tensor by a constant matrix is supported")
        return self._dense(node, x, {"kernel": weight})

    def _dense(self, node, x, params):
        if x.reversed:
            raise _Refused("a dense layer on the pixels of a BGR model is not supported")
        features = params["kernel"].shape[1]
        name = self._add(graph_lib.Dense, node.name, [x.node], params=params, features=features,
                         use_bias="bias" in params)
        return _Tensor(name, "NC", features)

    def _op_BatchNormalization(self, node, x, attrs):
        scale, bias, mean, var = (self._constant(name) for name in node.input[1:5])
        if any(v is None for v in (scale, bias, mean, var)) or attrs.get("training_mode", 0):
            raise _Refused("only inference-mode BatchNormalization with constant parameters is supported")
        if any(v.shape != (x.channels,) for v in (scale, bias, mean, var)):
            raise _Refused(f"parameters of shapes {[v.shape for v in (scale, bias, mean, var)]} for {x.channels} "
                           "channels")
        vectors = [_in_aujax_order(v, x) for v in (scale, bias, mean, var)]
        name = self._add(graph_lib.BatchNorm, node.name, [x.node], params={"scale": vectors[0], "bias": vectors[1]},
                         stats={"mean": vectors[2], "var": vectors[3]}, epsilon=float(attrs.get("epsilon", 1e-5)))
        return x._replace(node=name)

    def _elementwise(self, node, x, op):
        """Add / Sub / Mul / Div: of two computed tensors (Add only), or by a per-channel constant (an Affine)."""
        computed = self._computed(node)
        if len(computed) == 2:
            if op != "Add":
                raise _Refused(f"{op} of two computed tensors is not supported (only Add)")
            y = self.tensors[computed[1]]
            if (x.layout, x.channels, x.reversed) != (y.layout, y.channels, y.reversed):
                raise _Refused("Add of tensors of different layouts")
            return x._replace(node=self._add(graph_lib.Add, node.name, [x.node, y.node]))
        constant_first = node.input[0] in self.constants
        value = self._per_channel(self.constants[node.input[0 if constant_first else 1]], x)
        ones, zeros = np.ones_like(value), np.zeros_like(value)
        if op == "Div" and constant_first:
            raise _Refused("division by a computed tensor is not supported")
        scale, shift = {"Add": (ones, value), "Mul": (value, zeros), "Div": (1.0 / value, zeros),
                        "Sub": (-ones, value) if constant_first else (ones, -value)}[op]
        return x._replace(node=self._add(graph_lib.Affine, node.name, [x.node],
                                         params={"scale": scale, "shift": shift}))

    def _op_Add(self, node, x, attrs):
        return self._elementwise(node, x, "Add")

    def _op_Sub(self, node, x, attrs):
        return self._elementwise(node, x, "Sub")

    def _op_Mul(self, node, x, attrs):
        return self._elementwise(node, x, "Mul")

    def _op_Div(self, node, x, attrs):
        return self._elementwise(node, x, "Div")

    def _op_Relu(self, node, x, attrs):
        return x._replace(node=self._add(graph_lib.Relu, node.name, [x.node]))

    def _op_LeakyRelu(self, node, x, attrs):
        return x._replace(node=self._add(graph_lib.LeakyRelu, node.name, [x.node],
                                         slope=float(attrs.get("alpha", 0.01))))

    def _op_Clip(self, node, x, attrs):
        if any(name and name not in self.constants for name in node.input[1:3]):
            raise _Refused("only Clip with constant bounds is supported")
        low_name, high_name = (list(node.input[1:3]) + ["", ""])[:2]  # opset >= 11: inputs; before: attributes
        low = float(self.constants[low_name]) if low_name else attrs.get("min", -math.inf)
        high = float(self.constants[high_name]) if high_name else attrs.get("max", math.inf)
        if low == 0.0 and high == math.inf:
            return self._op_Relu(node, x, attrs)
        return x._replace(node=self._add(graph_lib.Clip, node.name, [x.node], low=float(low), high=float(high)))

    def _pool(self, node, x, attrs, kind, **fields):
        self._require_4d(x, node.op_type)
        if any(d != 1 for d in attrs.get("dilations", (1, 1))):
            raise _Refused("dilated pooling is not supported")
        window = tuple(attrs["kernel_shape"])
        strides = tuple(attrs.get("strides", (1, 1)))
        padding = self._padding(node, attrs, window, strides, (1, 1))
        return x._replace(node=self._add(kind, node.name, [x.node], window=window, strides=strides, padding=padding,
                                         ceil_mode=bool(attrs.get("ceil_mode", 0)), **fields))

    def _op_MaxPool(self, node, x, attrs):
        return self._pool(node, x, attrs, graph_lib.MaxPool)

    def _op_AveragePool(self, node, x, attrs):
        return self._pool(node, x, attrs, graph_lib.AvgPool,
                          count_include_pad=bool(attrs.get("count_include_pad", 0)))

    def _op_GlobalAveragePool(self, node, x, attrs):
        self._require_4d(x, "GlobalAveragePool")
        return x._replace(node=self._add(graph_lib.GlobalAvgPool, node.name, [x.node]), layout=f"pooled_{x.layout}")

    def _op_ReduceMean(self, node, x, attrs):
        axes = attrs.get("axes", self._constant(node.input[1]) if len(node.input) > 1 else None)
        if x.layout not in _SPATIAL_AXES or axes is None or \
                sorted(int(a) % 4 for a in axes) != list(_SPATIAL_AXES[x.layout]):
            raise _Refused("only ReduceMean over the spatial axes (a global average pool) is supported")
        name = self._add(graph_lib.GlobalAvgPool, node.name, [x.node])
        return x._replace(node=name, layout=f"pooled_{x.layout}" if attrs.get("keepdims", 1) else "NC")

    def _to_features(self, node, x) -> _Tensor:
        """Flatten to (batch, features), in the element order of the ONNX layout."""
        if x.reversed:
            raise _Refused("flattening the pixels of a BGR model is not supported")
        if x.layout in ("NC", "pooled_NCHW", "pooled_NHWC"):
            return x._replace(layout="NC")
        name = self._add(graph_lib.Flatten, node.name, [x.node], layout=x.layout)
        dims = _dims(self.shapes.get(node.output[0]))
        return _Tensor(name, "NC", dims[1] if dims and len(dims) == 2 and dims[1] else -1)

    def _op_Flatten(self, node, x, attrs):
        if attrs.get("axis", 1) != 1:
            raise _Refused("only Flatten with axis=1 is supported")
        return self._to_features(node, x)

    def _op_Reshape(self, node, x, attrs):
        target = self._constant(node.input[1])
        if target is None or len(target) != 2:
            raise _Refused(f"only Reshape to (batch, features) is supported (target {target})")
        return self._to_features(node, x)

    def _op_Squeeze(self, node, x, attrs):
        axes = attrs.get("axes", self._constant(node.input[1]) if len(node.input) > 1 else None)
        if not x.layout.startswith("pooled_") or (axes is not None and sorted(int(a) % 4 for a in axes) !=
                                                   list(_SPATIAL_AXES[x.layout.removeprefix("pooled_")])):
            raise _Refused("only Squeeze of the spatial axes of a globally pooled tensor is supported")
        return x._replace(layout="NC")

    def _op_Transpose(self, node, x, attrs):
        perm = tuple(attrs.get("perm", ()))
        layouts = {("NHWC", (0, 3, 1, 2)): "NCHW", ("NCHW", (0, 2, 3, 1)): "NHWC"}
        if (x.layout, perm) not in layouts:
            raise _Refused(f"only a Transpose between NHWC and NCHW is supported (perm {list(perm)} of {x.layout})")
        return x._replace(layout=layouts[x.layout, perm])

    def _op_Concat(self, node, x, attrs):
        if any(name not in self.tensors for name in node.input):
            raise _Refused("only Concat of computed tensors (or of constants alone) is supported")
        parts = [self.tensors[name] for name in node.input]
        axis = attrs["axis"] % (2 if x.layout == "NC" else 4)
        if any(p.layout != x.layout or p.reversed for p in parts) or axis != _CHANNEL_AXIS[x.layout]:
            raise _Refused("only Concat of computed tensors of one layout along the channel axis is supported")
        name = self._add(graph_lib.Concat, node.name, [p.node for p in parts])
        return x._replace(node=name, channels=sum(p.channels for p in parts))

    def _op_Identity(self, node, x, attrs):
        return x

    _op_Dropout = _op_Identity

    def _op_Cast(self, node, x, attrs):
        if attrs.get("to") not in (1, 10, 11):  # float, float16, double
            raise _Refused("only a Cast of computed tensors to a float type is supported")
        return x

    def _op_Sigmoid(self, node, x, attrs):
        return self._activation(node, x, graph_lib.Sigmoid)

    def _op_Softmax(self, node, x, attrs):
        if x.layout != "NC" or attrs.get("axis", -1) % 2 != 1:
            raise _Refused("only Softmax over the outputs of a (batch, outputs) tensor is supported")
        return self._activation(node, x, graph_lib.Softmax)

    def _activation(self, node, x, kind):
        if node.output[0] != self.proto.graph.output[0].name or x.layout != "NC":
            raise _Refused("supported only as the model's last node, on its (batch, outputs) output")
        return x._replace(node=self._add(kind, node.name, [x.node]))

    def _require_4d(self, x: _Tensor, op: str) -> None:
        if x.layout not in _SPATIAL_AXES:
            raise _Refused(f"{op} needs a 4-d image tensor, got one of layout {x.layout}")


def _in_aujax_order(vector: np.ndarray, x: _Tensor) -> np.ndarray:
    """A (c,) per-channel vector of ONNX tensor `x` in the channel order aujax holds `x` in."""
    return np.array(vector[::-1] if x.reversed else vector, np.float32)


def _dims(info) -> tuple | None:
    """The dimensions of a ValueInfo (None for unknown ones), or None when it has no shape."""
    if info is None or not info.type.tensor_type.HasField("shape"):
        return None
    return tuple(d.dim_value if d.HasField("dim_value") else None for d in info.type.tensor_type.shape.dim)
