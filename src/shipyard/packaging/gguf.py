"""GGUF files (generative language models for llama.cpp) at push: the header is read and checked
against the file's size, llama.cpp is asked whether it can run the architecture, then the file is
copied. What the registry shows (architecture, parameters, context, quantization, chat template,
tokenizer) is recorded under the version's `extra["generative"]`."""

from __future__ import annotations

import shutil
from dataclasses import asdict
from pathlib import Path

from shipyard.errors import InvalidInputError
from shipyard.packaging.packaged import Packaged
from shipyard.runtimes.gguf_header import generative_info, read_header
from shipyard.runtimes.llama_cpp import GGUF_FILE
from shipyard.runtimes.llama_model import check_loadable, library, package_version
from shipyard.types import Signature, TensorSpec

# Text in, text out, as Triton's generate extension names them.
SIGNATURE = Signature(
    inputs=(TensorSpec("text_input", "BYTES", (-1,)),),
    outputs=(TensorSpec("text_output", "BYTES", (-1,)),),
)


def package_gguf(source: Path, dest: Path) -> Packaged:
    """Copy a GGUF file into `dest` after checking it is whole and llama.cpp can run it."""
    header = read_header(source, source.name)
    if not header.architecture:
        raise InvalidInputError(
            f"{source.name} has no general.architecture in its GGUF metadata: not a model file",
            field="path",
        )
    library()  # a missing llama-cpp-python is reported before the slower checks
    check_loadable(source, source.name)
    info = generative_info(header)
    target = dest / GGUF_FILE
    shutil.copyfile(source, target)
    return Packaged(
        format="gguf",
        framework="llama.cpp",
        signature=SIGNATURE,
        library_versions={"llama-cpp-python": package_version()},
        extra={"file": GGUF_FILE, "generative": asdict(info)},
    )
