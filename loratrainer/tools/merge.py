"""Merge LoRAs into one: exactly (factors concatenated) or reduced to a rank by SVD per module.

Exact: for module m with inputs i (weight w_i, scale s_i = alpha_i / rank_i) the merged factors are
down = [sqrt|c_i| down_i]_i stacked on the rank axis and up = [sign(c_i) sqrt|c_i| up_i]_i with c_i = w_i s_i and
alpha = total rank (scale 1), so up @ down = sum_i w_i s_i up_i @ down_i: the weighted sum of the deltas, for
Linear and 3x3 Conv (LoCon) modules alike (sd-scripts networks/merge_lora.py --concat does the same
concatenation; the square-root split keeps both factors in fp16's range). With a rank, the weighted sum is
replaced by its best rank-R approximation (networks/svd_merge_lora.py), computed from the concatenated factors.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from loratrainer.errors import UserError
from loratrainer.tools.common import lora_metadata, save_dtype, write_lora_then_meta
from loratrainer.tools.lorafile import LoraFile, weight_shape
from loratrainer.tools.lowrank import split_factors, svd_of_product
from loratrainer.tools.messages import refuse_lycoris, tool_error
from loratrainer.tools.outputs import refuse_existing
from loratrainer.tools.callbacks import NO_PROGRESS, Progress


@dataclass
class MergeReport:
    output: Path
    modules: int
    ranks: dict[str, int] = field(default_factory=dict)  # module -> rank written
    fro_retained: dict[str, float] = field(default_factory=dict)  # with --rank: share of each delta kept
    overall_fro_retained: float = 1.0

    def to_json(self) -> dict:
        return {"output": str(self.output), "modules": self.modules, "ranks": self.ranks,
                "fro_retained": self.fro_retained, "overall_fro_retained": self.overall_fro_retained}


def merge_loras(inputs: list[tuple[Path, float]], output: str | Path, *, rank: int | None = None,
                conv_rank: int | None = None, precision: str = "auto", progress: Progress = NO_PROGRESS) -> MergeReport:
    if not inputs:
        raise UserError(tool_error("no_loras"))
    inputs = [(Path(p), float(w)) for p, w in inputs]
    output = refuse_existing(output)
    files = [(LoraFile(path), weight) for path, weight in inputs]
    for f, _ in files:
        refuse_lycoris(f, "merge")
    names = sorted({name for f, _ in files for name in f.modules})
    first = files[0][0]
    dtype = save_dtype(precision, _file_dtype(first))
    report = MergeReport(output, len(names))
    kept_sq = total_sq = 0.0

    def modules():
        nonlocal kept_sq, total_sq
        for name in names:
            downs, ups = [], []
            shape: tuple[int, ...] | None = None
            for f, weight in files:
                if name not in f.modules:
                    continue
                down, up, scale = f.factors(name)
                this = weight_shape(down, up)
                if shape is not None and this != shape:
                    raise UserError(tool_error("loras_differ", module=name, shape=str(list(this)), lora=f.path.name,
                                               other=str(list(shape))))
                shape = this
                c = weight * scale
                root = abs(c) ** 0.5
                downs.append(down.reshape(down.shape[0], -1) * root)
                ups.append(up.reshape(up.shape[0], -1) * (root if c >= 0 else -root))
            assert shape is not None  # `names` are the files' own modules: at least one file has this one
            down2, up2 = torch.cat(downs, 0), torch.cat(ups, 1)
            conv = len(shape) == 4 and shape[2] > 1
            target = (conv_rank or rank) if conv else rank
            if target:
                # never more ranks than the weight has (sd-scripts svd_merge_lora.py: min(rank, in_dim, out_dim)):
                # `--rank 100000000` padded every module with zeros up to 51 GB
                target = min(target, shape[0], shape[1])
                u, s, vh = svd_of_product(up2, down2)
                up2, down2 = split_factors(u, s, vh, target)
                total, kept = float(s.pow(2).sum()), float(s[:target].pow(2).sum())
                kept_sq, total_sq = kept_sq + kept, total_sq + total
                report.fro_retained[name] = (kept / total) ** 0.5 if total > 0 else 1.0
            r = down2.shape[0]
            report.ranks[name] = r
            yield name, _as_down(down2, shape), _as_up(up2, shape), float(r)

    weights = ", ".join(f"{p.name} x {w:g}" for p, w in inputs)
    comment = f"merged by loratrainer: {weights}" + (f", reduced to rank {rank}" if rank else " (exact)")
    merged_from = [{"file": p.name, "weight": w, "sshs_model_hash": f.metadata.get("sshs_model_hash", "")}
                   for (p, w), (f, _) in zip(inputs, files)]
    convs = _convs(files)

    def metadata():
        linear = [r for n, r in report.ranks.items() if n not in convs]
        return lora_metadata(
            {"ss_base_model_version": first.metadata.get("ss_base_model_version", "sd_v1")},
            title=output.stem, dims=linear or [1], alphas=[float(r) for r in linear] or [1.0],
            conv_dims=[r for n, r in report.ranks.items() if n in convs], comment=comment,
            extra={"ss_merged_from": json.dumps(merged_from), "modelspec.merged_from": ", ".join(p.name for p, _ in inputs)},
            dynamic=len(set(report.ranks.values())) > 1,  # merge_lora.py: modules of differing ranks, LoCon's too
        )

    write_lora_then_meta(output, modules(), len(names), metadata, dtype, progress)
    report.overall_fro_retained = (kept_sq / total_sq) ** 0.5 if total_sq > 0 else 1.0
    return report


def _convs(files) -> set[str]:
    out = set()
    for f, _ in files:
        for name, m in f.modules.items():
            shape: tuple[int, ...] = f.shape(m.keys["down"]) if "down" in m.keys else ()
            if len(shape) == 4 and shape[2] > 1:
                out.add(name)
    return out


def _file_dtype(f: LoraFile) -> torch.dtype:
    for m in f.modules.values():
        if "down" in m.keys:
            return f.tensor(m.keys["down"], None).dtype
    return torch.float32


def _as_down(down2: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    return down2.reshape(down2.shape[0], *shape[1:]) if len(shape) == 4 else down2


def _as_up(up2: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    return up2.reshape(up2.shape[0], up2.shape[1], 1, 1) if len(shape) == 4 else up2
