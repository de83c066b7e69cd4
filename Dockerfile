# loratrainer on a rented Linux GPU machine, the GUI in your own browser (docs/remote.md).
# Not a second install path: it installs and starts with the README's own command, ./gui.sh (tests/test_remote.py
# checks it): at build time `./gui.sh --help` runs the install (scripts/bootstrap.py) and then only prints
# `loratrainer gui --help`, which also proves the installed command starts.
#
#   docker build -t loratrainer .
#   docker run --gpus all -p 7860:7860 -v lora-data:/data \
#     -e LORATRAINER_GUI_USERNAME=me -e LORATRAINER_GUI_PASSWORD='a long passphrase' \
#     -e LORATRAINER_GUI_PUBLIC_NAMES=203.0.113.7 loratrainer
#
# PyPI's Linux PyTorch wheels bring their own CUDA libraries: the image needs only the driver (from the host,
# --gpus all) and a Python; the CUDA runtime image is the NVIDIA base with the container toolkit's settings.
FROM nvidia/cuda:12.8.1-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/*

# a user of its own; projects, runs, the queue and the GUI's state live in the /data volume (its home)
RUN useradd --create-home --home-dir /data --uid 10001 lora \
 && mkdir /opt/loratrainer && chown lora:lora /opt/loratrainer
WORKDIR /opt/loratrainer
COPY --chown=lora:lora . .
USER lora

# the install: the README's set-up command
RUN ./gui.sh --help

ENV HOME=/data
VOLUME ["/data"]
EXPOSE 7860
# ./gui.sh: the README's command (its bootstrap finds everything installed and returns at once). The login comes
# from the environment: LORATRAINER_GUI_PASSWORD is read by `loratrainer gui` itself (never on a command line),
# and without a user name and password --listen refuses to start.
CMD ["sh", "-c", "exec ./gui.sh --listen 0.0.0.0 --port 7860 --no-browser --username \"$LORATRAINER_GUI_USERNAME\""]
