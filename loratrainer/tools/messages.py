"""Every error the LoRA tools can show, as coded messages (loratrainer/messages.py): English here, Korean as
`msg.lora_tools.<code>` in loratrainer/i18n/ko.json. The CLI prints the English sentence; the GUI runs the tool
with --progress-json, reads the code and parameters from its error line and says it in the page's language.

No torch here (the GUI imports this module to know the codes).
"""

from __future__ import annotations

from loratrainer.messages import Msg, define

define({
    # inputs
    "lora_tools.lora_missing": "The LoRA file {path} does not exist.",
    "lora_tools.lora_not_regular": "{path} is not a regular file (a pipe, a device or a socket); choose the LoRA .safetensors file itself.",
    "lora_tools.lora_non_finite": "{name}: module {module} holds NaN or infinite values (a diverged training); nothing was written. Use an earlier file of that run.",
    "lora_tools.module_empty": "{name}: module {module} has rank 0 (no factors); the file is damaged.",
    "lora_tools.module_alpha_shape": "{name}: the alpha of module {module} has shape {shape} instead of one number; the file is damaged.",
    "lora_tools.model_non_finite": "The model {path} holds NaN or infinite values in {key}; nothing was written.",
    "lora_tools.lora_folder": "{path} is a folder; choose the LoRA .safetensors file inside it.",
    "lora_tools.lora_unreadable": "The LoRA file {path} cannot be read ({detail}); it may be incomplete. Download or save it again.",
    "lora_tools.model_missing": "The model {path} does not exist.",
    "lora_tools.unreadable_model": "The model file {path} cannot be read ({detail}); it may be an incomplete download.",
    "lora_tools.component_missing": "{folder} holds no weights file (diffusion_pytorch_model.safetensors, model.safetensors or .bin); choose a complete diffusers folder.",
    "lora_tools.not_a_model_folder": "{path} is not a diffusers model folder (it needs unet/ and text_encoder/); choose the folder with model_index.json or a single-file checkpoint.",
    "lora_tools.sdxl_conv": "{path} is an SDXL model: extracting LoCon's 3x3 convolutions (--conv-rank) from SDXL is not supported; extract without --conv-rank",
    "lora_tools.sdxl_to_diffusers": "{path} is an SDXL single file: merge-into --diffusers from an SDXL single file is not supported; write a single file (without --diffusers), or start from the model's diffusers folder",
    "lora_tools.module_missing": "{path} has no weight for {module}; it is not a complete SD1.5 model.",
    "lora_tools.module_shape": "{module} has shape {shape} in {path} but SD1.5's is {expected}: it is not an SD1.5 model.",
    "lora_tools.checkpoint_lacks": "{path} lacks {count} weights of SD1.5 (e.g. {key}); it is not a complete SD1.5 checkpoint.",
    # module kinds
    "lora_tools.lycoris_file": "{name} is a LyCORIS {kinds} file; {tool} works on LoRA/LoCon factors (lora_down/lora_up) only, as Kohya's merge_lora, svd_merge_lora and resize_lora scripts do. Load it beside the model in A1111 or ComfyUI (both apply LoHa/LoKr themselves), or bake it into a checkpoint with LyCORIS's tools/merge.py.",
    "lora_tools.no_lora_layout": "{name} holds no LoRA layout this program knows (no lora_down/lora_up or lora_A/lora_B keys); it is not a LoRA file.",
    "lora_tools.unsupported_module": "{name}: module {module} is a {what} module; this tool handles plain LoRA and LoCon modules (lora_down/lora_up) only.",
    "lora_tools.module_lacks_factor": "{name}: module {module} lacks its {factor} weight; the file is damaged.",
    "lora_tools.module_rank_mismatch": "{name}: module {module} has rank {down} in lora_down but {up} in lora_up; the file is damaged.",
    # fitting together
    "lora_tools.lora_other_family": "{lora} adapts {count} modules that {model} does not have (e.g. {module}): it was made for another model family.",
    "lora_tools.lora_shape": "{lora}: {module} has shape {shape} but the model's weight is {expected}: the LoRA was made for another model.",
    "lora_tools.loras_differ": "{module} has shape {shape} in {lora} but {other} in another file: these LoRAs were made for different models.",
    "lora_tools.models_differ": "{module} has shape {base_shape} in the base model but {tuned_shape} in the tuned model: they are not the same architecture.",
    "lora_tools.nothing_to_extract": "The two models differ by less than {min_diff} in every module; there is no LoRA to extract (lower the minimum difference if the fine-tune is that small).",
    # options
    "lora_tools.no_loras": "Give at least one LoRA file.",
    "lora_tools.rank_below_one": "The rank ({option}) must be at least 1.",
    "lora_tools.rank_or_dynamic": "Give a rank (--rank R), or a dynamic rule (--dynamic METHOD --param X, optionally with --rank as the cap).",
    "lora_tools.param_without_dynamic": "--param goes with --dynamic sv_ratio|sv_fro|sv_cumulative.",
    "lora_tools.bad_dynamic": "The dynamic rule must be one of {methods}.",
    "lora_tools.bad_param": "The rule parameter is required with a dynamic rule: a ratio above 0 for sv_ratio (e.g. 8), a fraction between 0 and 1 for sv_fro and sv_cumulative (e.g. 0.9).",
    "lora_tools.bad_clamp": "--clamp-quantile must be above 0 and at most 1 (1 = no clamping).",
    # outputs
    "lora_tools.output_exists": "{path} exists; not overwriting it. Choose another output name.",
    "lora_tools.output_appeared": "{path} appeared while writing; not overwriting it.",
    "lora_tools.output_not_safetensors": "The output {name} must end in .safetensors (the checkpoint is written as safetensors).",
    "lora_tools.folder_needs_diffusers_output": "{path} is a diffusers folder; write the result as a diffusers folder (--diffusers OUT_DIR) or start from a single-file model.",
    "lora_tools.non_finite": "The result holds NaN or infinite values in {module}; nothing was written.",
    "lora_tools.file_system": "The file system refused: {detail}. Nothing was written.",
    "lora_tools.cancelled": "Cancelled; no output file was written.",
})

