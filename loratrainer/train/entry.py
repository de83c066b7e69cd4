"""The training process: `accelerate launch -m loratrainer.train.entry --run-dir DIR`.

It reads DIR/config.json, trains, and reports through DIR/events.jsonl, DIR/train.log, DIR/tensorboard and
DIR/versions.json. Every way a run can end maps to one status and exit code (loratrainer.run.events.EXIT_CODES).
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import sys
import traceback
from pathlib import Path

from loratrainer.run import events
from loratrainer.machine import child_processes
from loratrainer.run import outcomes
from loratrainer.run.notes import precision_changed
from loratrainer.run import files as run_files
from loratrainer.train.device import choose as choose_device, probe as probe_device
from loratrainer.compat import hide_broken_torchvision
from loratrainer.config import TrainingConfig, load_config
from loratrainer.errors import UserError
from loratrainer.machine.eight_bit import keep_unloaded_unless_needed
from loratrainer.messages import Msg
from loratrainer.train.run_context import RunContext
from loratrainer.train.runtime import library_versions, random_seed


log = logging.getLogger("loratrainer.train")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="loratrainer.train.entry")
    parser.add_argument("--run-dir", required=True, type=Path)
    run_dir = parser.parse_args(argv).run_dir
    stop_on_signals(run_dir)  # first: a Ctrl-C while torch loads must not end the run without its `ended` line
    record_process(run_dir)
    from loratrainer.train.launcher_watch import watch_owner

    watch_owner(run_dir)  # `loratrainer train` / the queue runner killed: stop as on Stop (run/owner.py)
    try:
        config = load_config(run_dir / run_files.CONFIG_FILE)
        keep_unloaded_unless_needed(config.optimizer.optimizer)  # before anything imports peft or diffusers
        hide_broken_torchvision()
        accelerator = make_accelerator(config)
    except Exception as exc:  # before training could start: still end the stream with a reason
        traceback.print_exc()
        return _ended_early(run_dir, f"{type(exc).__name__}: {exc}", error_msg(exc))
    writer = events.EventWriter(run_dir / run_files.EVENTS_FILE) if accelerator.is_main_process else None
    run = RunContext(run_dir, events=writer)
    setup_logging(run_dir, accelerator.is_main_process)
    if writer is not None:  # what the page shows about the run besides its progress arrives as `note` events
        from loratrainer.train.reporting import report_config_notes, report_warnings

        report_warnings(writer)
        report_config_notes(writer, config.summary_messages())
    if accelerator.mixed_precision != config.precision.mixed_precision:
        # said after setup_logging and report_warnings: train.log has the English line, the page the coded note
        note = choose_device(config.precision.mixed_precision, probe_device()).note
        log.warning("%s", note or precision_changed(config.precision.mixed_precision, accelerator.mixed_precision))
    if not accelerator.is_main_process:
        say_which_rank(config, accelerator)
    status, reason, step, epoch = run_and_classify(config, run, accelerator)
    code = emit_ended(run, status, reason, step, epoch)
    if writer is not None:
        writer.close()
    log.info("ended: %s%s", status, f" ({reason})" if reason else "")
    accelerator.end_training()
    return code


def emit_ended(run: RunContext, status: str, reason: str, step: int, epoch: int) -> int:
    """The `ended` event (the English reason, and the coded reason the GUI says in the page's language: every outcome
    but finished and a plain stop has one, run/outcomes.py); returns the exit code."""
    code = events.EXIT_CODES[status]
    said = {"msg": outcomes.to_event(run.ended_msg)} if run.ended_msg is not None else {}
    run.emit("ended", status=status, reason=reason, step=step, epoch=epoch, exit_code=code, **said)
    return code


def _ended_early(run_dir: Path, reason: str, msg: Msg) -> int:
    if os.environ.get("RANK", "0") == "0":
        with events.EventWriter(run_dir / run_files.EVENTS_FILE) as writer:
            writer.emit("ended", status="error", reason=reason, step=0, epoch=0, exit_code=events.EXIT_CODES["error"],
                        msg=outcomes.to_event(msg))
    return events.EXIT_CODES["error"]


def error_msg(exc: Exception) -> Msg:
    """A failure as the page says it: the error's own coded message, else its text quoted as the detail."""
    own = getattr(exc, "msg", None)
    if isinstance(exc, UserError) and isinstance(own, Msg):
        return own
    return Msg.of("run.error_detail", detail=str(exc) if isinstance(exc, UserError) else f"{type(exc).__name__}: {exc}")


