"""LoRA injection with peft into the SD1.5 UNet and text encoder, on exactly Kohya's module set.

Kohya's networks/lora.py adapts every Linear/Conv2d inside the UNet's Transformer2DModel blocks and inside the
text encoder's CLIPAttention/CLIPMLP (Standard). With conv_dim (LoCon) its create_modules also adapts every Linear
and Conv2d of ResnetBlock2D/Downsample2D/Upsample2D: the 3x3 convolutions with conv_dim/conv_alpha, the resnets'
time_emb_proj Linear and 1x1 conv_shortcut with network_dim/network_alpha ("is_linear or is_conv2d_1x1 ->
lora_dim"). We compute those module names from the model tree and hand them to peft as exact targets, so nothing
else (conv_in/conv_out, the time embedding) is touched. peft's default init is Kohya's: down (lora_A)
kaiming-uniform(a=sqrt(5)), up (lora_B) zeros; scale = alpha / rank, as in Kohya.

LoHa and LoKr (LyCORIS) go through peft's LoHaConfig / LoKrConfig on LoCon's module set (model.lycoris builds
those configs); LyCORIS's lycoris.kohya selects the same modules in those blocks with the same ranks.

SDXL (components.family == "sdxl"): the same containers in the UNet and in both text encoders, as sd-scripts'
create_modules builds them for SDXL, and its names (model.sdxl_names: the original-layout UNet paths,
lora_te1_/lora_te2_; time_emb_proj is emb_layers.1, conv_shortcut skip_connection). The module set is chosen here
once for both families; tests/test_model_sd15_full_size.py and tests/test_model_sdxl_full_size.py compare it at
full size with sd-scripts' own.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from diffusers.models.resnet import Downsample2D, ResnetBlock2D, Upsample2D
from diffusers.models.transformers.transformer_2d import Transformer2DModel
from diffusers.training_utils import cast_training_params
from peft import LoraConfig, inject_adapter_in_model
from torch import nn
from transformers.models.clip.modeling_clip import CLIPAttention, CLIPMLP

from loratrainer.config import LYCORIS_TYPES, NetworkSettings
from loratrainer.errors import UserError
from loratrainer.messages import Msg
from loratrainer.model import lycoris, sdxl_names

ADAPTER = "default"  # peft's adapter name; one adapter per model
Part = Literal["unet", "text_encoder", "text_encoder_2"]  # text_encoder_2: SDXL only
KOHYA_PREFIX: dict[str, str] = {"unet": "lora_unet_", "text_encoder": "lora_te_"}  # SD1.5 (SDXL: sdxl_names.PREFIX)


@dataclass(frozen=True)
class LoraModule:
    part: Part
    path: str  # module path in our model (peft's key)
    kohya_name: str  # lora_unet_... / lora_te_... (SDXL: lora_te1_... / lora_te2_...)
    rank: int
    alpha: float


@dataclass
class LoraHandle:
    """The injected adapters: which parts carry them and one entry per adapted module (by Kohya name).

    The models themselves stay where they were loaded (`components.unet`, `components.text_encoder`): the handle
    reads them from there rather than keeping a second reference of its own."""

    components: Any  # SD15Components / SDXLComponents, or anything with .unet and .text_encoder (and .text_encoder_2)
    train_unet: bool
    train_text_encoder: bool
    network: NetworkSettings
    modules: dict[str, LoraModule] = field(default_factory=dict)
    configs: dict[str, Any] = field(default_factory=dict)  # part -> the peft config injected (LoraConfig, LoHaConfig, ...)
    train_text_encoder_2: bool = False  # SDXL's second text encoder (OpenCLIP ViT-bigG)

    @property
    def family(self) -> str:
        """"sd15" or "sdxl": the components' family (anything without one, e.g. a test's namespace, is SD1.5)."""
        return family_of(self.components)

    @property
    def unet(self) -> nn.Module:
        return self.components.unet

    @property
    def text_encoder(self) -> nn.Module:
        return self.components.text_encoder

    @property
    def text_encoder_2(self) -> nn.Module | None:
        return getattr(self.components, "text_encoder_2", None)

    def model(self, part: Part) -> nn.Module:
        return {"unet": self.unet, "text_encoder": self.text_encoder, "text_encoder_2": self.text_encoder_2}[part]

    def parts(self) -> list[Part]:
        trained: tuple[tuple[Part, bool], ...] = (("unet", self.train_unet), ("text_encoder", self.train_text_encoder),
                   ("text_encoder_2", self.train_text_encoder_2))
        return [p for p, on in trained if on]

    def kohya_name(self, part: Part, path: str) -> str:
        return kohya_name(part, path, family=self.family, unet=self.unet)

    def unet_parameters(self) -> list[nn.Parameter]:
        return _lora_parameters(self.unet) if self.train_unet else []

    def text_encoder_parameters(self) -> list[nn.Parameter]:
        return _lora_parameters(self.text_encoder) if self.train_text_encoder else []

    def text_encoder_2_parameters(self) -> list[nn.Parameter]:
        return _lora_parameters(self.text_encoder_2) if self.train_text_encoder_2 else []


def family_of(components) -> str:
    """The components' `family`; without one, SDXL when they have a second text encoder, else SD1.5."""
    family = getattr(components, "family", None)
    if family:
        return family
    return "sdxl" if getattr(components, "text_encoder_2", None) is not None else "sd15"


