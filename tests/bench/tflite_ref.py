"""B6 reference: latency per window of the TFLite reference interpreter (ai-edge-litert).

Usage: tflite_ref.py MODEL.tflite GOLDEN.json SECONDS
Runs the golden inputs through the interpreter (one thread, batch 1) for about SECONDS,
with its default XNNPACK delegate and again with its plain built-in kernels, and prints one
JSON line: {"per_call_s": ..., "plain_per_call_s": ..., "calls": ..., "max_abs_err": ...}.
"""

import json
import sys
import time

import numpy as np
from ai_edge_litert.interpreter import Interpreter, OpResolverType


def timed(model: str, vectors: list, seconds: float, resolver: OpResolverType) -> tuple:
    """(seconds per call, calls, largest error against the golden outputs)."""
    interp = Interpreter(model_path=model, num_threads=1, experimental_op_resolver_type=resolver)
    interp.allocate_tensors()
    inp = interp.get_input_details()[0]
    out = interp.get_output_details()[0]
    inputs = [np.asarray(v["input"], dtype=np.float32).reshape(inp["shape"]) for v in vectors]
    max_err = 0.0
    for x, v in zip(inputs, vectors):
        interp.set_tensor(inp["index"], x)
        interp.invoke()
        y = interp.get_tensor(out["index"]).ravel()
        max_err = max(max_err, float(np.max(np.abs(y - np.asarray(v["output"], dtype=np.float32)))))
    calls = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        for x in inputs:
            interp.set_tensor(inp["index"], x)
            interp.invoke()
            interp.get_tensor(out["index"])
            calls += 1
    elapsed = time.perf_counter() - start
    return elapsed / calls, calls, max_err


def main() -> None:
    model, golden, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
    with open(golden, encoding="utf-8") as f:
        vectors = json.load(f)["vectors"]
    per_call, calls, max_err = timed(model, vectors, seconds, OpResolverType.AUTO)
    plain, _, _ = timed(
        model, vectors, seconds, OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    )
    print(
        json.dumps(
            {"per_call_s": per_call, "plain_per_call_s": plain, "calls": calls, "max_abs_err": max_err}
        )
    )


if __name__ == "__main__":
    main()
