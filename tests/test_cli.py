"""The CLI's contract: help everywhere, one JSON document with --json, one-line errors with exit codes."""

from __future__ import annotations

import json
import subprocess
import sys

import click
import pytest
import typer.main

from edgehybrid import __version__
from edgehybrid.cli import app
from models_zoo import list_models


def test_version(cli):
    code, out, _ = cli("--version")
    assert code == 0 and out.strip() == f"edgehybrid {__version__}"


def test_every_command_and_option_has_help():
    group = typer.main.get_command(app)
    assert group.help
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        assert command.help, f"command {name} has no help"
        for param in command.params:
            if isinstance(param, click.Option) and param.name != "help":
                assert param.help, f"option {param.opts} of {name} has no help"
            if isinstance(param, click.Argument):
                assert getattr(param, "help", None), f"argument {param.name} of {name} has no help"
    for param in group.params:
        if isinstance(param, click.Option) and param.name != "help":
            assert param.help, f"global option {param.opts} has no help"


def test_models_json_is_one_document_listing_the_zoo(cli):
    code, out, _ = cli("models", "--json")
    assert code == 0
    rows = json.loads(out)  # fails if anything else was printed on stdout
    assert [r["name"] for r in rows] == list_models()
    for row in rows:
        assert {"name", "family", "kind", "params", "input_size"} <= set(row)
        assert row["params"] > 100_000 and row["input_size"][0] == (3 if len(row["input_size"]) == 3 else 16000)


def test_models_table_and_family_filter(cli):
    code, out, _ = cli("models")
    assert code == 0 and "mobilevit_s" in out and "efficientformer_l1" in out and "hybrid" in out
    code, out, _ = cli("models", "--family", "efficientformer", "--json")
    assert code == 0 and {r["family"] for r in json.loads(out)} == {"efficientformer"}
    code, _, err = cli("models", "--family", "mobilevitt")
    assert code == 2 and "did you mean" in err


def test_models_shows_what_works_offline_and_every_tag(cli):
    code, out, _ = cli("models")
    assert code == 0 and "Bundled trained weights (they work offline" in out
    assert "mobilevit_xxs.cifar10: CIFAR-10 (10 classes, 64x64), trained here: val top-1 82.1%" in out
    assert "each latency was measured on its own device" in out.lower().replace("\n", " ")
    assert "CoreML" not in out  # one spelling: Core ML
    code, out, _ = cli("models", "--tags", "--json")
    tags = {r["name"]: r for r in json.loads(out)}
    assert tags["mobilevit_xxs.cifar10"]["bundled"] and tags["mobilevit_xxs.cifar10"]["top1"] == 82.12
    assert not tags["mobilevit_s.cvnets_in1k"]["bundled"] and "online" in tags["mobilevit_s.cvnets_in1k"]["weights"]
    rows = {r["name"]: r for r in json.loads(cli("models", "--json")[1])}
    assert rows["mobilenetv3_large_100"]["kind_note"] == "with squeeze-and-excitation channel attention"


def test_info_on_a_bundled_tag_shows_the_fixture_not_the_imagenet_spec(cli):
    code, out, _ = cli("info", "mobilevit_xxs.cifar10", "--json")
    doc = json.loads(out)
    assert code == 0 and doc["num_classes"] == 10 and doc["input_size"] == [3, 64, 64]
    assert doc["top1"] == 82.12 and doc["preprocessing"]["crop"] == [64, 64]
    assert doc["model_card"].endswith("mobilevit_xxs.cifar10.md") and "trained here" in doc["trained_on"]
    imagenet = json.loads(cli("info", "mobilevit_xxs", "--json")[1])
    assert doc["params"] < imagenet["params"] and imagenet["num_classes"] == 1000  # its 10-class head


@pytest.mark.parametrize("typo,expected", [("mobilevit_ss", "mobilevit_s"), ("efficientformer-l1", "efficientformer_l1"),
                                           ("deit_tiny", "deit_tiny_patch16_224")])
def test_unknown_model_gets_did_you_mean(cli, typo, expected):
    code, out, err = cli("info", typo)
    assert code == 2 and out == ""
    assert f"did you mean '{expected}'" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_unknown_tag_gets_did_you_mean(cli):
    code, _, err = cli("info", "mobilevit_s.cvnets_in1")
    assert code == 2 and "mobilevit_s.cvnets_in1k" in err


def test_info_shows_spec_and_sources(cli):
    code, out, _ = cli("info", "mobilevit_s", "--json")
    doc = json.loads(out)
    assert code == 0 and doc["preprocessing"]["crop"] == [256, 256] and doc["source"]
    assert any(c["hf_hub_id"] == "timm/mobilevit_s.cvnets_in1k" for c in doc["checkpoints"])


def test_bad_input_size_is_refused_with_a_fix(cli):
    code, _, err = cli("info", "mobilevit_xxs", "--weights", "random", "--input-size", "100", "100")
    assert code == 2 and "multiples of" in err and "Traceback" not in err


def test_console_script_and_module_entry_points():
    for argv in ([sys.executable, "-m", "edgehybrid", "--version"],):
        res = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        assert res.returncode == 0 and __version__ in res.stdout
    res = subprocess.run([sys.executable, "-m", "edgehybrid", "info", "nope_model"], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 2 and "unknown model 'nope_model'" in res.stderr and "Traceback" not in res.stderr


def test_progress_shows_on_a_terminal_only_and_never_under_json(monkeypatch):
    import io
    import time

    from rich.console import Console

    from edgehybrid import console

    screen = io.StringIO()
    monkeypatch.setattr(console, "err", Console(file=screen, force_terminal=True, width=100))
    monkeypatch.setattr(console, "SHOW_PROGRESS", True)
    with console.step("converting to TFLite (int8)"):
        time.sleep(0.3)
    bar = console.progress(4, "checking")
    bar(4)
    bar.close()
    shown = screen.getvalue()
    assert "converting to TFLite (int8)" in shown and "checking" in shown and "4/4" in shown

    screen.truncate(0)
    screen.seek(0)
    monkeypatch.setattr(console, "SHOW_PROGRESS", False)  # what --json sets
    with console.step("converting to TFLite (int8)"):
        pass
    console.progress(4, "checking").close()
    assert screen.getvalue() == ""
