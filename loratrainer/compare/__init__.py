"""Choosing the best epoch: what a run saved (runs.py), a prompt x epoch grid of its training samples
(sample_grid.py), an epoch x LoRA-weight grid rendered afterwards (weight_grid.py, torch; started by the GUI in a
process of its own through process.py) and the labelled-grid drawing they share (canvas.py).

Only weight_grid.py imports torch/diffusers; the GUI imports the other modules.
"""
