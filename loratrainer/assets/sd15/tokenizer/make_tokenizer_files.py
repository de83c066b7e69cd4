"""Rebuild vocab.json and merges.txt of openai/clip-vit-large-patch14 (the SD1.5 tokenizer) from CLIP's BPE file.

Run once by a maintainer; the outputs are committed so that loading a local model never needs the hub (Kohya's
"Can't load tokenizer for 'openai/clip-vit-large-patch14'" on offline machines). The source file
bpe_simple_vocab_16e6.txt.gz ships inside open_clip_torch (and OpenAI's CLIP repo); the construction below is
CLIP's own, from openai/CLIP clip/simple_tokenizer.py: byte chars, byte chars + '</w>', merges 1..48894 joined,
then the two special tokens = 49408 entries.

    python loratrainer/assets/sd15/tokenizer/make_tokenizer_files.py path/to/bpe_simple_vocab_16e6.txt.gz
"""

import gzip
import json
import sys
from pathlib import Path




def bytes_to_unicode() -> dict[int, str]:
    """CLIP's (and GPT-2's) reversible byte -> printable character table, in CLIP's order."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


N_MERGES = 49152 - 256 - 2  # CLIP keeps the first 48894 merges so that the vocabulary is 49408


def build(bpe_gz: Path, out_dir: Path) -> None:
    lines = gzip.open(bpe_gz).read().decode("utf-8").split("\n")
    merges = [tuple(m.split()) for m in lines[1 : N_MERGES + 1]]  # line 0 is a version header
    byte_chars = list(bytes_to_unicode().values())
    vocab = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == 49408, len(vocab)
    (out_dir / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False), "utf-8")
    # transformers' merges.txt has a '#version' header line, as on the hub
    (out_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n", "utf-8")


if __name__ == "__main__":
    build(Path(sys.argv[1]), Path(__file__).parent)
