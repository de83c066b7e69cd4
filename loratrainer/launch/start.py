"""Starting a run: the run folder, checks before launch, the `accelerate launch` argv, the process handle.

The GUI and the CLI both go through `start_run(config)`. No shell is involved anywhere: the command is an
argument list, so a name such as `$(touch /tmp/x)` stays a literal argument. This module imports no torch,
so the GUI stays light.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from loratrainer.run import events
from loratrainer.config import TrainingConfig, save_config, with_values
from loratrainer.errors import UserError
from loratrainer.files import atomic_write
from loratrainer.messages import Label, Msg, define
from loratrainer.launch import processes
from loratrainer.machine import child_processes
from loratrainer.run import files as run_files
from loratrainer.run import records
from loratrainer.machine.eight_bit import refusal
from loratrainer.launch.input_checks import check_inputs, remove_stale_partials, resolve_model_family
from loratrainer.launch.path_checks import check_paths
from loratrainer.config.sample_prompts import SamplePromptError, load_prompts
from loratrainer.run.files import CONSOLE_FILE, OPTIMIZER_FILE, STATE_FILE, WEIGHTS_FILE, logging_root, rng_file_name

_MB = 1024 * 1024


class LaunchRefused(UserError):
    """A run that must not start; the message is the whole report (English). `msg` (a coded message) and
    `report` (the failed dataset check) let the GUI say it in the page's language."""

    def __init__(self, message: str | Msg, report=None):
        super().__init__(message)
        self.report = report


define({
    "launch.output_exists": (
        "{file} (or one of its epoch files) already exists and will not be overwritten: "
        "choose another {name}, move the file, or set {existing} = rename"
    ),
    "launch.no_output_dir": "{folder} is empty: choose where the LoRA files are written",
    "launch.output_not_writable": "cannot write to the output folder {folder}: {detail}",
    "launch.no_space": "not enough free disk space in {folder}: {free} MB free, about {needed} MB needed",
    "launch.not_a_state": "{setting}: {folder} is not a saved training state (no train_state.json): choose a '-state' folder",
    "launch.dataset_failed": "the dataset check failed:",
    "launch.logging_not_writable": "cannot write to the logging folder {folder}: {detail}",
    "launch.state_incomplete": "{setting}: {folder} is incomplete (no {files}): choose another '-state' folder",
    "launch.bad_sample_prompts": "{detail}",  # the prompt parser's own line (names the line); the GUI frames it
    "launch.optimizer_unavailable": "{detail}",  # eight_bit.refusal's advice; the GUI frames it
    "launch.still_running": (
        "a run writing to {folder} is still going ({run}): stop it first, or choose another output folder"
    ),
    "launch.too_many_gpu_processes": (
        "{setting} = {processes} ({per_machine} on this machine) but this machine has {gpus} usable GPU(s): "
        "at most one process per GPU"
    ),
    "launch.too_many_cpu_processes": (
        "{setting} = {processes} ({per_machine} on this machine) but there is no CUDA GPU and only {cpus} CPU core(s): "
        "at most one process per core"
    ),
    "launch.inputs_refused": "{problem}",  # a coded message of launch.path_checks or launch.input_checks, in the page's language
})


# -- the run folder -------------------------------------------------------------------------------------------


def create_run(config: TrainingConfig) -> Path:
    """Make `<logging_dir or output_dir/log>/<output_name>_<YYYYmmdd-HHMMSS>/` holding the resolved config.json."""
    base = run_files.run_folder(config, datetime.now().strftime(run_files.RUN_STAMP))
    run_dir, n = base, 1
    while True:
        try:
            run_dir.mkdir(parents=True, exist_ok=False)
            break
        except FileExistsError:  # two runs started within the same second
            n += 1
            run_dir = base.with_name(f"{base.name}-{n}")
    save_config(config, run_dir / run_files.CONFIG_FILE)
    return run_dir


# -- the command ----------------------------------------------------------------------------------------------


