"""DoRA in a real (tiny, in-process) run: the magnitude vectors train, are saved as LyCORIS's dora_scale, and the
file applied the way ComfyUI applies it (with the output-axis norm of LyCORIS, tests/test_model_dora.py) renders
the sample peft renders; network_weights continues the file."""

from __future__ import annotations

from tests.test_train_support import small_config, tiny_model  # noqa: F401  (first: hides a broken torchvision)

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from loratrainer.model.kohya_format import lora_state_dict
from loratrainer.model.saving import save_lora
from loratrainer.config.sample_prompts import SamplePrompt
from loratrainer.train.loop import train
from loratrainer.train.state import load_state, save_state
from tests.test_model_dora import comfy_delta
from tests.test_train_loop import _Quiet
from tests.test_train_lycoris import RATES, _adapters, _image, _trainer

NETWORK = dict(lora_type="LoCon", dora_wd=True, network_dim=4, network_alpha=4, conv_dim=2, conv_alpha=2)


def _row_norms(weight: torch.Tensor) -> torch.Tensor:
    return weight.detach().float().reshape(weight.shape[0], -1).norm(dim=1)


def test_a_tiny_dora_run_trains_saves_and_applies_its_magnitudes(tmp_path, tiny_model):
    first = _trainer(tmp_path / "a", tiny_model, epoch=1, **NETWORK, **RATES)
    train(first, _Quiet())
    trained = lora_state_dict(first.handle, "float")
    path = save_lora(tmp_path / "run.safetensors", trained, {})
    file = load_file(str(path))
    save_state(first, tmp_path / "state")

    # 1. one dora_scale per module, in LyCORIS's [out, 1(, 1, 1)] layout, moved away from the weight's own norms
    moved = 0.0
    for name, info in first.handle.modules.items():
        weight = first.handle.model(info.part).get_submodule(info.path).get_base_layer().weight
        scale = file[f"{name}.dora_scale"]
        assert scale.shape == (weight.shape[0], *[1] * (weight.dim() - 1)), name
        moved = max(moved, float((scale.flatten() - _row_norms(weight)).abs().max()))
    print(f"DoRA: largest change of a magnitude after one epoch: {moved:.4f}")
    assert moved > 1e-3  # the magnitudes were trained (they start at the base weight's row norms)

    # 2. the fixed-seed sample with peft's adapter active = the base model with the file merged ComfyUI's way
    prompt = SamplePrompt("a photo of a thing", width=64, height=64, steps=4, seed=1234)
    with_peft = _image(first, prompt)
    _adapters(first, False)
    base = _image(first, prompt)
    with torch.no_grad():
        for name, info in first.handle.modules.items():
            weight = first.handle.model(info.part).get_submodule(info.path).get_base_layer().weight
            weight += comfy_delta(file, name, weight).to(weight.dtype)
    merged = _image(first, prompt)
    changed, gap = np.abs(with_peft - base).max(), np.abs(merged - with_peft).max()
    print(f"DoRA: the adapter moves pixels by up to {changed}; file-merged vs peft: {gap}")
    assert changed >= 20 and gap <= 1

    # 3. network_weights starts a run from the file: every tensor, the magnitudes included, comes back
    again = _trainer(tmp_path / "c", tiny_model, epoch=1, network_weights=str(path), **NETWORK, **RATES)
    loaded = lora_state_dict(again.handle, "float")
    assert loaded.keys() == trained.keys() and all(torch.equal(loaded[k], trained[k]) for k in trained)

    # 4. a saved training state resumes the magnitudes and their optimizer moments
    resumed = _trainer(tmp_path / "d", tiny_model, epoch=1, **NETWORK, **RATES)
    load_state(resumed, tmp_path / "state")
    restored = lora_state_dict(resumed.handle, "float")
    assert all(torch.equal(restored[k], trained[k]) for k in trained)
    magnitudes = {id(p) for n, p in resumed.handle.unet.named_parameters() if "lora_magnitude_vector" in n}
    moments = resumed.optimizer.state_dict()["state"]
    params = [p for g in resumed.optimizer.param_groups for p in g["params"]]
    assert magnitudes and any(id(params[i]) in magnitudes for i in moments)  # the magnitudes are optimised


def test_a_launched_dora_run_writes_dora_scale_and_lycoris_metadata(tmp_path, tiny_model):
    """The whole path a user takes (accelerate launch, trainer process, saver) with DoRA on a Standard LoRA."""
    from tests.test_train_reliability import _run

    _run(small_config(tmp_path, tiny_model, images=2, epoch=1, dora_wd=True, save_precision="fp16"))
    with safe_open(tmp_path / "out" / "last.safetensors", "pt") as f:
        meta, keys = f.metadata(), list(f.keys())
    assert meta["ss_network_module"] == "lycoris.kohya" and '"dora_wd": "True"' in meta["ss_network_args"]
    names = {k.rsplit(".", 2)[0] for k in keys if k.endswith("lora_down.weight")}
    assert names and {k[: -len(".dora_scale")] for k in keys if k.endswith(".dora_scale")} == names
