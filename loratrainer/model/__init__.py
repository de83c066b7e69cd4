"""The model layer: loading (loading, checkpoint), LoRA injection (lora), Kohya's file layout (kohya_format),
saving and metadata (saving, metadata). Errors a user can fix are in errors; shipped configs in assets."""
