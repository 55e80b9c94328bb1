"""Models the zoo does not know: ``file.py:factory``, ``package.module:factory`` and saved ``.pt2`` programs.

Importing a user's model file runs that file's code, as ``python file.py`` would: it is the user's own code,
and edgehybrid does nothing more with it than call the factory. A ``.pt2`` (``torch.export.save``) needs no
Python class; ``torch.export.load`` trusts what the archive holds, and falls back to unrestricted unpickling
where a payload asks for it, so :func:`check_pt2_archive` first refuses every archive with a pickled payload
(weights, constants, custom or opaque objects, legacy ``.pt`` files, sample inputs that ``weights_only``
loading rejects). What is left to ``torch.export.load`` is JSON and raw tensor bytes.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import json
import re
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from edgehybrid.errors import InputError

PT2_SUFFIX = ".pt2"


@dataclass(frozen=True)
class ModelSource:
    """Where a model that is not in the zoo comes from, as the user named it."""

    kind: str  # "factory" (a file or module and a callable), "pt2", or "python" (an object handed to the API)
    ref: str  # as typed: "nets/hybrid.py:build", "mypkg.nets:build", "model.pt2"
    path: Path | None = None  # the .py or .pt2 file (None for a module name or a Python object)
    module: str | None = None  # "mypkg.nets" for a module name
    factory: str | None = None  # "build"
    args: dict = field(default_factory=dict)  # --model-arg key=value

    @property
    def name(self) -> str:
        """A name for files and reports: the factory's, or the program's file stem."""
        if self.kind == "pt2":
            return self.path.stem
        if self.kind == "factory":
            owner = self.path.stem if self.path is not None else self.module.rsplit(".", 1)[-1]
            return f"{owner}_{self.factory.replace('.', '_')}"
        return self.ref

    def file(self) -> Path | None:
        """The .py or .pt2 file, also for a module name (found from the working directory, as it imports)."""
        if self.path is not None or self.module is None:
            return self.path
        with _on_path(Path.cwd()):
            try:
                spec = importlib.util.find_spec(self.module)
            except (ImportError, ValueError):
                return None
        return Path(spec.origin) if spec is not None and spec.origin and Path(spec.origin).is_file() else None

    def to_dict(self) -> dict:
        doc: dict = {"kind": self.kind, "ref": self.ref}
        if self.path is not None:
            doc.update(file=str(self.path.resolve()), sha256=_sha256(self.path))
        if self.module is not None:
            doc["module"] = self.module
            found = self.file()
            if found is not None:
                doc.update(file=str(found), sha256=_sha256(found))
        if self.factory is not None:
            doc["factory"] = self.factory
        if self.args:
            doc["args"] = dict(self.args)
        return doc


def _sha256(path: Path) -> str:
    from models_zoo.weights import sha256_file

    return sha256_file(path)


_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


def parse_source(text: str, args: dict | None = None, base: Path | None = None) -> ModelSource | None:
    """``file.py:factory``, ``package.module:factory`` or ``model.pt2`` as a :class:`ModelSource`; ``None`` for
    anything else (a zoo name). Paths are relative to ``base`` (the working directory by default)."""
    text = str(text).strip()
    args = dict(args or {})
    if text.lower().endswith(PT2_SUFFIX):
        if args:
            raise InputError(f"--model-arg applies to a factory (file.py:factory); {text} is a saved program "
                             "with nothing to call")
        return ModelSource("pt2", text, path=_path(text, base))
    if ":" not in text:
        if args:
            raise InputError("--model-arg applies to a model given as file.py:factory or package.module:factory")
        return None
    where, _, factory = text.rpartition(":")
    if not where or not _IDENT.match(factory or ""):
        raise InputError(f"model {text!r}: expected file.py:factory or package.module:factory, with the name of "
                         "a callable that returns the nn.Module after the colon")
    if where.endswith(".py") or "/" in where or "\\" in where:
        return ModelSource("factory", text, path=_path(where, base), factory=factory, args=args)
    if not _IDENT.match(where):
        raise InputError(f"model {text!r}: {where!r} is neither a .py file nor a module name (package.module)")
    return ModelSource("factory", text, module=where, factory=factory, args=args)


def _path(text: str, base: Path | None) -> Path:
    p = Path(text).expanduser()
    return p if p.is_absolute() or base is None else base / p


def parse_model_args(items: list[str] | tuple[str, ...] | None) -> dict:
    """``--model-arg key=value`` (repeatable): values are read as JSON (numbers, true/false, null, lists,
    quoted strings) and otherwise kept as text, so ``depth=4`` is an int and ``act=gelu`` a string."""
    out: dict = {}
    for item in items or ():
        key, sep, value = str(item).partition("=")
        key = key.strip()
        if not sep or not _IDENT.match(key) or "." in key:
            raise InputError(f"--model-arg {item!r}: expected key=value with a Python keyword as the key, e.g. "
                             "--model-arg num_classes=10")
        if key in out:
            raise InputError(f"--model-arg {key} is given twice; keep one")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


# ------------------------------------------------------------------------------------------ factories


@contextlib.contextmanager
def _on_path(folder: Path):
    """``folder`` first on ``sys.path`` while the user's module imports (its sibling files import too)."""
    entry = str(folder)
    sys.path.insert(0, entry)
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(entry)


