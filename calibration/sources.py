"""Where calibration tensors come from: a folder of images (or sound files, for a speech model), a ``.npy`` /
``.npz`` of preprocessed tensors, the inputs bundled with the package, or (only when asked) random data.

A source is small on purpose (ONNX Runtime's calibration reader is one method; ours is an iterable with a
length): it yields preprocessed float32 batches (``(n, 3, H, W)`` images, ``(n, samples)`` clips) one at a
time, decoding each file only when its batch is due, so peak memory depends on the batch size and not on the
number of files.
``.npy`` files are memory-mapped for the same reason.
"""

from __future__ import annotations

import warnings
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from calibration.audio import AUDIO_SUFFIXES
from calibration.preprocess import IMAGE_SUFFIXES, files_text, find_inputs, load_sample, model_input
from edgehybrid.errors import EdgeHybridWarning, InputError
from models_zoo.registry import AudioFrontEnd, Preprocessing

CALIB_DIR = Path(__file__).resolve().parents[1] / "edgehybrid" / "data" / "calibration"
DATA_DIR = CALIB_DIR.parent  # edgehybrid/data
BUNDLED = "bundled:"  # a data path inside the installed package: bundled:cifar10/eval


def data_path(value: str | Path, base: Path | None = None) -> Path:
    """``bundled:<folder>`` names a folder of the package's own data (so it works on any install, from any
    working directory); any other value is a path, relative to ``base`` when given."""
    text = str(value)
    if text.startswith(BUNDLED):
        rel = text[len(BUNDLED):].strip("/")
        folder = DATA_DIR / rel
        if not rel or ".." in Path(rel).parts or not folder.is_dir():
            known = sorted(str(d.relative_to(DATA_DIR)) for d in DATA_DIR.glob("*/*") if d.is_dir())
            raise InputError(f"{text!r} is not a bundled data folder; bundled folders: "
                             + ", ".join(BUNDLED + k for k in known))
        return folder
    p = Path(text).expanduser()
    return p if p.is_absolute() or base is None else base / p
SYNTHETIC = "synthetic"
#: below this many readable images, activation ranges are guesses; refuse rather than quantize on them
MIN_IMAGES = 4
DEFAULT_SIZE = 128


class CalibrationSource(Protocol):
    """A finite stream of preprocessed batches for one model's input."""

    description: str

    def __len__(self) -> int:
        """How many samples the stream yields in total."""

    def batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        """Float32 ``(n, *input_shape)`` batches, ``n <= batch_size``, the same ones on every call."""


@dataclass
class ImageFolderSource:
    """Image (or sound) files decoded lazily; unreadable ones are skipped and counted in :attr:`skipped`."""

    paths: list[Path]
    pre: Preprocessing | AudioFrontEnd
    description: str
    skipped: list[str] | None = None
    minimum: int = MIN_IMAGES  # fewer readable images than this is an error

    def __len__(self) -> int:
        return len(self.paths)

    def batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        self.skipped = []
        good = 0
        chunk: list[np.ndarray] = []
        for path in self.paths:
            try:
                chunk.append(load_sample(path, self.pre))
            except InputError:
                self.skipped.append(path.name)
                continue
            good += 1
            if len(chunk) == batch_size:
                yield torch.from_numpy(model_input(np.stack(chunk), self.pre))
                chunk = []
        if chunk:
            yield torch.from_numpy(model_input(np.stack(chunk), self.pre))
        if good < self.minimum:
            example = f", e.g. {self.skipped[0]!r}" if self.skipped else ""
            raise InputError(
                f"only {good} of {len(self.paths)} calibration {self.pre.noun} in {self.description} could be read "
                f"({len(self.skipped)} unreadable{example}); calibration needs at least "
                f"{self.minimum}: add readable {files_text(self.pre)}"
            )


@dataclass
class ArraySource:
    """Already-preprocessed tensors from a ``.npy`` (memory-mapped) or one array of a ``.npz``."""

    array: np.ndarray
    description: str

    def __len__(self) -> int:
        return int(self.array.shape[0])

    def batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        for i in range(0, len(self), batch_size):
            yield torch.from_numpy(np.ascontiguousarray(self.array[i : i + batch_size], dtype=np.float32))


@dataclass
class SyntheticSource:
    """Seeded standard-normal tensors: exercises the pipeline, says nothing about accuracy."""

    shape: tuple[int, ...]
    count: int
    seed: int
    description: str = "synthetic random tensors"

    def __len__(self) -> int:
        return self.count

    def batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        gen = torch.Generator().manual_seed(self.seed)
        for i in range(0, self.count, batch_size):
            yield torch.randn((min(batch_size, self.count - i), *self.shape), generator=gen)