def build_command(config: TrainingConfig, run_dir: str | Path) -> list[str]:
    """`python -m accelerate.commands.launch <flags> -m loratrainer.train.entry --run-dir DIR` as a list.

    Several processes on one machine use accelerate's torch.distributed launcher (its `--multi_gpu` flag);
    on a machine without CUDA those processes train on the CPU over gloo. Several machines: each runs this with
    its own `--machine_rank`; torchrun meets at `main_process_ip:main_process_port` (accelerate launch's flags).
    """
    la = config.launch
    argv = [sys.executable, "-m", "accelerate.commands.launch"]
    argv += ["--mixed_precision", config.precision.mixed_precision]
    argv += ["--num_processes", str(la.num_processes), "--num_machines", str(la.num_machines)]
    argv += ["--num_cpu_threads_per_process", str(la.num_cpu_threads_per_process)]
    argv += ["--dynamo_backend", "no"]
    if la.multi_gpu or la.num_processes > 1 or la.num_machines > 1:
        argv.append("--multi_gpu")
    if la.gpu_ids:
        argv += ["--gpu_ids", la.gpu_ids]
    if la.num_machines > 1:  # accelerate's names; num_processes is the total over all machines, as in accelerate
        argv += ["--machine_rank", str(la.machine_rank), "--main_process_ip", la.main_process_ip]
        argv += ["--rdzv_backend", la.rdzv_backend]
    if la.main_process_port:
        argv += ["--main_process_port", str(la.main_process_port)]
    argv += ["-m", processes.ENTRY_MODULE, "--run-dir", str(run_dir)]
    return argv


# -- checks before launch ----------------------------------------------------------------------------------


def resolve_output_name(config: TrainingConfig) -> TrainingConfig:
    """Apply saving.existing_output: refuse when `<output_name>.safetensors` exists, or pick `<name>_2`, `_3`, ..."""
    out = Path(config.folders.output_dir)
    name = config.folders.output_name
    if not _name_taken(out, name) or config.saving.resume:
        return config  # a resumed run continues the file numbering; save_lora still never overwrites
    if config.saving.existing_output == "refuse":
        raise LaunchRefused(Msg.of("launch.output_exists", file=str(out / (name + ".safetensors")), name=Label("folders.output_name"),
                                      existing=Label("saving.existing_output")))
    n = 2
    while _name_taken(out, f"{name}_{n}"):
        n += 1
    return with_values(config, {"folders.output_name": f"{name}_{n}"})


def _name_taken(folder: Path, name: str) -> bool:
    return (folder / f"{name}.safetensors").exists() or any(folder.glob(f"{_glob_escape(name)}-*.safetensors"))


