"""LoHa and LoKr in real (tiny, in-process) runs: the sample image with the saved file applied the way A1111 and
ComfyUI apply it equals the one rendered with peft's adapter active; network_weights and resume continue them."""

from __future__ import annotations

from tests.test_train_support import small_config, tiny_model  # noqa: F401  (first: hides a broken torchvision)

import numpy as np
import pytest
import torch
from accelerate import Accelerator
from safetensors.torch import load_file

from loratrainer.config import with_values
from loratrainer.model.kohya_format import lora_state_dict
from loratrainer.model.saving import save_lora
from loratrainer.train.setup import add_lora
from loratrainer.train.loop import train
from loratrainer.config.sample_prompts import SamplePrompt
from loratrainer.train.sampling import render, untouched_training_state
from loratrainer.train.setup import build_trainer
from loratrainer.train.state import BrokenState, load_state, save_state
from tests.test_model_lycoris import loader_delta
from tests.test_train_loop import _Quiet

NETWORKS = {
    "LoHa": dict(lora_type="LoHa", network_dim=4, network_alpha=4, conv_dim=2, conv_alpha=2),
    # factor 4 on the tiny model: low-rank w2 in some modules, full factors (scale 1) in others
    "LoKr": dict(lora_type="LoKr", network_dim=4, network_alpha=2, conv_dim=2, conv_alpha=2, factor=4),
}
RATES = dict(learning_rate=5e-2, unet_lr=5e-2, text_encoder_lr=5e-2)


def _trainer(root, model, **values):
    from loratrainer.train.saving import Saver

    t = build_trainer(small_config(root, model, **values), root, Accelerator(cpu=True), seed=7)
    t.saver = Saver(t, write=lambda path, p: None)  # the loop asks it what to save; files are written by the tests
    return t


def _image(t, prompt) -> np.ndarray:
    with untouched_training_state(t):
        return np.asarray(render(t, prompt, "euler_a")).astype(np.int16)


def _adapters(t, on: bool):
    for info in t.handle.modules.values():
        t.handle.model(info.part).get_submodule(info.path).enable_adapters(on)


@pytest.mark.parametrize("lora_type", ["LoHa", "LoKr"])
def test_a_tiny_run_s_file_gives_peft_s_sample_and_continues_and_resumes(tmp_path, tiny_model, lora_type):
    first = _trainer(tmp_path / "a", tiny_model, epoch=1, **NETWORKS[lora_type], **RATES)
    train(first, _Quiet())
    trained = lora_state_dict(first.handle, "float")
    path = save_lora(tmp_path / "run.safetensors", trained, {})
    save_state(first, tmp_path / "state")

    # 1. the fixed-seed sample with peft's adapter active = the base model with the file merged the loaders' way
    prompt = SamplePrompt("a photo of a thing", width=64, height=64, steps=4, seed=1234)
    with_peft = _image(first, prompt)
    _adapters(first, False)
    base = _image(first, prompt)
    file = load_file(str(path))
    with torch.no_grad():  # merge the file into the base weights with the loaders' arithmetic (strength 1)
        for name, info in first.handle.modules.items():
            weight = first.handle.model(info.part).get_submodule(info.path).get_base_layer().weight
            weight += loader_delta(file, name, weight.shape).to(weight.dtype)
    merged = _image(first, prompt)
    changed = np.abs(with_peft - base).max()
    print(f"{lora_type}: the LoRA moves pixels by up to {changed}; file-merged vs peft: {np.abs(merged - with_peft).max()}")
    assert changed >= 20  # the trained adapter visibly changes the sample
    assert np.abs(merged - with_peft).max() <= 1  # and the file, applied as A1111/ComfyUI do, gives the same image

    # 2. network_weights starts from the file; 3. resume continues the state (step, weights, optimizer)
    resumed = _trainer(tmp_path / "c", tiny_model, epoch=2, network_weights=str(path), **NETWORKS[lora_type], **RATES)
    loaded = lora_state_dict(resumed.handle, "float")
    assert loaded.keys() == trained.keys() and all(torch.equal(loaded[k], trained[k]) for k in trained)
    info = load_state(resumed, tmp_path / "state")
    assert info.step == first.step and resumed.step == first.step
    restored = lora_state_dict(resumed.handle, "float")
    assert all(torch.equal(restored[k], trained[k]) for k in trained)
    assert resumed.optimizer.state_dict()["state"]  # the optimizer moments came back too
    train(resumed, _Quiet())
    assert resumed.step == 2 * first.step
    after = lora_state_dict(resumed.handle, "float")
    assert any(not torch.equal(after[k], trained[k]) for k in trained)  # and it trains on

    if lora_type == "LoHa":  # a state of another rank is refused by name, not with a tensor-size error
        other = _trainer(tmp_path / "d", tiny_model, epoch=2, **{**NETWORKS[lora_type], "network_dim": 2}, **RATES)
        with pytest.raises(BrokenState, match="does not match this network"):
            load_state(other, tmp_path / "state")


def test_kohya_settings_reach_peft(tmp_path, tiny_model):
    from tests.tiny_sd import build_tiny_components

    config = with_values(small_config(tmp_path, tiny_model), {**NETWORKS["LoKr"], "decompose_both": True,
                                                                "rank_dropout": 0.5, "module_dropout": 0.25})
    peft = add_lora(build_tiny_components(), config).configs["unet"]
    assert type(peft).__name__ == "LoKrConfig" and peft.decompose_factor == 4 and peft.decompose_both
    assert peft.rank_dropout == 0.5 and peft.module_dropout == 0.25


def test_a_launched_lokr_run_writes_the_lycoris_file_with_its_metadata(tmp_path, tiny_model):
    """The whole path a user takes (accelerate launch, trainer process, saver): a full-matrix LoKr as the Kohya
    GUI presets ask for it (rank 100000, factor 6 -> full factors on the tiny model)."""
    from safetensors import safe_open

    from tests.test_train_reliability import _run

    config = small_config(tmp_path, tiny_model, images=2, epoch=1, lora_type="LoKr", network_dim=100000, network_alpha=1,
                          conv_dim=100000, conv_alpha=1, factor=6, save_precision="fp16")
    _run(config)
    path = tmp_path / "out" / "last.safetensors"
    with safe_open(path, "pt") as f:
        meta, keys = f.metadata(), list(f.keys())
    assert meta["ss_network_module"] == "lycoris.kohya" and '"algo": "lokr"' in meta["ss_network_args"]
    assert keys and all(k.rsplit(".", 1)[1] in ("lokr_w1", "lokr_w2", "alpha") for k in keys)
    sd = load_file(str(path))
    assert any(k.endswith(".lokr_w2") and sd[k].abs().max() > 0 for k in sd)  # it trained (w2 starts at zero)