def record_process(run_dir: Path) -> None:
    """processes/rank-N.json: this worker's pid and process group, so a stop finds it even when accelerate launch
    (which torchrun runs it under, in a session of its own) is gone."""
    from loratrainer.run.records import record_this_worker

    try:
        record_this_worker(run_dir)
    except OSError as exc:  # the run folder is gone or full: training may still work; the launcher scans /proc
        print(f"could not record this process in {run_dir}: {exc}", file=sys.stderr)


def say_which_rank(config: TrainingConfig, accelerator) -> None:
    """Ranks other than 0 write nothing; their console says so, once."""
    la = config.launch
    where = f" on machine {la.machine_rank} of {la.num_machines}" if la.num_machines > 1 else ""
    main = f" (at {la.main_process_ip})" if la.num_machines > 1 and la.machine_rank != 0 else ""
    print(f"loratrainer: process rank {accelerator.process_index} of {accelerator.num_processes}{where}: "
          f"rank 0{main} writes the LoRA files, samples, events and state; this process ends when it ends",
          file=sys.stderr, flush=True)


def stop_on_signals(run_dir: Path) -> None:
    """SIGTERM (a service manager, `kill PID`) and SIGINT (Ctrl-C reaching the run's process group) ask for a stop
    like the STOP file: the LoRA is saved first. Without this, SIGINT raised KeyboardInterrupt mid-step and the
    run died without its interrupted file or its `ended` line."""
    import signal

    def request_stop(signum, frame) -> None:
        try:
            (run_dir / run_files.STOP_FILE).write_text(f"{signal.Signals(signum).name}\n")
        except OSError:
            pass

    if os.name == "posix":
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, request_stop)



def make_accelerator(config: TrainingConfig):
    import torch
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    torch.set_num_threads(config.launch.num_cpu_threads_per_process)
    # CUDA, Apple's GPU (mps) or the CPU, in a precision that works there (train/device.py); noted in train.log by main()
    device = choose_device(config.precision.mixed_precision, probe_device())
    # clip skip > 1 leaves the text encoder's last layers without gradients: DDP must be told to expect that; so does
    # SDXL, whose first text encoder gives its penultimate layer (train/sdxl_text.py)
    unused = trains_text_with_unused_layers(config)
    accelerator = Accelerator(cpu=device.kind == "cpu", mixed_precision=device.precision,
                              kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=unused)])
    return accelerator


def trains_text_with_unused_layers(config: TrainingConfig) -> bool:
    if config.model.clip_skip > 1 and config.trains_text_encoder:
        return True
    from loratrainer.train.family import FAMILIES, detect_model_family  # reads the model's header only, no torch work

    family = FAMILIES[config.model.model_family if config.model.model_family != "auto" else detect_model_family(config.model.pretrained_model_name_or_path)]
    return family.name == "sdxl" and family.trains_text(config)


def setup_logging(run_dir: Path, main_process: bool) -> None:
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s")
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    stream = logging.StreamHandler(sys.stderr)
    stream.setFormatter(fmt)
    stream.setLevel(logging.INFO if main_process else logging.WARNING)
    root.addHandler(stream)
    if main_process:
        file = logging.FileHandler(run_dir / run_files.LOG_FILE, encoding="utf-8")
        file.setFormatter(fmt)
        root.addHandler(file)


