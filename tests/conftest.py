"""Suite-wide test settings. Fixture builders live in their own modules (tests/datasets.py, tests/tiny_sd.py, ...)."""

import os

# Nothing in the suite may reach a model hub: tiny models are built from config by the tests themselves.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
# The explicit test mode in which the trainer honours LORATRAINER_FAULT (loratrainer/train/faults.py); a user's
# shell does not have it, so a stray LORATRAINER_FAULT there injects nothing.
os.environ.setdefault("LORATRAINER_TEST_MODE", "1")
# One OpenMP thread per process (before anything imports torch). The suite trains tiny models in this process
# (entry.train_run, setup's functions) while trainer processes it started, a GUI server or other jobs use the
# cores too; torch's default of a thread per core then makes each thread wait for the others, spinning: a tiny UNet
# step (forward and backward) took 5.6 s with 2 threads and 0.13 s with 1 on the 2-core machine at load 10. The
# trainer processes set their own count (launch.num_cpu_threads_per_process, as accelerate launch does).
os.environ.setdefault("OMP_NUM_THREADS", "1")
