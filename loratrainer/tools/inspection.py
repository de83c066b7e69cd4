"""`lora inspect`: what a LoRA file is and what is wrong with it, read module by module.

Problems looked for (sd-scripts networks/check_lora_weights.py only lists the tensors; A1111's and ComfyUI's
loaders match module names against the model and silently skip what does not match, which is what makes these
worth telling): non-finite values, a rank that differs between down and up (or LoHa's halves), a module lacking
one of its factors, keys no loader recognises, module names SD1.5 does not have, and a text encoder written under
a name the loaders ignore (without the `text_model` level, or SDXL's lora_te1_/lora_te2_ in an SD1 file).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from loratrainer.tools.lorafile import LoraFile
from loratrainer.tools.callbacks import NO_PROGRESS, Progress

if TYPE_CHECKING:
    from loratrainer.model.lora import Part

CROSS_ATTENTION_WIDTH = {768: "sd1", 1024: "sd2", 2048: "sdxl"}
FAMILY_FROM_METADATA = {"sd_v1": "sd1", "sd_v2": "sd2", "sdxl_base_v1-0": "sdxl"}


@dataclass
class Problem:
    code: str  # model_checkpoint, non_finite, rank_mismatch, missing_factor, unrecognised_keys, unknown_modules, te_ignored_name, unknown_format
    message: str  # English, what the CLI prints; the GUI says it in its language from code, count and example
    count: int = 1
    example: str = ""

    def to_json(self) -> dict:
        return {"code": self.code, "message": self.message, "count": self.count, "example": self.example}


@dataclass
class InspectReport:
    path: Path
    size_bytes: int
    format: str
    family: str
    modules: dict[str, int]  # part -> count
    kinds: dict[str, int]  # lora / loha / lokr / ...
    ranks: dict[str, int]  # module -> rank (LoRA/LoCon/LoHa modules)
    alphas: dict[str, float]
    dtypes: dict[str, int]  # dtype -> tensor count
    metadata: dict[str, str]  # every ss_* and modelspec.* key
    tags: dict = field(default_factory=dict)  # tag frequency summary
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict:
        return {
            "path": str(self.path), "size_bytes": self.size_bytes, "format": self.format, "family": self.family,
            "modules": self.modules, "kinds": self.kinds, "rank": _single(self.ranks), "alpha": _single(self.alphas),
            "ranks": self.ranks, "alphas": self.alphas, "dtypes": self.dtypes, "metadata": self.metadata,
            "tags": self.tags, "problems": [p.to_json() for p in self.problems],
        }

    def format_text(self) -> str:
        rank, alpha = _single(self.ranks), _single(self.alphas)
        lines = [
            f"file:      {self.path} ({self.size_bytes / 1e6:.1f} MB)",
            f"format:    {self.format}    base model: {self.family}",
            f"modules:   UNet {self.modules.get('unet', 0)}, text encoder {self.modules.get('text_encoder', 0)}"
            + (f", other {self.modules['other']}" if self.modules.get("other") else "")
            + "    kinds: " + ", ".join(f"{k} {n}" for k, n in sorted(self.kinds.items())),
            f"rank:      {rank if rank is not None else _spread(self.ranks)}    alpha: "
            f"{alpha if alpha is not None else _spread(self.alphas)}",
            "dtype:     " + ", ".join(f"{d} ({n})" for d, n in sorted(self.dtypes.items())),
        ]
        if self.tags.get("top"):
            lines.append(f"tags:      {self.tags['distinct']} distinct; most used: "
                         + ", ".join(f"{t} ({n})" for t, n in self.tags["top"][:15]))
        if self.metadata:
            lines.append("metadata:")
            for k, v in sorted(self.metadata.items()):
                if k == "ss_tag_frequency":
                    continue
                v = v if len(v) <= 200 else v[:200] + "..."
                lines.append(f"  {k} = {v}")
        lines.append("problems:" if self.problems else "problems:  none found")
        lines += [f"  - {p.message}" for p in self.problems]
        return "\n".join(lines)


def inspect_lora(path: str | Path, progress: Progress = NO_PROGRESS) -> InspectReport:
    f = LoraFile(path)
    modules = Counter(m.part for m in f.modules.values())
    kinds = Counter(m.kind for m in f.modules.values())
    ranks, alphas, problems = {}, {}, []
    non_finite: list[str] = []
    mismatched: list[str] = []
    lacking: list[str] = []
    empty: list[str] = []
    bad_alpha: list[str] = []
    total = len(f.modules)
    for i, (name, m) in enumerate(sorted(f.modules.items())):
        progress.step(i, total, name)
        for key in m.keys.values():
            t = f.tensor(key, None)
            if t.is_floating_point() and not torch.isfinite(t).all():
                non_finite.append(name)
                break
        rank = _rank(f, m, mismatched, lacking)
        if rank == 0:  # a module with no factors: the other tools divided by zero on it
            empty.append(name)
        elif rank is not None:
            ranks[name] = rank
            if "alpha" in m.keys and math.prod(f.shape(m.keys["alpha"])) != 1:
                bad_alpha.append(name)  # an alpha stored as a vector: one number is what every loader reads
            else:
                alphas[name] = f.alpha(name, rank) if m.kind == "lora" else (
                    float(f.tensor(m.keys["alpha"], torch.float64).reshape(())) if "alpha" in m.keys else float(rank))
    progress.step(total, total, "")
    family = _family(f)
    if f.format == "unknown":
        checkpoint = any(k.startswith(("model.diffusion_model.", "first_stage_model.", "cond_stage_model.")) for k in f.keys())
        problems.append(Problem("model_checkpoint", "This is a model checkpoint, not a LoRA.") if checkpoint else Problem("unknown_format",
                                "No LoRA layout recognised (no lora_down/lora_up, lora_A/lora_B, hada_*/lokr_* keys): "
                                "this is not a LoRA file, or a kind this program does not know."))
    if non_finite:
        problems.append(Problem("non_finite", f"{len(non_finite)} modules hold NaN or infinite values (e.g. "
                                f"{non_finite[0]}): the LoRA renders black or noise; it came from a diverged training.", len(non_finite), non_finite[0]))
    if mismatched:
        problems.append(Problem("rank_mismatch", f"{len(mismatched)} modules have a different rank in their down and up "
                                f"weights ({mismatched[0]}): the file is damaged and will not load.", len(mismatched), mismatched[0]))
    if empty:
        problems.append(Problem("empty_module", f"{len(empty)} modules have rank 0 ({empty[0]}): the file is damaged.",
                                len(empty), empty[0]))
    if bad_alpha:
        problems.append(Problem("bad_alpha", f"{len(bad_alpha)} modules store alpha as a vector instead of one number "
                                f"({bad_alpha[0]}): the file is damaged.", len(bad_alpha), bad_alpha[0]))
    if lacking:
        problems.append(Problem("missing_factor", f"{len(lacking)} modules lack one of their weights ({lacking[0]}): "
                                "loaders skip them or fail.", len(lacking), lacking[0]))
    if f.unrecognised and f.format != "unknown":
        problems.append(Problem("unrecognised_keys", f"{len(f.unrecognised)} keys fit no LoRA layout and are ignored "
                                f"by A1111 and ComfyUI (e.g. {f.unrecognised[0]}).", len(f.unrecognised), f.unrecognised[0]))
    problems += _name_problems(f, family)
    return InspectReport(
        path=f.path, size_bytes=f.path.stat().st_size, format=f.format, family=family, modules=dict(modules),
        kinds=dict(kinds), ranks=ranks, alphas=alphas, dtypes=dict(Counter(f.dtype(k) for k in f.keys())),
        metadata={k: v for k, v in f.metadata.items() if k.startswith(("ss_", "modelspec.", "sshs_"))},
        tags=_tags(f.metadata.get("ss_tag_frequency")), problems=problems,
    )


def _rank(f: LoraFile, m, mismatched: list[str], lacking: list[str]) -> int | None:
    k = m.keys
    if m.kind == "lora":
        if "down" not in k or "up" not in k:
            lacking.append(m.name)
            return None
        down, up = f.shape(k["down"]), f.shape(k["up"])
        if len(down) < 2 or len(up) < 2:
            mismatched.append(m.name)
            return None
        if down[0] == 0 or up[1] == 0:
            return 0
        if down[0] != up[1]:
            mismatched.append(m.name)
        return down[0]
    if m.kind == "loha":
        if not all(x in k for x in ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")):
            lacking.append(m.name)
            return None
        r1, r2 = f.shape(k["hada_w1_b"])[0], f.shape(k["hada_w2_b"])[0]
        if f.shape(k["hada_w1_a"])[1] != r1 or f.shape(k["hada_w2_a"])[1] != r2 or r1 != r2:
            mismatched.append(m.name)
        return r1
    if m.kind == "lokr":
        for a, b in (("lokr_w1_a", "lokr_w1_b"), ("lokr_w2_a", "lokr_w2_b")):
            if a in k and b in k:
                if f.shape(k[a])[1] != f.shape(k[b])[0]:
                    mismatched.append(m.name)
                return f.shape(k[b])[0]
        if not (("lokr_w1" in k or "lokr_w1_a" in k) and ("lokr_w2" in k or "lokr_w2_a" in k)):
            lacking.append(m.name)
        return None  # full Kronecker factors have no rank
    return None


def _family(f: LoraFile) -> str:
    version = f.metadata.get("ss_base_model_version", "")
    if version in FAMILY_FROM_METADATA:
        return FAMILY_FROM_METADATA[version]
    arch = f.metadata.get("modelspec.architecture", "")
    for marker, family in (("stable-diffusion-v1", "sd1"), ("stable-diffusion-v2", "sd2"), ("stable-diffusion-xl", "sdxl")):
        if arch.startswith(marker):
            return family
    if any(n.startswith(("lora_te1_", "lora_te2_")) for n in f.modules):
        return "sdxl"
    for name, m in f.modules.items():
        if name.endswith(("attn2_to_k", "attn2_to_v")) and m.kind == "lora" and "down" in m.keys:
            width = f.shape(m.keys["down"])[1]
            return CROSS_ATTENTION_WIDTH.get(width, f"unknown (cross-attention width {width})")
    if any(n.startswith("lora_te_text_model_encoder_layers_2") and n[len("lora_te_text_model_encoder_layers_2")].isdigit()
           for n in f.modules):
        return "sd2"  # more than 20 text encoder layers: OpenCLIP
    return "unknown"


def _name_problems(f: LoraFile, family: str) -> list[Problem]:
    out = []
    te_flat = [n for n in f.modules if n.startswith("lora_te_") and not n.startswith("lora_te_text_model_")]
    if te_flat:
        out.append(Problem("te_ignored_name", f"{len(te_flat)} text encoder modules are named without the text_model "
                           f"level ({te_flat[0]}); A1111 and ComfyUI ignore them, so the text encoder part has no "
                           "effect. Rename lora_te_<x> to lora_te_text_model_<x>.", len(te_flat), te_flat[0]))
    sdxl_te = [n for n in f.modules if n.startswith(("lora_te1_", "lora_te2_"))]
    if family in ("sd1", "unknown") and sdxl_te:
        out.append(Problem("te_ignored_name", "Text encoder modules are named lora_te1_/lora_te2_ (SDXL's names); "
                           "SD1.5 loaders ignore them.", len(sdxl_te), sdxl_te[0]))
    if family in ("sd1", "unknown") and f.format in ("kohya", "lycoris", "diffusers-peft"):
        known = sd15_module_names()
        unknown = [n for n in f.modules if n.startswith(("lora_unet_", "lora_te_")) and n not in known
                   and n not in te_flat]
        if unknown:
            out.append(Problem("unknown_modules", f"{len(unknown)} modules name no layer of SD1.5 (e.g. {unknown[0]}); "
                               "A1111 and ComfyUI skip them.", len(unknown), unknown[0]))
    return out


@lru_cache(maxsize=1)
def sd15_module_names() -> frozenset[str]:
    """Kohya names of every Linear and Conv2d in SD1.5's UNet and text encoder, built on the meta device from the
    shipped configs (no weights)."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from loratrainer.model.assets import SD15_CONFIG_DIR
    from loratrainer.model.lora import kohya_name

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(SD15_CONFIG_DIR, subfolder="unet"))
        te = CLIPTextModel(CLIPTextConfig.from_pretrained(SD15_CONFIG_DIR / "text_encoder"))
    names = set()
    parts: tuple[tuple[Part, torch.nn.Module], ...] = (("unet", unet), ("text_encoder", te))
    for part, model in parts:
        for path, module in model.named_modules():
            if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
                names.add(kohya_name(part, path))
    return frozenset(names)


def _tags(raw: str | None) -> dict:
    if not raw:
        return {}
    try:
        folders = json.loads(raw)
    except ValueError:
        return {"error": "ss_tag_frequency is not valid JSON"}
    total: Counter = Counter()
    per_folder = {}
    for folder, tags in folders.items() if isinstance(folders, dict) else ():
        if isinstance(tags, dict):
            counts = {str(t).strip(): int(n) for t, n in tags.items() if isinstance(n, (int, float))}
            total.update(counts)
            per_folder[folder] = len(counts)
    return {"distinct": len(total), "folders": per_folder, "top": [[t, n] for t, n in total.most_common(30)]}


def _single(values: dict):
    distinct = set(values.values())
    return next(iter(distinct)) if len(distinct) == 1 else None


def _spread(values: dict) -> str:
    if not values:
        return "-"
    counts = Counter(values.values())
    return ", ".join(f"{v:g} x{n}" for v, n in sorted(counts.items()))
