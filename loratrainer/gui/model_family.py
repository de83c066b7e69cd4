"""What the Training tab says next to the base model box about the model's family, and the family's defaults it
offers (issue 21: the family follows the model). The family is read from the model's own weights or diffusers
config (launch.input_checks.model_family_of), never from its file name. Nothing the user typed is changed by
choosing a model: the SDXL defaults are a button the user presses, and the note says which value differs."""

from __future__ import annotations

# sd-scripts trains SD1.5 at 512 and SDXL at 1024 (kohya-ss/sd-scripts, its SDXL training notes: "The default
# resolution of SDXL is 1024x1024"); the bucket
# range is the Kohya GUI's on-screen one (min 256, max 2048) for both, which its SDXL presets keep too
FAMILY_DEFAULTS: dict[str, dict[str, object]] = {
    "sd15": {"buckets.max_resolution": "512,512", "buckets.min_bucket_reso": 256, "buckets.max_bucket_reso": 2048},
    "sdxl": {"buckets.max_resolution": "1024,1024", "buckets.min_bucket_reso": 256, "buckets.max_bucket_reso": 2048},
}


def family_of(path: str | None) -> str | None:
    from loratrainer.launch.input_checks import model_family_of

    try:
        return model_family_of(path or "")
    except (OSError, ValueError):
        return None


def _same_resolution(a: str, b: str) -> bool:
    norm = lambda s: ",".join(str(s).replace(" ", "").split(",") * (1 if "," in str(s) else 2))  # noqa: E731 ("1024" = 1024,1024)
    return norm(a) == norm(b)


def family_note(family: str | None, resolution: str, t) -> str:
    """The line added under the model's own check: which family, the resolution it trains at, where the memory
    table is; empty for an unknown family (a hub id, a .ckpt: the trainer reads it)."""
    if family == "sdxl":
        note = t("check.model.sdxl")
        wanted = str(FAMILY_DEFAULTS["sdxl"]["buckets.max_resolution"])
        if not _same_resolution(resolution, wanted):
            note += " " + t("check.model.resolution_differs", resolution=resolution, family="SDXL", wanted=wanted)
        return note
    if family == "sd15":
        wanted = str(FAMILY_DEFAULTS["sd15"]["buckets.max_resolution"])
        note = t("check.model.sd15")
        if not _same_resolution(resolution, wanted):
            note += " " + t("check.model.resolution_differs", resolution=resolution, family="SD1.5", wanted=wanted)
        return note
    return ""


def defaults_differ(family: str | None, values: dict[str, object]) -> bool:
    """Whether the family's defaults would change anything on the page (the button is shown only then)."""
    if family not in FAMILY_DEFAULTS:
        return False
    for path, wanted in FAMILY_DEFAULTS[family].items():
        value = values.get(path)
        same = _same_resolution(str(value), str(wanted)) if path == "buckets.max_resolution" else value == wanted
        if not same:
            return True
    return False
