"""ExecuTorch: runs ``.pte`` programs with the ExecuTorch Python runtime (``executorch.runtime``), XNNPACK
and the portable kernels registered, as an app on a phone or a Linux board would.

The program's I/O is read from the file (``MethodMeta``); a ``.pte`` carries no tensor names, so they are
the ones every edgehybrid artifact uses (``input`` -> ``logits``), NCHW. Threads: XNNPACK's thread pool is
one per process and may only be resized before any method is loaded (later it corrupts the heap), so the
first session of a process sets it and later ones report the size they run with (``details``).

The runtime aborts the whole process (C++ ``terminate``) on some corrupt files instead of raising, so the
header is checked here first: the flatbuffer identifier (``ET12``), the extended header (``eh00``) and the
sizes it declares against the file's; only then is the file handed to ExecuTorch.
"""

from __future__ import annotations

import contextlib
import os
import struct
import sys
from pathlib import Path

import numpy as np

from edgehybrid.errors import EdgeHybridError, InputError
from edgehybrid.runtimes import checked_feeds
from exporters.base import INPUT_NAME, OUTPUT_NAME, TensorInfo, require

#: ExecuTorch ScalarType codes -> numpy dtype names
_DTYPES = {6: "float32", 5: "float16", 7: "float64", 0: "uint8", 1: "int8", 3: "int32", 4: "int64", 11: "bool"}
_pool_threads: int | None = None  # set once per process, before the first method is loaded


def check_header(path: Path) -> dict:
    """The ``.pte`` header's figures, or a one-line InputError for a file that is not a whole ExecuTorch program."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(64)
    except OSError as exc:
        raise InputError(f"cannot read {str(path)!r}: {exc.strerror or exc}") from None
    bad = f"{str(path)!r} is not an ExecuTorch program (.pte)"
    if len(head) < 16 or head[4:6] != b"ET" or not head[6:8].isdigit():
        raise InputError(f"{bad}: no ExecuTorch file identifier; re-export it")
    info = {"file_identifier": head[4:8].decode(), "size": size}
    if head[8:12] == b"eh00":
        if len(head) < 40:
            raise InputError(f"{bad}: its header is cut short; the file is truncated, re-export it")
        header_len, program_size, segment_base, segment_size = struct.unpack_from("<IQQQ", head, 12)
        info.update(program_size=program_size, segment_base_offset=segment_base, segment_data_size=segment_size)
        needed = max(program_size, segment_base + segment_size if segment_size else 0)
        if size < needed:
            raise InputError(f"{str(path)!r} is truncated: its header declares {needed} bytes, the file has {size}; "
                             "re-export it")
    return info


class ExecuTorchSession:
    """One ``.pte`` loaded: ``inputs`` / ``outputs`` (read from the program), ``run(feeds) -> {name: ndarray}``."""

    def __init__(self, path: Path, threads: int):
        global _pool_threads
        self.path = Path(path)
        if not self.path.is_file():
            what = "is a folder, not a .pte file" if self.path.is_dir() else "does not exist"
            raise InputError(f"ExecuTorch program {str(self.path)!r} {what}")
        self.header = check_header(self.path)
        with _quiet_stderr():  # torchao's optional kernels and cpuinfo's probing print to fd 2 on import / load
            from calibration.annotate import torchao

            torchao()
            runtime_mod = require("executorch.runtime", "executorch", "Running ExecuTorch programs")
        import torch  # the Python runtime takes and returns torch tensors

        self._torch = torch
        if _pool_threads is None:
            from executorch.extension.pybindings import portable_lib

            with _quiet_stderr():
                portable_lib._unsafe_reset_threadpool(int(threads))
            _pool_threads = int(threads)
        try:
            with _quiet_stderr():
                program = runtime_mod.Runtime.get().load_program(
                    self.path, verification=runtime_mod.Verification.InternalConsistency)
                self._method = program.load_method("forward")
                meta = program.metadata("forward")
        except Exception as exc:  # noqa: BLE001 - the runtime raises RuntimeError with an error code
            raise InputError(f"ExecuTorch cannot load {str(self.path)!r} ({_short(exc)}): the file is corrupt or "
                             "needs a kernel or backend this runtime lacks; re-export it") from exc
        if self._method is None:
            raise InputError(f"{str(self.path)!r} has no 'forward' method; it was not exported by edgehybrid")
        self.inputs = [_info(INPUT_NAME if i == 0 else f"input_{i}", meta.input_tensor_meta(i), "NCHW")
                       for i in range(meta.num_inputs())]
        self.outputs = [_info(OUTPUT_NAME if i == 0 else f"output_{i}", meta.output_tensor_meta(i), None)
                        for i in range(meta.num_outputs())]
        from importlib.metadata import version

        self.details = {"threads": _pool_threads, "executorch": version("executorch"), **self.header}

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        arrays = checked_feeds("the ExecuTorch program", self.path.name, self.inputs, feeds)
        tensors = [self._torch.from_numpy(np.ascontiguousarray(arrays[i.name], dtype=i.dtype)) for i in self.inputs]
        try:
            results = self._method.execute(tensors)
        except Exception as exc:  # noqa: BLE001
            raise EdgeHybridError(f"ExecuTorch failed running {self.path.name}: {_short(exc)}") from exc
        return {info.name: np.asarray(value.numpy() if hasattr(value, "numpy") else value)
                for info, value in zip(self.outputs, results)}


class ExecuTorchRuntime:
    name = "executorch"
    extra = "executorch"
    threads_per_session = False  # one thread pool per process, sized by the first load

    def load(self, artifact: Path, threads: int = 2) -> ExecuTorchSession:
        return ExecuTorchSession(Path(artifact), threads)


@contextlib.contextmanager
def _quiet_stderr():
    """Point file descriptor 2 at /dev/null (C++ logging that Python cannot catch); restored after."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _info(name: str, meta, layout: str | None) -> TensorInfo:
    shape = tuple(int(d) for d in meta.sizes())
    return TensorInfo(name=name, shape=shape, dtype=_DTYPES.get(int(meta.dtype()), str(meta.dtype())),
                      layout=layout if len(shape) == 4 else None)


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:300] + ("..." if len(text) > 300 else "")


RUNTIME = ExecuTorchRuntime()
