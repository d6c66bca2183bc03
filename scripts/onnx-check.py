#!/usr/bin/env python3
"""Runs an exported model.onnx in onnxruntime on float32 rows and writes its logits.

usage: onnx-check.py MODEL.onnx ROWS.f32 FEATURES LOGITS.f32

ROWS.f32 holds little-endian float32 rows of FEATURES values; LOGITS.f32 receives the logits in
the same encoding. The comparison with Ferrotrain's own logits is the caller's.
"""
import sys

import numpy as np
import onnxruntime


def main() -> None:
    model, rows, features, logits = sys.argv[1:5]
    inputs = np.fromfile(rows, dtype="<f4").reshape(-1, int(features))
    session = onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"])
    (out,) = session.run(["logits"], {"input": inputs})
    out.astype("<f4").tofile(logits)
    print(f"onnxruntime {onnxruntime.__version__}: {out.shape[0]} rows, {out.shape[1]} logits each")


if __name__ == "__main__":
    main()
