"""Reading any LoRA file a user is likely to have, one module at a time, under Kohya's module names.

Formats recognised from the keys alone:
- Kohya (sd-scripts networks/lora.py): `lora_unet_*` / `lora_te_*` modules with `.lora_down.weight`,
  `.lora_up.weight`, `.alpha` (LoCon adds 3x3 convolutions under the same names; `.dora_scale` for DoRA).
- LyCORIS (KohakuBlueleaf/LyCORIS lycoris/modules/*.py): the same module names with `hada_w1_a` ... (LoHa),
  `lokr_w1` ... (LoKr), `diff` (full), `weight` + `on_input` (IA3), `a1.weight` ... (GLoRA).
- diffusers / peft: `unet.<module path>.lora_A.weight` / `.lora_B.weight` (peft), the older
  `.lora.down.weight` / `.lora.up.weight` and `.processor.to_q_lora.down.weight` (attention processors), with
  `text_encoder.` for the text encoder; alphas from diffusers' `lora_adapter_metadata` or `.alpha` keys.
Files are opened with safetensors' memory map: a tensor is read when asked for, so a 144 MB LoRA costs about
one module's tensors at a time. A .pt/.ckpt LoRA (rare) is loaded whole.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from loratrainer.model.checkpoint import SAFETENSORS_SUFFIXES, read_checkpoint
from loratrainer.model.errors import CorruptModelFile, ModelFileMissing, NonFiniteLoraError
from loratrainer.model.safetensors_header import HeaderError, is_regular_file, read_header
from loratrainer.tools.messages import LYCORIS_KINDS, tool_error

if TYPE_CHECKING:
    from safetensors import safe_open

UNET_PREFIX, TE_PREFIX = "lora_unet_", "lora_te_"
KOHYA_ROLES = {".lora_down.weight": "down", ".lora_up.weight": "up", ".lora_mid.weight": "mid", ".alpha": "alpha",
               ".dora_scale": "dora_scale"}
LYCORIS_ROLES = {
    **{f".hada_{w}": "loha" for w in ("w1_a", "w1_b", "w2_a", "w2_b", "t1", "t2")},
    **{f".lokr_{w}": "lokr" for w in ("w1", "w2", "w1_a", "w1_b", "w2_a", "w2_b", "t2")},
    ".diff": "full", ".diff_b": "full", ".on_input": "ia3",
    **{f".{w}.weight": "glora" for w in ("a1", "a2", "b1", "b2")},
}
PEFT_ROLES = {".lora_A.weight": "down", ".lora_B.weight": "up", ".lora.down.weight": "down", ".lora.up.weight": "up",
              ".lora_magnitude_vector": "dora_scale", ".alpha": "alpha"}
_PROCESSOR = re.compile(r"\.processor\.(to_q|to_k|to_v|to_out)_lora\.(down|up)\.weight$")


@dataclass
class ModuleKeys:
    """One adapted module: its Kohya name, what kind of adapter, and the file's key for each tensor role."""

    name: str  # lora_unet_... / lora_te_... (or the file's own name when it has no Kohya equivalent)
    part: str  # "unet", "text_encoder" or "other"
    kind: str  # "lora" (incl. LoCon), "loha", "lokr", "full", "ia3", "glora"
    keys: dict[str, str] = field(default_factory=dict)  # role -> key in the file


