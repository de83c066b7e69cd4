"""The model layer: loading (components: the one entry point for either family; loading: SD1.5; sdxl: SDXL;
checkpoint, families), LoRA injection (lora, lycoris), Kohya's file layout (kohya_format; SDXL names in
sdxl_names), saving and metadata (saving, metadata). Errors a user can fix are in errors; shipped configs in assets."""
