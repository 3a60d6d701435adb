"""ONNX patch classifiers as other tools write them, for the `infer import` tests (test-side only).

usage: foreign_models.py OUT_DIR
Writes, with the `onnx` package, small 3-D CNNs (Conv -> ReLU -> GlobalAveragePool ->
Flatten -> Gemm) with fixed random weights, and for each the reference output on a given
batch is left to ONNX Runtime in the tests. Files:
  named.onnx        input `input` [N,1,16,16,16], output `output` [N,1]: a logit
  sigmoid.onnx      input `x` [batch,1,16,16,16], output `probability` [N] after a Sigmoid
  symbolic.onnx     input `volume` [N,1,d,d,d] (symbolic spatial sizes), output `score` [N,1]
  logit_prob.onnx   a probability output named `logit` (its name is ours: renamed on import)
  two_outputs.onnx  outputs `score` [N,1] and `features` [N,4]
  rank4.onnx        input `image` [N,1,16,16] (2-D): not a patch classifier
  multi_input.onnx  inputs `a` and `b`
  external.onnx     as named.onnx, its weights in external.onnx.data (as torch.onnx.export
                    writes them)
  escape.onnx       external data at "../outside.data": outside the model's folder
  short.onnx        external data whose range runs past the end of short.onnx.data
  fixed1.onnx       input [1,1,16,16,16] and a Reshape to [1, 4] baked in (torch.onnx.export
                    without dynamic_axes), output [1,1]
  fixed3.onnx       the same for a fixed batch of 3
  two_class.onnx    output `logits` [N,2]: two class scores (MONAI's default classifier head)
  softmax.onnx      output `prob` [N,2] after a Softmax over the classes
  nested_if.onnx    a node holding 3,000 `If` subgraphs nested in each other
  linked.onnx       external data named `linked.onnx.data`, a symbolic link to a file
                    outside the model's folder
"""
import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

out = sys.argv[1]
os.makedirs(out, exist_ok=True)
rng = np.random.default_rng(7)


def init(name, shape, scale=0.2):
    return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)


def cnn(in_name, in_shape, out_name, head=None, spatial=3, channels=4, classes=1):
    k = [3] * spatial
    inits = [
        init("conv.w", [channels, 1] + k),
        init("conv.b", [channels]),
        init("fc.w", [classes, channels], 1.0),
        init("fc.b", [classes], 0.1),
    ]
    nodes = [
        helper.make_node("Conv", [in_name, "conv.w", "conv.b"], ["c"], pads=[1] * (2 * spatial)),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "fc.w", "fc.b"], ["z"], transB=1),
    ]
    outputs = []
    if head == "sigmoid_1d":
        inits.append(numpy_helper.from_array(np.array([-1], dtype=np.int64), "flat"))
        nodes += [
            helper.make_node("Sigmoid", ["z"], ["p2"]),
            helper.make_node("Reshape", ["p2", "flat"], [out_name]),
        ]
        outputs.append(helper.make_tensor_value_info(out_name, TensorProto.FLOAT, ["N"]))
    elif head == "sigmoid":
        nodes.append(helper.make_node("Sigmoid", ["z"], [out_name]))
        outputs.append(helper.make_tensor_value_info(out_name, TensorProto.FLOAT, ["N", 1]))
    elif head == "softmax":
        nodes.append(helper.make_node("Softmax", ["z"], [out_name], axis=1))
        outputs.append(helper.make_tensor_value_info(out_name, TensorProto.FLOAT, ["N", classes]))
    elif head == "fixed":
        # What torch.onnx.export writes for `x.view(1, -1)` without dynamic axes.
        b = in_shape[0]
        inits.append(numpy_helper.from_array(np.array([b, channels], dtype=np.int64), "fixed_shape"))
        nodes[3] = helper.make_node("Reshape", ["g", "fixed_shape"], ["f"])
        nodes.append(helper.make_node("Identity", ["z"], [out_name]))
        outputs.append(helper.make_tensor_value_info(out_name, TensorProto.FLOAT, [b, classes]))
    else:
        nodes.append(helper.make_node("Identity", ["z"], [out_name]))
        outputs.append(helper.make_tensor_value_info(out_name, TensorProto.FLOAT, ["N", classes]))
    inputs = [helper.make_tensor_value_info(in_name, TensorProto.FLOAT, in_shape)]
    return nodes, inits, inputs, outputs


def save(name, nodes, inits, inputs, outputs, external=False):
    graph = helper.make_graph(nodes, name, inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="pytorch-like")
    model.ir_version = 8
    model.metadata_props.add(key="author", value="someone else")
    onnx.checker.check_model(model, full_check=True)
    path = os.path.join(out, name + ".onnx")
    if external:
        onnx.save(model, path, save_as_external_data=True, all_tensors_to_one_file=True,
                  location=name + ".onnx.data", size_threshold=0)
    else:
        onnx.save(model, path)