def inject_lora(
    components,
    network: NetworkSettings,
    *,
    train_unet: bool,
    train_text_encoder: bool,
    train_text_encoder_2: bool | None = None,
    lora_dtype: torch.dtype | None = torch.float32,
) -> LoraHandle:
    """Add LoRA adapters to the parts that are trained (a part with learning rate 0 gets none and is not saved).

    `components` is anything with .unet and .text_encoder (SD15Components), or SDXLComponents (also
    .text_encoder_2; `train_text_encoder_2` None = as `train_text_encoder`, ignored for SD1.5). The LoRA weights
    are kept in `lora_dtype` (float32 as Kohya does unless full_fp16/full_bf16; None = the base model's dtype).
    """
    family = family_of(components)
    if family != "sdxl" or train_text_encoder_2 is None:
        train_text_encoder_2 = train_text_encoder and family == "sdxl"
    if not (train_unet or train_text_encoder or train_text_encoder_2):
        raise UserError(Msg.of("model.nothing_to_train"))
    network = network.alphas_resolved()  # an alpha of 0 is the rank (sd-scripts networks/lora.py): in the file too
    handle = LoraHandle(components, train_unet, train_text_encoder, network, train_text_encoder_2=train_text_encoder_2)
    for part in handle.parts():
        model = handle.model(part)
        linear = target_modules(model, part, conv=False)
        with_conv = network.lora_type != "Standard" and part == "unet"
        conv = target_modules(model, part, conv=True) if with_conv else []
        if with_conv:
            # sd-scripts' LoCon (SD1.5 and SDXL alike): the resnets' time-embedding linear and 1x1 shortcut
            # convolutions at network_dim
            linear += resnet_linears(model)
        model.requires_grad_(False)
        if network.lora_type in LYCORIS_TYPES:
            config = lycoris.peft_config(network, model, linear, conv)
        else:
            config = LoraConfig(
                r=network.network_dim,
                lora_alpha=network.network_alpha,
                # peft drops the adapter's input; Kohya's network_dropout drops the hidden (after down).
                # Both regularise the same path; the rate means the same thing to the user.
                lora_dropout=network.network_dropout,
                init_lora_weights=True,  # kaiming-uniform down, zero up: Kohya's init
                # DoRA (LyCORIS dora_wd): peft's magnitude per output channel, LyCORIS's default wd_on_output
                use_dora=network.dora_wd,
                target_modules=linear + conv,
                # the 3x3 convolutions get their own rank and alpha (LoCon's conv_dim/conv_alpha)
                rank_pattern={re.escape(p): network.conv_dim for p in conv},
                alpha_pattern={re.escape(p): network.conv_alpha for p in conv},
            )
        # peft directly, not the models' add_adapter: transformers 5.x's wrapper demands a peft release that
        # does not exist yet (>= 0.22), and the plain peft call is the same injection for both models
        inject_adapter_in_model(config, model, adapter_name=ADAPTER)
        handle.configs[part] = config
        for path in linear + conv:
            name = handle.kohya_name(part, path)
            if network.lora_type in LYCORIS_TYPES:  # peft's own rank and alpha (LoKr full matrices: alpha = rank)
                layer = model.get_submodule(path)
                rank, alpha = lycoris.module_rank(layer), lycoris.module_alpha(layer)
            elif path in conv:
                rank, alpha = network.conv_dim, network.conv_alpha
            else:
                rank, alpha = network.network_dim, network.network_alpha
            handle.modules[name] = LoraModule(part, path, name, rank, alpha)
        for p in _lora_parameters(model):
            p.requires_grad_(True)
        if lora_dtype is not None:
            cast_training_params(model, dtype=lora_dtype)
    return handle