LYCORIS_KINDS = {"loha": "LoHa", "lokr": "LoKr", "full": "full-weight", "ia3": "IA3", "glora": "GLoRA"}


def tool_error(code: str, **params) -> Msg:
    """The coded message `lora_tools.<code>`; parameters are plain strings and numbers (they travel as JSON)."""
    return Msg.of(f"lora_tools.{code}", **params)


def message_json(msg: Msg) -> dict:
    """A message as JSON: {"code", "params"}, a parameter that is itself a message as {"msg": {...}}."""
    return {"code": msg.code, "params": {k: {"msg": message_json(v)} if isinstance(v, Msg) else v
                                         for k, v in msg.params.items()}}


def message_from_json(data: dict) -> Msg | None:
    """message_json's inverse; None when `data` is not a message this program defines (another version's)."""
    from loratrainer.messages import ENGLISH

    try:
        params = {k: (message_from_json(v["msg"]) if isinstance(v, dict) else v) for k, v in data["params"].items()}
        if data["code"] not in ENGLISH or any(v is None for v in params.values()):
            return None
        return Msg(data["code"], params)
    except (KeyError, TypeError, AttributeError):
        return None


def refuse_lycoris(f, tool: str) -> None:
    """Merge, resize and merge-into compute with lora_down/lora_up factors. sd-scripts networks/resize_lora.py,
    svd_merge_lora.py and merge_lora.py read only those keys (a LoHa/LoKr module is skipped without a word, which
    would write a LoRA missing those modules), and LyCORIS has no tool that merges or resizes LoHa/LoKr files
    into a LoRA (its tools/merge.py bakes one into a checkpoint); so such a file is refused, saying what to do."""
    from loratrainer.errors import UserError

    if f.format == "unknown":
        raise UserError(tool_error("no_lora_layout", name=f.path.name))
    if f.format not in ("kohya", "diffusers-peft"):
        kinds = sorted({LYCORIS_KINDS.get(m.kind, m.kind) for m in f.modules.values() if m.kind != "lora"}) or [f.format]
        raise UserError(tool_error("lycoris_file", name=f.path.name, kinds="/".join(kinds), tool=tool))
