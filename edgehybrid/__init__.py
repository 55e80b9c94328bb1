"""edgehybrid: export hybrid attention + convolution models to ONNX, Core ML, TFLite and ExecuTorch, validated
against PyTorch, checked for drift and profiled on their runtime.

The Python API (see :mod:`edgehybrid.api`) is small: :func:`export`, :func:`check`, :func:`profile`, :func:`compare`, the
:class:`Preprocessing` a model of your own needs, the results :class:`Exported` and :class:`CheckReport`, and
the errors every bad input raises. Importing the package is cheap; torch loads on first use.
"""

__version__ = "0.1.0"

__all__ = ["CheckFailedError", "CheckReport", "EdgeHybridError", "Exported", "InputError", "Preprocessing",
           "ValidationError", "check", "compare", "export", "profile"]

_LAZY = {
    "export": "edgehybrid.api", "check": "edgehybrid.api", "profile": "edgehybrid.api", "compare": "edgehybrid.api",
    "Exported": "edgehybrid.api", "CheckReport": "edgehybrid.api",
    "Preprocessing": "models_zoo.registry",
    "EdgeHybridError": "edgehybrid.errors", "InputError": "edgehybrid.errors",
    "CheckFailedError": "edgehybrid.errors", "ValidationError": "edgehybrid.errors",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'edgehybrid' has no attribute {name!r}")
