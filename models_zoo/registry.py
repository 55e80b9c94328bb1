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

from torch import nn

from edgehybrid.errors import UnknownNameError

Kind = Literal["convolution", "attention", "hybrid"]

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
    input_size: tuple[int, int]
    preprocessing: Preprocessing
    published: Published
    num_classes: int = 1000
    # Inputs must be multiples of this (e.g. 32 for MobileViT: five stride-2 stages, patch 2 inside);
    # None means the input size is fixed by the architecture (a learned position table).
    input_divisor: int | None = 32
    checkpoints: tuple[Checkpoint, ...] = ()
    default_tag: str | None = None
    # attention inside a convolution model that its kind does not say (MobileNetV3's squeeze-and-excitation)
    kind_note: str = ""

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
        model = self.builder(num_classes=self.num_classes, input_size=self.input_size)
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