def open_source(
    calib: str | Path | None,
    pre: Preprocessing | AudioFrontEnd,
    input_shape: tuple[int, ...],
    size: int | None = None,
    seed: int = 0,
    log: Callable[[str], None] = lambda _m: None,
    bundled: str | None = None,
) -> CalibrationSource:
    """The calibration source for ``--calib`` (None: bundled images), sampled to ``size`` with ``seed``.

    ``input_shape`` is one sample's model input ((3, H, W), or (samples,) for a speech model); array sources must
    match it exactly. ``bundled`` names the package's data for this checkpoint (a folder under
    ``edgehybrid/data``, e.g. the CIFAR-10 fixtures' training images); without it, the bundled ImageNet-style
    photos, or for a speech model the bundled clips.
    """
    check_size(size)
    if calib is None:
        audio = pre.kind == "audio"
        folder = DATA_DIR / (bundled or "speech/calib") if (bundled or audio) else CALIB_DIR
        paths = find_inputs(folder, pre)
        if not paths:
            raise InputError(f"the bundled calibration {pre.noun} are missing from the installed package; "
                             "reinstall edgehybrid or pass --calib DIR")
        paths = _sample(paths, size, seed)
        what = f"bundled {pre.noun} ({bundled or 'speech/calib'})" if (bundled or audio) else "bundled photos"
        log(f"calibrating on {len(paths)} {what} (no --calib given; pass --calib DIR with {pre.noun} "
            "from your own domain for the best accuracy)")
        return ImageFolderSource(paths, pre, f"the {what} ({folder})", minimum=min(MIN_IMAGES, len(paths)))
    if str(calib) == SYNTHETIC:
        warnings.warn("calibrating on random data (--calib synthetic): activation ranges and every accuracy "
                      "figure of this INT8 model mean little; use real images for a model you ship",
                      EdgeHybridWarning, stacklevel=2)
        return SyntheticSource(input_shape, size or 32, seed)
    path = Path(calib)
    if not path.exists():
        raise InputError(f"calibration data {str(path)!r} does not exist; pass a folder of {pre.noun} or a .npy/.npz")
    if path.is_dir():
        paths = find_inputs(path, pre)
        if not paths:
            raise InputError(f"no {pre.noun} in calibration folder {str(path)!r} (searched recursively for "
                             f"{files_text(pre)}); add {pre.noun} or point --calib elsewhere")
        # the minimum holds unless the user asked for fewer with --calib-size, knowingly
        minimum = min(MIN_IMAGES, size) if size is not None else MIN_IMAGES
        if len(paths) < minimum:
            raise InputError(f"calibration folder {str(path)!r} holds only {len(paths)} {pre.noun}; calibration "
                             f"needs at least {minimum}: add images, or pass --calib-size {len(paths)} to "
                             "calibrate on so few knowingly")
        sample = _sample(paths, size or DEFAULT_SIZE, seed)
        if len(sample) < len(paths):
            log(f"calibrating on {len(sample)} of the {len(paths)} {pre.noun} in {str(path)!r} (a reproducible "
                f"sample, --seed {seed}; --calib-size N to change)")
        else:
            log(f"calibrating on all {len(paths)} {pre.noun} in {str(path)!r}")
        return ImageFolderSource(sample, pre, f"{str(path)!r}", minimum=minimum)
    suffix = path.suffix.lower()
    if suffix in (".npy", ".npz"):
        array = _load_array(path)
        _check_shape(array, input_shape, path)
        if size is not None and size < len(array):
            idx = np.sort(np.random.default_rng(seed).choice(len(array), size, replace=False))
            array = array[idx]
        return ArraySource(array, f"{str(path)!r}")
    if suffix in IMAGE_SUFFIXES + AUDIO_SUFFIXES:
        what = "sound file" if suffix in AUDIO_SUFFIXES else "image"
        raise InputError(f"--calib {str(path)!r} is a single {what}; pass the folder that holds your "
                         f"calibration {pre.noun} (at least {MIN_IMAGES})")
    shape = ", ".join(map(str, input_shape))
    raise InputError(f"cannot calibrate from {str(path)!r}: pass a folder of {pre.noun}, a .npy or a .npz of "
                     f"preprocessed (N, {shape}) float32 tensors, or 'synthetic'")


def check_size(size: int | None) -> None:
    if size is not None and size < 1:
        raise InputError(f"--calib-size must be at least 1, got {size}")


def _sample(paths: list[Path], size: int | None, seed: int) -> list[Path]:
    """A reproducible subset (in file order, so decoding order does not depend on the seed's draw)."""
    if size is None or size >= len(paths):
        return paths
    idx = np.sort(np.random.default_rng(seed).choice(len(paths), size, replace=False))
    return [paths[i] for i in idx]


def _load_array(path: Path) -> np.ndarray:
    try:
        if path.suffix.lower() == ".npy":
            return np.load(path, mmap_mode="r", allow_pickle=False)
        with np.load(path, allow_pickle=False) as npz:
            keys = list(npz.keys())
            if not keys:
                raise InputError(f"calibration file {str(path)!r} holds no arrays")
            if len(keys) > 1 and "input" not in keys:
                raise InputError(f"calibration file {str(path)!r} holds several arrays ({', '.join(keys[:5])}); "
                                 "name the one to use 'input'")
            return npz["input" if "input" in keys else keys[0]]
    except InputError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise InputError(f"cannot read calibration file {str(path)!r}: {exc}; is it a valid "
                         f"{path.suffix.lower()} written by numpy?") from exc


def _check_shape(array: np.ndarray, input_shape: tuple[int, ...], path: Path) -> None:
    if array.ndim != len(input_shape) + 1 or tuple(array.shape[1:]) != tuple(input_shape):
        what = "NCHW batches" if len(input_shape) == 3 else "batches"
        raise InputError(f"calibration tensors in {str(path)!r} have shape {tuple(array.shape)}, the model takes "
                         f"(N, {', '.join(map(str, input_shape))}); save preprocessed {what} of that size")
    if len(array) == 0:
        raise InputError(f"calibration file {str(path)!r} holds zero samples")
    if not np.issubdtype(array.dtype, np.floating):
        raise InputError(f"calibration tensors in {str(path)!r} are {array.dtype}, expected float32 "
                         "preprocessed (normalized) tensors")
    for start in range(0, len(array), 256):  # in chunks: a memory-mapped .npy is never read whole at once
        finite = np.isfinite(array[start:start + 256])
        if not finite.all():
            bad = start + int(np.argmin(finite.reshape(finite.shape[0], -1).all(axis=1)))
            raise InputError(f"calibration tensors in {str(path)!r} hold NaN or Inf (first in sample {bad}); "
                             "fix or drop those samples: activation ranges cannot be computed from them")