def build_from_factory(source: ModelSource) -> nn.Module:
    """Import the file or module (running its code: the user's own), call the factory with the source's
    arguments and return the module it makes, in eval mode. Every failure is one line naming the source."""
    ref = source.ref
    if source.path is not None:
        path = source.path
        if not path.is_file():
            raise InputError(f"model file {str(path)!r} does not exist; check the path in {ref!r}")
        if path.suffix != ".py":
            raise InputError(f"model file {str(path)!r} is not a .py file; name a Python file as file.py:factory")
        module_name = f"edgehybrid_user_{abs(hash(str(path.resolve())))}"
        spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(spec)
        with _on_path(path.resolve().parent):
            _run_user_code(lambda: spec.loader.exec_module(module), f"importing {path.name}")
    else:
        with _on_path(Path.cwd()):
            try:
                found = importlib.util.find_spec(source.module)
            except (ImportError, ValueError):
                found = None
            if found is None:
                raise InputError(f"module {source.module!r} cannot be found from {Path.cwd()}; run from the folder "
                                 "that holds the package, or name the file: path/to/file.py:factory")
            module = _run_user_code(lambda: importlib.import_module(source.module), f"importing {source.module}")
    fn = module
    for part in source.factory.split("."):
        if not hasattr(fn, part):
            names = sorted(n for n in vars(module) if not n.startswith("_") and callable(getattr(module, n)))
            from edgehybrid.errors import UnknownNameError

            raise UnknownNameError.for_choice("factory", source.factory, names, hint=f"in {ref}")
        fn = getattr(fn, part)
    if not callable(fn):
        raise InputError(f"{ref}: {source.factory} is a {type(fn).__name__}, not a callable; name a function or "
                         "class that returns the nn.Module")
    model = _run_user_code(lambda: fn(**source.args), f"calling {source.factory}")
    if not isinstance(model, nn.Module):
        raise InputError(f"{ref}: {source.factory}() returned a {type(model).__name__}, not a torch.nn.Module; "
                         "return the model itself")
    return model.eval()


def _run_user_code(fn, doing: str):
    """Run the user's code; what it raises becomes one line (``--debug`` shows the traceback)."""
    from edgehybrid import console

    try:
        return fn()
    except InputError:
        raise
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - their code: one line, the traceback with --debug
        if console.DEBUG:
            raise
        message = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        raise InputError(f"{doing} failed: {type(exc).__name__}" + (f": {message}" if message else "")
                         + " (your code; --debug shows the traceback)") from exc


# ------------------------------------------------------------------------------------------ .pt2 programs


def check_pt2_archive(path: Path) -> None:
    """Refuse a ``.pt2`` that would make ``torch.export.load`` unpickle anything: only JSON configs, the
    serialized program and raw tensor bytes pass (see the module's docstring)."""
    name = path.name
    try:
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as exc:
        raise InputError(f"{name} is not a torch.export program (not a .pt2 archive: {exc}); save one with "
                         "torch.export.save(torch.export.export(model, (example,)), 'model.pt2')") from None
    with archive:
        names = archive.namelist()
        models = [n for n in names if re.search(r"(^|/)models/[^/]+\.json$", n)]
        if not models:
            raise InputError(f"{name} holds no exported program (models/*.json); save one with torch.export.save")
        for n in names:
            if re.search(r"(^|/)data/(weights|constants)/[^/]+\.pt$", n):
                raise InputError(f"{name} uses the legacy pickled layout ({n}); re-save it with torch.export.save "
                                 f"from torch {torch.__version__.split('+')[0]}")
        for n in names:
            if not re.search(r"(^|/)data/(weights|constants)/[^/]+_config\.json$", n):
                continue
            try:
                config = json.loads(archive.read(n)).get("config", {})
            except (ValueError, AttributeError, zipfile.BadZipFile) as exc:
                raise InputError(f"{name} is corrupt: {n} is not valid JSON ({exc})") from None
            for fqn, meta in config.items():
                path_name = str(meta.get("path_name", ""))
                if meta.get("use_pickle") or path_name.startswith(("custom_obj", "opaque_obj")):
                    raise InputError(f"{name} holds a pickled object ({fqn}); edgehybrid loads only programs whose "
                                     "weights and constants are plain tensors (torch.export.load would unpickle it)")
        for n in names:
            if re.search(r"(^|/)data/sample_inputs/[^/]+\.pt$", n):
                import io

                data = archive.read(n)
                if data:
                    try:
                        torch.load(io.BytesIO(data), weights_only=True)
                    except Exception:  # noqa: BLE001 - anything weights_only refuses is refused here
                        raise InputError(f"{name}'s sample inputs ({n}) are not plain tensors; torch.export.load "
                                         "would unpickle them, so edgehybrid does not load this file") from None