def target_modules(model: nn.Module, part: Part, *, conv: bool) -> list[str]:
    """Exact module paths Kohya adapts: conv=False the Standard set, conv=True LoCon's extra 3x3 convolutions."""
    if part in ("text_encoder", "text_encoder_2"):
        containers: tuple[type[nn.Module], ...] = (CLIPAttention, CLIPMLP)
    elif conv:
        containers = (ResnetBlock2D, Downsample2D, Upsample2D)
    else:
        containers = (Transformer2DModel,)
    found = []
    for name, module in model.named_modules():
        if not isinstance(module, containers):
            continue
        for child_name, child in module.named_modules():
            if conv:
                keep = isinstance(child, nn.Conv2d) and child.kernel_size == (3, 3)
            else:
                keep = isinstance(child, (nn.Linear, nn.Conv2d))
            if keep and child_name:
                found.append(f"{name}.{child_name}")
    return found


def resnet_linears(model: nn.Module) -> list[str]:
    """The Linear and 1x1 Conv2d children of the UNet's ResnetBlock2D/Downsample2D/Upsample2D: LoCon's (and
    LoHa's/LoKr's) network_dim modules beside the 3x3 convolutions (time_emb_proj, conv_shortcut)."""
    found = []
    for name, module in model.named_modules():
        if isinstance(module, (ResnetBlock2D, Downsample2D, Upsample2D)):
            for child_name, child in module.named_modules():
                one = isinstance(child, nn.Conv2d) and child.kernel_size == (1, 1)
                if child_name and (isinstance(child, nn.Linear) or one):
                    found.append(f"{name}.{child_name}")
    return found


def kohya_name(part: Part, path: str, *, family: str = "sd15", unet: nn.Module | None = None) -> str:
    """The Kohya module name of our module `path` in `part`; SDXL names come from model.sdxl_names (`unet`: the
    UNet whose config gives the block layout; None = SDXL base's)."""
    if family == "sdxl":
        layout = sdxl_names.UNetLayout.of(unet.config) if unet is not None else sdxl_names.SDXL_BASE
        return sdxl_names.kohya_name(part, path, layout)
    if part == "text_encoder" and not path.startswith("text_model."):
        # transformers >= 5.6 flattened CLIPTextModel; Kohya's names keep the text_model level
        path = "text_model." + path
    return KOHYA_PREFIX[part] + path.replace(".", "_")


# peft's LoRA (+ DoRA's lora_magnitude_vector), LoHa and LoKr parameter names
_ADAPTER_PARAM = re.compile(r"\.(lora_A|lora_B|lora_magnitude_vector|hada_\w+|lokr_\w+)\.")


def _lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for n, p in model.named_parameters() if _ADAPTER_PARAM.search(n)]
