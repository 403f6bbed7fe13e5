"""PyTorch modules and Keras files through the registry: stored safely, loaded, predicted."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from shipyard.errors import InvalidInputError, UntrustedArtifactError
from shipyard.registry import Registry
from shipyard.settings import Settings

torch = pytest.importorskip("torch")


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    return Registry(settings=Settings.load(home=tmp_path / "home"))


class TwoHeads(torch.nn.Module):  # type: ignore[misc,name-defined]
    """Two inputs, two outputs: exercises naming and multi-tensor export."""

    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Linear(4, 8)
        self.b = torch.nn.Linear(2, 8)
        self.head = torch.nn.Linear(8, 3)

    def forward(self, x: Any, z: Any) -> Any:
        hidden = torch.relu(self.a(x) + self.b(z))
        return torch.softmax(self.head(hidden), dim=-1), hidden.sum(dim=1)


def mlp() -> Any:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3)).eval()


def test_module_is_stored_as_onnx_plus_safetensors_and_matches(registry: Registry) -> None:
    net = mlp()
    version = registry.push("net", net, sample_input=torch.randn(4, 4))
    assert version.format == "onnx" and version.framework == "pytorch"
    assert sorted(str(f["path"]) for f in version.files) == ["model.onnx", "weights.safetensors"]
    assert version.signature.inputs[0].shape == (-1, 4)
    assert version.extra["parity_max_abs_diff"] < 1e-4
    x = np.random.default_rng(0).normal(size=(7, 4)).astype(np.float32)  # a batch size not exported
    with registry.load("net") as model:
        (out,) = model.predict(x).values()
    np.testing.assert_allclose(out, net(torch.from_numpy(x)).detach().numpy(), rtol=1e-4, atol=1e-5)


def test_weights_file_holds_the_state_dict(registry: Registry) -> None:
    from safetensors.torch import load_file

    net = mlp()
    version = registry.push("net", net, sample_input=torch.randn(2, 4))
    weights = load_file(str(registry.artifact_path(version) / "weights.safetensors"))
    assert set(weights) == set(net.state_dict())


def test_module_with_two_inputs_and_outputs(registry: Registry) -> None:
    torch.manual_seed(0)
    net = TwoHeads().eval()
    version = registry.push("two", net, sample_input={"x": torch.randn(3, 4), "z": torch.randn(3, 2)})
    assert [t.name for t in version.signature.inputs] == ["x", "z"]
    assert len(version.signature.outputs) == 2
    with registry.load("two") as model:
        outputs = model.predict({"x": np.ones((2, 4), np.float32), "z": np.ones((2, 2), np.float32)})
    assert [o.shape for o in outputs.values()] == [(2, 3), (2,)]


def test_a_batch_of_one_sample_is_refused(registry: Registry) -> None:
    with pytest.raises(InvalidInputError, match="at least 2 rows"):
        registry.push("net", mlp(), sample_input=torch.randn(1, 4))
    assert registry.list_models() == []


def test_module_without_sample_input_is_refused(registry: Registry) -> None:
    with pytest.raises(InvalidInputError, match="needs sample_input"):
        registry.push("net", mlp())


def test_torch_save_checkpoint_needs_trust(registry: Registry, tmp_path: Path) -> None:
    path = tmp_path / "net.pt"
    torch.save(mlp(), path)
    with pytest.raises(UntrustedArtifactError, match=r"--trust"):
        registry.push("net", path)
    version = registry.push("net", path, trust=True, sample_input=[[0.1, 0.2, 0.3, 0.4], [1, 2, 3, 4]])
    assert version.trusted and version.framework == "pytorch"


def test_state_dict_checkpoint_is_explained(registry: Registry, tmp_path: Path) -> None:
    path = tmp_path / "weights.pt"
    torch.save(mlp().state_dict(), path)
    with pytest.raises(InvalidInputError, match=r"not an nn\.Module"):
        registry.push("net", path, trust=True, sample_input=[[0.0] * 4, [1.0] * 4])


# Keras' own model.save() converts its variables with np.array(), whose __array__ lacks numpy
# 2's `copy` keyword: a warning inside Keras, not in what Shipyard does.
KERAS_SAVE_WARNING = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)


@pytest.fixture(scope="module")
def keras() -> Any:
    os.environ.setdefault("KERAS_BACKEND", "torch")
    return pytest.importorskip("keras")


@pytest.fixture
def keras_model(keras: Any) -> Any:
    keras.utils.set_random_seed(0)
    inputs = keras.Input(shape=(4,), name="features")
    hidden = keras.layers.Dense(8, activation="relu")(inputs)
    return keras.Model(inputs, keras.layers.Dense(3, activation="softmax", name="probs")(hidden))


@KERAS_SAVE_WARNING
def test_keras_file_loads_in_safe_mode_and_predicts(
    registry: Registry, keras_model: Any, tmp_path: Path
) -> None:
    path = tmp_path / "model.keras"
    keras_model.save(path)
    version = registry.push("k", path)
    assert version.format == "keras" and not version.trusted
    assert version.signature.describe() == "inputs (features: FP32[?, 4]) -> outputs (probs: FP32[?, 3])"
    x = np.random.default_rng(1).random((5, 4)).astype(np.float32)
    with registry.load("k") as model:
        got = model.predict(x)["probs"]
    expected = keras_model(torch.from_numpy(x), training=False).detach().numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


@KERAS_SAVE_WARNING
def test_keras_lambda_layer_needs_trust(registry: Registry, keras: Any, tmp_path: Path) -> None:
    model = keras.Sequential([keras.Input((4,)), keras.layers.Lambda(lambda t: t * 2)])
    path = tmp_path / "lambda.keras"
    model.save(path)
    with pytest.raises(UntrustedArtifactError, match=r"--trust"):
        registry.push("lam", path)
    version = registry.push("lam", path, trust=True)
    assert version.trusted
    with registry.load("lam") as loaded:
        (out,) = loaded.predict(np.ones((1, 4), np.float32)).values()
    np.testing.assert_allclose(out, 2 * np.ones((1, 4)))


@KERAS_SAVE_WARNING
@pytest.mark.filterwarnings("ignore::UserWarning")  # Keras warns that HDF5 is a legacy format
def test_legacy_h5_is_detected_from_content(registry: Registry, keras_model: Any, tmp_path: Path) -> None:
    path = tmp_path / "model.h5"
    keras_model.save(path)
    renamed = tmp_path / "weights.bin"  # the name says nothing: the content does
    path.rename(renamed)
    version = registry.push("k", renamed)
    assert version.format == "keras-h5"
    with registry.load("k") as model:
        assert model.predict(np.zeros((2, 4), np.float32))["probs"].shape == (2, 3)
