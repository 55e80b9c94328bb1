"""Published-layout checkpoints: strict loading, same outputs as timm, and clear errors for bad files."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from edgehybrid.errors import WeightsError
from models_zoo import get_spec, list_models, load_model
from tests.representatives import every_model
from tests.timm_layout import REFERENCE_KEYS, REFERENCE_NPZ, deterministic_input, deterministic_state_dict

DATA = Path(__file__).parent / "data"
REFERENCE = np.load(DATA / REFERENCE_NPZ)
with gzip.open(DATA / REFERENCE_KEYS, "rt") as _fh:
    TIMM_KEYS = json.load(_fh)["keys"]


def _checkpoint(name: str) -> dict[str, torch.Tensor]:
    spec = get_spec(name)
    return deterministic_state_dict(spec.build().state_dict())


def _assert_matches_timm(name: str, model: torch.nn.Module):
    spec = get_spec(name)
    with torch.no_grad():
        y = model.double()(deterministic_input(*spec.input_size).double()).float().numpy()
    ref = REFERENCE[name]
    assert ref.std() > 1e-3, "reference logits are degenerate; the comparison would prove nothing"
    err = np.abs(y - ref).max() / max(1.0, np.abs(ref).max())
    assert err < 1e-4, f"{name}: relative max-abs difference to timm {err:.2e}"


# the image models' references are timm's and transformers'; the Conformer's is torchaudio's (test_audio.py)
IMAGE_MODELS = [n for n in list_models() if get_spec(n).input_kind == "image"]


@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_state_dict_layout_is_timms(name):
    ours = {k: list(v.shape) for k, v in get_spec(name).build().state_dict().items()}
    theirs = TIMM_KEYS[name]
    assert sorted(set(theirs) - set(ours)) == [], "keys timm has that we lack"
    assert sorted(set(ours) - set(theirs)) == [], "keys we have that timm lacks"
    assert {k: v for k, v in ours.items() if theirs[k] != v} == {}, "shapes differ"


@pytest.mark.parametrize("name", every_model("image"))
def test_outputs_match_timm_on_a_timm_layout_checkpoint(name, tmp_path):
    path = tmp_path / f"{name}.safetensors"
    save_file(_checkpoint(name), str(path))
    loaded = load_model(name, weights=str(path))
    assert loaded.weights.kind == "file" and len(loaded.weights.sha256) == 64
    _assert_matches_timm(name, loaded.model)


@pytest.mark.parametrize("name", ["mobilevit_xxs", "efficientformer_l1"])
def test_pth_in_published_wrappers_loads_through_the_cli(name, tmp_path, cli):
    state = _checkpoint(name)
    plain, wrapped = tmp_path / "plain.pth", tmp_path / "wrapped.pth"
    torch.save(state, plain)
    # many published .pth files wrap the state dict and carry DataParallel's prefix
    torch.save({"model": {f"module.{k}": v for k, v in state.items()}, "epoch": torch.tensor(300)}, wrapped)
    for path in (plain, wrapped):
        code, out, err = cli("info", name, "--weights", path, "--json")
        assert code == 0, err
        doc = json.loads(out)
        assert doc["weights"]["kind"] == "file" and doc["weights"]["fits"] is True
        _assert_matches_timm(name, load_model(name, weights=str(path)).model)


def test_mismatched_checkpoint_names_the_offending_keys(tmp_path, cli):
    state = _checkpoint("mobilevit_xxs")
    del state["stem.conv.weight"]
    state["extra.weight"] = torch.zeros(3)
    path = tmp_path / "bad.safetensors"
    save_file(state, str(path))
    with pytest.raises(WeightsError, match=r"1 missing key\(s\): stem\.conv\.weight.*1 unexpected key\(s\): extra\.weight"):
        load_model("mobilevit_xxs", weights=str(path))
    code, out, err = cli("info", "mobilevit_xxs", "--weights", path)
    assert code == 2 and "stem.conv.weight" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_wrong_class_count_suggests_num_classes(tmp_path):
    path = tmp_path / "ten.safetensors"
    save_file(deterministic_state_dict(load_model("mobilevit_xxs", weights="random", num_classes=10).model.state_dict()), str(path))
    with pytest.raises(WeightsError, match=r"shape mismatch.*head\.fc\.weight.*--num-classes"):
        load_model("mobilevit_xxs", weights=str(path))
    assert load_model("mobilevit_xxs", weights=str(path), num_classes=10).spec.num_classes == 10


def test_corrupt_files_fail_clearly(tmp_path, cli):
    good = tmp_path / "good.safetensors"
    save_file(_checkpoint("mobilevit_xxs"), str(good))
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"this is not a checkpoint at all" * 10)
    for path, pattern in [(truncated, "corrupt or truncated"), (garbage, "corrupt or truncated"),
                          (tmp_path / "missing.safetensors", "does not exist"),
                          (tmp_path / "x.onnx", "neither a file")]:
        with pytest.raises(WeightsError, match=pattern):
            load_model("mobilevit_xxs", weights=str(path))
        code, _, err = cli("info", "mobilevit_xxs", "--weights", path)
        assert code == 2 and pattern in err and "Traceback" not in err


def test_pickled_code_is_refused(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("this would run on load",))

    path = tmp_path / "evil.pth"
    torch.save({"model": Payload()}, path)
    with pytest.raises(WeightsError, match="could run code"):
        load_model("mobilevit_xxs", weights=str(path))


def test_hub_id_offline_fails_at_once_with_a_way_out(monkeypatch, tmp_path, cli):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    code, _, err = cli("info", "mobilevit_s", "--weights", "hf-hub:timm/mobilevit_s.cvnets_in1k")
    assert code == 2 and "--weights path/to/model.safetensors" in err and "offline" in err


def test_hub_id_is_read_from_the_hub_cache(monkeypatch, tmp_path):
    # what huggingface_hub leaves on disk after a download: the real cache layout, read by the real library
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    snapshot = tmp_path / "hub" / "models--timm--mobilevit_xxs.cvnets_in1k" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (tmp_path / "hub" / "models--timm--mobilevit_xxs.cvnets_in1k" / "refs").mkdir()
    (tmp_path / "hub" / "models--timm--mobilevit_xxs.cvnets_in1k" / "refs" / "main").write_text("0" * 40)
    save_file(_checkpoint("mobilevit_xxs"), str(snapshot / "model.safetensors"))
    import importlib

    import huggingface_hub.constants

    importlib.reload(huggingface_hub.constants)
    try:
        loaded = load_model("mobilevit_xxs.cvnets_in1k")
    finally:
        monkeypatch.undo()
        importlib.reload(huggingface_hub.constants)
    assert loaded.weights.kind == "hub" and loaded.weights.source == "hf-hub:timm/mobilevit_xxs.cvnets_in1k"
    _assert_matches_timm("mobilevit_xxs", loaded.model)


def test_random_weights_warn(cli):
    with pytest.warns(UserWarning, match="random weights"):
        loaded = load_model("mobilevit_xxs", weights="random")
    assert loaded.weights.kind == "random"
