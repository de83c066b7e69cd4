"""Captions -> text-encoder hidden states: Kohya's 75-token chunking, clip skip, and an output cache.

For max_token_length 150/225 a caption is tokenized to that length, split into 75-token windows that each
get BOS/EOS, encoded separately and concatenated (sd-scripts' get_hidden_states for SD1.x).
"""

from __future__ import annotations

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
    """Hidden states per caption text, for a frozen text encoder and static captions."""

    def __init__(self) -> None:
        self._states: dict[str, torch.Tensor] = {}

    def get(self, captions: list[str], compute) -> torch.Tensor:
        missing = [c for c in dict.fromkeys(captions) if c not in self._states]
        if missing:
            for caption, state in zip(missing, compute(missing)):
                self._states[caption] = state
        return torch.stack([self._states[c] for c in captions])
