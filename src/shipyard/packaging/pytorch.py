"""PyTorch modules, stored safely: an ONNX export (served by onnxruntime) plus the weights as
safetensors. A pickled module is never stored; a `torch.save` checkpoint is read only with
--trust, and then exported the same way."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from shipyard.errors import InvalidInputError, MissingDependencyError, UntrustedArtifactError
from shipyard.packaging.onnx import package_onnx
from shipyard.packaging.packaged import Packaged
from shipyard.runtimes.base import one_line, quiet
from shipyard.runtimes.onnx import ONNX_FILE, ONNX_OPSET

WEIGHTS_FILE = "weights.safetensors"
_PARITY_RTOL = 1e-4
_PARITY_ATOL = 1e-5


def is_module(obj: Any) -> bool:
    return any(c.__module__.startswith("torch.nn") and c.__name__ == "Module" for c in type(obj).__mro__)


def import_torch(purpose: str = "PyTorch models") -> Any:
    """torch, or a clear error naming the extra that installs it."""
    try:
        import torch
    except ModuleNotFoundError as exc:
        raise MissingDependencyError("torch", "torch", purpose) from exc
    return torch


def _named_inputs(sample_input: Any) -> dict[str, Any]:
    torch = import_torch()
    if sample_input is None:
        raise InvalidInputError(
            "pushing a PyTorch module needs sample_input (a tensor, a tuple of tensors or a dict "
            "of name → tensor) with a batch of at least 2 rows",
            field="sample_input",
        )
    if isinstance(sample_input, dict):
        named = dict(sample_input)
    elif (
        isinstance(sample_input, (tuple, list))
        and sample_input
        and all(isinstance(t, torch.Tensor) for t in sample_input)
    ):
        named = {f"input_{i}" if len(sample_input) > 1 else "input": t for i, t in enumerate(sample_input)}
    else:
        named = {"input": sample_input}
    out = {}
    for name, value in named.items():
        if isinstance(value, torch.Tensor):
            tensor = value
        else:  # JSON from the CLI arrives as float64: modules are float32
            arr = np.asarray(value)
            tensor = torch.as_tensor(arr.astype(np.float32) if arr.dtype == np.float64 else arr)
        if tensor.ndim == 0 or tensor.shape[0] < 2:
            # torch.export specialises a dimension whose example size is 0 or 1.
            raise InvalidInputError(
                f"sample_input {name!r} needs a batch of at least 2 rows along axis 0 (got shape "
                f"{list(tensor.shape)}), so the batch dimension exports as dynamic",
                field="sample_input",
            )
        out[name] = tensor
    return out


def _export(module: Any, inputs: dict[str, Any], target: Path) -> str:
    """Export with dynamic batch; torch.export first, the TorchScript exporter as fallback."""
    torch = import_torch()
    args = tuple(inputs.values())
    names = list(inputs)
    # A module may name its outputs (e.g. ("label", "probabilities")); otherwise the exporter does.
    outputs = list(getattr(module, "output_names", None) or []) or None
    try:
        batch = torch.export.Dim("batch")
        with quiet():
            program = torch.onnx.export(
                module,
                args,
                None,
                input_names=names,
                output_names=outputs,
                dynamo=True,
                external_data=False,
                dynamic_shapes=tuple({0: batch} for _ in args),
                opset_version=ONNX_OPSET,
                verbose=False,
            )
            program.save(str(target), external_data=False)
        return "torch.export"
    except Exception as first:  # noqa: BLE001 -- many export failures; try the other exporter
        try:
            with quiet():
                torch.onnx.export(
                    module,
                    args,
                    str(target),
                    input_names=names,
                    output_names=outputs,
                    dynamo=False,
                    opset_version=ONNX_OPSET,
                    dynamic_axes={n: {0: "batch"} for n in names},
                )
        except Exception as second:
            raise InvalidInputError(
                f"cannot export this module to ONNX: torch.export said {first}; the TorchScript "
                f"exporter said {second}",
                field="model",
            ) from second
        return "torchscript"


def _check_parity(module: Any, inputs: dict[str, Any], target: Path) -> float:
    """Largest absolute difference between the module and its export on the sample input."""
    import onnxruntime as ort

    torch = import_torch()
    with torch.inference_mode():
        expected = module(*inputs.values())
    expected = [expected] if isinstance(expected, torch.Tensor) else list(expected)
    session = ort.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    feeds = {
        i.name: t.detach().cpu().numpy() for i, t in zip(session.get_inputs(), inputs.values(), strict=True)
    }
    got = session.run(None, feeds)
    worst = 0.0
    for want, have in zip(expected, got, strict=False):
        want_np = want.detach().cpu().numpy()
        if want_np.shape != have.shape or not np.allclose(
            have, want_np, rtol=_PARITY_RTOL, atol=_PARITY_ATOL
        ):
            diff = float(np.max(np.abs(have - want_np))) if want_np.shape == have.shape else float("inf")
            raise InvalidInputError(
                f"the ONNX export disagrees with the module on sample_input (max |Δ| = {diff:.3g}, "
                f"shapes {list(want_np.shape)} vs {list(have.shape)}); the module may depend on "
                "Python control flow",
                field="model",
            )
        worst = max(worst, float(np.max(np.abs(have - want_np))) if have.size else 0.0)
    return worst


def package_module(module: Any, dest: Path, sample_input: Any) -> Packaged:
    """An nn.Module → model.onnx (checked against the module) + weights.safetensors."""
    torch = import_torch()
    from safetensors.torch import save_file

    module = module.eval()
    inputs = _named_inputs(sample_input)
    target = dest / ONNX_FILE
    staging = dest.parent / (dest.name + ".onnx")
    try:
        exporter = _export(module, inputs, staging)
        max_diff = _check_parity(module, inputs, staging)
        packaged = package_onnx(staging, dest)
    finally:
        staging.unlink(missing_ok=True)
    assert target.is_file()
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    save_file(state, str(dest / WEIGHTS_FILE))
    versions = {**packaged.library_versions, "torch": torch.__version__.split("+")[0]}
    extra = {
        **packaged.extra,
        "exporter": exporter,
        "parity_max_abs_diff": max_diff,
        "module": f"{type(module).__module__}.{type(module).__qualname__}",
        "weights": WEIGHTS_FILE,
    }
    return Packaged("onnx", "pytorch", packaged.signature, versions, extra)


def package_checkpoint(source: Path, dest: Path, sample_input: Any, trust: bool) -> Packaged:
    """A `torch.save` file: it unpickles code, so only with --trust; a whole module is exported."""
    if not trust:
        raise UntrustedArtifactError(
            f"{source.name} is a PyTorch checkpoint made by torch.save, which unpickles code when "
            "loaded; push the nn.Module from Python (shipyard.push(name, module, sample_input=x)), "
            "or, if you trust the file, push it with --trust and --sample-input"
        )
    torch = import_torch()
    try:
        obj = torch.load(io.BytesIO(source.read_bytes()), map_location="cpu", weights_only=False)
    except Exception as exc:  # unpickling fails in whatever way the pickled code chooses
        raise InvalidInputError(f"cannot load {source.name} with torch.load: {one_line(exc)}") from exc
    if not is_module(obj):
        raise InvalidInputError(
            f"{source.name} holds a {type(obj).__name__}, not an nn.Module (a state_dict has no "
            "architecture): push the module from Python instead",
            field="path",
        )
    packaged = package_module(obj, dest, sample_input)
    extra = {**packaged.extra, "source": "torch.save checkpoint"}
    return Packaged(
        packaged.format,
        packaged.framework,
        packaged.signature,
        packaged.library_versions,
        extra,
        needs_trust=True,
    )
