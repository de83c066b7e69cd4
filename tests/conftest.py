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
