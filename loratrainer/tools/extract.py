"""Extract a LoRA from a fine-tuned model: per module, the best rank-R approximation of TUNED - BASE (SVD).

sd-scripts networks/extract_lora_from_models.py: the modules Kohya's LoRA adapts (and with a conv rank the
LoCon 3x3 convolutions), up = U diag(S), down = Vh, alpha = rank. Differences from Kohya, both stated in
docs/lora-tools.md: a module whose largest difference is below `min_diff` is skipped per module (Kohya skips the
whole text encoder), and the clamping of factor values to a quantile is off unless asked (clamp_quantile < 1),
so the result is the Eckart-Young best approximation. Both models are loaded whole (two models in memory).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from loratrainer.errors import UserError
from loratrainer.tools.common import lora_metadata, save_dtype, write_lora_then_meta
from loratrainer.tools.lowrank import split_factors
from loratrainer.tools.outputs import refuse_existing
from loratrainer.tools.progress import NO_PROGRESS, Progress


@dataclass
class ExtractReport:
    output: Path
    extracted: dict[str, float] = field(default_factory=dict)  # module -> Frobenius share of its difference kept
    skipped: list[str] = field(default_factory=list)  # difference below min_diff
    overall_fro_retained: float = 1.0

    def to_json(self) -> dict:
        return {"output": str(self.output), "extracted": len(self.extracted), "skipped": self.skipped,
                "overall_fro_retained": self.overall_fro_retained, "fro_retained": self.extracted}


def extract_lora(base: str | Path, tuned: str | Path, output: str | Path, *, rank: int, conv_rank: int | None = None,
                 min_diff: float = 0.01, clamp_quantile: float = 1.0, precision: str = "float",
                 config_dir: Path | None = None, progress: Progress = NO_PROGRESS) -> ExtractReport:
    from loratrainer.config import ModelSettings
    from loratrainer.model.loading import load_sd15
    from loratrainer.model.lora import kohya_name, target_modules

    if rank < 1 or (conv_rank is not None and conv_rank < 1):
        raise UserError("The rank (--rank, --conv-rank) must be at least 1.")
    output = refuse_existing(output)
    progress.step(0, 1, "loading the models")
    a = load_sd15(ModelSettings(pretrained_model_name_or_path=str(base)), config_dir=config_dir)
    b = load_sd15(ModelSettings(pretrained_model_name_or_path=str(tuned)), config_dir=config_dir)
    jobs = []
    for part in ("unet", "text_encoder"):
        for conv in (False, True):
            if conv and (part != "unet" or conv_rank is None):
                continue
            for path in target_modules(getattr(a, part), part, conv=conv):
                jobs.append((part, path, conv_rank if conv else rank))
    report = ExtractReport(output)
    kept_sq = total_sq = 0.0

    def modules():
        nonlocal kept_sq, total_sq
        for i, (part, path, r) in enumerate(jobs):
            progress.step(i, len(jobs), path)
            wa = getattr(a, part).get_submodule(path).weight
            wb = getattr(b, part).get_submodule(path).weight
            if wa.shape != wb.shape:
                raise UserError(f"{path} has shape {list(wa.shape)} in the base model but {list(wb.shape)} in the "
                                "tuned model: they are not the same architecture.")
            diff = (wb.detach().float() - wa.detach().float())
            name = kohya_name(part, path)
            if float(diff.abs().max()) < min_diff:
                report.skipped.append(name)
                continue
            matrix = diff.reshape(diff.shape[0], -1)
            u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
            k = min(r, len(s))
            if clamp_quantile < 1.0:  # Kohya's outlier clamp of the factor values
                dist = torch.cat([u[:, :k].flatten(), vh[:k].flatten()])
                hi = torch.quantile(dist, clamp_quantile)
                u, vh = u.clamp(-hi, hi), vh.clamp(-hi, hi)
            up, down = split_factors(u, s, vh, k)
            total, kept = float(s.pow(2).sum()), float(s[:k].pow(2).sum())
            kept_sq, total_sq = kept_sq + kept, total_sq + total
            report.extracted[name] = (kept / total) ** 0.5 if total > 0 else 1.0
            if diff.ndim == 4:
                down = down.reshape(k, *diff.shape[1:])
                up = up.reshape(up.shape[0], k, 1, 1)
            yield name, down, up, float(k)

    def metadata():
        return lora_metadata({}, title=output.stem, dims=[rank], alphas=[float(rank)],
                             conv_dims=[conv_rank] if conv_rank else [],
                             comment=f"extracted by loratrainer from {Path(base).name} and {Path(tuned).name}",
                             extra={"ss_sd_model_name": Path(base).name})

    write_lora_then_meta(output, modules(), len(jobs), metadata, save_dtype(precision, torch.float32), progress,
                         count_steps=False)
    progress.step(len(jobs), len(jobs), "")
    report.overall_fro_retained = (kept_sq / total_sq) ** 0.5 if total_sq > 0 else 1.0
    if not report.extracted:
        output.unlink()
        raise UserError(f"The two models differ by less than {min_diff:g} in every module; there is no LoRA to extract "
                        "(lower --min-diff if the fine-tune is that small).")
    return report
