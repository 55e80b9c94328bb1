"""``edgehybrid export``: the CLI's parsing and rendering of one export; every rule is in the library
(:class:`edgehybrid.pipeline.ExportRequest`)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from edgehybrid import console

_OWN_MODEL = ("Zoo name, optionally with a checkpoint tag (mobilevit_s.cvnets_in1k); or your own model: "
              "path/to/file.py:factory or package.module:factory (a callable returning the nn.Module; importing "
              "the file runs its code, as python would), or a torch.export program saved as model.pt2.")


def export_cmd(
    model: str = typer.Argument(..., help=_OWN_MODEL),
    target: str = typer.Option(..., "--target", "-t", help="Artifact format: onnx, coreml, tflite or executorch."),
    weights: Optional[str] = typer.Option(
        None, "--weights", "-w",
        help="A .safetensors/.pth file, hf-hub:<org>/<repo>, or 'random'; default: the name's checkpoint.",
    ),
    out: Path = typer.Option(Path("exports"), "--out", "-o", help="Output folder for the artifact and its manifest."),
    precision: Optional[str] = typer.Option(
        None, "--precision", "-p", help="fp32 (default), fp16, int8 (calibrated weights and activations) or "
        "int8-weights (weight-only); --fp16 and --int8 are shorthands.",
    ),
    fp16: bool = typer.Option(False, "--fp16", help="Half-precision weights/compute where the target supports it."),
    batch: int = typer.Option(1, "--batch", min=1, help="Static batch size of the artifact's input."),
    input_size: Optional[tuple[int, int]] = typer.Option(
        None, "--input-size", help="Input height and width (default: the model's).", show_default=False
    ),
    num_classes: Optional[int] = typer.Option(None, "--num-classes", help="Classifier size (default: the model's)."),
    normalize_in_graph: bool = typer.Option(
        False, "--normalize-in-graph",
        help="Fold pixel scaling, mean, std and channel order into the graph: the device feeds raw 0..255 pixels.",
    ),
    nchw: bool = typer.Option(
        False, "--nchw", help="Keep NCHW input for TFLite (default NHWC, as TFLite users expect)."
    ),
    images: Optional[Path] = typer.Option(
        None, "--images", help="Folder of images (sound files for a speech model) to validate the conversion on: its "
        "first 8 in name order (or --batch, if more); default: the bundled samples. 'edgehybrid check' measures "
        "drift on a whole folder."
    ),
    features: Optional[str] = typer.Option(
        None, "--features", help="Speech models: 'inside' (default: the artifact takes samples and computes the "
        "log-mel front end in its graph) or 'outside' (it takes log-mel features; the manifest says how to make them)."
    ),
    threads: int = typer.Option(2, "--threads", min=1, help="Runtime threads used for validation."),
    opset: Optional[int] = typer.Option(
        None, "--opset", help="ONNX opset to convert at (13-21) and keep; default: the lowest that holds the model."
    ),
    min_runtime: Optional[str] = typer.Option(
        None, "--min-runtime", help="Oldest runtime the artifact must run on: an ONNX Runtime (1.14), TFLite runtime "
        "(2.14), ExecuTorch (1.4) version or iOS16; the export is lowered to it, or refused naming what needs more.",
    ),
    int8: Optional[str] = typer.Option(
        None, "--int8", metavar="[full|weights]",
        help="Quantize to INT8: 'full' (default; int8 weights and activations, calibrated) or 'weights' "
        "(int8 weights, float compute; Core ML).",
    ),
    calib: Optional[str] = typer.Option(
        None, "--calib", help="Calibration data: a folder of images (WAV/FLAC clips for a speech model), a .npy/.npz "
        "of preprocessed tensors, or 'synthetic' (random; accuracy figures then mean little). Default: bundled data.",
    ),
    calib_size: Optional[int] = typer.Option(None, "--calib-size", help="Calibrate on a reproducible sample of N."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of the calibration sample [default: 0]."),
    calib_method: Optional[str] = typer.Option(
        None, "--calib-method", help="Activation ranges: histogram, minmax or percentile [default: histogram]."
    ),
    sensitivity: bool = typer.Option(
        False, "--sensitivity", help="Measure each layer's INT8 sensitivity; print and save the ranked table."
    ),
    max_drift: Optional[float] = typer.Option(
        None, "--max-drift", help="Keep the most harmful layers in float until the logits' relative RMS error "
        "against FP32 (held-out calibration samples) is at most this, e.g. 0.05.",
    ),
    float_layers: Optional[str] = typer.Option(
        None, "--float-layers", help="Comma-separated layer names to keep in float (names as in the manifest)."
    ),
    optimize: Optional[str] = typer.Option(
        None, "--optimize", metavar="[accuracy|latency]",
        help="'latency': export a few candidate INT8 plans and FP32, time them side by side on the target's "
        "runtime (--threads), keep the fastest within the drift budget (--max-drift, else the default plan's), "
        "and say plainly when no INT8 plan beats FP32 [default: accuracy].",
    ),
    device: Optional[str] = typer.Option(
        None, "--device", help="With --optimize latency: time the candidate plans on a device over SSH, "
        "ssh://user@host[:port] (its Python and runtime; the export itself runs here).",
    ),
    device_python: str = typer.Option("python3", "--device-python", help="Python executable on the device."),
    identity: Optional[Path] = typer.Option(None, "--identity", "-i", help="SSH private key for --device."),
    model_arg: Optional[list[str]] = typer.Option(
        None, "--model-arg", help="A keyword argument for your factory, key=value (repeatable; JSON values: 10, "
        "true, [1,2]; anything else is text).",
    ),
    card: Optional[Path] = typer.Option(
        None, "--card", help="Model card of your own model (TOML/JSON: input_size, mean, std, classes ...); "
        "default: FILE.toml or FILE.json beside file.py / model.pt2.",
    ),
    mean: Optional[str] = typer.Option(None, "--mean", help="Your model's per-channel mean, R,G,B (e.g. 0.485,0.456,0.406)."),
    std: Optional[str] = typer.Option(None, "--std", help="Your model's per-channel std, R,G,B (e.g. 0.229,0.224,0.225)."),
    classes: Optional[Path] = typer.Option(None, "--classes", help="Your model's class names, one per line, in output order."),
    preprocessing: Optional[str] = typer.Option(
        None, "--preprocessing", help="'none': your model takes raw 0..255 RGB pixels (it normalizes itself)."
    ),
    json_out: bool = typer.Option(False, "--json", help="Print the manifest as one JSON document on stdout."),
) -> None:
    """Export MODEL to an ONNX, Core ML, TFLite or ExecuTorch artifact, validate it against PyTorch, write its manifest."""
    from edgehybrid.int8 import Int8Request
    from edgehybrid.pipeline import ExportRequest, run_export
    from edgehybrid.targets import Precision
    from exporters.base import ExportOptions

    int8_request = Int8Request(
        calib=calib, calib_size=calib_size, seed=seed, method=calib_method, sensitivity=sensitivity,
        max_drift=max_drift, float_layers=tuple(x.strip() for x in (float_layers or "").split(",") if x.strip()),
        optimize=optimize, device=device, device_python=device_python, identity=identity,
    )
    options = ExportOptions(
        precision=Precision.from_flags(precision, fp16, int8), batch=batch, normalize_in_graph=normalize_in_graph,
        channels_last=False if nchw else None, opset=opset, min_runtime=min_runtime,
    )
    from edgehybrid.model_card import card_from_flags
    from edgehybrid.user_model import parse_model_args

    request = ExportRequest(
        model=model, target=target, out_dir=out, weights=weights, options=options, num_classes=num_classes,
        input_size=input_size, images=images, threads=threads, int8=int8_request, features=features,
        progress=console.progress,
        step=console.step, model_args=parse_model_args(model_arg), card_file=card,
        card=card_from_flags(mean=mean, std=std, classes=classes, preprocessing=preprocessing),
    )
    console.SHOW_PROGRESS = not json_out  # progress on stderr, none under --json (a program reads it)
    manifest = run_export(request, log=console.info)
    if json_out:
        console.print_json(manifest)
    else:
        from edgehybrid import export_view

        export_view.render_summary(manifest, console.out_console())
