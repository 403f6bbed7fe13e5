"""Keras models at push: loaded in safe mode first (trust is needed only when that refuses),
and their signature read from the model's input and output tensors."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

from shipyard.errors import UntrustedArtifactError
from shipyard.packaging.packaged import Packaged
from shipyard.runtimes.keras import FILES, import_keras, load_keras
from shipyard.tensors import datatype_of
from shipyard.types import Signature, TensorSpec


def _spec(name: str, tensor: Any) -> TensorSpec:
    shape = tuple(-1 if d is None else int(d) for d in tensor.shape)
    return TensorSpec(name, datatype_of(np.dtype(str(tensor.dtype))), shape)


def _signature(model: Any) -> Signature:
    inputs = tuple(_spec(t.name, t) for t in model.inputs)
    names = list(getattr(model, "output_names", None) or [f"output_{i}" for i in range(len(model.outputs))])
    return Signature(inputs, tuple(_spec(n, t) for n, t in zip(names, model.outputs, strict=True)))


def package_keras(source: Path, dest: Path, fmt: str, trust: bool) -> Packaged:
    """Copy a .keras/.h5 file after loading it, in safe mode unless that refuses and `trust`."""
    keras = import_keras()
    target = dest / FILES[fmt]
    shutil.copyfile(source, target)
    try:
        model, needs_trust = load_keras(target, False), False
    except UntrustedArtifactError:
        if not trust:
            raise
        model, needs_trust = load_keras(target, True), True
    import torch

    versions = {"keras": keras.__version__, "torch": torch.__version__.split("+")[0]}
    extra = {"file": FILES[fmt], "backend": keras.backend.backend()}
    return Packaged(fmt, "keras", _signature(model), versions, extra, needs_trust=needs_trust)
