"""`python hf_from_gguf.py MODEL.gguf FOLDER`: SmolLM2 as a Hugging Face folder (safetensors,
config, tokenizer with the GGUF's chat template), converted by transformers' own GGUF loader.

Run in a process of its own: in a pytest worker that had loaded other transformers models, the
loader left the tied `lm_head` on the meta device, and saving it failed.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any


def hf_copy(gguf_file: Path, folder: Path) -> None:
    import torch

    transformers: Any = importlib.import_module("transformers")  # untyped: used as Any
    where, name = str(gguf_file.parent), gguf_file.name
    # transformers 5 can keep GGUF weights packed, which cannot be saved: ask for plain tensors
    # (older releases always dequantize and have no GgufConfig).
    unpack = {"quantization_config": transformers.GgufConfig(dequantize=True)}
    options = unpack if hasattr(transformers, "GgufConfig") else {}
    model = transformers.AutoModelForCausalLM.from_pretrained(
        where, gguf_file=name, dtype=torch.bfloat16, **options
    )
    tokenizer = transformers.AutoTokenizer.from_pretrained(where, gguf_file=name)
    assert isinstance(tokenizer.chat_template, str)  # the GGUF's, carried over by transformers
    model.save_pretrained(str(folder), safe_serialization=True)
    tokenizer.save_pretrained(str(folder))


if __name__ == "__main__":
    hf_copy(Path(sys.argv[1]), Path(sys.argv[2]))