def _glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def estimated_output_bytes(config: TrainingConfig, epochs: int, total_steps: int) -> int:
    """A generous estimate of what the run writes: LoRA files (about 1.2 MB per rank at 16 bit) and states."""
    bytes_per_value = 4 if config.precision.save_precision == "float" else 2
    n = config.network
    per_file = 1.2 * _MB * n.network_dim * bytes_per_value / 2
    if n.lora_type != "Standard":
        per_file += 3 * _MB * n.conv_dim * bytes_per_value / 2
    if n.lora_type == "LoHa":  # two low-rank products per module
        per_file *= 2
    elif n.lora_type == "LoKr":
        # never more than full Kronecker factors: the adapted SD1.5 weights (942M values) over about (factor/2)^2
        # (measured: factor 6 -> 72.6 MB, 8 -> 29.6 MB, -1 -> 2.6 MB at fp16); -1 splits near the square root
        factor = n.factor if n.factor > 0 else 16
        per_file = min(per_file, 942e6 * bytes_per_value / max(factor / 2, 1) ** 2)
    s = config.saving
    files = 2  # the final file and a possible interrupted one
    if s.save_every_n_epochs:
        files += min(s.save_last_n_epochs or epochs, epochs // s.save_every_n_epochs)
    if s.save_every_n_steps:
        kept = s.save_last_n_steps // s.save_every_n_steps + 1 if s.save_last_n_steps else total_steps
        files += min(total_steps // s.save_every_n_steps, kept)
    if s.save_state:  # a state holds float32 weights and two optimizer moments beside each file
        per_file *= 1 + 6 * 2 / bytes_per_value
    return int(files * per_file) + 100 * _MB


def check_output_dir(config: TrainingConfig, needed_bytes: int) -> None:
    out = Path(config.folders.output_dir)
    if not config.folders.output_dir:
        raise LaunchRefused(Msg.of("launch.no_output_dir", folder=Label("folders.output_dir")))
    _require_writable(out, "launch.output_not_writable")
    free = shutil.disk_usage(out).free
    if free < needed_bytes:
        raise LaunchRefused(Msg.of("launch.no_space", folder=str(out), free=free // _MB, needed=needed_bytes // _MB))


def check_logging_dir(config: TrainingConfig) -> None:
    """The run folder goes to logging_dir (or output_dir/log): refused now rather than a traceback at start."""
    _require_writable(logging_root(config), "launch.logging_not_writable")


def _require_writable(folder: Path, code: str) -> None:
    """Create the folder and write a probe file: permission bits say nothing when running as root."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".loratrainer-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise LaunchRefused(Msg.of(code, folder=str(folder), detail=exc.strerror or str(exc))) from None


def check_resume(config: TrainingConfig) -> None:
    resume = config.saving.resume
    if resume and not (Path(resume) / STATE_FILE).is_file():
        raise LaunchRefused(Msg.of("launch.not_a_state", folder=resume, setting=Label("saving.resume")))
    missing = [name for name in (WEIGHTS_FILE, OPTIMIZER_FILE, rng_file_name(0)) if resume and not (Path(resume) / name).is_file()]
    if missing:
        raise LaunchRefused(Msg.of("launch.state_incomplete", folder=resume, files=", ".join(missing), setting=Label("saving.resume")))


def check_sample_prompts(config: TrainingConfig) -> None:
    """A bad sample prompt is refused now, naming its line, not after the trainer has loaded the model."""
    s = config.sampling
    if s.sample_every_n_steps or s.sample_every_n_epochs or s.sample_at_first:
        try:
            load_prompts(s.sample_prompts)
        except (UserError, OSError, UnicodeDecodeError) as exc:
            detail = exc.msg if isinstance(exc, SamplePromptError) else str(exc)  # the line's coded reason
            raise LaunchRefused(Msg.of("launch.bad_sample_prompts", detail=detail)) from None


def check_optimizer(config: TrainingConfig) -> None:
    """An 8-bit optimizer on a machine without CUDA (the Kohya default AdamW8bit) is refused here, not after the
    model has loaded. Imports torch only when an 8-bit optimizer is chosen."""
    reason = refusal(config.optimizer.optimizer)
    if reason:
        raise LaunchRefused(Msg.of("launch.optimizer_unavailable", detail=reason))


def usable_gpus(config: TrainingConfig) -> int:
    """CUDA GPUs this run may use (gpu_ids narrows them); 0 without CUDA. Imports torch only when asked."""
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count and config.launch.gpu_ids:
        count = len([i for i in config.launch.gpu_ids.split(",") if int(i) < count])
    return count


def usable_cpus() -> int:
    if sys.platform.startswith("linux"):  # the cores this process may use (a container's or taskset's share)
        try:
            return len(os.sched_getaffinity(0))
        except OSError:
            pass
    return os.cpu_count() or 1


def check_num_processes(config: TrainingConfig) -> None:
    """No more processes on this machine than GPUs (or, without CUDA, than CPU cores): 64 processes on a 2-core
    machine would start 64 copies of the model and crawl, or run out of memory, long after the click."""
    la = config.launch
    per_machine = la.num_processes // la.num_machines
    if per_machine <= 1:
        return  # one process: the default, whatever the machine (a GPU-less machine trains on the CPU)
    from loratrainer.messages import Label

    gpus = usable_gpus(config)
    if gpus and per_machine > gpus:
        raise LaunchRefused(Msg.of("launch.too_many_gpu_processes", setting=Label("launch.num_processes"),
                                   processes=la.num_processes, per_machine=per_machine, gpus=gpus))
    cpus = usable_cpus()
    if not gpus and per_machine > cpus:
        raise LaunchRefused(Msg.of("launch.too_many_cpu_processes", setting=Label("launch.num_processes"),
                                   processes=la.num_processes, per_machine=per_machine, cpus=cpus))


def check_not_running(config: TrainingConfig) -> None:
    """A second run into the same output folder while a process of the first still lives (a worker outliving
    a killed accelerate included) would write over its files."""
    folder = config.folders.output_dir
    if not folder:
        return
    busy = processes.running_runs(folder, config.launch.machine_rank, logging_root(config))
    if busy:
        raise LaunchRefused(Msg.of("launch.still_running", folder=folder, run=str(busy[0])))


def check_run_inputs(config: TrainingConfig) -> None:
    """Model files (existence and kind), the file names the run will write, the optimizer's package
    (launch.input_checks)."""
    problem = check_inputs(config)
    if problem is not None:
        raise LaunchRefused(Msg.of("launch.inputs_refused", problem=problem))


def start_warnings(config: TrainingConfig, report) -> list[Msg]:
    """What would not stop a run but is probably not meant, as coded messages: images the trainer would skip
    (`report`: the config's dataset check), a learning rate far outside what the optimizer expects, a warm-up the
    scheduler ignores (the schema's rules). The GUI asks about them before Start (Start anyway / Cancel);
    `loratrainer train` prints them and starts, since a terminal run has no one to ask (the refusals are
    preflight's: those stop it everywhere)."""
    return report.warning_messages() + config.warning_messages()


def preflight(config: TrainingConfig, warnings: list[Msg] | None = None) -> TrainingConfig:
    """Everything that can be found before training: dataset, output folder, space, file names.

    Returns the config to run (output_name possibly renamed); raises LaunchRefused with the report. `warnings`,
    when given, receives `start_warnings` (found with the same dataset check, so it is read once).
    """
    from loratrainer.data.check import check_dataset

    problem = check_paths(config)  # first: a path from another computer must not become a folder here
    if problem is not None:
        raise LaunchRefused(Msg.of("launch.inputs_refused", problem=problem))
    check_num_processes(config)
    # the family follows the model (its own weights or config): the bucket rules and the trainer read it from here
    config, problem = resolve_model_family(config)
    if problem is not None:
        raise LaunchRefused(Msg.of("launch.inputs_refused", problem=problem))
    report = check_dataset(config, num_processes=config.launch.num_processes)
    if not report.ok:
        raise LaunchRefused(Msg.of("check.failed", report=report.format_text()), report=report)
    if warnings is not None:
        warnings += start_warnings(config, report)
    check_resume(config)
    check_optimizer(config)
    check_run_inputs(config)
    check_sample_prompts(config)
    needed = estimated_output_bytes(config, report.steps.epochs, report.steps.total_steps)
    check_output_dir(config, needed)
    check_logging_dir(config)
    if config.launch.machine_rank != 0:
        return config  # only the machine of rank 0 writes LoRA files: a file here says nothing about the run
    return resolve_output_name(config)


# -- the process -------------------------------------------------------------------------------------------------


@dataclass
class RunProcess:
    """A started run. The trainer runs in its own session (process group), so `kill` reaches all of it."""

    run_dir: Path
    popen: subprocess.Popen
    argv: list[str]

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def events_path(self) -> Path:
        return self.run_dir / run_files.EVENTS_FILE

    def poll(self) -> int | None:
        """None while any process of the run lives; then the trainer's exit code (EXIT_CODES) when it wrote
        `ended`, else the raw one (128 + N when the trainer was killed by signal N)."""
        raw = self.popen.poll()
        if raw is None or self.group_alive():
            return None
        return self.exit_code(raw)

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the whole run: on SIGINT or SIGTERM to the group, accelerate launch can exit (it gives its
        child 0.25 s) while the trainer still saves `<name>-interrupted`."""
        raw = self.popen.wait(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.group_alive():
            if timeout is not None and deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(self.argv, timeout)
            time.sleep(0.1)
        return self.exit_code(raw)

    def group_alive(self) -> bool:
        """Whether a process of the run still runs: accelerate's process group, or any worker recorded in (or
        naming) the run folder. torchrun starts each worker in a session of its own, so a worker can outlive a
        killed accelerate launch; until it is gone the run is not over."""
        if self.popen.poll() is None:
            return True
        return bool(processes.group_members(self.popen.pid)) or processes.alive(self.run_dir)

    def exit_code(self, raw: int) -> int:
        # accelerate launch turns any failing child into exit code 1, so the trainer's own code comes from events.
        state = events.read_run_state(self.run_dir)
        if state.ended is not None:
            return int(state.exit_code if state.exit_code is not None else raw)
        if raw < 0:  # accelerate launch itself was killed (the whole group): report it as a shell does, 128 + N,
            return 128 - raw  # not as the negative number that became 247 as a process exit status
        signum = child_signal(self.run_dir / CONSOLE_FILE) if raw > 0 else None
        return 128 + signum if signum else raw

    def request_stop(self) -> None:
        """Ask the trainer to save `<name>-interrupted` and stop (it checks for the STOP file every step)."""
        atomic_write(self.run_dir / run_files.STOP_FILE, f"stop requested at {events.now_iso()}\n")

    def kill(self) -> None:
        """Kill the whole run at once: accelerate's process group and every worker's (they are in sessions of their
        own), their data loaders included, also a trainer that outlived accelerate launch."""
        child_processes.kill([self.popen.pid], [self.popen.pid])  # accelerate's group (its tree, on Windows)
        processes.kill_all(self.run_dir)

    def stop(self, stop_grace_s: float | None = None, term_grace_s: float | None = None) -> str:
        """STOP file, then SIGTERM, then SIGKILL to every process of the run, each after a grace period; waits
        until none is left. Returns "stopped", "terminated", "killed" or "not running"."""
        result = processes.stop_all(self.run_dir, processes.STOP_GRACE_S if stop_grace_s is None else stop_grace_s,
                                    processes.TERM_GRACE_S if term_grace_s is None else term_grace_s)
        if result == "killed":
            self.kill()
        self.wait()
        return result


# accelerate's simple launcher: `CalledProcessError: Command '[...]' died with <Signals.SIGKILL: 9>.`;
# torchrun: `exitcode  : -9 (pid: ...)`
_CHILD_SIGNAL = re.compile(r"died with <Signals\.SIG\w+: (\d+)>|exitcode\s*:\s*-(\d+)")


def child_signal(console: Path) -> int | None:
    """The signal that killed the trainer under accelerate launch (which itself exits 1), from console.log."""
    try:
        with open(console, "rb") as fh:
            fh.seek(max(0, console.stat().st_size - 64 * 1024))
            text = fh.read().decode("utf-8", errors="replace")
    except OSError:
        return None
    found = _CHILD_SIGNAL.findall(text)
    return int(found[-1][0] or found[-1][1]) if found else None


def start_run(config: TrainingConfig, *, check: bool = True) -> RunProcess:
    """Check, create the run folder, write command.json and start `accelerate launch` in its own session."""
    if check:
        config = preflight(config)
    check_not_running(config)  # first: a live run's partial files are not stale
    remove_stale_partials(config)  # what a kill during an earlier save of this output left behind
    run_dir = create_run(config).absolute()  # absolute: the processes are found by the run folder on their command line
    argv = build_command(config, run_dir)
    atomic_write(run_dir / run_files.COMMAND_FILE, json.dumps({"argv": argv, "cwd": os.getcwd()}, indent=2) + "\n")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    console = open(run_dir / CONSOLE_FILE, "ab")
    try:
        popen = child_processes.start(argv, stdout=console, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    finally:
        console.close()  # the child holds its own descriptor
    try:
        records.record_launcher(run_dir, popen.pid, config.launch.machine_rank)
    except OSError:
        pass  # it may have ended already; the workers record themselves
    return RunProcess(run_dir=run_dir, popen=popen, argv=argv)


def format_command(argv: list[str]) -> str:
    """The argv as one line a user can paste into a shell (quoted for display only; never executed that way)."""
    import shlex

    return shlex.join(argv) if os.name == "posix" else subprocess.list2cmdline(argv)

