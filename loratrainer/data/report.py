"""The dataset report: what `check_dataset` found, as JSON for scripts and the GUI, and as text for people."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loratrainer.data.problems import SEVERITY_ORDER, Problem
from loratrainer.data.samples import Size, StepCount, TrainSample
from loratrainer.messages import Msg, define

# Said before a run starts (with the config's warnings: launch.start.start_warnings), not a reason to refuse it.
define({
    "report.images_skipped": "{count} image(s) would be skipped (damaged or too small); {images} would be used. The dataset check lists them.",
})


def bucket_key(bucket: Size) -> str:
    return f"{bucket[0]}x{bucket[1]}"


@dataclass
class DatasetReport:
    problems: list[Problem]
    samples: list[TrainSample]  # usable images, training then regularisation, in folder and name order
    steps: StepCount
    buckets: dict[Size, int]  # bucket -> samples per epoch (repeats and reg balancing included)
    skipped: list[Path] = field(default_factory=list)  # images found but not usable (damaged, too small)
    uncaptioned: list[Path] = field(default_factory=list)  # usable images training on the folder-name caption
    validation: list[TrainSample] = field(default_factory=list)  # held out for validation loss, never trained on

    @property
    def ok(self) -> bool:
        """True when training may start: no problem of severity "error"."""
        return not any(p.severity == "error" for p in self.problems)

    @property
    def images(self) -> int:
        return sum(1 for s in self.samples if not s.is_reg)

    @property
    def reg_images(self) -> int:
        return sum(1 for s in self.samples if s.is_reg)

    def warning_messages(self) -> list[Msg]:
        """What a run of this dataset would do that is probably not meant: images it would skip."""
        if not self.skipped:
            return []
        return [Msg.of("report.images_skipped", count=len(self.skipped), images=self.images)]

    def sorted_problems(self) -> list[Problem]:
        return sorted(self.problems, key=lambda p: SEVERITY_ORDER[p.severity])

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict; the keys are a public interface (documented in docs/dataset.md)."""
        s = self.steps
        return {
            "ok": self.ok,
            "images": self.images,
            "reg_images": self.reg_images,
            "skipped_images": len(self.skipped),
            "uncaptioned_images": len(self.uncaptioned),
            "validation_images": len(self.validation),
            "samples_per_epoch": s.samples_per_epoch,
            "train_samples_per_epoch": s.train_samples_per_epoch,
            "reg_samples_per_epoch": s.reg_samples_per_epoch,
            "batches_per_epoch": s.batches_per_epoch,
            "steps_per_epoch": s.steps_per_epoch,
            "epochs": s.epochs,
            "total_steps": s.total_steps,
            "batch_size": s.batch_size,
            "gradient_accumulation_steps": s.gradient_accumulation_steps,
            "num_processes": s.num_processes,
            "buckets": {bucket_key(b): n for b, n in self.buckets.items()},
            "concepts": _concepts(self.samples),
            "problems": [p.to_json() for p in self.sorted_problems()],
        }

    def format_text(self) -> str:
        """The human report: the problems first (errors, warnings, notes), then the numbers."""
        lines: list[str] = []
        labels = {"error": "ERROR  ", "warning": "warning", "info": "note   "}
        for p in self.sorted_problems():
            lines.append(f"{labels[p.severity]} {p.path}: {p.message}")
        if lines:
            lines.append("")
        s = self.steps
        reg = f" + {self.reg_images} regularisation" if self.reg_images else ""
        lines.append(f"images: {self.images}{reg} usable, {len(self.skipped)} skipped, {len(self.uncaptioned)} without caption")
        if self.validation:
            lines.append(f"validation images: {len(self.validation)} (held out, not trained on; not in the counts below)")
        lines.append(f"samples per epoch: {s.samples_per_epoch}" + (f" ({s.train_samples_per_epoch} training + {s.reg_samples_per_epoch} regularisation)" if s.reg_samples_per_epoch else ""))
        accum = f", accumulation {s.gradient_accumulation_steps}" if s.gradient_accumulation_steps > 1 else ""
        procs = f", {s.num_processes} processes" if s.num_processes > 1 else ""
        lines.append(f"batches per epoch: {s.batches_per_epoch} (batch size {s.batch_size}{accum}{procs})")
        lines.append(f"steps: {s.steps_per_epoch} per epoch x {s.epochs} epochs = {s.total_steps} total")
        if self.buckets:
            lines.append("buckets: " + ", ".join(f"{bucket_key(b)}: {n}" for b, n in self.buckets.items()))
        errors = sum(1 for p in self.problems if p.severity == "error")
        lines.append("ready to train" if self.ok else f"training would be refused: {errors} error(s) above")
        return "\n".join(lines)


def _concepts(samples: list[TrainSample]) -> list[dict[str, Any]]:
    out: dict[Path, dict[str, Any]] = {}
    for s in samples:
        entry = out.setdefault(s.concept_dir, {"path": str(s.concept_dir), "repeats": s.repeats, "is_reg": s.is_reg, "images": 0})
        entry["images"] += 1
    return list(out.values())