def tamper(name, location=None, length=None):
    """Rewrites the first initializer's external data reference of `name`.onnx."""
    path = os.path.join(out, name + ".onnx")
    m = onnx.load(path, load_external_data=False)
    for e in m.graph.initializer[0].external_data:
        if location is not None and e.key == "location":
            e.value = location
        if length is not None and e.key == "length":
            e.value = str(length)
    onnx.save(m, path)


save("named", *cnn("input", ["N", 1, 16, 16, 16], "output"))
save("sigmoid", *cnn("x", ["batch", 1, 16, 16, 16], "probability", head="sigmoid_1d"))
save("symbolic", *cnn("volume", ["N", 1, "d", "d", "d"], "score"))
save("logit_prob", *cnn("input", ["N", 1, 16, 16, 16], "logit", head="sigmoid"))
nodes, inits, inputs, outputs = cnn("input", ["N", 1, 16, 16, 16], "score")
nodes.append(helper.make_node("Identity", ["f"], ["features"]))
outputs.append(helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", 4]))
save("two_outputs", nodes, inits, inputs, outputs)
save("rank4", *cnn("image", ["N", 1, 16, 16], "score", spatial=2))
nodes, inits, inputs, outputs = cnn("a", ["N", 1, 16, 16, 16], "score")
nodes[0].input[0] = "a"
inputs.append(helper.make_tensor_value_info("b", TensorProto.FLOAT, ["N", 1]))
nodes.append(helper.make_node("Identity", ["b"], ["b_out"]))
outputs.append(helper.make_tensor_value_info("b_out", TensorProto.FLOAT, ["N", 1]))
save("multi_input", nodes, inits, inputs, outputs)
save("external", *cnn("input", ["N", 1, 16, 16, 16], "output"), external=True)
save("escape", *cnn("input", ["N", 1, 16, 16, 16], "output"), external=True)
tamper("escape", location="../outside.data")
with open(os.path.join(out, "..", "outside.data"), "wb") as f:
    f.write(os.urandom(4096))
save("short", *cnn("input", ["N", 1, 16, 16, 16], "output"), external=True)
tamper("short", length=1 << 20)
save("fixed1", *cnn("input", [1, 1, 16, 16, 16], "output", head="fixed"))
save("fixed3", *cnn("input", [3, 1, 16, 16, 16], "output", head="fixed"))
save("two_class", *cnn("input", ["N", 1, 16, 16, 16], "logits", classes=2))
save("softmax", *cnn("input", ["N", 1, 16, 16, 16], "prob", head="softmax", classes=2))


def field(num, payload):
    """A length-delimited protobuf field."""
    key, n = (num << 3) | 2, len(payload)
    out = bytearray()
    for v in (key, n):
        while True:
            b = v & 0x7F
            v >>= 7
            out.append(b | (0x80 if v else 0))
            if not v:
                break
    return bytes(out) + payload


# 3,000 If nodes, each the then-branch of the one around it (built as bytes: onnx's own
# serializer would recurse as deep).
inner = b""
for _ in range(3000):
    attr = field(1, b"then_branch") + bytes([0xA0, 0x01, 5]) + field(6, inner)
    node = field(1, b"cond") + field(2, b"o") + field(4, b"If") + field(5, attr)
    inner = field(1, node)
nodes, inits, inputs, outputs = cnn("input", ["N", 1, 16, 16, 16], "output")
m = helper.make_model(helper.make_graph(nodes, "g", inputs, outputs, initializer=inits),
                      opset_imports=[helper.make_opsetid("", 17)])
m.ir_version = 8
raw = m.SerializeToString()
# The deep node appended to the main graph (field 7 of the model): re-encode the graph.
g = m.graph.SerializeToString() + field(1, field(1, b"cond") + field(2, b"deep") + field(4, b"If")
                                         + field(5, field(1, b"then_branch") + bytes([0xA0, 0x01, 5]) + field(6, inner)))
m.ClearField("graph")
with open(os.path.join(out, "nested_if.onnx"), "wb") as f:
    f.write(m.SerializeToString() + field(7, g))
# External data through a symbolic link that leads out of the model's folder.
save("linked", *cnn("input", ["N", 1, 16, 16, 16], "output"), external=True)
secret = os.path.join(out, "..", "secret.data")
os.replace(os.path.join(out, "linked.onnx.data"), secret)
os.symlink(os.path.abspath(secret), os.path.join(out, "linked.onnx.data"))
print("ok")
