"""Turning image files (and, through :mod:`calibration.audio`, sound files) into the tensors a zoo model takes,
exactly as its spec says.

Two steps, kept apart because an artifact may fold the second into its graph (``--normalize-in-graph``):

1. :func:`load_pixels`: decode (any colour mode becomes RGB), resize the shorter side to
   ``preprocessing.resize``, centre-crop to ``preprocessing.crop``; float32 CHW pixels in 0..255;
2. :func:`normalize`: divide by ``value_scale``, subtract ``mean``, divide by ``std``, reorder channels.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np

from edgehybrid.errors import InputError, first_line
from models_zoo.registry import Preprocessing

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
SAMPLES_DIR = Path(__file__).resolve().parents[1] / "edgehybrid" / "data" / "samples"

_INTERPOLATION = {"bilinear": 2, "bicubic": 3, "nearest": 0, "lanczos": 1}  # PIL.Image.Resampling values


def load_pixels(path: Path, pre: Preprocessing) -> np.ndarray:
    """One image file as float32 CHW RGB pixels (0..255), resized and centre-cropped per ``pre``.

    Whatever the decoder refuses (a corrupt file, a truncated one, one that declares a size Pillow treats as
    a decompression bomb) is an :class:`InputError` naming the file; callers skip and count it. 16-bit
    grayscale is scaled to 0..255 (Pillow's own conversion would clip it)."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # refused, not decoded into memory
            with Image.open(path) as img:
                img.load()
                rgb = _to_rgb(img, Image)
    except MemoryError as exc:
        raise InputError(f"cannot read image {str(path)!r}: too large to decode in memory") from exc
    except Exception as exc:  # noqa: BLE001 - every decoder refusal (OSError, DecompressionBomb*, SyntaxError,
        # struct.error ...) is the file's fault, reported the same way
        reason = first_line(exc) or type(exc).__name__
        raise InputError(f"cannot read image {str(path)!r}: not a readable JPEG/PNG/WebP/BMP ({reason})") from exc
    return _resize_crop(rgb, pre)


def _to_rgb(img, Image):
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        # composite transparency on white: what a viewer shows, and what training photos look like
        img = img.convert("RGBA")
        bg = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, img).convert("RGB")
    if img.mode.startswith("I") or img.mode == "F":
        # 16-bit (I;16*) and 32-bit integer or float grayscale: scale the type's range to 0..255
        a = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or (img.mode == "I" and a.max(initial=0) <= 65535) else None
        if top is None:
            lo, hi = float(a.min(initial=0)), float(a.max(initial=1))
            a, top = a - lo, max(hi - lo, 1e-12)
        gray = np.clip(np.rint(a * (255.0 / top)), 0, 255).astype(np.uint8)
        return Image.fromarray(gray).convert("RGB")
    return img.convert("RGB")


def _resize_crop(img, pre: Preprocessing) -> np.ndarray:
    w, h = img.size
    short = min(w, h)
    scale = pre.resize / short
    new_w, new_h = max(pre.crop[1], round(w * scale)), max(pre.crop[0], round(h * scale))
    resample = _INTERPOLATION.get(pre.interpolation, 3)
    img = img.resize((new_w, new_h), resample=resample)
    ch, cw = pre.crop
    left, top = (new_w - cw) // 2, (new_h - ch) // 2
    img = img.crop((left, top, left + cw, top + ch))
    return np.asarray(img, dtype=np.float32).transpose(2, 0, 1).copy()


def normalize(pixels: np.ndarray, pre: Preprocessing) -> np.ndarray:
    """RGB pixels (..., 3, H, W) in 0..255 -> the model's normalized input (float32)."""
    x = pixels.astype(np.float32) / np.float32(pre.value_scale)
    mean = np.asarray(pre.mean, dtype=np.float32).reshape(3, 1, 1)
    std = np.asarray(pre.std, dtype=np.float32).reshape(3, 1, 1)
    x = (x - mean) / std
    if pre.channel_order.upper() == "BGR":
        x = x[..., ::-1, :, :]
    return np.ascontiguousarray(x, dtype=np.float32)


def find_images(folder: Path, suffixes: tuple[str, ...] = IMAGE_SUFFIXES) -> list[Path]:
    """Input files under ``folder`` (recursively; images unless ``suffixes`` says otherwise), sorted so that runs
    are reproducible."""
    return sorted(p for p in Path(folder).rglob("*") if p.is_file() and p.suffix.lower() in suffixes)


# ----------------------------------------------------------------------------- one seam for every input kind
# ``pre`` is a zoo spec's ``preprocessing``: a Preprocessing (images) or an AudioFrontEnd (sound). These four
# functions are all that calibration, validation and ``check`` need to know of the difference.


#: the preprocessing of "image files" where no model's own is at hand (a model of the user's own, an unknown
#: manifest): only its kind is read
IMAGE_FILES = Preprocessing(resize=1, crop=(1, 1))


def suffixes_of(pre) -> tuple[str, ...]:
    """The file suffixes a model with this preprocessing reads."""
    if pre.kind == "audio":
        from calibration.audio import AUDIO_SUFFIXES

        return AUDIO_SUFFIXES
    return IMAGE_SUFFIXES


def files_text(pre) -> str:
    """What those files are, for messages: 'JPEG/PNG/WebP/BMP images' or 'WAV/FLAC/OGG/AIFF clips'."""
    return "WAV/FLAC/OGG/AIFF clips" if pre.kind == "audio" else "JPEG/PNG/WebP/BMP images"


def load_sample(path: Path, pre) -> np.ndarray:
    """One file as its raw sample: CHW pixels in 0..255, or the fitted mono samples of a clip."""
    if pre.kind == "audio":
        from calibration.audio import load_clip

        return load_clip(path, pre)
    return load_pixels(path, pre)


def model_input(raw: np.ndarray, pre) -> np.ndarray:
    """A batch of raw samples -> the model's input (normalized pixels; samples or log-mel features)."""
    if pre.kind == "audio":
        from calibration.audio import features

        return features(raw, pre)
    return normalize(raw, pre)


def find_inputs(folder: Path, pre) -> list[Path]:
    return find_images(folder, suffixes_of(pre))


def sample_images(pre=None) -> list[Path]:
    """The real inputs bundled with the package, for validation when the user gives none: photos, or for a
    speech model the bundled clips."""
    folder = SAMPLES_DIR if pre is None or pre.kind != "audio" else SAMPLES_DIR.parent / "speech" / "calib"
    found = find_images(folder, suffixes_of(pre) if pre is not None else IMAGE_SUFFIXES)
    if not found:
        raise InputError(f"the bundled sample {'clips' if folder != SAMPLES_DIR else 'images'} are missing from the "
                         "installed package; reinstall edgehybrid")
    return found


def load_batch(paths: list[Path], pre, normalized: bool = True) -> np.ndarray:
    """Several files as one float32 batch: (N, 3, H, W) images, or (N, samples) / (N, mels, frames) audio."""
    raw = np.stack([load_sample(p, pre) for p in paths])
    return model_input(raw, pre) if normalized else raw


def batched(x: np.ndarray, batch: int) -> list[np.ndarray]:
    """Split N samples into static batches, repeating samples to fill the last one."""
    total = math.ceil(len(x) / batch) * batch
    if total != len(x):
        x = x[np.arange(total) % len(x)]
    return [np.ascontiguousarray(x[i:i + batch]) for i in range(0, total, batch)]
