"""When tracing is on and where it sends spans: `tracing.otlp_endpoint` (SHIPYARD_TRACING__…, the
config file) and OpenTelemetry's own variables; and the error when its extra is not installed."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from shipyard.errors import InvalidInputError, MissingDependencyError
from shipyard.monitor.tracing import require_tracing, start_tracing
from shipyard.settings import Settings, TracingSettings


def test_tracing_is_off_by_default() -> None:
    settings = Settings.load()
    assert settings.tracing.traces_url is None
    assert start_tracing(settings.tracing) is None


@pytest.mark.parametrize(
    ("endpoint", "url"),
    [
        ("http://localhost:4318", "http://localhost:4318/v1/traces"),
        ("https://collector.example:4318/", "https://collector.example:4318/v1/traces"),
        ("http://gateway.example/otlp/v1/traces", "http://gateway.example/otlp/v1/traces"),
    ],
)
def test_the_otlp_path_is_added_to_a_bare_endpoint(endpoint: str, url: str) -> None:
    assert Settings.load(tracing={"otlp_endpoint": endpoint}).tracing.traces_url == url


def test_opentelemetry_variables_turn_tracing_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://gateway.example/otlp")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "scoring")
    tracing = Settings.load().tracing
    assert tracing.traces_url == "http://gateway.example/otlp/v1/traces"  # a base URL, as OTel says
    assert tracing.service_name == "scoring"
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://traces.example:4318/v1/traces")
    assert Settings.load().tracing.traces_url == "http://traces.example:4318/v1/traces"  # as it is


def test_shipyard_settings_beat_opentelemetry_variables(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = tmp_path / "shipyard.toml"
    config.write_text('[tracing]\notlp_endpoint = "http://from-file:4318"\n')
    assert Settings.load(config).tracing.traces_url == "http://from-file:4318/v1/traces"
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://from-otel:4318")
    assert Settings.load(config).tracing.traces_url == "http://from-otel:4318/v1/traces"  # env > file
    monkeypatch.setenv("SHIPYARD_TRACING__OTLP_ENDPOINT", "http://from-shipyard:4318")
    assert Settings.load(config).tracing.traces_url == "http://from-shipyard:4318/v1/traces"
    monkeypatch.setenv("SHIPYARD_TRACING__OTLP_ENDPOINT", "")  # off here, whatever OTEL_ says
    assert Settings.load(config).tracing.traces_url is None


@pytest.mark.parametrize("endpoint", ["localhost:4318", "grpc://collector:4317", "http://"])
def test_an_endpoint_that_is_no_http_url_is_refused(endpoint: str) -> None:
    with pytest.raises(InvalidInputError) as caught:
        Settings.load(tracing={"otlp_endpoint": endpoint})
    assert caught.value.field == "tracing.otlp_endpoint"
    assert "http(s) URL" in caught.value.message and "http://localhost:4318" in caught.value.message


@pytest.mark.parametrize(
    ("module", "package"),
    [
        ("opentelemetry.sdk.trace", "opentelemetry-sdk"),
        ("opentelemetry.exporter.otlp.proto.http.trace_exporter", "opentelemetry-exporter-otlp-proto-http"),
    ],
)
def test_tracing_without_its_extra_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, module: str, package: str
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # `import` of it raises ImportError
    settings = TracingSettings(otlp_endpoint="http://localhost:4318")
    for start in (require_tracing, start_tracing):
        with pytest.raises(MissingDependencyError) as caught:
            start(settings)
        assert caught.value.message.startswith("tracing (an OTLP endpoint is set")
        assert f"'{package}'" in caught.value.message
        assert "pip install 'shipyard[tracing]'" in caught.value.message
        assert caught.value.exit_code == 8


def test_without_an_endpoint_nothing_is_needed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry.sdk.trace", None)
    require_tracing(TracingSettings())
    assert start_tracing(TracingSettings()) is None
