"""`shipyard build` as a user runs it (in-process, for speed): the context it writes, what must
not be in it, the build's verification step against a tampered artifact, and each bad input."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from shipyard.cli.main import main
from shipyard.deploy import contract
from shipyard.deploy.dockerfile import VERIFY_STEPS
from shipyard.errors import ConflictError, IntegrityError
from shipyard.registry import Registry
from shipyard.settings import Settings

BIN = Path(sys.executable).parent


@pytest.fixture
def source(tmp_path: Path, skops_path: Path, onnx_path: Path) -> Path:
    """The building machine's registry: two models, an alias, a version not built, an API key."""
    home = tmp_path / "home"
    with Registry(home) as registry:
        registry.push("iris", onnx_path)
        registry.push("iris", skops_path, alias="production")
        registry.push("iris-onnx", onnx_path)
        registry.create_key("ci", ["read"])
    return home


@pytest.fixture
def wheel(tmp_path: Path) -> Path:
    """A stand-in for Shipyard's wheel: the tests here never install it."""
    path = tmp_path / "wheels" / "shipyard-0.1.0-py3-none-any.whl"
    path.parent.mkdir()
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("shipyard/__init__.py", "")
    return path


def shipyard(home: Path, *args: str | Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(["--home", str(home), *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def fake_engine(folder: Path, name: str, calls: Path, *, fails_version: bool = False) -> None:
    """A stand-in container engine that records its arguments (`version` fails: no daemon)."""
    folder.mkdir(exist_ok=True)
    fail = 'if [ "$1" = version ]; then exit 1; fi\n' if fails_version else ""
    (folder / name).write_text(f'#!/bin/sh\n{fail}echo "$@" >> {calls}\n')
    (folder / name).chmod(0o755)


def one_line_error(code: int, err: str, expected_code: int, fragment: str) -> None:
    assert code == expected_code, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert fragment in lines[0], err


def test_the_context_holds_exactly_the_versions_and_nothing_of_the_machine(
    source: Path, wheel: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "ctx"
    code, stdout, err = shipyard(
        source, "build", "iris@production", "iris-onnx", "--out", out, "--wheel", wheel, capsys=capsys
    )
    assert code == 0, err
    assert stdout.startswith(f"wrote {out}: iris:2, iris-onnx:1 for generic")
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert [f for f in files if not f.startswith("home/artifacts/")] == [
        ".dockerignore",
        "Dockerfile",
        "README.md",
        "SHA256SUMS",
        "healthcheck.py",
        "home/registry.db",
        "requirements/requirements.txt",
        "wheels/shipyard-0.1.0-py3-none-any.whl",
    ]
    assert not any(part == ".git" for f in files for part in Path(f).parts)
    assert not list(tmp_path.glob(".ctx.*.tmp"))  # the staging folder was renamed into place
    # The embedded registry: the two versions, their digests and the alias; no keys, no audit of the source.
    with Registry(source) as original, Registry(out / "home") as embedded:
        assert [m["name"] for m in embedded.list_models()] == ["iris", "iris-onnx"]
        assert embedded.resolve("iris@production").digest == original.resolve("iris:2").digest
        assert embedded.resolve("iris-onnx").digest == original.resolve("iris-onnx:1").digest
        assert [str(v.ref) for v in embedded.list_versions("iris")] == ["iris:2"]
        assert embedded.list_keys() == []
        assert not embedded.auth_enabled()
        assert {e.action for e in embedded.audit_log()} <= {"import", "alias.set"}
    assert (out / "home" / "registry.db").read_bytes() != (source / "registry.db").read_bytes()
    # The image opens it read-only and immutable (a read-only root filesystem): nothing changes.
    before = (out / "home" / "registry.db").read_bytes()
    url = contract.REGISTRY_ENV["SHIPYARD_REGISTRY_URL"].replace(contract.HOME_DIR, str(out / "home"))
    with Registry(settings=Settings.model_construct(home=out / "home", registry_url=url)) as image:
        assert [problems for _, problems in image.verify()] == [[], []]
        assert str(image.resolve("iris@production").ref) == "iris:2"
    assert (out / "home" / "registry.db").read_bytes() == before
    assert sorted(p.name for p in (out / "home").iterdir()) == ["artifacts", "registry.db"]
    # Only the models' libraries, and no torch for scikit-learn and ONNX models.
    requirements = (out / "requirements" / "requirements.txt").read_text()
    assert "scikit-learn==" in requirements and "onnxruntime==" in requirements
    assert "torch" not in requirements and not (out / "requirements" / "torch.txt").exists()
    assert "torch" not in (out / "Dockerfile").read_text()


def test_a_tampered_artifact_fails_the_builds_verification_step(
    source: Path, wheel: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], tamper: object
) -> None:
    out = tmp_path / "ctx"
    assert shipyard(source, "build", "iris@production", "--out", out, "--wheel", wheel, capsys=capsys)[0] == 0
    env = {**os.environ, "SHIPYARD_HOME": str(out / "home"), "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}

    def run_steps() -> list[int]:
        """The Dockerfile's verification RUN step, command by command, in the context."""
        return [
            subprocess.run(step, cwd=out, env=env, capture_output=True, check=False).returncode
            for step in VERIFY_STEPS
        ]

    assert run_steps() == [0, 0]
    (artifact,) = (out / "home" / "artifacts").rglob("model.skops")
    tamper(artifact)  # type: ignore[operator]
    codes = run_steps()
    assert codes[0] != 0  # the checksum file catches it first
    assert codes[1] == IntegrityError.exit_code  # and the registry would too, were SHA256SUMS rewritten


def test_bad_input_is_one_line_with_its_exit_code(
    source: Path,
    wheel: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = tmp_path / "ctx"
    code, _, err = shipyard(source, "build", "nope", "--out", out, "--wheel", wheel, capsys=capsys)
    one_line_error(code, err, 3, "no model named 'nope'")
    code, _, err = shipyard(
        source, "build", "iris", "--out", out, "--base", "python:3.11-alpine", "--wheel", wheel, capsys=capsys
    )
    one_line_error(code, err, 2, "musl-based")
    assert not out.exists()
    code, _, err = shipyard(source, "build", "iris", "--out", source / "ctx", "--wheel", wheel, capsys=capsys)
    one_line_error(code, err, 2, "overlaps the registry home")
    code, _, err = shipyard(
        source, "build", "iris", "--out", out, "--push", "registry.local:5000", capsys=capsys
    )
    one_line_error(code, err, 2, "--push needs --build")
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    code, _, err = shipyard(source, "build", "iris", "--out", out, "--wheel", wheel, capsys=capsys)
    one_line_error(code, err, ConflictError.exit_code, "exists and is not empty")
    code, _, err = shipyard(source, "build", "iris", "--out", out, "--force", "--wheel", wheel, capsys=capsys)
    one_line_error(code, err, ConflictError.exit_code, "not a build context written by `shipyard build`")
    assert (out / "notes.txt").read_text() == "mine"
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    code, _, err = shipyard(
        source, "build", "iris", "--out", tmp_path / "other", "--build", "--wheel", wheel, capsys=capsys
    )
    one_line_error(code, err, 8, "no docker or podman was found on PATH")
    assert not (tmp_path / "other").exists()  # nothing written when the build cannot run
    fake_engine(tmp_path / "bin", "docker", tmp_path / "calls", fails_version=True)
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    code, _, err = shipyard(source, "build", "iris", "--out", tmp_path / "other", "--build", capsys=capsys)
    one_line_error(code, err, 8, "its daemon does not answer, and no podman was found")


def test_force_replaces_a_previous_context_and_build_reports_its_engine(
    source: Path,
    wheel: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = tmp_path / "ctx"
    assert shipyard(source, "build", "iris:1", "--out", out, "--wheel", wheel, capsys=capsys)[0] == 0
    fake_engine(tmp_path / "bin", "docker", tmp_path / "calls", fails_version=True)  # a client alone
    fake_engine(tmp_path / "bin", "podman", tmp_path / "calls")
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    args = ("build", "iris@production", "--out", out, "--force", "--wheel", wheel, "--platform", "sagemaker")
    code, stdout, err = shipyard(
        source, *args, "--build", "--tag", "iris:prod", "--push", "reg.local:5000/ml", capsys=capsys
    )
    assert code == 0, err
    assert "built iris:prod with podman" in stdout
    assert "pushed reg.local:5000/ml/iris:prod" in stdout
    calls = (tmp_path / "calls").read_text().splitlines()
    assert calls == [
        f"build --isolation=chroot --format=docker --tag iris:prod {out}",
        "tag iris:prod reg.local:5000/ml/iris:prod",
        "push reg.local:5000/ml/iris:prod",
    ]
    dockerfile = (out / "Dockerfile").read_text()
    assert 'SHIPYARD_REFS="iris:2"' in dockerfile and "EXPOSE 8080" in dockerfile


def test_without_wheel_it_builds_shipyards_own_wheel(
    source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "ctx"
    code, _, err = shipyard(source, "build", "iris-onnx", "--out", out, capsys=capsys)
    assert code == 0, err
    (built,) = (out / "wheels").glob("shipyard-*.whl")
    names = zipfile.ZipFile(built).namelist()
    assert "shipyard/deploy/templates/Dockerfile.tmpl" in names
    assert "shipyard/cli/build.py" in names


def test_import_version_refuses_a_taken_number_and_a_copy_that_is_not_the_digest(
    source: Path, tmp_path: Path, tamper: object
) -> None:
    with Registry(source) as original, Registry(tmp_path / "copy") as copy:
        version = original.resolve("iris:2")
        folder = tmp_path / "altered"
        original.export(version.ref, f"{folder}/")
        tamper(next(folder.iterdir()))  # type: ignore[operator]
        with pytest.raises(IntegrityError, match="does not match its digest while copying"):
            copy.import_version(version, folder)
        copy.import_version(version, original.artifact_path(version))
        with pytest.raises(ConflictError):
            copy.import_version(version, original.artifact_path(version))
        assert copy.push("iris", original.artifact_path(version) / "model.skops").version == 3  # never reused
