"""The launcher: what the GUI and the CLI process does to start, follow, stop and queue runs, and the names and
checks the trainer shares with it. No module here imports torch at import time, and none imports train/: the
trainer runs in its own process (`accelerate launch ... -m loratrainer.train.entry`) and talks back through the
run folder (run_files)."""