def load_pt2(path: Path) -> torch.export.ExportedProgram:
    """A saved program, after :func:`check_pt2_archive`; a program from another torch is a one-line error."""
    if not path.is_file():
        raise InputError(f"program {str(path)!r} does not exist; check the path")
    check_pt2_archive(path)
    saved, ours = _saved_schema(path), _our_schema()
    if saved is not None and saved[0] != ours[0]:
        raise InputError(f"{path.name} was saved by a torch whose export schema is {saved[0]}.{saved[1]}; this torch "
                         f"({torch.__version__.split('+')[0]}) reads {ours[0]}.x: re-save it with this torch, or "
                         "export with the torch that saved it")
    try:
        ep = torch.export.load(str(path))
    except Exception as exc:  # noqa: BLE001 - every way the deserializer fails is one line
        first = str(exc).strip().splitlines()[0][:240] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{path.name} cannot be loaded as a torch.export program: {first}") from None
    check_inference_mode(ep, path.name)
    return ep


def check_inference_mode(ep: torch.export.ExportedProgram, name: str) -> None:
    """A program traced in training mode keeps training's semantics (batch statistics, live dropout); its
    exports would not match the model that was trained, so it is refused."""
    aten = torch.ops.aten
    for node in ep.graph.nodes:
        if node.op != "call_function":
            continue
        training = (node.target is aten.batch_norm.default and len(node.args) > 5 and node.args[5] is True) or (
            node.target is aten.dropout.default and len(node.args) > 2 and node.args[2] is True) or (
            "_native_batch_norm_legit_functional" in str(node.target))
        if training:
            raise InputError(f"{name} was exported in training mode ({node.target} uses batch statistics or drops "
                             "units); export it from model.eval(): torch.export.export(model.eval(), (example,))")


def _saved_schema(path: Path) -> tuple[int, int] | None:
    try:
        with zipfile.ZipFile(path) as archive:
            model = next(n for n in archive.namelist() if re.search(r"(^|/)models/[^/]+\.json$", n))
            v = json.loads(archive.read(model))["schema_version"]
            return int(v["major"]), int(v["minor"])
    except Exception:  # noqa: BLE001
        return None


def _our_schema() -> tuple[int, int]:
    from torch._export.serde.schema import SCHEMA_VERSION

    return int(SCHEMA_VERSION[0]), int(SCHEMA_VERSION[1])


def program_input_shape(ep: torch.export.ExportedProgram, name: str) -> tuple[int, ...]:
    """The shape of the program's one user input (static): what its export was traced with."""
    user = list(ep.graph_signature.user_inputs)
    if len(user) != 1:
        raise InputError(f"{name} takes {len(user)} inputs; edgehybrid exports models with one image input")
    node = next(n for n in ep.graph.nodes if n.op == "placeholder" and n.name == user[0])
    val = node.meta.get("val")
    if not isinstance(val, torch.Tensor):
        raise InputError(f"{name}'s input is not a tensor")
    try:
        return tuple(int(d) for d in val.shape)
    except TypeError:
        raise InputError(f"{name} was exported with a dynamic input shape {tuple(val.shape)}; export it with a "
                         "static shape (no dynamic_shapes) for edge runtimes") from None


# ------------------------------------------------------------------------------------------ loading


def resolve_card(source: ModelSource, flags=None, card_file: Path | None = None):
    """Flags over ``card_file`` (``--card``), or over the card beside the model file when none is named."""
    from edgehybrid.model_card import ModelCard, card_beside, read_card

    flags = flags or ModelCard()
    path = card_file if card_file is not None else card_beside(source.file())
    return flags.over(read_card(path)) if path is not None else flags


class _FrozenMode:
    """A loaded ``.pt2`` program's module refuses ``train()`` / ``eval()``; it was exported in the mode it
    runs in, so both become no-ops (wrappers and exporters call ``eval()`` on every module they hold)."""

    @staticmethod
    def apply(gm: nn.Module) -> nn.Module:
        import types

        gm.train = types.MethodType(lambda self, mode=True: self, gm)
        gm.eval = types.MethodType(lambda self: self, gm)
        return gm


