"""Aliases: set, move, delete, roll back, and the history that makes rollback possible."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from shipyard.errors import ConflictError, InvalidInputError, NotFoundError
from shipyard.registry import Registry


@pytest.fixture
def three_versions(registry: Registry, onnx_variants: Callable[[int], Path]) -> Registry:
    """`iris` with versions 1, 2, 3 (distinct artifacts) and no alias."""
    for i in range(3):
        registry.push("iris", onnx_variants(i))
    return registry


def _moves(registry: Registry, alias: str = "production") -> list[tuple[str, int | None, int | None]]:
    return [(c.action, c.previous, c.version) for c in registry.history("iris", alias)]


def test_set_and_move_an_alias(three_versions: Registry) -> None:
    reg = three_versions
    assert reg.set_alias("iris", "production", 1) is None
    assert reg.resolve("iris@production").version == 1
    assert reg.get("iris:1").aliases == ("production",)
    assert reg.set_alias("iris", "production", 3) == 1
    assert reg.resolve("iris@production").version == 3
    assert reg.get("iris:1").aliases == ()
    assert reg.get("iris:3").aliases == ("production",)
    reg.set_alias("iris", "staging", 3)
    assert reg.get("iris:3").aliases == ("production", "staging")
    assert reg.list_models()[0]["aliases"] == {"production": 3, "staging": 3}
    assert _moves(reg) == [("set", None, 1), ("set", 1, 3)]


def test_history_records_who_and_when(three_versions: Registry) -> None:
    three_versions.set_alias("iris", "production", 2)
    (change,) = three_versions.history("iris", "production")
    assert change.alias == "production"
    assert change.changed_by
    assert change.changed_at.startswith("20") and change.changed_at.endswith("+00:00")


def test_push_with_alias_moves_it_in_the_same_step(
    registry: Registry, onnx_variants: Callable[[int], Path]
) -> None:
    registry.push("iris", onnx_variants(0), alias="production")
    version = registry.push("iris", onnx_variants(1), alias="production")
    assert version.aliases == ("production",)
    assert registry.resolve("iris@production").version == 2
    assert _moves(registry) == [("set", None, 1), ("set", 1, 2)]


def test_delete_alias(three_versions: Registry) -> None:
    reg = three_versions
    reg.set_alias("iris", "production", 2)
    reg.set_alias("iris", "canary", 3)
    assert reg.delete_alias("iris", "production") == 2
    with pytest.raises(NotFoundError, match=r"has no alias 'production' \(aliases: canary\)"):
        reg.resolve("iris@production")
    with pytest.raises(NotFoundError, match=r"has no alias 'production' \(aliases: canary\)"):
        reg.delete_alias("iris", "production")
    assert _moves(reg) == [("set", None, 2), ("delete", 2, None)]


def test_rollback_twice_goes_back_two_targets(three_versions: Registry) -> None:
    reg = three_versions
    for number in (1, 2, 3):
        reg.set_alias("iris", "production", number)
    assert reg.rollback("iris", "production") == (3, 2)
    assert reg.resolve("iris@production").version == 2
    assert reg.rollback("iris", "production") == (2, 1)
    assert reg.resolve("iris@production").version == 1
    with pytest.raises(ConflictError, match=r"iris@production has no earlier target.*shipyard history"):
        reg.rollback("iris", "production")
    assert reg.resolve("iris@production").version == 1
    assert _moves(reg)[-2:] == [("rollback", 3, 2), ("rollback", 2, 1)]


def test_rollback_after_a_new_move_returns_to_the_target_before_it(three_versions: Registry) -> None:
    reg = three_versions
    reg.set_alias("iris", "production", 1)
    reg.set_alias("iris", "production", 2)
    assert reg.rollback("iris", "production") == (2, 1)
    reg.set_alias("iris", "production", 3)
    assert reg.rollback("iris", "production") == (3, 1)


def test_rollback_skips_removed_versions(three_versions: Registry) -> None:
    reg = three_versions
    for number in (1, 2, 3):
        reg.set_alias("iris", "production", number)
    reg.remove("iris:2")
    assert reg.rollback("iris", "production") == (3, 1)


def test_rollback_restores_a_deleted_alias(three_versions: Registry) -> None:
    reg = three_versions
    reg.set_alias("iris", "production", 1)
    reg.set_alias("iris", "production", 2)
    reg.delete_alias("iris", "production")
    assert reg.rollback("iris", "production") == (None, 2)
    assert reg.resolve("iris@production").version == 2


def test_rollback_with_no_earlier_target_is_a_conflict(three_versions: Registry) -> None:
    three_versions.set_alias("iris", "production", 2)
    with pytest.raises(ConflictError) as info:
        three_versions.rollback("iris", "production")
    assert info.value.exit_code == 4 and info.value.status_code == 409
    assert three_versions.resolve("iris@production").version == 2


def test_rollback_or_history_of_an_unknown_alias_lists_the_aliases(three_versions: Registry) -> None:
    three_versions.set_alias("iris", "production", 1)
    with pytest.raises(NotFoundError, match=r"has no alias 'canary' \(aliases: production\)"):
        three_versions.rollback("iris", "canary")
    with pytest.raises(NotFoundError, match=r"has no alias 'canary' \(aliases: production\)"):
        three_versions.history("iris", "canary")
    with pytest.raises(NotFoundError, match=r"no model named 'nope' in the registry \(models: iris\)"):
        three_versions.history("nope", "production")


def test_alias_to_an_unknown_version_is_refused(three_versions: Registry) -> None:
    with pytest.raises(NotFoundError, match="model 'iris' has no version 9"):
        three_versions.set_alias("iris", "production", 9)
    with pytest.raises(NotFoundError, match=r"no model named 'nope' in the registry \(models: iris\)"):
        three_versions.set_alias("nope", "production", 1)
    assert three_versions.metadata.aliases("iris") == {}


def test_alias_to_an_unknown_version_lists_the_versions(three_versions: Registry) -> None:
    with pytest.raises(NotFoundError, match=r"versions: 1-3"):
        three_versions.set_alias("iris", "production", 9)


@pytest.mark.parametrize("alias", ["Production", "1st", "", "prod@eu", "a" * 65])
def test_invalid_alias_names_are_refused(three_versions: Registry, alias: str) -> None:
    with pytest.raises(InvalidInputError, match="invalid alias"):
        three_versions.set_alias("iris", alias, 1)


def test_remove_refuses_an_aliased_version_unless_forced(three_versions: Registry) -> None:
    reg = three_versions
    reg.set_alias("iris", "production", 2)
    reg.set_alias("iris", "canary", 2)
    with pytest.raises(ConflictError, match=r"iris:2 is the target of alias\(es\) .*--force"):
        reg.remove("iris:2")
    with pytest.raises(ConflictError):
        reg.remove("iris@production")
    assert reg.resolve("iris:2").aliases == ("canary", "production")
    removed, dropped = reg.remove("iris:2", force=True)
    assert removed.version == 2
    assert sorted(dropped) == ["canary", "production"]
    assert reg.metadata.aliases("iris") == {}
    assert _moves(reg)[-1] == ("delete", 2, None)
    with pytest.raises(NotFoundError, match=r"has no version 2 \(versions: 1, 3; latest is 3\)"):
        reg.resolve("iris:2")
