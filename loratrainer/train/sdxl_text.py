"""Captions -> SDXL's text conditioning, as sd-scripts' sdxl_train_network.py computes it
(library/strategy_sdxl.py SdxlTextEncodingStrategy, library/strategy_base.py TokenizeStrategy._get_input_ids):

- CLIP ViT-L (text_encoder) and OpenCLIP ViT-bigG (text_encoder_2) each give their penultimate hidden states,
  not normed (sd-scripts: hidden_states[11] of ViT-L, which is hidden_states[-2] at full size, and [-2] of bigG);
  the UNet gets them concatenated on the width (768 + 1280 = 2048 at full size);
- the pooled output is text_encoder_2's projection of the last hidden state at the first EOS token (sd-scripts'
  _pool_workaround), of the first 75-token chunk when max_token_length is 150 or 225 (`pool2[::n_size]`);
- 150/225 tokens are split into 75-token windows each given BOS/EOS; for text_encoder_2, whose pad token is not its
  EOS, a window that ends mid-text gets an EOS and a window that starts with padding gets an EOS first.

clip_skip does not apply to SDXL (sd-scripts warns and ignores it).
"""

from __future__ import annotations

import torch

from loratrainer.train.text import CHUNK, tokenize

WINDOW = CHUNK + 2  # 77


def tokenize_open_clip(tokenizer, captions: list[str], max_token_length: int) -> torch.Tensor:
    """text_encoder_2's token ids as (batch, chunks, 77): sd-scripts' 'v2 or SDXL' windows."""
    if tokenizer.pad_token_id == tokenizer.eos_token_id:  # a tokenizer padding with EOS chunks as CLIP ViT-L's does
        return tokenize(tokenizer, captions, max_token_length)
    ids = tokenizer(captions, padding="max_length", truncation=True, max_length=max_token_length + 2, return_tensors="pt").input_ids
    if max_token_length == CHUNK:
        return ids[:, None]
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    windows = []
    for i in range(1, max_token_length + 1, CHUNK):
        window = torch.cat([ids[:, :1], ids[:, i : i + CHUNK], ids[:, -1:]], dim=1)
        ends_in_text = (window[:, -2] != eos) & (window[:, -2] != pad)
        window[ends_in_text, -1] = eos
        starts_with_pad = window[:, 1] == pad
        window[starts_with_pad, 1] = eos
        windows.append(window)
    return torch.stack(windows, dim=1)


def _merge_windows(hidden: torch.Tensor, batch: int, chunks: int) -> torch.Tensor:
    """(batch * chunks, 77, width) -> (batch, 2 + 75 x chunks, width): the first BOS, every window's 75 tokens, the
    last window's last token."""
    hidden = hidden.reshape(batch, chunks * WINDOW, -1)
    if chunks == 1:
        return hidden
    parts = [hidden[:, :1]] + [hidden[:, i * WINDOW + 1 : (i + 1) * WINDOW - 1] for i in range(chunks)] + [hidden[:, -1:]]
    return torch.cat(parts, dim=1)


def pooled_at_eos(text_encoder_2, last_hidden: torch.Tensor, ids: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """sd-scripts' _pool_workaround: the projection of the hidden state at the first EOS (argmax of the EOS mask; 0
    when there is none), not CLIP's own pooling at the largest token id."""
    index = torch.argmax((ids == eos_token_id).int(), dim=1).to(last_hidden.device)
    pooled = last_hidden[torch.arange(last_hidden.shape[0], device=last_hidden.device), index]
    projection = text_encoder_2.text_projection
    return projection(pooled.to(projection.weight.dtype)).to(last_hidden.dtype)


def encode_sdxl(text_encoder, text_encoder_2, tokenizer, tokenizer_2, captions: list[str], max_token_length: int, device,
                unwrapped_text_encoder_2=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(hidden states of text_encoder, of text_encoder_2, pooled): (b, 2 + 75n, w1), (b, 2 + 75n, w2), (b, proj)."""
    ids1 = tokenize(tokenizer, captions, max_token_length)
    ids2 = tokenize_open_clip(tokenizer_2, captions, max_token_length)
    b, n, _ = ids1.shape
    flat1, flat2 = ids1.reshape(b * n, WINDOW).to(device), ids2.reshape(b * n, WINDOW).to(device)
    hidden1 = text_encoder(flat1, output_hidden_states=True).hidden_states[-2]
    out2 = text_encoder_2(flat2, output_hidden_states=True)
    hidden2 = out2.hidden_states[-2]
    pooled = pooled_at_eos(unwrapped_text_encoder_2 or text_encoder_2, out2.last_hidden_state, flat2, tokenizer_2.eos_token_id)
    return _merge_windows(hidden1, b, n), _merge_windows(hidden2, b, n), pooled[::n]
