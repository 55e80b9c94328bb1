"""Every zoo model: builds at its real size, runs, matches its published parameter count, exports."""

from __future__ import annotations

import pytest
import torch

from models_zoo import get_spec, list_models, load_model, registered
from tests.representatives import REPRESENTATIVES, every_model

ALL = list_models()


def test_zoo_has_every_required_model():
    required = {
        "mobilevit_xxs", "mobilevit_xs", "mobilevit_s",
        *(f"mobilevitv2_{w}" for w in ("050", "075", "100", "125", "150", "175", "200")),
        "efficientformer_l1", "efficientformer_l3", "efficientformer_l7",
        "efficientformerv2_s0", "efficientformerv2_s1", "efficientformerv2_s2", "efficientformerv2_l",
        "mobilenetv2_100", "mobilenetv3_large_100", "deit_tiny_patch16_224",
        "cvt_13", "cvt_21", "botnet26t_256", "efficientvit_b0", "efficientvit_b1", "conformer_kws", "conformer_s",
    }
    assert required <= set(ALL), f"missing: {sorted(required - set(ALL))}"


@pytest.mark.parametrize("name", ALL)
def test_spec_is_complete(name):
    spec = get_spec(name)
    assert spec.kind in ("convolution", "attention", "hybrid")
    pre = spec.preprocessing
    if spec.input_kind == "audio":  # a front end an app can reproduce: rate, window and features all stated
        assert spec.input_shape == (pre.clip_samples,) and pre.sample_rate > 0 and pre.hop_length > 0
        assert pre.win_length <= pre.n_fft and pre.f_max <= pre.sample_rate / 2 and spec.input_divisor is None
    else:
        assert pre.crop == spec.input_size and pre.resize >= pre.crop[0]
        assert len(pre.mean) == 3 and len(pre.std) == 3 and all(s > 0 for s in pre.std)
    assert spec.published.params_m > 0 and spec.published.source.strip()
    if spec.published.latency_ms is not None:
        assert spec.published.latency_device, "a latency figure needs the device it was measured on"
    if spec.default_tag is not None:
        assert spec.default_tag in {c.tag for c in spec.checkpoints}


@pytest.mark.parametrize("name", ALL)
def test_builds_runs_and_matches_published_params(name):
    loaded = load_model(name, weights="random")
    spec, model = loaded.spec, loaded.model
    params = sum(p.numel() for p in model.parameters())
    published = spec.published.params_m * 1e6
    assert abs(params - published) / published <= 0.02, f"{name}: {params} params vs published {published:.0f}"
    x = spec.example(1)
    with torch.no_grad():
        y = model(x)
    assert y.shape == (1, spec.num_classes)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("name", every_model())
def test_torch_export_succeeds(name):
    spec = get_spec(name)
    model = spec.build()
    x = spec.example(1)
    exported = torch.export.export(model, (x,))
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(x), model(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["mobilevit_xxs", "mobilevitv2_050", "efficientformer_l1",
                                  "efficientformerv2_s0", "mobilenetv2_100", "mobilenetv3_large_100",
                                  "efficientvit_b0", "cvt_13"])
def test_cifar_sized_build_with_ten_classes(name):
    # the trained fixtures are 64x64, 10 classes: the architecture must build for that without resampling
    loaded = load_model(name, weights="random", num_classes=10, input_size=(64, 64))
    assert loaded.spec.input_size == (64, 64) and loaded.spec.preprocessing.crop == (64, 64)
    with torch.no_grad():
        y = loaded.model(torch.randn(2, 3, 64, 64))
    assert y.shape == (2, 10)


def test_every_family_has_a_representative_in_the_default_run():
    families = {s.family for s in registered().values()}
    assert {get_spec(n).family for n in REPRESENTATIVES} == families


def test_kinds_cover_the_trade_off():
    kinds = {s.kind for s in registered().values()}
    assert kinds == {"convolution", "attention", "hybrid"}


_BUNDLED = [f"{s.name}.{c.tag}" for s in registered().values() for c in s.checkpoints if c.bundled_file]


def test_the_mobilevit_fixture_is_bundled():
    assert "mobilevit_xxs.cifar10" in _BUNDLED


@pytest.mark.parametrize("tagged", _BUNDLED)
def test_bundled_fixture_loads_offline_and_agrees_with_its_model_card(tagged):
    # every bundled tag ships its weights and card in the package; the strict loader takes every key
    import json

    from models_zoo.zoo import FIXTURES_DIR

    loaded = load_model(tagged)
    card = json.loads((FIXTURES_DIR / f"{tagged}.json").read_text())
    assert loaded.weights.kind == "bundled" and loaded.classes == tuple(card["classes"])
    assert list(loaded.spec.input_size) == card["input_size"] and loaded.spec.num_classes == card["num_classes"]
    assert (FIXTURES_DIR / f"{tagged}.md").read_text().startswith(f"# {tagged}")
    with torch.no_grad():
        y = loaded.model(torch.zeros(1, *loaded.spec.input_shape))
    assert y.shape == (1, card["num_classes"]) and torch.isfinite(y).all()
