"""Writing one LoRA file: Kohya-format tensors in the save precision, with Kohya/ModelSpec metadata.

The model layer refuses non-finite tensors (NonFiniteLoraError) and existing files (OutputExists), so a
diverged run writes nothing and an earlier file is never replaced.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from loratrainer.train import model_api
from loratrainer.train.checkpoints import Progress
from loratrainer.train.faults import during_save

log = logging.getLogger("loratrainer.train")


def make_saver(t):
    """`write(path, progress)` for the CheckpointKeeper; the final file also goes out in diffusers format when asked."""
    started = time.time()
    info = model_api.dataset_info(t.report)
    saves = [0]

    def write(path: Path, p: Progress) -> None:
        saves[0] += 1
        tensors = model_api.lora_state(t.handle, t.config.precision.save_precision)
        meta = model_api.file_metadata(
            t.config, info, t.components, epoch=p.epoch, step=p.step, total_steps=p.total_steps, epochs=p.epochs,
            seed=t.seed, started_at=started, num_processes=t.accelerator.num_processes,
        )
        with during_save(saves[0], path):  # LORATRAINER_FAULT's disk_full@saveN / kill@saveN, else nothing
            model_api.save_lora(path, tensors, meta, overwrite=False)
        if t.config.saving.save_diffusers_format and path.stem == t.config.folders.output_name:
            folder = path.with_name(path.stem + "_diffusers")
            if folder.exists():
                log.warning("%s exists: the diffusers-format copy was not written", folder)
            else:
                model_api.save_diffusers_lora(folder, t.handle, save_dtype=model_api.SAVE_DTYPES[t.config.precision.save_precision])
                log.info("saved diffusers-format LoRA to %s", folder)

    return write
