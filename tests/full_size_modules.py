"""What the full-size SD1.5 and SDXL module-set tests share (tests/test_model_sd15_full_size.py,
tests/test_model_sdxl_full_size.py): one injection per LoRA type on a meta-device model, and the comparison of our
modules and ranks with the list sd-scripts' own create_network built (a fixture recorded from its code)."""

from __future__ import annotations

from typing import Callable

from loratrainer.config import NetworkSettings
from loratrainer.model.kohya_format import lora_state_dict
from loratrainer.model.lora import LoraHandle, inject_lora


def injector(build: Callable[[], object], fixture: dict) -> Callable[[str], LoraHandle]:
    """`get(lora_type)`: the full-size model `build()` makes, injected at the fixture's ranks, once per type."""
    cache: dict[str, LoraHandle] = {}

    def get(lora_type: str) -> LoraHandle:
        if lora_type not in cache:
            net = NetworkSettings(lora_type=lora_type, network_dim=fixture["network_dim"], network_alpha=1,
                                  conv_dim=fixture["conv_dim"], conv_alpha=1)
            cache[lora_type] = inject_lora(build(), net, train_unet=True, train_text_encoder=True)
        return cache[lora_type]

    return get


def assert_modules_equal_sd_scripts(handle: LoraHandle, expected: dict[str, int]) -> None:
    """Names and ranks equal sd-scripts' (conv_dim only on the 3x3 convolutions), and the saved file holds exactly
    those modules, three tensors each (lora_down, lora_up, alpha)."""
    ours = {name: info.rank for name, info in handle.modules.items()}
    assert sorted(set(ours) - set(expected)) == [] and sorted(set(expected) - set(ours)) == []
    assert ours == expected
    saved = lora_state_dict(handle, "fp16")  # meta tensors: names and shapes only
    assert {k.split(".", 1)[0] for k in saved} == set(expected)
    assert len(saved) == 3 * len(expected)
