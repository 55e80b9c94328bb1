"""The zoo's registry: one :class:`ModelSpec` per published model name.

A family file (``mobilevit.py``, ``efficientformer.py`` ...) ends with calls to :func:`register`, one per
variant, in the manner of timm's ``_registry``: the name is the published timm name, the builder makes an
``nn.Module`` whose ``state_dict`` keys are the published timm keys, and the spec carries everything a
tool needs to feed the model correctly (input size, preprocessing) and the figures published for it,
with their source.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, Literal, Protocol

import torch
from torch import nn

from edgehybrid.errors import UnknownNameError

Kind = Literal["convolution", "attention", "hybrid"]
InputKind = Literal["image", "audio"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Builder(Protocol):
    """Makes the model in eval-ready form; every family builder takes these two keywords."""

    def __call__(self, *, num_classes: int, input_size: tuple[int, int]) -> nn.Module: ...


@dataclass(frozen=True)
class Preprocessing:
    """How a raw image becomes the tensor the model takes.

    ``resize`` is the length of the shorter side after resizing (timm's ``crop_pct`` already applied),
    then a centre crop of ``crop`` (H, W). Pixels are divided by ``value_scale`` and then normalized as
    ``(x - mean) / std`` per channel, channels in ``channel_order``.
    """

    resize: int
    crop: tuple[int, int]
    interpolation: str = "bicubic"
    value_scale: float = 255.0
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    channel_order: str = "RGB"

    kind = "image"  # what the model hears or sees: images come as files of pixels
    noun = "images"

    def sample_shape(self, input_size: tuple[int, ...]) -> tuple[int, ...]:
        """One sample's model input, without the batch: (3, H, W)."""
        return (3, *input_size)

    def to_dict(self) -> dict:
        return {
            "resize": self.resize,
            "crop": list(self.crop),
            "interpolation": self.interpolation,
            "value_scale": self.value_scale,
            "mean": list(self.mean),
            "std": list(self.std),
            "channel_order": self.channel_order,
        }


@dataclass(frozen=True)
class AudioFrontEnd:
    """How a sound file becomes what a speech model takes, every parameter an app needs to reproduce it.

    A clip is read as mono float samples in -1..1 (channels averaged, resampled to ``sample_rate``), then fitted
    to ``clip_samples``: a longer clip keeps its centre, a shorter one is padded with zeros on both sides
    equally (the extra sample at the end). The log-mel features are: frames of ``win_length`` samples every
    ``hop_length`` (no centre padding), a periodic ``window``, the power spectrum of an ``n_fft``-point DFT,
    ``n_mels`` triangular filters on the ``mel_scale`` between ``f_min`` and ``f_max`` (no area
    normalization), then ``log(mel + log_offset)``; ``normalization`` "none" means no mean or variance
    normalization after that. ``features``: "inside" when the model takes the samples and computes the
    features in its graph (the default), "outside" when it takes the (n_mels, frames) features themselves.
    """

    sample_rate: int = 16000
    clip_samples: int = 16000
    n_fft: int = 400
    win_length: int = 400
    hop_length: int = 160
    window: str = "hann"
    n_mels: int = 40
    f_min: float = 20.0
    f_max: float = 8000.0
    mel_scale: str = "htk"
    power: float = 2.0
    log_offset: float = 1e-6
    normalization: str = "none"
    features: Literal["inside", "outside"] = "inside"

    kind = "audio"
    noun = "clips"

    @property
    def frames(self) -> int:
        return 1 + (self.clip_samples - self.win_length) // self.hop_length

    def sample_shape(self, input_size: tuple[int, ...] = ()) -> tuple[int, ...]:
        """One sample's model input, without the batch: (clip_samples,) samples, or (n_mels, frames) features."""
        return (self.clip_samples,) if self.features == "inside" else (self.n_mels, self.frames)

    def to_dict(self) -> dict:
        return {"kind": "audio", "sample_rate": self.sample_rate, "clip_samples": self.clip_samples,
                "fit": "centre crop, or zero padding on both sides", "channels": "mixed to mono",
                "n_fft": self.n_fft, "win_length": self.win_length, "hop_length": self.hop_length,
                "window": f"{self.window} (periodic)", "center": False, "n_mels": self.n_mels, "f_min": self.f_min,
                "f_max": self.f_max, "mel_scale": self.mel_scale, "mel_norm": None, "power": self.power,
                "log_offset": self.log_offset, "normalization": self.normalization, "features": self.features,
                "frames": self.frames}


def preprocessing_from_dict(doc: dict) -> Preprocessing | AudioFrontEnd:
    """A manifest's ``preprocessing`` back as the object it was written from (``in_graph`` and the derived or
    descriptive keys of an audio front end are not fields)."""
    d = dict(doc)
    if d.pop("kind", "image") == "audio":
        fields = AudioFrontEnd.__dataclass_fields__
        d["window"] = str(d.get("window", "hann")).split(" ")[0]
        return AudioFrontEnd(**{k: v for k, v in d.items() if k in fields})
    d.pop("in_graph", None)
    for key in ("crop", "mean", "std"):
        d[key] = tuple(d[key])
    return Preprocessing(**d)


@dataclass(frozen=True)
class Published:
    """Figures published for a variant, and where they were published.

    ``latency_ms`` is only meaningful with ``latency_device``; ``None`` means no figure was published
    (or none we could verify), never zero.
    """

    params_m: float
    gmacs: float | None
    top1: float | None
    latency_ms: float | None
    latency_device: str | None
    source: str


@dataclass(frozen=True)
class Checkpoint:
    """A published (or bundled) checkpoint a tag refers to, e.g. ``mobilevit_s.cvnets_in1k``."""

    tag: str
    hf_hub_id: str | None = None
    bundled_file: str | None = None  # path relative to models_zoo/fixtures
    num_classes: int | None = None
    classes: tuple[str, ...] | None = None
    input_size: tuple[int, int] | None = None
    preprocessing: Preprocessing | None = None
    calibration: str | None = None  # bundled calibration images (folder under edgehybrid/data): the default --calib


CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR10_SIZE = 64


def cifar10_fixture(model: str, base: Preprocessing) -> Checkpoint:
    """The tag of a fixture trained by ``scripts/train_fixture.py`` and bundled in ``models_zoo/fixtures``:
    CIFAR-10's 32x32 images resized to 64x64 (PIL bilinear; the centre crop is then a no-op), normalized
    as the architecture's published checkpoints are."""
    pre = replace(base, resize=CIFAR10_SIZE, crop=(CIFAR10_SIZE, CIFAR10_SIZE), interpolation="bilinear")
    return Checkpoint(tag="cifar10", bundled_file=f"{model}.cifar10.safetensors", num_classes=len(CIFAR10_CLASSES),
                      classes=CIFAR10_CLASSES, input_size=(CIFAR10_SIZE, CIFAR10_SIZE), preprocessing=pre,
                      calibration="cifar10/calib")


@dataclass(frozen=True)
class ModelSpec:
    """Everything known about one zoo variant."""

    name: str
    family: str
    kind: Kind
    builder: Builder = field(repr=False)
    input_size: tuple[int, ...]  # (H, W) for images; (samples,) for audio
    preprocessing: Preprocessing | AudioFrontEnd
    published: Published
    num_classes: int = 1000
    # Inputs must be multiples of this (e.g. 32 for MobileViT: five stride-2 stages, patch 2 inside);
    # None means the input size is fixed by the architecture (a learned position table).
    input_divisor: int | None = 32
    checkpoints: tuple[Checkpoint, ...] = ()
    default_tag: str | None = None
    # attention inside a convolution model that its kind does not say (MobileNetV3's squeeze-and-excitation)
    kind_note: str = ""
    # module paths the INT8 plan keeps in float whatever the calibration says, with the reason (a front end)
    float_modules: tuple[tuple[str, str], ...] = ()

    @property
    def input_kind(self) -> InputKind:
        return self.preprocessing.kind

    @property
    def input_shape(self) -> tuple[int, ...]:
        """One sample's model input without the batch: (3, H, W) for images, (samples,) or (mels, frames) for audio."""
        return self.preprocessing.sample_shape(self.input_size)

    def example(self, batch: int = 1, seed: int | None = None) -> torch.Tensor:
        """A random input of the model's shape (standard normal; for audio, samples scaled to speech level)."""
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        x = torch.randn((batch, *self.input_shape), generator=gen)
        return x * 0.1 if self.input_kind == "audio" and self.preprocessing.features == "inside" else x

    @property
    def input_size_overridable(self) -> bool:
        return self.input_divisor is not None

    def checkpoint(self, tag: str) -> Checkpoint:
        for ckpt in self.checkpoints:
            if ckpt.tag == tag:
                return ckpt
        raise UnknownNameError.for_choice(
            "checkpoint tag", f"{self.name}.{tag}", [f"{self.name}.{c.tag}" for c in self.checkpoints]
        )

    def with_overrides(
        self, *, num_classes: int | None = None, input_size: tuple[int, int] | None = None
    ) -> "ModelSpec":
        """The spec as it applies to a model built with another class count or input size."""
        spec = self
        if num_classes is not None:
            spec = replace(spec, num_classes=num_classes)
        if input_size is not None and tuple(input_size) != spec.input_size:
            pre = spec.preprocessing
            ratio = pre.resize / pre.crop[0]
            spec = replace(
                spec,
                input_size=tuple(input_size),
                preprocessing=replace(pre, crop=tuple(input_size), resize=round(input_size[0] * ratio)),
            )
        return spec

    def build(self) -> nn.Module:
        """A fresh, randomly initialised model in eval mode, for this spec's classes and input size."""
        extra = {"front_end": self.preprocessing} if self.input_kind == "audio" else {}
        model = self.builder(num_classes=self.num_classes, input_size=self.input_size, **extra)
        return model.eval()


_REGISTRY: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
    """Add a variant to the zoo; names are unique."""
    if spec.name in _REGISTRY:
        raise ValueError(f"model {spec.name!r} is registered twice")
    _REGISTRY[spec.name] = spec
    return spec


def registered() -> dict[str, ModelSpec]:
    """Name -> spec, in registration order (which is family order)."""
    return dict(_REGISTRY)


BuilderFn = Callable[..., nn.Module]
