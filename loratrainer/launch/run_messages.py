"""Every coded message a run's events can carry (an `ended` event's reason, a `note`), known to the GUI or CLI process
that says them. The trainer raises and logs messages defined across config/, data/, model/ and run/; a process that
says a message must have imported the module that defines its code, or `outcomes.from_event` falls back to the
English text. The page (gui/run_view.py), `loratrainer train` (launch/follow.py) and the queue import this module, so
none of them depends on having checked a dataset first. Torch-free: the trainer's own torch modules keep no
definitions of such codes (tests/test_architecture.py walks every code the trainer can reach).
"""

from __future__ import annotations

from loratrainer.config import sample_prompts as _sample_prompts  # noqa: F401  a prompt file refused at the first sample (prompts.*)
from loratrainer.data import check as _check  # noqa: F401  a dataset the trainer refuses (check.*)
from loratrainer.data import dataset_config as _dataset_config  # noqa: F401  dataset_config.*
from loratrainer.data import masks as _masks  # noqa: F401  mask.*
from loratrainer.model import errors as _model_errors  # noqa: F401  model files, SDXL, model family
from loratrainer.run import notes as _notes  # noqa: F401  the trainer's notes and warnings
from loratrainer.run import phases as _phases  # noqa: F401  run.stopped_before_training
from loratrainer.run.outcomes import from_event, queue_reason

__all__ = ["from_event", "queue_reason"]