def run_and_classify(config: TrainingConfig, run: RunContext, accelerator) -> tuple[str, str, int, int]:
    """Train and map the outcome to (status, reason, step, epoch)."""
    import torch

    from loratrainer.model.errors import NonFiniteLoraError
    from loratrainer.train.loop import NonFiniteLoss, NonFiniteWeights
    from loratrainer.run.phases import STOPPED_BEFORE_TRAINING
    from loratrainer.train.run_context import StoppedBeforeTraining

    try:
        outcome = train_run(config, run, accelerator)
        return outcome.status, "", outcome.step, outcome.epoch
    except NonFiniteWeights as exc:  # the loss was finite, the update was not: not "the loss became NaN"
        run.ended_msg = outcomes.weights_nonfinite(exc.step, exc.epoch, exc.lr, config.precision.full_fp16, run.last_file)
        return "nan", str(run.ended_msg), exc.step, exc.epoch
    except StoppedBeforeTraining as exc:
        log.info("stop requested while %s: ended before the first step, nothing to save", exc.phase)
        run.ended_msg = Msg.of("run.stopped_before_training")
        return "stopped", STOPPED_BEFORE_TRAINING, run.step, run.epoch
    except NonFiniteLoss as exc:
        run.ended_msg = outcomes.nan_at(exc.step, exc.epoch, run.last_file)
        return "nan", nan_reason(exc, run), exc.step, exc.epoch
    except NonFiniteLoraError as exc:
        run.ended_msg = outcomes.nan_at(run.step, run.epoch, run.last_file)
        return "nan", nan_reason(exc, run), run.step, run.epoch
    except torch.OutOfMemoryError:
        log.error("out of memory:\n%s", traceback.format_exc())
        run.ended_msg = outcomes.oom_at(run.phase, run.step, config.training.train_batch_size, config.buckets.max_resolution)
        return "oom", oom_advice(config, run.phase), run.step, run.epoch
    except Exception as exc:  # the log keeps the traceback; the event carries one line
        log.error("%s", str(exc) if isinstance(exc, UserError) else traceback.format_exc())
        full = disk_full(exc)
        if full is not None:
            where = full or config.folders.output_dir
            run.ended_msg = Msg.of("run.disk_full_at", path=where)
            return "disk_full", f"disk full: {where}", run.step, run.epoch
        refused = not_writable(exc)
        if refused is not None:  # a folder made read-only during the run (the TensorBoard writer's error too)
            folder = str(Path(refused).parent) if refused else config.folders.output_dir
            run.ended_msg = Msg.of("train.folder_not_writable", folder=folder)
            return "error", str(run.ended_msg), run.step, run.epoch
        run.ended_msg = error_msg(exc)
        if isinstance(exc, UserError):
            return "error", str(exc), run.step, run.epoch
        return "error", f"{type(exc).__name__}: {exc}", run.step, run.epoch


def nan_reason(exc: Exception, run: RunContext) -> str:
    said = str(exc)
    said = said[:1].upper() + said[1:] + ("" if said.endswith(".") else ".")  # one sentence, then the file
    last = run.last_file
    return said + (f" The last good file is {last}." if last else " No file was saved.")


_FULL_ERRNOS = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
# How libraries that do not raise OSError report a full disk: the C library's text (also inside a RuntimeError of
# torch.save), and Rust's io::Error in safetensors' SafetensorError ("... kind: StorageFull ..." / QuotaExceeded).
_FULL_TEXTS = ("no space left on device", "disk quota exceeded", "storagefull", "quotaexceeded", "os error 28", "os error 122")


def disk_full(exc: BaseException | None) -> str | None:
    """None unless `exc` or anything in its chain (cause, context) says the disk or quota is full; then the file
    name it names, or "". A real full disk arrives as safetensors' SafetensorError or torch's RuntimeError as
    often as an OSError (docs/reliability.md, "Faults")."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in _FULL_ERRNOS:
            return str(exc.filename or "")
        text = str(exc).lower()
        if any(marker in text for marker in _FULL_TEXTS):
            return ""
        exc = exc.__cause__ or exc.__context__
    return None


_REFUSED_ERRNOS = {errno.EROFS, errno.EACCES, errno.EPERM}
# the same refusal as other libraries word it (safetensors' Rust io::Error, TensorBoard's writer, torch.save)
_REFUSED_TEXTS = ("read-only file system", "permission denied", "os error 30", "os error 13", "readonlyfilesystem",
                  "permissiondenied")


def not_writable(exc: BaseException | None) -> str | None:
    """None unless `exc` or its chain says a file could not be written because its folder is read-only or not
    writable; then that file's name, or "" (docs/reliability.md "Paths and faults": a raw `OSError [Errno 30]`
    from the TensorBoard writer was the run's last word)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in _REFUSED_ERRNOS:
            return str(exc.filename or "")
        if any(marker in str(exc).lower() for marker in _REFUSED_TEXTS):
            return ""
        exc = exc.__cause__ or exc.__context__
    return None


