"""Reading checkpoints safely and fitting them to zoo models with strict key matching.

Sources, in the order :func:`resolve_weights` tries them:

- ``random``: no checkpoint; a randomly initialised model (accuracy figures then mean nothing);
- ``hf-hub:<org>/<repo>``: a Hugging Face hub repository holding a timm checkpoint, fetched with
  ``huggingface_hub`` (from its cache when present; offline, one line saying how to pass a file instead);
- a local ``.safetensors`` file (preferred: it cannot carry code), or a ``.pth``/``.pt``/``.bin`` file read
  with ``torch.load(weights_only=True)``, which refuses pickled code.

Published ``.pth`` files often wrap the state dict (``{"model": ...}``, ``{"state_dict": ...}``) or carry
the ``module.`` prefix of ``DataParallel``; both are unwrapped, nothing else is renamed.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import socket
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from edgehybrid.errors import EdgeHybridError, WeightsError, first_line

HF_PREFIX = "hf-hub:"
SAFETENSORS_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
_WRAPPER_KEYS = ("state_dict_ema", "model_ema", "state_dict", "model")
_HF_FILES = ("model.safetensors", "pytorch_model.bin")


@dataclass(frozen=True)
class WeightsInfo:
    """Where a model's weights came from, for manifests and reports."""

    kind: str  # "random" | "file" | "hub" | "bundled" | "user" (a model of the user's own: its factory or program)
    source: str  # what the user asked for: a path, a hub id, a tag, or "random"
    path: str | None = None  # the file actually read
    sha256: str | None = None

    def to_dict(self) -> dict:
        return {"kind": self.kind, "source": self.source, "path": self.path, "sha256": self.sha256}

    def describe(self) -> str:
        """Where the weights came from, for a reader who has not seen the code."""
        if self.kind == "random":
            return "random weights (no checkpoint: its accuracy figures mean nothing)"
        if self.kind == "bundled":
            return f"the bundled trained weights {self.source}"
        if self.kind == "hub":
            return f"the checkpoint {self.source}"
        if self.kind == "user":
            return f"its own weights ({self.source})"
        return f"the weights in {self.source}"


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint file into a flat ``name -> tensor`` dict, refusing anything that could run code."""
    path = Path(path)
    if not path.exists():
        raise WeightsError(f"weights file {str(path)!r} does not exist; pass an existing .safetensors or .pth file")
    if path.is_dir():
        raise WeightsError(f"weights path {str(path)!r} is a folder; pass the .safetensors or .pth file inside it")
    suffix = path.suffix.lower()
    if suffix in SAFETENSORS_SUFFIXES:
        return _read_safetensors(path)
    if suffix in PICKLE_SUFFIXES:
        return _read_pickle(path)
    raise WeightsError(
        f"weights file {str(path)!r} has an unknown extension {suffix!r}; "
        "use a .safetensors file (preferred) or a PyTorch .pth/.pt/.bin checkpoint"
    )


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise WeightsError(
            f"cannot read {str(path)!r} as safetensors ({first_line(exc)}); the file is corrupt or truncated, "
            "download or export it again"
        ) from exc


def _read_pickle(path: Path) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if not _names_a_global(exc):  # random bytes also fail as "unpickling": they are corrupt, not code
            raise WeightsError(
                f"cannot read {str(path)!r} as a PyTorch checkpoint (not a pickle torch.load can read); the file "
                "is corrupt or truncated, download or save it again"
            ) from exc
        raise WeightsError(
            f"refusing to load {str(path)!r}: it holds pickled Python objects beyond tensors, which could run "
            "code; convert it to .safetensors with the tool that made it"
        ) from exc
    except Exception as exc:  # garbage bytes fail deep inside the unpickler, with any exception type
        raise WeightsError(
            f"cannot read {str(path)!r} as a PyTorch checkpoint ({first_line(exc)}); the file is corrupt or "
            "truncated, download or save it again"
        ) from exc
    return _unwrap(obj, path)


def _names_a_global(exc: BaseException) -> bool:
    """Whether torch's weights-only unpickler refused a class or function the file names (pickled code), as
    opposed to bytes that are no pickle at all."""
    text = str(exc)
    return any(marker in text for marker in ("GLOBAL", "Unsupported global", "Unsupported class"))


def _unwrap(obj, path: Path) -> dict[str, torch.Tensor]:
    for _ in range(3):  # {"model": {"state_dict": ...}} happens; deeper nesting does not
        if isinstance(obj, dict) and not _is_flat(obj):
            inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
            if inner is None:
                break
            obj = inner
    if not isinstance(obj, dict) or not obj or not _is_flat(obj):
        raise WeightsError(
            f"{str(path)!r} is not a state dict (a mapping of parameter names to tensors); save "
            "model.state_dict(), not the model object"
        )
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def _is_flat(obj: dict) -> bool:
    return all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def fit_state_dict(model: nn.Module, state: dict[str, torch.Tensor], *, model_name: str, source: str) -> None:
    """Load ``state`` into ``model`` with strict key and shape matching, or say exactly what does not fit."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k} (checkpoint {list(state[k].shape)}, model {list(v.shape)})"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s): {_few(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {_few(unexpected)}")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatch(es): {_few(mismatched)}")
    if problems:
        hint = "check that the checkpoint was made for this model"
        if any(_is_head_key(k) for k in mismatched):
            hint = "the classifier does not match: pass --num-classes to match the checkpoint"
        elif any(k.startswith(("pos_embed", "stages.3", "attention_biases")) or "attention_bias" in k
                 for k in mismatched):
            hint = "a size-dependent table does not match: build the model at the checkpoint's input size"
        raise WeightsError(f"checkpoint {source!r} does not fit {model_name}: {'; '.join(problems)}; {hint}")
    with torch.no_grad():
        model.load_state_dict(state, strict=True)


def _is_head_key(desc: str) -> bool:
    return desc.startswith(("head", "classifier", "head_dist"))


def _few(items: list[str], n: int = 3) -> str:
    shown = ", ".join(items[:n])
    return shown + (f", ... (+{len(items) - n} more)" if len(items) > n else "")


def fetch_from_hub(repo_id: str) -> Path:
    """A timm checkpoint file from the Hugging Face hub: from the local cache, else downloaded.

    Offline (no route to the hub, or ``HF_HUB_OFFLINE=1``) this fails at once with one line saying how to
    pass a local file instead, rather than hanging on retries.
    """
    try:
        import huggingface_hub
        from huggingface_hub import hf_hub_download, try_to_load_from_cache
    except ImportError as exc:  # pragma: no cover - huggingface_hub is a core dependency
        raise EdgeHybridError("fetching hub weights needs huggingface_hub: pip install huggingface_hub") from exc

    for filename in _HF_FILES:
        cached = try_to_load_from_cache(repo_id, filename)
        if isinstance(cached, str) and os.path.exists(cached):
            return Path(cached)
    offline_hint = (
        f"download {repo_id}'s model.safetensors on a connected machine and pass it with --weights "
        "path/to/model.safetensors (or --weights random to try the pipeline without trained weights)"
    )
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes") or not _hub_reachable():
        raise WeightsError(f"cannot fetch hf-hub:{repo_id}: the Hugging Face hub is not reachable (offline); {offline_hint}")
    last: Exception | None = None
    for filename in _HF_FILES:
        try:
            return Path(hf_hub_download(repo_id, filename))
        except huggingface_hub.errors.EntryNotFoundError as exc:
            last = exc
            continue
        except huggingface_hub.errors.RepositoryNotFoundError as exc:
            raise WeightsError(f"hub repository {repo_id!r} does not exist or is private; check the id") from exc
        except Exception as exc:  # network errors come in many types; each means the same to the user
            raise WeightsError(f"cannot fetch hf-hub:{repo_id} ({first_line(exc)}); {offline_hint}") from exc
    raise WeightsError(f"hub repository {repo_id!r} has neither {' nor '.join(_HF_FILES)}; pass a local file") from last


def _hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    endpoint = os.environ.get("HF_ENDPOINT")
    if endpoint:
        from urllib.parse import urlparse

        host = urlparse(endpoint).hostname or host
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False
