"""LoRA tools: inspect, merge, merge-into (bake into a checkpoint), resize, extract (docs/lora-tools.md).

Library code for `loratrainer lora ...`; the GUI runs these in a subprocess (they import torch), never in its
own process. Every tool reads its inputs lazily (safetensors memory maps) and handles one module at a time,
and writes its output through tools.writer (streamed, atomic, never over an existing file).
"""
