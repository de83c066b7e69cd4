"""Kohya's sample-prompt syntax (docs/kohya-compat.md section 5): one prompt per line, options after ` --`.

    modern concrete house, dusk --n blurry, lowres --w 512 --h 768 --s 28 --l 7 --d 42 --ss euler_a

`#` lines and blank lines are skipped. Defaults and limits are sd-scripts' (`line_to_prompt_dict` and
`sample_image_inference` in library/train_util.py): 512x512 rounded down to a multiple of 8 (at least 64),
30 steps clamped to 1-1000, CFG 7.5, a random seed, the run's sampler. Where Kohya logs a bad value or an
unknown option and carries on, we refuse with the line number, before training starts.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

from loratrainer.errors import UserError
from loratrainer.config.samplers import canonical_sampler
from loratrainer.messages import Msg, MsgError, define

define({
    "prompts.at_line": "{source}, line {line}: {reason}",
    "prompts.size": "must be between 1 and {max} pixels, got {value}",
    "prompts.whole": "must be a whole number, got {value!r}",
    "prompts.cfg_number": "must be a number such as 7.5, got {value!r}",
    "prompts.cfg_negative": "must be a number of 0 or more, got {value!r}",
    "prompts.seed": "must be between 0 and {max}, got {value}",
    "prompts.unknown_option": "unknown option --{option} (known: {known})",
    "prompts.needs_value": "--{option} needs a value ({what})",
    "prompts.bad_value": "--{option} ({what}) {reason}",
    "prompts.file_missing": "the prompt file {path} does not exist (write the prompts here, or fix the path)",
    "prompts.what.n": "negative prompt", "prompts.what.w": "width", "prompts.what.h": "height",
    "prompts.what.s": "steps", "prompts.what.l": "CFG scale", "prompts.what.d": "seed", "prompts.what.ss": "sampler",
})

MAX_SIZE = 8192  # the largest side the config accepts for training images
MAX_SEED = 2**64 - 1  # torch.Generator.manual_seed's range


@dataclass(frozen=True)
class SamplePrompt:
    prompt: str
    negative_prompt: str = ""
    width: int = 512
    height: int = 512
    steps: int = 30
    cfg_scale: float = 7.5
    seed: int | None = None  # None = random: drawn once per run and recorded with every image
    sampler: str | None = None  # a canonical sampler name; None = the run's sample_sampler
    line: int = 0  # 1-based line in the prompt text, for messages


class SamplePromptError(UserError):
    def __init__(self, line: int, message: Msg, source: str = "sample_prompts"):
        super().__init__(Msg.of("prompts.at_line", source=source, line=line, reason=message))
        self.line = line


def _size(value: str) -> int:
    pixels = _whole(value)
    if not 1 <= pixels <= MAX_SIZE:
        raise MsgError(Msg.of("prompts.size", max=MAX_SIZE, value=value))
    return max(64, pixels - pixels % 8)  # the VAE works in 8-pixel cells


def _whole(value: str) -> int:
    if not re.fullmatch(r"[+-]?\d+", value):
        raise MsgError(Msg.of("prompts.whole", value=value))
    return int(value)


def _steps(value: str) -> int:
    return max(1, min(1000, _whole(value)))


def _cfg(value: str) -> float:
    try:
        scale = float(value)
    except ValueError:
        raise MsgError(Msg.of("prompts.cfg_number", value=value)) from None
    if not math.isfinite(scale) or scale < 0:
        raise MsgError(Msg.of("prompts.cfg_negative", value=value))
    return scale


def _seed(value: str) -> int:
    seed = _whole(value)
    if not 0 <= seed <= MAX_SEED:
        raise MsgError(Msg.of("prompts.seed", max=MAX_SEED, value=value))
    return seed


def _sampler(value: str) -> str:
    try:
        return canonical_sampler(value)
    except UserError as exc:
        if exc.msg is None:  # canonical_sampler's refusals are coded; anything else goes up as it came
            raise
        raise MsgError(exc.msg) from None


# option -> (SamplePrompt field, value parser, what it is for messages)
# option letter -> (SamplePrompt field, parser returning that field's type, what the option is)
OPTIONS: dict[str, tuple[str, Callable[[str], Any], str]] = {
    "n": ("negative_prompt", str, "negative prompt"),
    "w": ("width", _size, "width"),
    "h": ("height", _size, "height"),
    "s": ("steps", _steps, "steps"),
    "l": ("cfg_scale", _cfg, "CFG scale"),
    "d": ("seed", _seed, "seed"),
    "ss": ("sampler", _sampler, "sampler"),
}
_OPTION = re.compile(r"([A-Za-z]+)(?:\s+(.*))?", re.S)


def parse_line(text: str, line: int = 1, source: str = "sample_prompts") -> SamplePrompt:
    """One prompt line (not a comment) -> SamplePrompt; a bad option is a SamplePromptError naming the line."""
    parts = (" " + text if text.startswith("--") else text).split(" --")
    prompt = SamplePrompt(prompt=parts[0].strip(), line=line)
    for part in parts[1:]:
        m = _OPTION.fullmatch(part.strip())
        name = m.group(1).lower() if m else ""
        if m is None or name not in OPTIONS:
            known = " ".join(f"--{o}" for o in OPTIONS)
            raise SamplePromptError(line, Msg.of("prompts.unknown_option", option=part.strip().split(" ")[0], known=known), source)
        field, parse, _ = OPTIONS[name]
        value = (m.group(2) or "").strip()
        what = Msg.of(f"prompts.what.{name}")
        if not value:
            raise SamplePromptError(line, Msg.of("prompts.needs_value", option=name, what=what), source)
        try:
            prompt = replace(prompt, **{field: parse(value)})
        except ValueError as exc:
            reason = exc.msg if isinstance(exc, MsgError) else str(exc)
            raise SamplePromptError(line, Msg.of("prompts.bad_value", option=name, what=what, reason=reason), source) from None
    return prompt


def parse_prompts(text: str, source: str = "sample_prompts") -> list[SamplePrompt]:
    """Every prompt of a Kohya prompt text, in order; comments and blank lines are skipped."""
    prompts = []
    for number, raw in enumerate(text.lstrip("\ufeff").splitlines(), start=1):
        line = raw.strip()
        if line and not line.startswith("#"):
            prompts.append(parse_line(line, number, source))
    return prompts


def load_prompts(setting: str) -> list[SamplePrompt]:
    """The sample_prompts setting: the prompt text itself, or (one line naming an existing file) a prompt file."""
    value = setting.strip()
    if value and "\n" not in value and " --" not in value:
        path = Path(value).expanduser()
        if path.suffix.lower() == ".txt" and path.is_file():
            return parse_prompts(path.read_text(encoding="utf-8-sig"), source=str(path))
        if path.suffix.lower() == ".txt":  # a Kohya config's prompt file missing here: never sample its path as a prompt
            raise SamplePromptError(1, Msg.of("prompts.file_missing", path=str(path)))
    return parse_prompts(setting)
