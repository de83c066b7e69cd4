"""Cross-check (not part of the test suite): LyCORIS's own LoConModule, built from a DoRA file we save, merges the
same weights peft merges. LyCORIS is not our dependency: run with lycoris-lora unpacked elsewhere, e.g.

    pip download --no-deps lycoris-lora==4.1.3 -d /tmp/l && python -m zipfile -e /tmp/l/*.whl /tmp/l/src
    pip install --target /tmp/l/deps einops toml
    PYTHONPATH=$PWD:/tmp/l/src:/tmp/l/deps .venv/bin/python bench/dora_lycoris_check.py

Prints, per module kind, the largest |LyCORIS merged - peft merged| relative to the largest |peft delta|.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from lycoris.modules.locon import LoConModule  # lycoris/modules/locon.py: make_module_from_state_dict, get_merged_weight
from safetensors.torch import load_file

from loratrainer.config import NetworkSettings
from loratrainer.model.kohya_format import lora_state_dict
from loratrainer.model.lora import inject_lora
from loratrainer.model.saving import save_lora
from tests.test_model_dora import _randomise
from tests.tiny_sd import build_tiny_components


def main() -> None:
    net = NetworkSettings(lora_type="LoCon", dora_wd=True, network_dim=4, network_alpha=2, conv_dim=2, conv_alpha=1)
    handle = inject_lora(build_tiny_components(), net, train_unet=True, train_text_encoder=True)
    _randomise(handle)
    with tempfile.TemporaryDirectory() as tmp:
        sd = load_file(str(save_lora(Path(tmp) / "d.safetensors", lora_state_dict(handle, "float"), {})))
    worst: dict[tuple, float] = {}
    for name, info in handle.modules.items():
        layer = handle.model(info.part).get_submodule(info.path)
        base = layer.get_base_layer()
        original = base.weight.detach().clone()
        with torch.no_grad():  # (make_module_from_state_dict copies into a parameter: outside no_grad torch refuses)
            module = LoConModule.make_module_from_state_dict(
                name, base, sd[f"{name}.lora_up.weight"], sd[f"{name}.lora_down.weight"], None, sd[f"{name}.alpha"],
                sd[f"{name}.dora_scale"])
            theirs = module.get_merged_weight(multiplier=1)[0].double()
            layer.merge()
            ours = base.weight.detach().double()
        kind = (type(base).__name__, tuple(getattr(base, "kernel_size", ())))
        rel = float((theirs - ours).abs().max() / (ours - original.double()).abs().max())
        worst[kind] = max(worst.get(kind, 0.0), rel)
    for kind, rel in sorted(worst.items()):
        print(f"{kind}: max |LyCORIS - peft| / max |delta| = {rel:.2e}")


if __name__ == "__main__":
    main()
