"""How far an artifact's outputs are from the PyTorch reference's, in the figures people compare.

All functions take (N, C) logits (reference first) and return plain floats, so results serialize as-is.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np


#: Below this reference spread top-1 agreement is not assessed. Measured on the bundled photos: random-init
#: mobilevit_s 6e-4 and mobilevit_xxs 3e-3 (one class wins every image by a constant margin), random-init
#: efficientformer_l1 0.56 and efficientformerv2_s0 0.42, the trained mobilevit_xxs.cifar10 fixture 1.4.
MIN_SPREAD = 1e-2


@dataclass(frozen=True)
class Comparison:
    """The figures for one output: errors, similarity, and whether the predicted class agrees."""

    max_abs: float
    mean_abs: float
    rel_max_abs: float  # max_abs / max |reference|: comparable across models with different logit scales
    cosine: float  # mean over samples of the cosine between reference and artifact logits
    sqnr_db: float  # signal-to-quantization-noise ratio of the artifact against the reference
    top1_agreement: float  # fraction of samples whose argmax agrees (within ``tie`` of the reference's top logit)
    samples: int
    tie: float = 0.0  # reference logits closer than this count as the same rank (an int8 output's step)
    #: how much the reference's logits move across the samples: the largest per-class range over
    #: max |reference|. Near 0 the model answers the same whatever the input (random weights).
    reference_spread: float = 1.0

    @property
    def top1_informative(self) -> bool:
        """Whether top-1 agreement says anything: not when the reference gives the same logits for every
        sample. Then its top classes are separated by a constant margin that has nothing to do with the
        input, and which of them an artifact picks depends only on its rounding (see :data:`MIN_SPREAD`)."""
        return self.samples < 2 or self.reference_spread >= MIN_SPREAD

    def to_dict(self) -> dict:
        out = {k: (round(v, 8) if isinstance(v, float) else v) for k, v in asdict(self).items()}
        out["top1_informative"] = self.top1_informative
        return out


def compare(reference: np.ndarray, actual: np.ndarray, tie: float = 0.0) -> Comparison:
    """``tie``: an artifact whose top class scores within ``tie`` of the reference's top logit (in the
    reference's logits) agrees. For an int8 output, one quantization step: two classes whose logits the
    output grid cannot tell apart have no order the artifact could get wrong."""
    ref = np.asarray(reference, dtype=np.float64).reshape(len(reference), -1)
    act = np.asarray(actual, dtype=np.float64).reshape(len(actual), -1)
    if ref.shape != act.shape:
        raise ValueError(f"shapes differ: reference {ref.shape}, artifact {act.shape}")
    diff = np.abs(ref - act)
    scale = float(np.abs(ref).max()) or 1.0
    return Comparison(
        max_abs=float(diff.max()),
        mean_abs=float(diff.mean()),
        rel_max_abs=float(diff.max() / scale),
        cosine=cosine(ref, act),
        sqnr_db=sqnr_db(ref, act),
        top1_agreement=top1_agreement(ref, act, tie),
        samples=len(ref),
        tie=float(tie),
        reference_spread=float((ref.max(0) - ref.min(0)).max() / scale),
    )


def points_change(drop_pts: float, digits: int = 1) -> str:
    """An accuracy change in words, one convention everywhere: ``lost 2.0 pts``, ``gained 0.2 pts``,
    ``no change`` (a drop that rounds to zero is no change, never ``-0.0``)."""
    shown = round(float(drop_pts), digits)
    if shown == 0:
        return "no change"
    return f"{'lost' if shown > 0 else 'gained'} {abs(shown):.{digits}f} pts"


def signed(value: float, digits: int = 2) -> str:
    """``+1.25`` / ``-0.50`` / ``0.00``: a signed figure that never prints ``-0.00``."""
    shown = round(float(value), digits)
    return f"{0.0:.{digits}f}" if shown == 0 else f"{shown:+.{digits}f}"


def top1_text(metrics: dict) -> str:
    """The top-1 agreement of a serialized :class:`Comparison`, or why it was not assessed."""
    if metrics.get("top1_informative", True):
        return f"top-1 agreement {metrics['top1_agreement']:.0%}"
    return (f"top-1 agreement not assessed: the reference model gives nearly the same logits for every image "
            f"(spread {metrics['reference_spread']:.1e} of their size), as untrained weights do")


def top1_agreement(ref: np.ndarray, act: np.ndarray, tie: float = 0.0) -> float:
    picked = ref[np.arange(len(ref)), act.argmax(1)]
    return float(np.mean(picked >= ref.max(1) - tie * (1 + 1e-6)))


def cosine(ref: np.ndarray, act: np.ndarray) -> float:
    num = (ref * act).sum(1)
    den = np.linalg.norm(ref, axis=1) * np.linalg.norm(act, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.where(num == 0, 1.0, 0.0))
    return float(cos.mean())


def sqnr_db(ref: np.ndarray, act: np.ndarray) -> float:
    noise = float(((ref - act) ** 2).sum())
    signal = float((ref**2).sum())
    if noise == 0.0:
        return float("inf")
    return float(10.0 * np.log10(signal / noise)) if signal > 0 else float("-inf")


@dataclass(frozen=True)
class Tolerance:
    """What an artifact must achieve against the reference to pass validation.

    ``max_abs`` is checked as ``max_abs <= atol + rtol * max|reference|``: an absolute floor for logits
    near zero, a relative part so that a model whose logits reach 30 is not held to the rounding of one
    whose logits reach 3.
    """

    atol: float
    rtol: float
    min_cosine: float
    min_top1_agreement: float

    def failures(self, c: Comparison, ref_scale: float) -> list[str]:
        out = []
        limit = self.atol + self.rtol * ref_scale
        if not c.max_abs <= limit:
            out.append(f"max-abs {c.max_abs:.3g} > {limit:.3g}")
        if not c.cosine >= self.min_cosine:
            out.append(f"cosine {c.cosine:.6f} < {self.min_cosine}")
        if c.top1_informative and not c.top1_agreement >= self.min_top1_agreement:
            out.append(f"top-1 agreement {c.top1_agreement:.1%} < {self.min_top1_agreement:.0%}")
        return out

    def no_tighter_than(self, plan: Comparison) -> "Tolerance":
        """This bound, loosened where the quantized graph itself is further from FP32 (``plan``): an int8
        artifact need not match its simulation better than the simulation matches the float model. Runtimes
        requantize in integer arithmetic (about one step per layer), so their distance from the simulation
        grows with the plan's step size, which is the plan's own distance from FP32."""
        return replace(self, min_cosine=min(self.min_cosine, round(plan.cosine, 6)),
                       min_top1_agreement=min(self.min_top1_agreement, plan.top1_agreement))

    def to_dict(self) -> dict:
        return asdict(self)