def oom_advice(config: TrainingConfig, phase: str) -> str:
    o, p = config.optimizer, config.precision
    batch = config.training.train_batch_size
    tips = ["lower train_batch_size"] if batch > 1 else []
    tips += [] if p.gradient_checkpointing else ["turn on gradient_checkpointing"]
    tips += [] if config.caches_latents else ["turn on cache_latents"]
    from loratrainer.train.text_cache import cacheable, wanted

    # UNet-only with fixed captions: cached text outputs let the text encoders leave the GPU (SDXL's are 1.6 GB in fp16)
    tips += ["turn on cache_text_encoder_outputs"] if cacheable(config) and not wanted(config) else []
    tips += ["lower max_resolution", "use AdamW8bit" if o.optimizer == "AdamW" else "lower network_dim"]
    return (f"out of GPU memory during {phase} at batch size {batch}, "
            f"resolution {config.buckets.max_resolution}: " + ", ".join(tips))


def train_run(config: TrainingConfig, run: RunContext, accelerator):
    from accelerate.utils import broadcast_object_list, set_seed

    from loratrainer.train import faults
    from loratrainer.train.loop import train
    from loratrainer.train.reporting import ProgressReporter
    from loratrainer.train.saving import Saver
    from loratrainer.train.setup import build_trainer
    from loratrainer.train.state import load_state, read_state_info

    run_dir = run.run_dir
    resume = read_state_info(config.saving.resume) if config.saving.resume else None
    seed = resume.seed if resume else broadcast_object_list([config.training.seed or random_seed()])[0]
    set_seed(seed, device_specific=True)  # different noise per process, the same batches (seeded separately)
    if accelerator.is_main_process:
        (run_dir / run_files.VERSIONS_FILE).write_text(json.dumps({**library_versions(), "seed": seed}, indent=2) + "\n")
    run.phase = "loading the model and caching latents"
    t = build_trainer(config, run_dir, accelerator, seed, run=run)
    t.saver = Saver(t)
    if resume:
        load_state(t, config.saving.resume)
        log.info("resumed from %s at step %d (epoch %d)", config.saving.resume, t.step, t.epoch)
    run.tensorboard = open_tensorboard(run_dir) if accelerator.is_main_process else None
    s = t.report.steps
    run.emit("started", total_steps=s.total_steps, steps_per_epoch=s.steps_per_epoch, epochs=s.epochs,
             num_processes=accelerator.num_processes, images=t.report.images, samples_per_epoch=s.samples_per_epoch,
             seed=seed, pid=os.getpid(), pgid=child_processes.own_group(), output_name=config.folders.output_name,
             mixed_precision=accelerator.mixed_precision,  # the precision used: the GUI notes when it is not the config's
             resumed_from=str(config.saving.resume) if resume else "", resumed_step=t.step if resume else None)
    log.info("training %d steps (%d epochs x %d steps) on %d process(es), seed %d", s.total_steps, s.epochs, s.steps_per_epoch, accelerator.num_processes, seed)
    run.phase = "training"
    reporter = ProgressReporter(run.events, run.tensorboard, s.total_steps, s.epochs)
    # LORATRAINER_PROGRESS_INTERVAL_S=0: an event for every step (tests compare whole step/lr sequences)
    reporter.min_interval_s = float(os.environ.get("LORATRAINER_PROGRESS_INTERVAL_S", reporter.min_interval_s))
    run.reporter = reporter  # the Saver's checkpoint events carry the epoch's mean loss from it
    try:
        return train(t, faults.install(t, reporter))  # the test suite's one seam (LORATRAINER_TEST_MODE=1 only)
    finally:
        if run.tensorboard is not None:
            run.tensorboard.close()


def open_tensorboard(run_dir: Path):
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(run_dir / run_files.TENSORBOARD_DIR))


if __name__ == "__main__":
    sys.exit(main())