class LoraFile:
    """A LoRA file opened for reading. `modules` by Kohya name; `unrecognised` keys fit no known layout."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not os.path.lexists(self.path):
            raise ModelFileMissing(tool_error("lora_missing", path=str(self.path)))
        if self.path.is_dir():
            found = sorted(self.path.glob("*.safetensors"))
            if len(found) != 1:
                raise CorruptModelFile(tool_error("lora_folder", path=str(self.path)))
            self.path = found[0]  # a diffusers LoRA folder (pytorch_lora_weights.safetensors)
        # only a regular file is opened: a FIFO blocked the open for ever, /dev/zero was read without end
        # (docs/reliability.md "LoRA tools and compare")
        if not is_regular_file(self.path):
            raise CorruptModelFile(tool_error("lora_not_regular", path=str(self.path)))
        self._handle: safe_open | None = None  # a .safetensors file, read tensor by tensor
        self._tensors: dict[str, torch.Tensor] | None = None
        self.metadata: dict[str, str] = {}
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._dtypes: dict[str, str] = {}
        self._open()
        self.modules: dict[str, ModuleKeys] = {}
        self.unrecognised: list[str] = []
        self.format = self._group()
        self._peft_alphas = _peft_alphas(self.metadata)

    # -- reading ----------------------------------------------------------------------------------------

    def _open(self) -> None:
        from safetensors import SafetensorError, safe_open

        if self.path.suffix.lower() in SAFETENSORS_SUFFIXES or _starts_like_safetensors(self.path):
            try:  # the header checked within its stated, bounded size before safetensors maps the file
                read_header(self.path)
            except HeaderError as exc:
                raise CorruptModelFile(tool_error("lora_unreadable", path=str(self.path), detail=exc.detail or exc.reason)) from exc
            try:
                handle = self._handle = safe_open(str(self.path), framework="pt", device="cpu")
            except (SafetensorError, OSError, ValueError) as exc:
                raise CorruptModelFile(tool_error("lora_unreadable", path=str(self.path), detail=str(exc)[:200])) from exc
            self.metadata = dict(handle.metadata() or {})
            for key in handle.keys():
                sl = handle.get_slice(key)
                self._shapes[key] = tuple(sl.get_shape())
                self._dtypes[key] = sl.get_dtype()
        else:
            self._tensors = read_checkpoint(self.path, what="LoRA")
            for key, t in self._tensors.items():
                self._shapes[key] = tuple(t.shape)
                self._dtypes[key] = str(t.dtype).removeprefix("torch.")

    def keys(self) -> list[str]:
        return list(self._shapes)

    def shape(self, key: str) -> tuple[int, ...]:
        return self._shapes[key]

    def dtype(self, key: str) -> str:
        return self._dtypes[key]

    def tensor(self, key: str, dtype: torch.dtype | None = torch.float32) -> torch.Tensor:
        if self._tensors is not None:
            t = self._tensors[key]
        else:  # _open() set one of the two
            assert self._handle is not None
            t = self._handle.get_tensor(key)
        return t.to(dtype) if dtype is not None else t

    # -- LoRA factors -------------------------------------------------------------------------------------

    def factors(self, name: str) -> tuple[torch.Tensor, torch.Tensor, float]:
        """(down, up, scale) of a plain LoRA/LoCon module in float64; delta = scale * up @ down (reshaped)."""
        m = self.modules[name]
        if m.kind != "lora" or "mid" in m.keys or "dora_scale" in m.keys:
            what = LYCORIS_KINDS.get(m.kind) or ("Tucker (lora_mid)" if "mid" in m.keys else "DoRA")
            raise UnsupportedModule(tool_error("unsupported_module", name=self.path.name, module=name, what=what))
        if "down" not in m.keys or "up" not in m.keys:
            raise UnsupportedModule(tool_error("module_lacks_factor", name=self.path.name, module=name,
                                               factor="lora_up" if "down" in m.keys else "lora_down"))
        down = self.tensor(m.keys["down"], torch.float64)
        up = self.tensor(m.keys["up"], torch.float64)
        rank = down.shape[0] if down.ndim else 0
        if rank == 0 or down.ndim < 2 or up.ndim < 2 or 0 in down.shape or 0 in up.shape:
            # a rank-0 module divided by zero in every tool (docs/reliability.md "LoRA tools and compare")
            raise UnsupportedModule(tool_error("module_empty", name=self.path.name, module=name))
        if up.shape[1] != rank:
            raise UnsupportedModule(tool_error("module_rank_mismatch", name=self.path.name, module=name, down=rank,
                                               up=up.shape[1]))
        alpha = self.alpha(name, rank)
        if not (torch.isfinite(down).all() and torch.isfinite(up).all() and math.isfinite(alpha)):
            # every tool refuses a non-finite input: merge-into used to bake NaN into the model without a word
            raise NonFiniteLoraError(tool_error("lora_non_finite", name=self.path.name, module=name))
        return down, up, alpha / rank

    def alpha(self, name: str, rank: int) -> float:
        """The module's alpha; one number (an alpha stored as a vector is a damaged file, said as such)."""
        m = self.modules[name]
        if "alpha" in m.keys:
            if math.prod(self.shape(m.keys["alpha"])) != 1:
                raise UnsupportedModule(tool_error("module_alpha_shape", name=self.path.name, module=name,
                                                   shape=str(list(self.shape(m.keys["alpha"])))))
            return float(self.tensor(m.keys["alpha"], torch.float64).reshape(()))
        if self.format == "diffusers-peft":
            return self._peft_alphas(m, rank)
        return float(rank)  # no alpha: Kohya and diffusers both use scale 1

    # -- grouping keys into modules ------------------------------------------------------------------------

    def _group(self) -> str:
        kohya = lycoris = peft = 0
        for key in self._shapes:
            placed = self._place_kohya(key)
            if placed == "lora":
                kohya += 1
            elif placed == "lycoris":
                lycoris += 1
            elif placed is None and self._place_peft(key):
                peft += 1
            elif placed is None:
                self.unrecognised.append(key)
        if lycoris:
            return "lycoris"
        if kohya:
            return "kohya"
        if peft:
            return "diffusers-peft"
        return "unknown"

    def _place_kohya(self, key: str) -> str | None:
        if not key.startswith("lora_"):
            return None
        for suffix, role in KOHYA_ROLES.items():
            if key.endswith(suffix):
                self._module(key[: -len(suffix)], key[: -len(suffix)], "lora").keys[role] = key
                return "lora" if role != "alpha" else "alpha"
        for suffix, kind in LYCORIS_ROLES.items():
            if key.endswith(suffix):
                name = key[: -len(suffix)]
                m = self._module(name, name, kind)
                m.kind = kind
                m.keys[suffix.lstrip(".").removesuffix(".weight")] = key
                return "lycoris"
        if key.endswith(".weight") and key.count(".") == 1:  # IA3's learned vector
            self._module(key[: -len(".weight")], key[: -len(".weight")], "ia3").keys["weight"] = key
            return "lycoris"
        return None

    def _place_peft(self, key: str) -> bool:
        m = _PROCESSOR.search(key)
        if m:
            path = key[: m.start()] + "." + (m.group(1) + ".0" if m.group(1) == "to_out" else m.group(1))
            role = m.group(2)
        else:
            for suffix, role in PEFT_ROLES.items():
                if key.endswith(suffix):
                    path = key[: -len(suffix)]
                    break
            else:
                return False
        name, part = kohya_name_of(path)
        if name is None:
            return False
        self._module(name, part, "lora").keys[role] = key
        return True

    def _module(self, name: str, part_or_name: str, kind: str) -> ModuleKeys:
        if name not in self.modules:
            part = part_or_name if part_or_name in ("unet", "text_encoder") else _part_of(name)
            self.modules[name] = ModuleKeys(name, part, kind)
        return self.modules[name]


