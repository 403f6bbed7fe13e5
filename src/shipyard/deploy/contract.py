"""The contract between the image `shipyard build` writes and the command that runs in it.

Everything the image assumes about the in-container entrypoint is here, in one place: where the
embedded registry lives, the variables that select the platform and the models, the command the
image starts, and each platform's port and health route (for EXPOSE and HEALTHCHECK).
"""

from __future__ import annotations

from dataclasses import dataclass

APP_DIR = "/opt/shipyard"
HOME_DIR = f"{APP_DIR}/home"  # the embedded registry: registry.db + artifacts/, SHIPYARD_HOME
VENV_DIR = "/opt/venv"
USER = "shipyard"
UID = 10001  # non-root, outside the range Debian gives to system and login users

# The image's registry is opened read-only and immutable: its versions never change, and the
# server then starts on a read-only root filesystem (with a tmpfs on /tmp for the prediction log).
REGISTRY_ENV = {
    "SHIPYARD_HOME": HOME_DIR,
    "SHIPYARD_REGISTRY_URL": f"sqlite:///file:{HOME_DIR}/registry.db?mode=ro&immutable=1&uri=true",
}
RUNTIME_ENV = {"SHIPYARD_PREDICTION_LOG__PATH": "/tmp/shipyard-predictions"}

PLATFORM_ENV = "SHIPYARD_PLATFORM"
MODELS_ENV = "SHIPYARD_REFS"  # the pinned references the image serves, space-separated


@dataclass(frozen=True, slots=True)
class Platform:
    """How one platform starts the container and decides that it is healthy."""

    name: str
    port: int
    health_route: str
    # The command the image starts; `shipyard entrypoint` reads PLATFORM_ENV and MODELS_ENV and
    # follows the platform's own variables (SAGEMAKER_BIND_TO_PORT, AIP_HTTP_PORT, …).
    entrypoint: tuple[str, ...] = ("shipyard", "entrypoint")
    serves_refs_as_args: bool = False  # True: the references are the CMD (arguments to the entrypoint)


PLATFORMS: dict[str, Platform] = {
    "sagemaker": Platform("sagemaker", 8080, "/ping"),
    "vertex": Platform("vertex", 8080, "/healthz"),  # AIP_HEALTH_ROUTE is the platform's own probe
    "azure": Platform("azure", 5001, "/"),
    # Plain Docker or Kubernetes: the server itself, on every interface. No API keys exist in the
    # embedded registry, so it runs --insecure: put it behind what authenticates its callers.
    "generic": Platform(
        "generic",
        8080,
        "/healthz",
        entrypoint=("shipyard", "serve", "--host", "0.0.0.0", "--port", "8080", "--insecure"),
        serves_refs_as_args=True,
    ),
}


def platform(name: str) -> Platform:
    """The platform called `name` (the CLI restricts the choice, so this only guards callers)."""
    try:
        return PLATFORMS[name]
    except KeyError:
        raise ValueError(f"unknown platform {name!r} (known: {', '.join(PLATFORMS)})") from None
