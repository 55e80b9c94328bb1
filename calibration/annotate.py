"""The PT2E quantizer behind the plan: calibration methods (an enum and a factory) and the annotator.

:class:`HybridQuantizer` (built by :func:`make_quantizer`) annotates every quantizable node of the layers the
plan keeps in int8: convolutions and linears get per-channel symmetric int8 weights; every kind gets int8
per-tensor affine activations, with the fixed output range TFLite requires after sigmoid and softmax, a
concatenation's own output range (its inputs keep their producers'), and shared parameters through reshapes,
transposes and splits.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import sys
import warnings
from collections.abc import Iterable

import torch

from calibration.ops import (FUSED, TRAITS, OpKind, fusable_activation, is_float_tensor, kind_of, layer_of, passes,
                            tensor_inputs)
from edgehybrid.errors import MissingBackendError, UnknownNameError


class CalibrationMethod(str, enum.Enum):
    """How activation ranges are estimated from the calibration samples."""

    MINMAX = "minmax"  # the observed range
    PERCENTILE = "percentile"  # each batch clipped to its [0.01, 99.99] percentiles, averaged over batches
    HISTOGRAM = "histogram"  # the range that minimises the L2 quantization error of the histogram

    def __str__(self) -> str:
        return self.value

    @classmethod
    def parse(cls, name: str | CalibrationMethod, what: str = "--calib-method") -> CalibrationMethod:
        if isinstance(name, CalibrationMethod):
            return name
        try:
            return cls(name)
        except ValueError:
            raise UnknownNameError.for_choice(what, str(name), [m.value for m in cls]) from None


CALIB_METHODS = tuple(m.value for m in CalibrationMethod)
#: The default: ``histogram``, as the PT2E recipes of litert-torch and ExecuTorch. Against ``minmax`` on
#: ``mobilevit_xxs.cifar10``'s 500 validation images: output cosine to FP32 0.9984 vs 0.9974 (simulated plan), top-1
#: on LiteRT 85.0% vs 82.8% and on ONNX Runtime 85.0% vs 83.6% (FP32 83.6%; agreement with FP32 97.0% vs 97.8% and
#: 97.2% vs 96.6%: single flips are noise at this size, the cosine is the signal); about 1.5x the calibration time.
DEFAULT_METHOD = CalibrationMethod.HISTOGRAM


def check_method(method: str) -> None:
    CalibrationMethod.parse(method)


def torchao():
    """Import torchao once, keeping its import-time noise (optional CUDA kernels it cannot load on a CPU
    build, torch deprecation chatter) off the user's terminal."""
    if "torchao.quantization.pt2e" in sys.modules:
        return sys.modules["torchao"]
    saved = os.dup(2)
    level = logging.getLogger("torch").level
    try:
        logging.getLogger("torch").setLevel(logging.ERROR)
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            with contextlib.redirect_stderr(null), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    import torchao.quantization.pt2e.quantize_pt2e  # noqa: F401
                except ImportError as exc:
                    raise MissingBackendError("torchao", "all", "INT8 quantization") from exc
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        logging.getLogger("torch").setLevel(level)
    return sys.modules["torchao"]


def activation_observer(method: CalibrationMethod | str):
    """The factory: the observer class that estimates activation ranges for ``method``."""
    from torchao.quantization.pt2e.observer import HistogramObserver, MinMaxObserver

    method = CalibrationMethod.parse(method)
    if method is CalibrationMethod.PERCENTILE:
        return percentile_observer()
    return {CalibrationMethod.MINMAX: MinMaxObserver, CalibrationMethod.HISTOGRAM: HistogramObserver}[method]


def make_quantizer(int8_layers: Iterable[str], method: CalibrationMethod | str = DEFAULT_METHOD):
    """A PT2E quantizer (torchao's protocol) that annotates only the layers in ``int8_layers``."""
    torchao()
    from torchao.quantization.pt2e.quantizer import Quantizer

    method = CalibrationMethod.parse(method)

    class HybridQuantizer(_Annotator, Quantizer):
        pass

    return HybridQuantizer(set(int8_layers), method)


