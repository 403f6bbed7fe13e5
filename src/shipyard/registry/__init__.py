"""The model store: references, content-addressed artifacts, version metadata, migrations."""

from shipyard.registry.registry import Registry

__all__ = ["Registry"]
