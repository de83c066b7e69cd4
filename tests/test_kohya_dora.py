"""Kohya GUI files with dora_wd: imported as DoRA where the Kohya GUI passes it to LyCORIS (LoRA_type LoCon /
LyCORIS/LoCon: kohya_gui/lora_gui.py train_model builds `network_module lycoris.kohya` with `dora_wd={dora_wd}
... algo=locon`), said out loud where it has no effect there (Standard, Kohya LoCon: sd-scripts' networks.lora)
or where peft has no DoRA (LoHa/LoKr); `dora_wd=True` in network_args too; exported back under the GUI's names."""

from __future__ import annotations

import json

import pytest

from loratrainer.config import TrainingConfig, with_values
from loratrainer.config.kohya import export_kohya, import_kohya, kohya_to_json
from loratrainer.gui.i18n import Translator


@pytest.mark.parametrize("kind", ["LyCORIS/LoCon", "LoCon"])
def test_lycoris_locon_with_dora_wd_imports_as_locon_with_dora(kind):
    config, report = import_kohya({"LoRA_type": kind, "dora_wd": True, "conv_dim": 4, "network_dim": 16})
    n = config.network
    assert (n.lora_type, n.dora_wd, n.conv_dim, n.network_dim) == ("LoCon", True, 4, 16)
    assert "dora_wd" not in report.keys("unsupported") + report.keys("ignored")


def test_dora_wd_in_network_args_turns_dora_on():
    config, report = import_kohya({"LoRA_type": "LyCORIS/LoCon", "network_args": "algo=locon dora_wd=True"})
    assert config.network.dora_wd
    assert "network_args dora_wd" in report.keys("migrated")


@pytest.mark.parametrize("kind", ["Standard", "Kohya LoCon"])
def test_dora_wd_where_the_kohya_gui_does_not_pass_it_is_reported_and_off(kind):
    config, report = import_kohya({"LoRA_type": kind, "dora_wd": True})
    assert not config.network.dora_wd
    item = next(i for i in report.ignored if i.key == "dora_wd")
    assert "networks.lora" in str(item)
    assert "networks.lora" in item.render(Translator("ko").message) and "학습합니다" in item.render(Translator("ko").message)


@pytest.mark.parametrize("kind", ["LyCORIS/LoHa", "LyCORIS/LoKr"])
def test_dora_wd_with_loha_lokr_is_not_supported_by_name(kind):
    config, report = import_kohya({"LoRA_type": kind, "dora_wd": True})
    assert not config.network.dora_wd and "dora_wd" in report.keys("unsupported")


@pytest.mark.parametrize("lora_type", ["LoCon", "Standard"])
def test_export_writes_lycoris_locon_with_dora_wd_and_imports_back(lora_type):
    config = with_values(TrainingConfig(), {"lora_type": lora_type, "dora_wd": True, "network_dim": 16, "conv_dim": 8})
    data, report = export_kohya(config)
    assert data["LoRA_type"] == "LyCORIS/LoCon" and data["dora_wd"] is True
    assert ("lora_type" in report.keys("migrated")) == (lora_type == "Standard")
    if lora_type == "Standard":
        assert data["LyCORIS_preset"] == "attn-mlp"  # LyCORIS's preset of Standard's layers
    again, again_report = import_kohya(json.loads(kohya_to_json(data)))
    assert again.network.dora_wd and again.network.lora_type == "LoCon" and again.network.network_dim == 16
    assert again_report.unsupported == []