class _Annotator:
    def __init__(self, int8_layers: set[str], method: CalibrationMethod):
        super().__init__()
        self.int8_layers = int8_layers
        self.method = method

    def transform_for_annotation(self, model):
        return model

    def validate(self, model) -> None:
        pass

    def annotate(self, gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
        from torchao.quantization.pt2e.quantizer import QuantizationAnnotation, SharedQuantizationSpec

        act, weight, fixed = _specs(self.method)
        for node in gm.graph.nodes:
            if node.op != "call_function":
                continue
            kind, factor = kind_of(node), constant_factor(node)
            if factor is not None:
                self._rescale(node, factor, QuantizationAnnotation, SharedQuantizationSpec)
            elif kind is not None and layer_of(node) in self.int8_layers:
                if self._fuse(node, act, QuantizationAnnotation):
                    continue
                inputs = tensor_inputs(node, kind)
                if not inputs:
                    continue
                traits = TRAITS[kind]
                qmap = {a: _shared_or(a, act, SharedQuantizationSpec) for a in inputs}
                output = fixed if traits.fixed_output else act
                if traits.weighted:
                    qmap[node.args[1]] = weight
                elif kind is OpKind.CAT:
                    # the output's own range; the inputs arrive at their producers' (converters requantize them
                    # to the output's where the kernel needs one scale, as TFLite's CONCATENATION). Shared with
                    # the inputs, one wide input would set the range of a narrow one's producer and of every
                    # other consumer of it (MobileViT-S: cosine to FP32 0.987 -> 0.9997 on ONNX Runtime)
                    qmap = {}
                node.meta["quantization_annotation"] = QuantizationAnnotation(
                    input_qspec_map=qmap, output_qspec=output, _annotated=True)
            elif passes(node) and is_float_tensor(node):
                self._share(node, QuantizationAnnotation, SharedQuantizationSpec)
        return gm

    @staticmethod
    def _share(node: torch.fx.Node, annotation_cls, shared_cls) -> None:
        import operator

        src = node.args[0]
        if node.target is operator.getitem:  # one tensor of a split: shares what was split (the split itself
            src = src.args[0]  # returns a list, never annotated), so converters keep the split int8
        ann = src.meta.get("quantization_annotation") if isinstance(src, torch.fx.Node) else None
        if ann is None or ann.output_qspec is None:
            return
        if node.target is operator.getitem:
            node.meta["quantization_annotation"] = annotation_cls(output_qspec=shared_cls(src), _annotated=True)
            return
        shared = shared_cls(src) if is_float_tensor(src) else ann.output_qspec
        node.meta["quantization_annotation"] = annotation_cls(input_qspec_map={src: shared}, output_qspec=shared,
                                                              _annotated=True)

    @staticmethod
    def _fuse(node: torch.fx.Node, act, annotation_cls) -> bool:
        """A ReLU / ReLU6 after an int8 conv or linear that feeds only it: one quantize, after the activation
        (the conv's own output is not observed). Every runtime fuses the clamp into the conv's int8 kernel;
        quantized before it, ONNX Runtime requantizes between the two (two more kernels on the whole tensor)
        and half of the conv's int8 range holds negatives the clamp throws away."""
        src = fusable_activation(node)
        ann = src.meta.get("quantization_annotation") if src is not None else None
        if ann is None or ann.output_qspec is None:
            return False
        ann.output_qspec = None
        node.meta["quantization_annotation"] = annotation_cls(input_qspec_map={}, output_qspec=act, _annotated=True)
        node.meta[FUSED] = src.name
        return True

    @staticmethod
    def _rescale(node: torch.fx.Node, factor: float, annotation_cls, shared_cls) -> None:
        """``x * c`` with ``c`` a positive constant (attention's ``q * scale``) after an int8 ``x``: its output
        takes ``x``'s zero point and ``c`` times its scale, so the int8 values are the same and the multiply
        is dropped after conversion where the file keeps a step per dequantize (ONNX;
        :func:`calibration.quantize.drop_exact_rescales`), and is an exact int8 rescale elsewhere."""
        from torchao.quantization.pt2e.quantizer import DerivedQuantizationSpec

        src = node.args[0]
        ann = src.meta.get("quantization_annotation")
        if ann is None or ann.output_qspec is None:
            return

        def derive(observers, factor=factor):
            scale, zero_point = observers[0].calculate_qparams()
            return scale * factor, zero_point

        shared = shared_cls(src)
        output = DerivedQuantizationSpec(derived_from=[src], derive_qparams_fn=derive, dtype=torch.int8,
                                         quant_min=-128, quant_max=127, qscheme=torch.per_tensor_affine)
        node.meta["quantization_annotation"] = annotation_cls(input_qspec_map={src: shared}, output_qspec=output,
                                                              _annotated=True)


def constant_factor(node: torch.fx.Node, tensor_checked: bool = True) -> float | None:
    """``c`` when ``node`` is ``x * c`` with ``x`` a float tensor (unchecked with ``tensor_checked=False``,
    for converted graphs whose new nodes carry no shapes) and ``c`` a positive Python number."""
    if node.op != "call_function" or node.target is not torch.ops.aten.mul.Tensor or len(node.args) != 2:
        return None
    x, c = node.args
    if not (isinstance(x, torch.fx.Node) and (is_float_tensor(x) or not tensor_checked)
            and isinstance(c, (int, float)) and not isinstance(c, bool) and c > 0):
        return None
    return float(c)


def _shared_or(arg: torch.fx.Node, spec, shared_cls):
    """The producer's own quantization when ``arg`` is already quantized: one scale per tensor, as TFLite
    requires across RESHAPE / TRANSPOSE and after the fixed-range LOGISTIC / SOFTMAX."""
    ann = arg.meta.get("quantization_annotation")
    if ann is not None and ann.output_qspec is not None:
        return shared_cls(arg)
    return spec


def _specs(method: CalibrationMethod):
    """(activation, weight, fixed-range output) quantization specs: int8 everywhere, so one plan fits
    every target; ONNX Runtime's uint8 activations are derived at export by shifting zero points."""
    from torchao.quantization.pt2e.observer import PerChannelMinMaxObserver
    from torchao.quantization.pt2e.quantizer import FixedQParamsQuantizationSpec, QuantizationSpec

    # No floor on the scales beyond the observers' own (float32 epsilon). XNNPACK's recipe floors them at 2**-12:
    # a tensor of small values then rounds to a few levels, and a channel of small weights to a few steps. On
    # MobileViT-S (seeded weights, whose deep activations are of order 1e-5) that floor held ONNX Runtime's output
    # at cosine 0.99971 to FP32 against ONNX Runtime quantize_static's 0.99992; without it, 0.99991.
    act = QuantizationSpec(dtype=torch.int8, quant_min=-128, quant_max=127, qscheme=torch.per_tensor_affine,
                           is_dynamic=False, observer_or_fake_quant_ctr=activation_observer(method))
    weight = QuantizationSpec(dtype=torch.int8, quant_min=-127, quant_max=127, qscheme=torch.per_channel_symmetric,
                              ch_axis=0, is_dynamic=False, observer_or_fake_quant_ctr=PerChannelMinMaxObserver)
    fixed = FixedQParamsQuantizationSpec(dtype=torch.int8, scale=1 / 256, zero_point=-128, quant_min=-128,
                                         quant_max=127, qscheme=torch.per_tensor_affine)
    return act, weight, fixed


_PERCENTILE_CLASS = None


def percentile_observer(percentile: float = 99.99):
    """A min/max observer that clips each batch to its [100-p, p] percentiles (averaged over batches):
    one outlier activation no longer stretches the range of every other value."""
    global _PERCENTILE_CLASS
    if _PERCENTILE_CLASS is not None:
        return _PERCENTILE_CLASS
    from torchao.quantization.pt2e.observer import MinMaxObserver

    class PercentileObserver(MinMaxObserver):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.batches = 0

        def forward(self, x_orig):
            if x_orig.numel() == 0:
                return x_orig
            x = x_orig.detach().float().flatten()
            if x.numel() > 1 << 22:  # torch.quantile's input limit; an even subsample keeps the estimate
                x = x[:: -(-x.numel() // (1 << 22))]
            q = torch.quantile(x, torch.tensor([1 - percentile / 100, percentile / 100]))
            n = self.batches
            lo = q[0] if n == 0 else (self.min_val * n + q[0]) / (n + 1)
            hi = q[1] if n == 0 else (self.max_val * n + q[1]) / (n + 1)
            self.min_val.resize_(lo.shape).copy_(lo)
            self.max_val.resize_(hi.shape).copy_(hi)
            self.batches = n + 1
            return x_orig

    _PERCENTILE_CLASS = PercentileObserver
    return PercentileObserver
