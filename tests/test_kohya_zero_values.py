"""Zeros that Kohya accepts: network_alpha / conv_alpha 0 (alpha = rank) and clip_skip 0 (no clip skip).

sd-scripts networks/lora.py LoRAModule (and every LyCORIS module): `alpha = lora_dim if alpha is None or alpha == 0`.
The Kohya GUI's Convolution Alpha slider starts at 0 and passes the value in network_args (conv_alpha="0"), so
sd-scripts gets the 0 and uses the conv rank. Its Network Alpha, though, goes into the TOML that train_model writes,
and train_model drops every 0 from it (kohya_gui/lora_gui.py: `if value not in ["", False, None]`), so sd-scripts
trains a Kohya GUI file's network_alpha 0 at its default alpha 1 (train_network.py --network_alpha default=1); on
sd-scripts' own command line (additional_parameters) a 0 reaches it. Its Clip skip slider starts at 0 too, and
train_model passes no --clip_skip for 0: the last layer. None of the Kohya GUI's own files (tests/fixtures/kohya_ss)
holds one of these zeros, so the tests take real files and set the zero as a user does on that screen.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from loratrainer.config import NetworkSettings, TrainingConfig, with_values
from loratrainer.config.kohya import export_kohya, import_kohya
from loratrainer.model.kohya_format import lora_state_dict
from loratrainer.model.lora import inject_lora
from tests.tiny_sd import build_tiny_components

FIXTURES = Path(__file__).parent / "fixtures" / "kohya_ss"
KOHYA_LOCON = "test/config/locon-AdamW.json"  # Kohya LoCon, dim 16 alpha 8, conv_dim 16 conv_alpha 8, clip_skip 2
LYCORIS_LOHA = "presets/lora/loha-sd15.json"


def _fixture(name: str, **changes) -> dict:
    data = json.loads((FIXTURES / name).read_text(encoding="utf-8"))
    return {**data, **changes}


def test_the_schema_takes_the_zeros_and_still_refuses_negatives():
    config = with_values(TrainingConfig(), {"network_alpha": 0, "conv_alpha": 0, "clip_skip": 0})
    assert (config.network.network_alpha, config.network.conv_alpha, config.model.clip_skip) == (0, 0, 0)
    for key in ("network_alpha", "conv_alpha", "clip_skip"):
        with pytest.raises(ValueError, match=key):
            with_values(TrainingConfig(), {key: -1})


@pytest.mark.parametrize("lora_type", ["Standard", "LoCon", "LoHa"])
def test_an_alpha_of_zero_is_saved_as_the_rank(lora_type):
    """What A1111 and ComfyUI read is the file's alpha tensors: scale 1, the rank's own value, per module kind."""
    net = NetworkSettings(lora_type=lora_type, network_dim=4, network_alpha=0, conv_dim=2, conv_alpha=0)
    handle = inject_lora(build_tiny_components(), net, train_unet=True, train_text_encoder=True)
    alphas = {k: float(v) for k, v in lora_state_dict(handle, "float").items() if k.endswith(".alpha")}
    # the 3x3 convolutions are at conv_dim; the resnets' time_emb_proj and 1x1 conv_shortcut at network_dim (sd-scripts)
    conv = {k for k in alphas if ("resnets" in k or "samplers" in k) and not k.endswith(("time_emb_proj.alpha", "conv_shortcut.alpha"))}
    assert alphas and (conv or lora_type == "Standard")
    assert all(alphas[k] == (2.0 if k in conv else 4.0) for k in alphas), alphas
    if lora_type != "LoHa":  # peft's LoRA layer: the scale it trains with is alpha / rank = 1
        layer = handle.model("unet").get_submodule(next(m.path for m in handle.modules.values() if m.part == "unet"))
        assert layer.scaling["default"] == 1.0


def test_kohya_locon_conv_alpha_zero_imports_as_alpha_equal_to_the_conv_rank():
    config, report = import_kohya(_fixture(KOHYA_LOCON, conv_alpha=0), KOHYA_LOCON)
    assert config.network.lora_type == "LoCon" and config.network.conv_dim == 16
    assert config.network.conv_alpha == 0 and config.network.alphas_resolved().conv_alpha == 16
    assert config.network.network_alpha == 8  # untouched


def test_lycoris_conv_alpha_zero_imports_too():
    config, _ = import_kohya(_fixture(LYCORIS_LOHA, conv_alpha=0), LYCORIS_LOHA)
    assert config.network.lora_type == "LoHa" and config.network.conv_alpha == 0


def test_kohya_clip_skip_zero_imports_as_no_clip_skip_and_encodes_like_one():
    from loratrainer.train.text import encode, final_layer_norm, tokenize

    config, report = import_kohya(_fixture(KOHYA_LOCON, clip_skip=0), KOHYA_LOCON)
    assert config.model.clip_skip == 0
    tiny = build_tiny_components()
    ids = tokenize(tiny.tokenizer, ["a photo of a dog"], 75)
    with torch.no_grad():
        states = {n: encode(tiny.text_encoder, final_layer_norm(tiny.text_encoder), ids, n, torch.device("cpu")) for n in (0, 1, 2)}
    assert torch.equal(states[0], states[1]) and not torch.allclose(states[0], states[2])


def test_a_kohya_gui_file_with_network_alpha_zero_trains_at_alpha_one_as_the_kohya_gui_does():
    config, report = import_kohya(_fixture(KOHYA_LOCON, network_alpha=0), KOHYA_LOCON)
    assert config.network.network_alpha == 1.0
    said = [str(item) for item in report.migrated if item.key == "network_alpha"]
    assert said and "default alpha 1" in said[0], report.migrated
    # on sd-scripts' own command line the 0 reaches networks/lora.py: alpha = rank
    config, _ = import_kohya(_fixture(KOHYA_LOCON, network_alpha=8, additional_parameters="--network_alpha=0"), KOHYA_LOCON)
    assert config.network.network_alpha == 0 and config.network.alphas_resolved().network_alpha == 16


def test_export_of_alpha_zero_writes_the_rank_so_the_kohya_gui_trains_the_same():
    ours = with_values(TrainingConfig(), {"lora_type": "LoCon", "network_dim": 32, "network_alpha": 0, "conv_dim": 8,
                                          "conv_alpha": 0, "clip_skip": 0, "pretrained_model_name_or_path": "m"})
    out, report = export_kohya(ours)
    assert out["network_alpha"] == 32 and any(item.key == "network_alpha" for item in report.migrated)
    assert out["conv_alpha"] == 0 and out["clip_skip"] == 0  # network_args carries the 0; clip_skip 0 = last layer
    again, _ = import_kohya(out, "export")
    for c in (ours, again):
        resolved = c.network.alphas_resolved()
        assert (resolved.network_alpha, resolved.conv_alpha) == (32, 8)
    assert again.model.clip_skip == 0
