"""GIT captions (microsoft/git-large-textcaps by default), the other captioner Kohya offers."""

from __future__ import annotations

from loratrainer.caption.base import GitOptions
from loratrainer.caption.hf import TransformersCaptioner


class GitCaptioner(TransformersCaptioner):
    def __init__(self, options: GitOptions):
        super().__init__("GitForCausalLM", "git", options.model, options.device, {"max_length": options.max_length})