class UnsupportedModule(CorruptModelFile):
    """A module this tool cannot compute with (LyCORIS kinds, DoRA, a missing or mismatched factor)."""


def weight_shape(down: torch.Tensor, up: torch.Tensor) -> torch.Size:
    """The adapted weight's shape: [out, in] for Linear, [out, in, k, k] for Conv2d (LoCon)."""
    if down.ndim == 4:
        return torch.Size([up.shape[0], down.shape[1], down.shape[2], down.shape[3]])
    return torch.Size([up.shape[0], down.shape[1]])


def kohya_name_of(path: str) -> tuple[str | None, str]:
    """Kohya's module name for a diffusers/peft module path (`unet.down_blocks.0...to_q`)."""
    for prefix in ("base_model.model.", "model."):
        path = path.removeprefix(prefix)
    if path.startswith("unet."):
        return UNET_PREFIX + path[len("unet."):].replace(".", "_"), "unet"
    if path.startswith("text_encoder."):
        inner = path[len("text_encoder."):]
        inner = inner if inner.startswith("text_model.") else "text_model." + inner
        return TE_PREFIX + inner.replace(".", "_"), "text_encoder"
    if path.startswith(("down_blocks.", "mid_block.", "up_blocks.", "conv_in", "conv_out", "time_embedding")):
        return UNET_PREFIX + path.replace(".", "_"), "unet"  # a bare peft UNet adapter
    if path.startswith(("text_model.", "encoder.layers.")):
        inner = path if path.startswith("text_model.") else "text_model." + path
        return TE_PREFIX + inner.replace(".", "_"), "text_encoder"
    return None, "other"


def _part_of(name: str) -> str:
    if name.startswith(UNET_PREFIX):
        return "unet"
    if name.startswith(("lora_te_", "lora_te1_", "lora_te2_")):
        return "text_encoder"
    return "other"


def _peft_alphas(metadata: dict[str, str]):
    """The alpha of a module from diffusers' `lora_adapter_metadata` (the peft LoraConfig per part)."""
    try:
        packed = json.loads(metadata.get("lora_adapter_metadata", "{}"))
    except ValueError:
        packed = {}
    configs: dict[str, dict] = {}
    for key, value in packed.items() if isinstance(packed, dict) else ():
        part, _, field_name = key.partition(".")
        configs.setdefault(part, {})[field_name] = value

    def alpha(module: ModuleKeys, rank: int) -> float:
        config = configs.get(module.part) or {}
        if not config:
            return float(rank)
        path = _module_path(module)
        for pattern, value in (config.get("alpha_pattern") or {}).items():
            if re.match(rf"(.*\.)?({pattern})$", path):
                return float(value)
        return float(config.get("lora_alpha", rank))

    return alpha


def _module_path(module: ModuleKeys) -> str:
    # the peft path the file used for this module: its down key without the role suffix and part prefix
    key = module.keys.get("down") or next(iter(module.keys.values()))
    for suffix in PEFT_ROLES:
        if key.endswith(suffix):
            key = key[: -len(suffix)]
            break
    for prefix in ("unet.", "text_encoder."):
        key = key.removeprefix(prefix)
    return key


def _starts_like_safetensors(path: Path) -> bool:
    with open(path, "rb") as fh:
        head = fh.read(9)
    return len(head) == 9 and head[8:9] == b"{"
