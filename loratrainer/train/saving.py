"""Saving the run's LoRA files: `t.saver.maybe_save()` after a step or an epoch, `t.saver.save(kind)` for the
final and the interrupted file.

One Saver per run writes each file (Kohya-format tensors in the save precision, with Kohya/ModelSpec metadata),
names and rotates them (CheckpointKeeper), reports them (`checkpoint` events, the run's last good file) and
saves the training state beside them when save_state is on. The model layer refuses non-finite tensors
(NonFiniteLoraError) and existing files (OutputExists), so a diverged run writes nothing and an earlier file is
never replaced.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from pathlib import Path
from typing import Callable

from loratrainer.config import TrainingConfig
from loratrainer.data.report import DatasetReport
from loratrainer.messages import Msg
from loratrainer.run import notes as _notes  # noqa: F401  the codes of the warnings below (the page must know them)
from loratrainer.model.kohya_format import SAVE_DTYPES, lora_state_dict
from loratrainer.model.metadata import DatasetInfo, DirInfo, ModelInfo, TrainingProgress, build_metadata
from loratrainer.model.saving import save_diffusers_lora, save_lora
from loratrainer.train.checkpoints import CheckpointKeeper, Progress, save_due

log = logging.getLogger("loratrainer.train")


class Saver:
    def __init__(self, t, write: Callable[[Path, Progress], None] | None = None):
        """`write(path, progress)` writes one file; by default the LoRA with its metadata (tests pass their own)."""
        self.t = t
        f = t.config.folders
        self.keeper = CheckpointKeeper(Path(f.output_dir), f.output_name, t.config.saving, write or self.write_lora)
        self._started = time.time()
        self._info: DatasetInfo | None = None  # the dataset's metadata, built on the first save

    def progress(self, epoch_done: bool = False) -> Progress:
        t = self.t
        return Progress(t.step, t.epoch, t.total_steps, t.epochs, epoch_done)

    def maybe_save(self, epoch_done: bool = False) -> None:
        """Save when save_every_n_epochs / save_every_n_steps say so."""
        p = self.progress(epoch_done)
        kind = save_due(self.t.config.saving, p)
        if kind:
            self.save(kind, p)

    def save(self, kind: str, p: Progress | None = None) -> None:
        """Write a file of `kind` ("epoch", "step", "final", "interrupted") on the main process, all processes
        waiting for it, then the training state when save_state is on."""
        t, run = self.t, self.t.run
        p = p or self.progress()
        run.phase = f"saving ({kind})"
        run.phase_progress("saving")
        t.accelerator.wait_for_everyone()
        if t.accelerator.is_main_process:
            path = self.keeper.save(kind, p)
            run.last_file = path
            log.info("saved %s", path)
            # epoch_loss: the mean loss of the epoch up to this file (Results lists it per file)
            run.emit("checkpoint", path=str(path), kind=kind, epoch=p.epoch, step=p.step,
                     epoch_loss=run.reporter.epoch_loss() if run.reporter is not None else None)
        if t.config.saving.save_state:
            self.save_training_state()
        t.accelerator.wait_for_everyone()
        run.phase = "training"
        run.phase_progress("training")

    def save_training_state(self) -> None:
        from accelerate.utils import broadcast_object_list

        from loratrainer.run.files import state_folder_name
        from loratrainer.train.state import save_state

        t = self.t
        last = t.run.last_file
        path = broadcast_object_list([str(last) if last else None])[0]  # the name the main process chose
        folder = state_folder_name(Path(path))
        t.accelerator.wait_for_everyone()
        save_state(t, folder)
        t.run.emit("state_saved", path=str(folder), step=t.step, epoch=t.epoch)

    def write_lora(self, path: Path, p: Progress) -> None:
        """One LoRA file; the final file also goes out in diffusers format when asked."""
        t = self.t
        if self._info is None:
            self._info = dataset_info(t.report)
        info = self._info
        tensors = lora_state_dict(t.handle, t.config.precision.save_precision)
        meta = file_metadata(
            t.config, info, t.components, epoch=p.epoch, step=p.step, total_steps=p.total_steps, epochs=p.epochs,
            seed=t.seed, started_at=self._started, num_processes=t.accelerator.num_processes,
            mixed_precision=t.accelerator.mixed_precision,
        )
        save_lora(path, tensors, meta, overwrite=False)
        if t.config.saving.save_diffusers_format and path.stem == t.config.folders.output_name:
            folder = path.with_name(path.stem + "_diffusers")
            if folder.exists():
                log.warning("%s", Msg.of("train.diffusers_copy_exists", folder=str(folder)))
            else:
                save_diffusers_lora(folder, t.handle, save_dtype=SAVE_DTYPES[t.config.precision.save_precision])
                log.info("saved diffusers-format LoRA to %s", folder)


def dataset_info(report: DatasetReport) -> DatasetInfo:
    """Kohya's ss_dataset_dirs / ss_tag_frequency / ss_bucket_info from the dataset check."""
    dirs: dict[str, dict[str, DirInfo]] = {"train": {}, "reg": {}}
    tags: dict[str, Counter] = {}
    for s in report.samples:
        name = s.concept_dir.name
        group = dirs["reg" if s.is_reg else "train"]
        old = group.get(name, DirInfo(s.repeats, 0))
        group[name] = DirInfo(s.repeats, old.img_count + 1)
        if not s.is_reg:
            tags.setdefault(name, Counter()).update(t.strip() for t in s.caption.split(",") if t.strip())
    buckets = {str(i): {"resolution": list(b), "count": n} for i, (b, n) in enumerate(sorted(report.buckets.items()))}
    return DatasetInfo(
        num_train_images=report.steps.train_samples_per_epoch,
        dataset_dirs=dirs["train"],
        tag_frequency={k: dict(v) for k, v in tags.items()},
        bucket_info={"buckets": buckets, "mean_img_ar_error": 0.0},
        num_reg_images=report.steps.reg_samples_per_epoch,
        reg_dataset_dirs=dirs["reg"],
        num_batches_per_epoch=report.steps.batches_per_epoch,
        num_validation_images=len(getattr(report, "validation", [])),
    )


def file_metadata(config: TrainingConfig, info: DatasetInfo, components, *, epoch: int, step: int, total_steps: int,
                  epochs: int, seed: int, started_at: float, num_processes: int, mixed_precision: str | None = None) -> dict[str, str]:
    progress = TrainingProgress(epoch=epoch, step=step, num_epochs=epochs, max_train_steps=total_steps, seed=seed,
                                started_at=started_at, finished_at=time.time(), num_processes=num_processes,
                                mixed_precision=mixed_precision)  # the precision used, not the one asked
    model = ModelInfo(name=components.model_name, hash=components.model_hash, vae_name=Path(config.model.vae).name if config.model.vae else "",
                      family=getattr(components, "family", "sd15"))  # SDXL: sd-scripts' SDXL base version and modelspec
    return build_metadata(config, progress, info, model)
