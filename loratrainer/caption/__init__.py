"""Captioners (BLIP, GIT, WD14 tagger, fixed text) behind one small interface, and caption editing.

The API the CLI and the GUI use:

    caption_folder(CaptionRunOptions(folder, ...), BlipOptions(...), progress=fn, cancel=fn) -> CaptionReport
    plan_captions(CaptionRunOptions) -> CaptionPlan          (what a run would do; no model loaded)
    basic.find_replace / basic.add_prefix_postfix             (edits of existing captions, with backups)
    editor.list_page / save_caption / search_replace / tag_frequency

Heavy libraries (torch, transformers, onnxruntime) load only when a model captioner is created.
"""

from loratrainer.caption.base import (
    BlipOptions,
    Captioner,
    CaptionerOptions,
    FixedTextOptions,
    GitOptions,
    TaggerOptions,
)
from loratrainer.caption.captioners import make_captioner
from loratrainer.caption.folder import DuplicateStemsError
from loratrainer.caption.run import (
    CaptionPlan,
    CaptionReport,
    CaptionRunOptions,
    Skipped,
    caption_folder,
    plan_captions,
)

__all__ = [
    "BlipOptions",
    "CaptionPlan",
    "CaptionReport",
    "CaptionRunOptions",
    "Captioner",
    "CaptionerOptions",
    "DuplicateStemsError",
    "FixedTextOptions",
    "GitOptions",
    "Skipped",
    "TaggerOptions",
    "caption_folder",
    "make_captioner",
    "plan_captions",
]