def load_source(source: ModelSource, card=None, batch: int = 1, model: nn.Module | None = None,
                example: torch.Tensor | None = None):
    """A :class:`models_zoo.LoadedModel` for a model of the user's own, with a spec made from its card.

    ``model`` / ``example``: an ``nn.Module`` (or ExportedProgram) handed to the Python API and its example input.
    """
    from edgehybrid.model_card import ModelCard, preprocessing_of
    from models_zoo.registry import ModelSpec, Published
    from models_zoo.weights import WeightsInfo
    from models_zoo.zoo import LoadedModel

    card = card or ModelCard()
    name = card.name or source.name
    program = source.kind == "pt2" or isinstance(model, torch.export.ExportedProgram)
    if program:
        ep = model if model is not None else load_pt2(source.path)
        check_inference_mode(ep, name)
        shape = program_input_shape(ep, name)
        module = _FrozenMode.apply(ep.module())
    elif source.kind == "factory":
        module, shape = build_from_factory(source), None
    else:
        if not isinstance(model, nn.Module):
            raise InputError(f"the model is a {type(model).__name__}, not a torch.nn.Module or ExportedProgram")
        module = model.eval()
        shape = tuple(example.shape) if example is not None else None
    if shape is not None:
        if len(shape) != 4 or shape[1] != 3:
            raise InputError(f"{name} takes input {list(shape)}; edgehybrid exports image models with one "
                             "[batch, 3, height, width] input")
        if card.input_size is not None and tuple(card.input_size) != tuple(shape[2:]):
            raise InputError(f"{name} was traced for {shape[2]}x{shape[3]} input, not --input-size "
                             f"{card.input_size[0]}x{card.input_size[1]}; drop --input-size or re-export the program")
        if program and shape[0] != batch:
            raise InputError(f"{name} was exported for batch {shape[0]}; pass --batch {shape[0]} (a program's "
                             "shapes are fixed)")
        input_size = (int(shape[2]), int(shape[3]))
    elif card.input_size is not None:
        input_size = tuple(card.input_size)
    else:
        raise InputError(f"{name} has no input size: pass --input-size H W (or input_size = [H, W] in a model card "
                         "beside it)")
    pre = preprocessing_of(card, input_size, name)
    num_classes = _probe(module, (shape[0] if program else 1, 3, *input_size), name)
    classes = card.classes
    if classes is not None and len(classes) != num_classes:
        raise InputError(f"{name} has {num_classes} outputs but {len(classes)} class names are given; name one "
                         "class per output, in output order")
    params = sum(p.numel() for p in module.parameters()) + sum(b.numel() for b in module.buffers())
    spec = ModelSpec(name=name, family="user", kind="custom", builder=_no_builder(source), input_size=input_size,
                     preprocessing=pre, num_classes=num_classes, input_divisor=None,
                     published=Published(params_m=round(params / 1e6, 3), gmacs=None, top1=None, latency_ms=None,
                                         latency_device=None, source=source.ref))
    doc = source.to_dict()  # hashes the file once
    weights = WeightsInfo("user", source.ref, doc.get("file"), doc.get("sha256"))
    return LoadedModel(module, spec, weights, classes, fixed_batch=int(shape[0]) if program else None)


def forward_batched(model: nn.Module, x: torch.Tensor, fixed_batch: int | None) -> torch.Tensor:
    """``model(x)``, or for a program with a fixed batch, in slices of that batch (the last one padded)."""
    if fixed_batch is None or len(x) == fixed_batch:
        return model(x)
    outs = []
    for start in range(0, len(x), fixed_batch):
        part = x[start:start + fixed_batch]
        n = len(part)
        if n < fixed_batch:
            part = torch.cat([part, part[-1:].expand(fixed_batch - n, *part.shape[1:])])
        outs.append(model(part)[:n])
    return torch.cat(outs)


def _no_builder(source: ModelSource):
    def build(**_kw):
        raise InputError(f"{source.ref} is not a zoo model; it is rebuilt from its source, not by name")

    return build


def _probe(module: nn.Module, shape: tuple[int, ...], name: str) -> int:
    """Run the model once on zeros of its input shape: an input it rejects is said here, in one line, and the
    output must be classifier logits ``[batch, classes]``."""
    from edgehybrid import console

    try:
        with torch.no_grad():
            out = module(torch.zeros(shape))
    except Exception as exc:  # noqa: BLE001 - the user's forward: one line, --debug for the traceback
        if console.DEBUG:
            raise
        first = str(exc).strip().splitlines()[0][:240] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{name} rejects a {'x'.join(map(str, shape))} input ({type(exc).__name__}: {first}); "
                         "pass the --input-size it takes") from None
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        got = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise InputError(f"{name} returns {got}; edgehybrid exports classifiers whose output is one "
                         "[batch, classes] tensor of logits")
    return int(out.shape[1])
