"""Resize a LoRA: per module, the best approximation of its delta with fewer ranks (SVD), as Kohya's resize.

sd-scripts networks/resize_lora.py: a fixed rank, or a dynamic rule per module (sv_ratio, sv_fro,
sv_cumulative, capped by the rank); up = U diag(S), down = Vh and alpha = scale x new rank, so the delta keeps its
strength. The SVD is taken of the factors (lowrank.svd_of_product), never of the full weight matrix.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from loratrainer.errors import UserError
from loratrainer.tools.common import lora_metadata, save_dtype, write_lora_then_meta
from loratrainer.tools.lorafile import LoraFile, weight_shape
from loratrainer.tools.lowrank import DYNAMIC_METHODS, choose_rank, split_factors, svd_of_product
from loratrainer.tools.merge import _as_down, _as_up, _file_dtype
from loratrainer.tools.messages import refuse_lycoris, tool_error
from loratrainer.tools.outputs import refuse_existing
from loratrainer.tools.callbacks import NO_PROGRESS, Progress


@dataclass
class ModuleResize:
    old_rank: int
    new_rank: int
    fro_retained: float
    sum_retained: float


@dataclass
class ResizeReport:
    output: Path
    modules: dict[str, ModuleResize] = field(default_factory=dict)
    overall_fro_retained: float = 1.0

    def to_json(self) -> dict:
        return {"output": str(self.output), "overall_fro_retained": self.overall_fro_retained,
                "modules": {k: vars(v) for k, v in self.modules.items()}}

    def format_text(self) -> str:
        lines = [f"{name:90} rank {m.old_rank:>3} -> {m.new_rank:>3}  Frobenius retained {m.fro_retained:6.1%}"
                 for name, m in self.modules.items()]
        lines.append(f"overall Frobenius retained: {self.overall_fro_retained:.2%} -> {self.output}")
        return "\n".join(lines)


def resize_lora(path: str | Path, output: str | Path, *, rank: int, conv_rank: int | None = None,
                dynamic: str | None = None, param: float | None = None, precision: str = "auto",
                progress: Progress = NO_PROGRESS) -> ResizeReport:
    if rank < 1:
        raise UserError(tool_error("rank_below_one", option="--rank"))
    if dynamic is not None:
        if dynamic not in DYNAMIC_METHODS:
            raise UserError(tool_error("bad_dynamic", methods=", ".join(DYNAMIC_METHODS)))
        if param is None or param <= 0 or (dynamic != "sv_ratio" and param > 1):
            raise UserError(tool_error("bad_param"))
    output = refuse_existing(output)
    source = LoraFile(path)
    refuse_lycoris(source, "resize")
    dtype = save_dtype(precision, _file_dtype(source))
    report = ResizeReport(output)
    kept_sq = total_sq = 0.0
    names = sorted(source.modules)

    def modules():
        nonlocal kept_sq, total_sq
        for name in names:
            down, up, scale = source.factors(name)
            shape = weight_shape(down, up)
            # every convolution, 1x1 included, takes the conv rank: sd-scripts networks/resize_lora.py tests
            # `len(lora_down_weight.size()) == 4` (its help says 3x3; its code is what a Kohya user's files got)
            conv = len(shape) == 4
            u, s, vh = svd_of_product(up.reshape(up.shape[0], -1), down.reshape(down.shape[0], -1))
            # Kohya's rules see all min(out, in) singular values of the full matrix; the ones beyond the LoRA's
            # rank are zero
            full = torch.cat([s, s.new_zeros(max(0, min(u.shape[0], vh.shape[1]) - len(s)))])
            # never more ranks than the module has: the extra ones would be zeros
            cap = min((conv_rank or rank) if conv else rank, down.shape[0])
            choice = choose_rank(full, cap, dynamic, param)
            new_up, new_down = split_factors(u, s, vh, choice.rank)
            total = float(s.pow(2).sum()) * scale**2
            kept_sq += total * choice.fro_retained**2
            total_sq += total
            report.modules[name] = ModuleResize(down.shape[0], choice.rank, choice.fro_retained, choice.sum_retained)
            # up/down hold the unscaled product, alpha = scale x rank restores the strength (Kohya's new_alpha)
            yield name, _as_down(new_down, shape), _as_up(new_up, shape), scale * choice.rank

    method = f"dynamic {dynamic} {param:g}, max rank {rank}" if dynamic else f"rank {rank}"
    old_comment = source.metadata.get("ss_training_comment", "")
    comment = f"dimension is resized by loratrainer ({method})" + (f"; {old_comment}" if old_comment else "")
    meta_base = dict(source.metadata)
    # the ranks of a dynamic resize are known only after the SVDs: the metadata is put together at the end
    def metadata():
        ranks = [m.new_rank for n, m in report.modules.items() if not _is_conv(source, n)]
        conv = [m.new_rank for n, m in report.modules.items() if _is_conv(source, n)]
        alphas = [float(source.alpha(n, m.old_rank)) / m.old_rank * m.new_rank for n, m in report.modules.items()
                  if not _is_conv(source, n)]
        conv_alphas = [float(source.alpha(n, m.old_rank)) / m.old_rank * m.new_rank
                       for n, m in report.modules.items() if _is_conv(source, n)]
        return lora_metadata(meta_base, title=output.stem, dims=ranks or [rank], alphas=alphas or [float(rank)],
                             conv_dims=conv, conv_alphas=conv_alphas, comment=comment,
                             dynamic=dynamic is not None)

    write_lora_then_meta(output, modules(), len(names), metadata, dtype, progress)
    report.overall_fro_retained = (kept_sq / total_sq) ** 0.5 if total_sq > 0 else 1.0
    return report


def _is_conv(f: LoraFile, name: str) -> bool:
    return len(f.shape(f.modules[name].keys["down"])) == 4  # as resize_lora.py: 1x1 convolutions too
