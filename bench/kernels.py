"""The floor under the edge model's latency: ONNX Runtime's matrix kernels on this CPU. Prints JSON.

    .venv/bin/python -m bench.kernels [--bundle work/bundles/<run id>] [--save]

Times one INT8 weight matrix of MiniLM's feed-forward layer (384 x 1536) as the INT8 model
runs it (``DynamicQuantizeMatMul``: activations quantized at run time, U8S8 kernels), against
the same product in FP32 (``MatMul``), on one thread, for a single query's rows (22 tokens)
and a batch's (64 x 22). MiniLM-L6 does 10.6 M multiply-adds per token in its weight matrices
(6 layers x (4 x 384² + 2 x 384 x 1536)): at the INT8 kernel's measured rate, that is the least
time a query of N tokens can take, before attention, layer norms, GELU and per-op overhead.
With ``--bundle`` the floor is also given for the bundle's edge model, from the weight
matrices of its encoder layers (a 3-layer student has half the 6-layer model's).
``--save`` writes ``bench/results/kernels.json``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from bench.common import emit

HIDDEN, FFN, LAYERS = 384, 1536, 6
MACS_PER_TOKEN = LAYERS * (4 * HIDDEN * HIDDEN + 2 * HIDDEN * FFN)


def session(int8: bool) -> ort.InferenceSession:
    rng = np.random.default_rng(0)
    if int8:
        node = helper.make_node(
            "DynamicQuantizeMatMul", ["x", "w", "scale", "zero"], ["y"], domain="com.microsoft"
        )
        weights = [
            numpy_helper.from_array(rng.integers(-127, 127, (HIDDEN, FFN)).astype(np.int8), "w"),
            numpy_helper.from_array(np.array(0.01, np.float32), "scale"),
            numpy_helper.from_array(np.array(0, np.int8), "zero"),
        ]
    else:
        node = helper.make_node("MatMul", ["x", "w"], ["y"])
        weights = [numpy_helper.from_array(rng.standard_normal((HIDDEN, FFN)).astype(np.float32), "w")]
    graph = helper.make_graph(
        [node], "gemm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["rows", HIDDEN])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["rows", FFN])], weights,
    )  # fmt: skip
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    )
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def rate(sess: ort.InferenceSession, rows: int, repeat: int) -> float:
    """Multiply-adds per second, best of 5 rounds."""
    x = np.random.default_rng(1).standard_normal((rows, HIDDEN)).astype(np.float32)
    for _ in range(10):
        sess.run(None, {"x": x})
    best = 0.0
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(repeat):
            sess.run(None, {"x": x})
        best = max(best, repeat * rows * HIDDEN * FFN / (time.perf_counter() - start))
    return best


def layer_macs_per_token(model: Path) -> tuple[int, int]:
    """Multiply-adds per token in the weight matrices of an ONNX model's encoder layers, and the
    number of layers."""
    import onnx

    from tasks.compress import DYNAMIC_PRODUCTS, LAYER_NODE, QUANTIZABLE

    graph = onnx.load(str(model), load_external_data=False).graph
    shapes = {i.name: list(i.dims) for i in graph.initializer}
    # Static INT8 multiplies by a weight dequantized from an initializer.
    shapes |= {
        n.output[0]: shapes[n.input[0]]
        for n in graph.node
        if n.op_type == "DequantizeLinear" and n.input[0] in shapes
    }
    macs, layers = 0, set()
    for node in graph.node:
        match = LAYER_NODE.search(node.name)
        weights = [shapes[i] for i in node.input if len(shapes.get(i, [])) == 2]
        if match and weights and node.op_type in {*QUANTIZABLE, *DYNAMIC_PRODUCTS}:
            layers.add(match.group(1))
            macs += max(int(np.prod(w)) for w in weights)
    return macs, len(layers)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", type=Path, help="also the floor of this bundle's edge model")
    parser.add_argument("--save", action="store_true")
    args = parser.parse_args()
    report: dict = {"macs_per_token": MACS_PER_TOKEN}
    served = None
    if args.bundle is not None:
        from edgeroute.bundle import EDGE_MODEL, load_bundle

        load_bundle(args.bundle)
        served, layers = layer_macs_per_token(args.bundle / EDGE_MODEL)
        report["bundle"] = {"path": str(args.bundle), "layers": layers, "macs_per_token": served}
    sessions = {"int8": session(True), "fp32": session(False)}
    for rows, label in ((22, "one_query_22_tokens"), (64 * 22, "batch_64x22_tokens")):
        gmacs = {name: rate(s, rows, 200 if rows < 100 else 20) / 1e9 for name, s in sessions.items()}
        report[label] = {
            "int8_gmac_per_s": round(gmacs["int8"], 1),
            "fp32_gmac_per_s": round(gmacs["fp32"], 1),
            "int8_vs_fp32": round(gmacs["int8"] / gmacs["fp32"], 2),
            "weight_matmul_floor_ms_per_query": round(22 * MACS_PER_TOKEN / (gmacs["int8"] * 1e9) * 1000, 3),
        }
        if served is not None:
            floor = 22 * served / (gmacs["int8"] * 1e9) * 1000
            report[label]["bundle_weight_matmul_floor_ms_per_query"] = round(floor, 3)
    emit("kernels", report, args.save)


if __name__ == "__main__":
    main()
