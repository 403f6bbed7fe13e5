"""Where settings come from, and which source wins: flags > environment > TOML file > options
stored with a version > defaults (see `shipyard.settings`)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest

from shipyard.errors import InvalidInputError
from shipyard.registry import Registry
from shipyard.serve.app import create_app
from shipyard.settings import ServeSettings, Settings


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "shipyard.toml"
    path.write_text("[serve]\nport = 9100\nmax_batch_size = 16\n\n[runtime]\nintra_op_threads = 2\n")
    return path


def test_the_toml_file_sets_nested_sections(config_file: Path) -> None:
    settings = Settings.load(config_file)
    assert (settings.serve.port, settings.serve.max_batch_size) == (9100, 16)
    assert settings.runtime.intra_op_threads == 2
    assert settings.serve.max_queue == 1024  # untouched by the file: the default


def test_shipyard_config_names_the_file(config_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHIPYARD_CONFIG", str(config_file))
    assert Settings.load().serve.port == 9100


def test_the_environment_beats_the_file(config_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHIPYARD_SERVE__PORT", "9200")
    settings = Settings.load(config_file)
    assert settings.serve.port == 9200
    assert settings.serve.max_batch_size == 16  # the file still sets what the environment does not


def test_flags_beat_the_environment(config_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHIPYARD_SERVE__PORT", "9200")
    monkeypatch.setenv("SHIPYARD_SERVE__MAX_QUEUE", "7")
    settings = Settings.load(config_file, serve={"port": 9300, "workers": None})
    assert settings.serve.port == 9300
    assert settings.serve.max_queue == 7  # a flag on one key leaves the rest of the section alone
    assert settings.serve.workers == 1  # None: the flag was not given


def test_nested_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHIPYARD_SERVE__MAX_BATCH_DELAY_MS", "0.5")
    monkeypatch.setenv("SHIPYARD_SERVE__ACCESS_LOG", "true")
    monkeypatch.setenv("SHIPYARD_RUNTIME__INTER_OP_THREADS", "3")
    settings = Settings.load()
    assert settings.serve.max_batch_delay_ms == 0.5
    assert settings.serve.access_log is True
    assert settings.runtime.inter_op_threads == 3


def test_vertex_names_the_port_below_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIP_HTTP_PORT", "8080")
    monkeypatch.setenv("AIP_PREDICT_ROUTE", "/predict")
    monkeypatch.setenv("SHIPYARD_SERVE__PORT", "9200")  # Vertex routes traffic to its own port
    settings = Settings.load()
    assert (settings.serve.port, settings.serve.vertex_predict_route) == (8080, "/predict")
    assert Settings.load(serve={"port": 9300}).serve.port == 9300


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[serve\nport = 1\n", "is not valid TOML: "),
        ('[serve]\nport = "high"\n', "invalid settings: serve.port: Input should be a valid integer"),
        ("[serve]\nworkers = 0\n", "invalid settings: serve.workers: Input should be greater than"),
    ],
    ids=["syntax", "type", "range"],
)
def test_a_bad_file_is_one_line_naming_the_problem(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(InvalidInputError) as caught:
        Settings.load(path)
    assert message in caught.value.message
    assert "\n" not in caught.value.message


def test_a_missing_file_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHIPYARD_CONFIG", str(tmp_path / "nowhere.toml"))
    with pytest.raises(InvalidInputError, match=r"nowhere\.toml' does not exist"):
        Settings.load()


def test_version_options_replace_only_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    stored = {"max_batch_size": 8, "max_batch_delay_ms": 7.5, "something_else": 1}
    assert ServeSettings().for_version(stored).max_batch_size == 8
    monkeypatch.setenv("SHIPYARD_SERVE__MAX_BATCH_SIZE", "4")
    serve = Settings.load().serve.for_version(stored)
    assert (serve.max_batch_size, serve.max_batch_delay_ms) == (4, 7.5)


def test_a_bad_stored_option_names_the_version() -> None:
    with pytest.raises(InvalidInputError) as caught:
        ServeSettings().for_version({"max_batch_size": 0}, "iris:3")
    assert caught.value.message.startswith(
        "invalid serving options stored with iris:3: max_batch_size: Input should be greater"
    )


def served_config(settings: Settings, ref: str) -> dict[str, Any]:
    """GET /v2/models/{name}/config from an in-process server for `ref`, once it has loaded."""
    name = ref.split(":", maxsplit=1)[0]

    async def main() -> dict[str, Any]:
        app = create_app(settings, [ref])
        async with app.app.router.lifespan_context(app.app):
            await app.state.loading
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                response = await client.get(f"/v2/models/{name}/config")
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    return asyncio.run(main())


def test_the_batcher_uses_the_version_options_unless_a_flag_says_otherwise(
    tmp_path: Path, onnx_path: Path
) -> None:
    home = tmp_path / "home"
    with Registry(settings=Settings.load(home=home)) as registry:
        registry.push("iris", onnx_path, serving={"max_batch_size": 8, "max_batch_delay_ms": 0.5})
    stored = served_config(Settings.load(home=home), "iris")
    assert stored["max_batch_size"] == 8
    assert stored["dynamic_batching"]["max_queue_delay_microseconds"] == 500
    flagged = served_config(Settings.load(home=home, serve={"max_batch_size": 3}), "iris")
    assert flagged["max_batch_size"] == 3
    assert flagged["dynamic_batching"]["max_queue_delay_microseconds"] == 500


def test_grpc_needs_a_port_of_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings.load().serve.grpc_port == 8001
    monkeypatch.setenv("SHIPYARD_SERVE__PORT", "8001")
    with pytest.raises(InvalidInputError, match="grpc_port 8001 is also the HTTP or admin port"):
        Settings.load()
    monkeypatch.setenv("SHIPYARD_SERVE__GRPC_PORT", "0")  # 0 serves no gRPC
    assert Settings.load().serve.grpc_port == 0
