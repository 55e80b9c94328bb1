"""A valid manifest of the bundled fixture's ONNX export, as a dict, with changes: the input the manifest
fuzz cases and the requires tests start from."""

from __future__ import annotations

DROP = object()  # a change that deletes the key


def valid_manifest(**changes) -> dict:
    """The manifest, with each ``dotted.path=value`` change applied (``DROP`` deletes the key)."""
    doc = {
        "model": "mobilevit_xxs.cifar10", "target": "onnx", "precision": "fp32", "sha256": "0" * 64,
        "preprocessing": {"resize": 64, "crop": [64, 64], "interpolation": "bilinear", "value_scale": 255.0,
                          "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "channel_order": "RGB",
                          "in_graph": False},
        "inputs": [{"name": "input", "shape": [1, 3, 64, 64], "dtype": "float32", "layout": "NCHW",
                    "scale": None, "zero_point": None}],
        "outputs": [{"name": "logits", "shape": [1, 10], "dtype": "float32"}],
        "batch": 1, "num_classes": 10, "requires": {"onnxruntime": ">=1.14"},
    }
    for path, value in changes.items():
        node, keys = doc, path.split(".")
        for k in keys[:-1]:
            node = node[int(k)] if isinstance(node, list) else node[k]
        last = keys[-1]
        if value is DROP:
            del node[last]
        elif isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
    return doc


