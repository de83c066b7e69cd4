"""The speed and memory options change nothing but speed and memory: for a fixed seed, the same loss curve and the
same trained LoRA as the default run (within float tolerance), on the tiny model in-process.

Where the option legitimately changes the numbers (cached latents draw the VAE sample once, an uncached run
draws it every step) the equivalence is checked between the two forms that must agree (latents cached in memory
or on disk) instead. The speed itself is measured by bench/, not here.
"""

from __future__ import annotations

from tests.test_train_support import small_config, tiny_model  # noqa: F401  (first: hides a broken torchvision)

import pytest
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed

from loratrainer.model.kohya_format import lora_state_dict
from loratrainer.train.loop import train
from loratrainer.train.saving import Saver
from loratrainer.train.setup import build_trainer

STEPS_CONFIG = dict(images=2, repeats=3, epoch=1, train_batch_size=1, learning_rate=1e-3, unet_lr=1e-3,
                    text_encoder_lr=1e-3, network_dim=4, network_alpha=4, seed=42)


class _Losses:
    def __init__(self):
        self.losses: list[float] = []

    def step(self, step, epoch, loss, lr):
        self.losses.append(loss)

    def epoch_end(self, epoch, step):
        pass


def _run(tmp_path, model, prepare=None, seed=42, **values):
    """Build and train in-process with a fixed seed; returns (trainer, per-step losses, LoRA tensors)."""
    config = small_config(tmp_path, model, **{**STEPS_CONFIG, **values})
    set_seed(seed)
    t = build_trainer(config, tmp_path, Accelerator(cpu=True), seed=seed)
    t.saver = Saver(t, write=lambda path, p: None)
    if prepare:
        prepare(t)
    set_seed(seed)
    reporter = _Losses()
    assert train(t, reporter).status == "finished"
    return t, reporter.losses, lora_state_dict(t.handle, "float")


@pytest.fixture(scope="module")
def baseline(tmp_path_factory, tiny_model):
    t, losses, lora = _run(tmp_path_factory.mktemp("baseline"), tiny_model)
    assert len(losses) == t.total_steps == 6
    return losses, lora


def _assert_same_training(result, baseline, rtol=1e-4, atol=1e-6):
    (_, losses, lora), (base_losses, base_lora) = result, baseline
    assert losses == pytest.approx(base_losses, rel=rtol, abs=atol), (losses, base_losses)
    assert lora.keys() == base_lora.keys()
    worst = max(float((lora[k] - base_lora[k]).abs().max()) for k in lora)
    assert worst < 1e-4, f"LoRA tensors differ from the default run's by up to {worst}"


def test_the_baseline_itself_trains_and_is_reproducible(tmp_path, tiny_model, baseline):
    """Without this, 'same as the baseline' would prove nothing: a second default run is identical, and the LoRA
    moved away from its initial state (lora_up starts at zero)."""
    again = _run(tmp_path, tiny_model)
    _assert_same_training(again, baseline, rtol=0, atol=0)
    ups = [v for k, v in baseline[1].items() if k.endswith("lora_up.weight")]
    assert ups and all(float(u.abs().max()) > 0 for u in ups)


def test_a_different_seed_gives_a_different_curve(tmp_path, tiny_model, baseline):
    """The comparison is sharp enough to see a change: another noise seed fails the equivalence."""
    other = _run(tmp_path, tiny_model, seed=7)
    with pytest.raises(AssertionError):
        _assert_same_training(other, baseline)


def test_channels_last_changes_nothing_but_the_memory_layout(tmp_path, tiny_model, baseline):
    result = _run(tmp_path, tiny_model, channels_last=True)
    conv = result[0].components.unet.conv_in.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    _assert_same_training(result, baseline)


@pytest.mark.parametrize("flag", ["fused=True", "foreach=True"])
def test_fused_and_foreach_adamw_train_the_same(tmp_path, tiny_model, baseline, flag):
    result = _run(tmp_path, tiny_model, optimizer_args=flag)
    key, value = flag.split("=")
    assert result[0].optimizer.defaults[key] is (value == "True")
    _assert_same_training(result, baseline)


def test_gradient_checkpointing_trains_the_same(tmp_path, tiny_model, baseline):
    result = _run(tmp_path, tiny_model, gradient_checkpointing=True)
    assert result[0].components.unet.is_gradient_checkpointing
    _assert_same_training(result, baseline)


def test_torch_compile_compiles_the_unet_in_place_and_trains_the_same(tmp_path, tiny_model, baseline):
    """aot_eager traces the UNet with dynamo and AOT autograd as inductor does, without a C++ build of kernels
    (minutes on this machine); the wiring is the same for every backend."""
    result = _run(tmp_path, tiny_model, dynamo_backend="aot_eager")
    unet = result[0].components.unet
    assert unet._compiled_call_impl is not None  # compiled in place: class, config and state_dict keys unchanged
    assert type(unet).__name__ == "UNet2DConditionModel"
    _assert_same_training(result, baseline, rtol=1e-3, atol=1e-5)


def test_cached_text_encoder_outputs_train_the_same_as_encoding_every_step(tmp_path, tiny_model):
    frozen_te = dict(text_encoder_lr=0)
    cached = _run(tmp_path / "cached", tiny_model, **frozen_te)
    assert cached[0].text_cache is not None and cached[0].text_cache._states, "the text-encoder outputs were not cached"
    uncached = _run(tmp_path / "uncached", tiny_model, prepare=lambda t: setattr(t, "text_cache", None), **frozen_te)
    _assert_same_training(cached, (uncached[1], uncached[2]), rtol=0, atol=0)


def test_latents_cached_on_disk_train_the_same_as_cached_in_memory(tmp_path, tiny_model):
    memory = _run(tmp_path / "memory", tiny_model, cache_latents=True, cache_latents_to_disk=False)
    disk = _run(tmp_path / "disk", tiny_model, cache_latents=True, cache_latents_to_disk=True)
    assert list((tmp_path / "disk" / "image").rglob("*.npz")), "no latent cache file was written"
    _assert_same_training(disk, (memory[1], memory[2]), rtol=0, atol=0)
