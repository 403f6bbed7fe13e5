"""Hugging Face causal language models at push (config whose architecture ends in `ForCausalLM`,
safetensors weights, a tokenizer): checked, and what the registry shows about a generative model
(`GenerativeInfo`: architecture, parameters, context length, chat template, tokenizer) recorded."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

from shipyard.errors import InvalidInputError
from shipyard.packaging.packaged import Packaged
from shipyard.packaging.safetensors_header import parameter_count
from shipyard.runtimes.base import one_line
from shipyard.runtimes.generation import GenerativeInfo
from shipyard.runtimes.transformers import import_transformers
from shipyard.settings import PushSettings
from shipyard.types import Signature, TensorSpec

FORMAT = "transformers-lm"
# Triton's generate extension and the V2 metadata name the text this way (as its vLLM backend does).
SIGNATURE = Signature(
    (TensorSpec("text_input", "BYTES", (-1,)),), (TensorSpec("text_output", "BYTES", (-1,)),)
)


def is_causal_lm(config: dict[str, Any]) -> bool:
    """Whether a Hugging Face config describes a decoder-only generative model."""
    return any(str(a).endswith("ForCausalLM") for a in config.get("architectures") or [])


def package_causal_lm(source: Path, dest: Path, config: dict[str, Any], limits: PushSettings) -> Packaged:
    """Copy a causal-LM folder (already checked for links, sizes and safe headers) and describe it."""
    weights = sorted(source.glob("*.safetensors"))
    if not weights:
        raise InvalidInputError(
            f"{source} is a causal language model ({config['architectures'][0]}) without safetensors "
            "weights; save it with save_pretrained(folder, safe_serialization=True)",
            field="path",
        )
    transformers = import_transformers()
    shutil.copytree(
        source, dest, symlinks=True, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".*", "README.md")
    )
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(dest), local_files_only=True)
    except (OSError, ValueError, TypeError) as exc:
        raise InvalidInputError(
            f"the tokenizer in {source} cannot be loaded: {one_line(exc)}", field="path"
        ) from exc
    template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else None
    context = int(config.get("max_position_embeddings") or config.get("n_positions") or 0)
    if context < 1:
        raise InvalidInputError(
            f"the config.json in {source} names no context length (max_position_embeddings)",
            field="path",
        )
    info = GenerativeInfo(
        architecture=str(config.get("model_type") or config["architectures"][0]),
        parameters=sum(parameter_count(w) for w in weights),
        context_length=context,
        quantization=None,
        chat_template=template,
        tokenizer=_tokenizer_kind(dest, tokenizer),
        bos_token=tokenizer.bos_token,
        eos_token=tokenizer.eos_token,
        extra={
            "vocab_size": len(tokenizer),
            "torch_dtype": str(config.get("torch_dtype") or config.get("dtype") or "float32"),
        },
    )
    extra: dict[str, Any] = {"generative": asdict(info)}  # as packaging/gguf.py records it
    import torch

    versions = {"transformers": transformers.__version__, "torch": torch.__version__.split("+")[0]}
    return Packaged(FORMAT, "transformers", SIGNATURE, versions, extra)


def _tokenizer_kind(folder: Path, tokenizer: Any) -> str:
    """The tokenizer's algorithm as llama.cpp names them where it can tell ("bpe", "unigram",
    "wordpiece"), else the tokenizer's class."""
    try:
        model = json.loads((folder / "tokenizer.json").read_text()).get("model", {})
        return str(model.get("type") or "").lower() or type(tokenizer).__name__
    except (OSError, ValueError, AttributeError):
        return type(tokenizer).__name__
