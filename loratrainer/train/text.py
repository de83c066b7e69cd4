"""Captions -> text-encoder hidden states: Kohya's 75-token chunking, clip skip, and an output cache.

For max_token_length 150/225 a caption is tokenized to that length, split into 75-token windows that each
get BOS/EOS, encoded separately and concatenated (sd-scripts' get_hidden_states for SD1.x).
"""

from __future__ import annotations

from typing import Any

import torch

CHUNK = 75


def tokenize(tokenizer, captions: list[str], max_token_length: int) -> torch.Tensor:
    """Token ids as (batch, chunks, 77)."""
    ids = tokenizer(
        captions, padding="max_length", truncation=True, max_length=max_token_length + 2, return_tensors="pt"
    ).input_ids
    if max_token_length == CHUNK:
        return ids[:, None]
    chunks = [torch.cat([ids[:, :1], ids[:, i : i + CHUNK], ids[:, -1:]], dim=1) for i in range(1, max_token_length + 1, CHUNK)]
    return torch.stack(chunks, dim=1)


def final_layer_norm(text_encoder):
    """CLIPTextModel's final layer norm (a bare CLIPTextTransformer's too), which clip skip applies to its layer."""
    return getattr(text_encoder, "text_model", text_encoder).final_layer_norm


def encode(text_encoder, final_layer_norm, ids: torch.Tensor, clip_skip: int, device: torch.device) -> torch.Tensor:
    """Hidden states (batch, 2 + 75 x chunks, width); clip_skip n uses the n-th layer from the end, normed."""
    b, n, length = ids.shape
    out = text_encoder(ids.reshape(b * n, length).to(device), output_hidden_states=clip_skip > 1)
    if clip_skip > 1:
        hidden = final_layer_norm(out.hidden_states[-clip_skip].to(final_layer_norm.weight.dtype))
    else:
        hidden = out.last_hidden_state
    hidden = hidden.reshape(b, n * length, -1)
    if n == 1:
        return hidden
    # keep the first BOS, every window's 75 tokens and the last EOS
    parts = [hidden[:, :1]] + [hidden[:, i * length + 1 : (i + 1) * length - 1] for i in range(n)] + [hidden[:, -1:]]
    return torch.cat(parts, dim=1)


class TextCache:
    """Text-encoder outputs per caption text, for frozen text encoders and static captions. `compute(texts)`
    returns one batch-first tensor (SD1.5's hidden states) or a tuple of them (SDXL's two hidden states and pooled
    output); `get` returns the same shape for `captions`."""

    def __init__(self) -> None:
        self._states: dict[str, Any] = {}

    def __contains__(self, caption: str) -> bool:
        return caption in self._states

    def put(self, caption: str, state) -> None:
        self._states[caption] = state

    def get(self, captions: list[str], compute):
        missing = [c for c in dict.fromkeys(captions) if c not in self._states]
        if missing:
            out = compute(missing)
            rows = zip(*out) if isinstance(out, tuple) else out
            for caption, state in zip(missing, rows):
                self._states[caption] = tuple(state) if isinstance(out, tuple) else state
        first = self._states[captions[0]]
        if isinstance(first, tuple):
            return tuple(torch.stack([self._states[c][i] for c in captions]) for i in range(len(first)))
        return torch.stack([self._states[c] for c in captions])
