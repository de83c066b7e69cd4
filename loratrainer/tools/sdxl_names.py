"""SDXL checkpoint keys <-> Kohya SDXL LoRA module names, by name only (no weight is read here).

sd-scripts trains SDXL LoRAs on its own SDXL UNet (library/sdxl_original_unet.py), whose module paths are the
original single-file layout's: a Kohya SDXL LoRA names `lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q`
for the checkpoint key `model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn1.to_q.weight`. The text
encoders are `lora_te1_` (CLIP ViT-L, `conditioner.embedders.0.transformer.text_model.*`, transformers' layout)
and `lora_te2_` (OpenCLIP ViT-bigG, `conditioner.embedders.1.model.*`), whose attention stores q, k and v as one
fused `attn.in_proj_weight` [3 x 1280, 1280] and whose MLP is `mlp.c_fc` / `mlp.c_proj`: sd-scripts
library/sdxl_model_util.py (convert_sdxl_text_encoder_2_checkpoint) maps them to transformers' q_proj, k_proj,
v_proj (rows 0-1279, 1280-2559, 2560-3839), out_proj, fc1 and fc2, the names the LoRA uses.

A diffusers SDXL folder names the UNet diffusers' way (`down_blocks.1.attentions.0...` is `input_blocks.4.1...`):
its keys are named by the trainer's own mapping (model.sdxl_names, the one place our diffusers paths become
sd-scripts' names); text_encoder/ and text_encoder_2/ are transformers' CLIP layout.
"""

from __future__ import annotations

import re

UNET = "model.diffusion_model."
TE1 = "conditioner.embedders.0.transformer."
TE2 = "conditioner.embedders.1.model."
_TE2_BLOCK = re.compile(r"^transformer\.resblocks\.(\d+)\.(attn\.in_proj_weight|attn\.out_proj\.weight|mlp\.c_fc\.weight|mlp\.c_proj\.weight)$")
# Linear layers of a Transformer2DModel that Kohya's LoRA adapts (networks/lora.py: every Linear inside it; SDXL's
# proj_in/proj_out are Linear, use_linear_projection)
_UNET_TARGET = re.compile(
    r"^((input_blocks\.\d+|output_blocks\.\d+|middle_block)\.1\.)"
    r"(proj_in|proj_out|transformer_blocks\.\d+\.(attn[12]\.(to_q|to_k|to_v|to_out\.0)|ff\.net\.0\.proj|ff\.net\.2))\.weight$"
)
_TE_TARGET = re.compile(r"^text_model\.encoder\.layers\.\d+\.(self_attn\.(q_proj|k_proj|v_proj|out_proj)|mlp\.(fc1|fc2))\.weight$")

# (key in the file, rows of it or None): a module's weight, or its slice of a fused weight
Where = tuple[str, "tuple[int, int] | None"]


def is_sdxl_single_file(keys) -> bool:
    return any(k.startswith(("conditioner.embedders.", UNET + "label_emb")) for k in keys)


def kohya_names_of_single_file(keys, shapes) -> dict[str, Where]:
    """{Kohya module name: (checkpoint key, rows)} for every Linear/Conv weight of an SDXL single file's UNet and
    both text encoders. `shapes(key)` gives a key's shape (to cut in_proj_weight in three)."""
    out: dict[str, Where] = {}
    for key in keys:
        if key.startswith(UNET) and key.endswith(".weight"):
            out["lora_unet_" + key[len(UNET):-len(".weight")].replace(".", "_")] = (key, None)
        elif key.startswith(TE1 + "text_model.") and key.endswith(".weight"):
            out["lora_te1_" + key[len(TE1):-len(".weight")].replace(".", "_")] = (key, None)
        elif key.startswith(TE2):
            m = _TE2_BLOCK.match(key[len(TE2):])
            if not m:
                continue
            layer, what = m.group(1), m.group(2)
            base = f"lora_te2_text_model_encoder_layers_{layer}_"
            if what == "attn.in_proj_weight":
                width = shapes(key)[0] // 3
                for i, proj in enumerate(("q_proj", "k_proj", "v_proj")):
                    out[base + "self_attn_" + proj] = (key, (i * width, (i + 1) * width))
            else:
                name = {"attn.out_proj.weight": "self_attn_out_proj", "mlp.c_fc.weight": "mlp_fc1", "mlp.c_proj.weight": "mlp_fc2"}[what]
                out[base + name] = (key, None)
    return out


def lora_targets_of_single_file(keys) -> list[str]:
    """The Kohya names Standard LoRA adapts in an SDXL single file, in file order (UNet, te1, te2)."""
    names = []
    for key in keys:
        if key.startswith(UNET) and _UNET_TARGET.match(key[len(UNET):]):
            names.append("lora_unet_" + key[len(UNET):-len(".weight")].replace(".", "_"))
        elif key.startswith(TE1) and _TE_TARGET.match(key[len(TE1):]):
            names.append("lora_te1_" + key[len(TE1):-len(".weight")].replace(".", "_"))
        elif key.startswith(TE2):
            m = _TE2_BLOCK.match(key[len(TE2):])
            if m:
                base = f"lora_te2_text_model_encoder_layers_{m.group(1)}_"
                names += [base + n for n in ({"attn.in_proj_weight": ("self_attn_q_proj", "self_attn_k_proj", "self_attn_v_proj"),
                                               "attn.out_proj.weight": ("self_attn_out_proj",), "mlp.c_fc.weight": ("mlp_fc1",),
                                               "mlp.c_proj.weight": ("mlp_fc2",)}[m.group(2)])]
    return names


def kohya_name_of_folder_key(part: str, key: str, unet_config: dict | None = None) -> str | None:
    """A diffusers SDXL folder's weight key (unet/, text_encoder/, text_encoder_2/) -> its Kohya SDXL name, by the
    trainer's own mapping (model.sdxl_names, diffusers' conversion in reverse) with the folder's UNet layout."""
    from loratrainer.model.sdxl_names import SDXL_BASE, UNetLayout, kohya_name

    if not key.endswith(".weight"):
        return None
    layout = UNetLayout.of(unet_config) if unet_config else SDXL_BASE
    try:
        return kohya_name(part, key[: -len(".weight")], layout)
    except KeyError:
        return None  # a UNet key with no place in the original layout: not a module a LoRA names


def is_lora_target(name: str) -> bool:
    """Whether a Kohya SDXL name is one Standard LoRA adapts (the same rule for a file and a folder)."""
    if name.startswith("lora_unet_"):
        return bool(re.match(r"^lora_unet_(input_blocks_\d+|output_blocks_\d+|middle_block)_1_"
                             r"(proj_in|proj_out|transformer_blocks_\d+_(attn[12]_(to_q|to_k|to_v|to_out_0)|ff_net_0_proj|ff_net_2))$", name))
    return bool(re.match(r"^lora_te[12]_text_model_encoder_layers_\d+_(self_attn_(q_proj|k_proj|v_proj|out_proj)|mlp_fc[12])$", name))
