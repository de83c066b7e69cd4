"""Extract a LoRA from a fine-tuned model: per module, the best rank-R approximation of TUNED - BASE (SVD).

sd-scripts networks/extract_lora_from_models.py: the modules Kohya's LoRA adapts (and with a conv rank the
LoCon 3x3 convolutions), up = U diag(S), down = Vh, alpha = rank. `min_diff` is Kohya's: it decides whether the
text encoder changed at all (some module's largest difference above it); if not, the UNet alone is extracted. Every
UNet module is extracted, as Kohya does. The difference from Kohya, stated in docs/lora-tools.md: the clamping of
factor values to a quantile is off unless asked (clamp_quantile < 1), so the result is the Eckart-Young best
approximation. Neither model is loaded: both are read one module's
weight at a time (tools/model_weights), so memory stays near the largest module's difference and its SVD.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from loratrainer.errors import UserError
from loratrainer.tools.common import lora_metadata, save_dtype, write_lora_then_meta
from loratrainer.tools.lowrank import split_factors
from loratrainer.tools.messages import tool_error
from loratrainer.tools.model_weights import ModelWeights
from loratrainer.tools.outputs import refuse_existing
from loratrainer.tools.callbacks import NO_PROGRESS, Progress


@dataclass
class ExtractReport:
    output: Path
    extracted: dict[str, float] = field(default_factory=dict)  # module -> Frobenius share of its difference kept
    skipped: list[str] = field(default_factory=list)  # the text encoder's modules when it did not change (min_diff)
    text_encoder_changed: bool = True
    overall_fro_retained: float = 1.0

    def to_json(self) -> dict:
        return {"output": str(self.output), "extracted": len(self.extracted), "skipped": self.skipped,
                "text_encoder_changed": self.text_encoder_changed,
                "overall_fro_retained": self.overall_fro_retained, "fro_retained": self.extracted}


def extract_lora(base: str | Path, tuned: str | Path, output: str | Path, *, rank: int, conv_rank: int | None = None,
                 min_diff: float = 0.01, clamp_quantile: float = 1.0, precision: str = "float",
                 config_dir: Path | None = None, progress: Progress = NO_PROGRESS) -> ExtractReport:
    if rank < 1 or (conv_rank is not None and conv_rank < 1):
        raise UserError(tool_error("rank_below_one", option="--rank, --conv-rank"))
    output = refuse_existing(output)
    progress.step(0, 1, "opening the models")
    a = ModelWeights(base, config_dir=config_dir)
    b = ModelWeights(tuned, config_dir=config_dir)
    jobs = [(name, shape, rank) for _, name, shape in a.targets(conv=False)]
    if conv_rank is not None:
        jobs += [(name, shape, conv_rank) for _, name, shape in a.targets(conv=True)]
    report = ExtractReport(output)
    te = {name: shape for part, name, shape in a.targets(conv=False) if part == "text_encoder"}
    progress.step(0, 1, "comparing the text encoders")
    report.text_encoder_changed = _differs(a, b, te, min_diff)
    if not report.text_encoder_changed:  # sd-scripts: "Text encoder is same. Extract U-Net only."
        report.skipped = [name for name, _, _ in jobs if name in te]
        jobs = [job for job in jobs if job[0] not in te]
    kept_sq = total_sq = 0.0
    unet_diff = 0.0  # the largest UNet difference: with the text encoder, whether there is anything to extract

    def modules():
        nonlocal kept_sq, total_sq, unet_diff
        for i, (name, shape, r) in enumerate(jobs):
            progress.step(i, len(jobs), name)
            wa, wb = a.weight(name, shape), b.weight(name, shape)
            if wa.shape != wb.shape:
                raise UserError(tool_error("models_differ", module=name, base_shape=str(list(wa.shape)),
                                           tuned_shape=str(list(wb.shape))))
            diff = wb.float() - wa.float()
            del wa, wb
            if name not in te:
                unet_diff = max(unet_diff, float(diff.abs().max()))
            u, s, vh = torch.linalg.svd(diff.reshape(diff.shape[0], -1), full_matrices=False)
            k = min(r, len(s))
            up, down = split_factors(u, s, vh, k)  # up = U diag(S), down = Vh
            if clamp_quantile < 1.0:
                # Kohya's outlier clamp, as sd-scripts networks/extract_lora_from_models.py does it: U is multiplied
                # by the singular values first, then one quantile is taken over both factors' values together
                hi = torch.quantile(torch.cat([up.flatten(), down.flatten()]), clamp_quantile)
                up, down = up.clamp(-hi, hi), down.clamp(-hi, hi)
            up, down = up.contiguous(), down.contiguous()  # not views of the full U / Vh, which are freed here
            del u, vh
            total, kept = float(s.pow(2).sum()), float(s[:k].pow(2).sum())
            kept_sq, total_sq = kept_sq + kept, total_sq + total
            report.extracted[name] = (kept / total) ** 0.5 if total > 0 else 1.0
            if diff.ndim == 4:
                down = down.reshape(k, *diff.shape[1:])
                up = up.reshape(up.shape[0], k, 1, 1)
            del diff
            yield name, down, up, float(k)

    # sd-scripts' names for an SDXL LoRA (library/train_util.py model_version_str, library/sai_model_spec.py)
    family = {"ss_base_model_version": "sdxl_base_v1-0", "modelspec.architecture": "stable-diffusion-xl-v1-base/lora"} if a.family == "sdxl" else {}

    def metadata():
        return lora_metadata(family, title=output.stem, dims=[rank], alphas=[float(rank)],
                             conv_dims=[conv_rank] if conv_rank else [],
                             comment=f"extracted by loratrainer from {Path(base).name} and {Path(tuned).name}",
                             extra={"ss_sd_model_name": Path(base).name})

    write_lora_then_meta(output, modules(), len(jobs), metadata, save_dtype(precision, torch.float32), progress,
                         count_steps=False)
    progress.step(len(jobs), len(jobs), "")
    report.overall_fro_retained = (kept_sq / total_sq) ** 0.5 if total_sq > 0 else 1.0
    if not report.text_encoder_changed and unet_diff <= min_diff:  # identical within min_diff: a LoRA of (almost) zeros
        output.unlink()
        raise UserError(tool_error("nothing_to_extract", min_diff=f"{min_diff:g}"))
    return report


def _differs(a: ModelWeights, b: ModelWeights, modules: dict[str, torch.Size], min_diff: float) -> bool:
    """Whether any of `modules` differs by more than min_diff between the two models (sd-scripts
    extract_lora_from_models.py: `torch.max(torch.abs(diff)) > min_diff`), one module's weights at a time; it stops
    at the first that does."""
    for name, shape in modules.items():
        wa, wb = a.weight(name, shape), b.weight(name, shape)
        if wa.shape == wb.shape and float((wb.float() - wa.float()).abs().max()) > min_diff:
            return True
    return False
