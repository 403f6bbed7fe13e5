"""Serialized `tf.Example` protos read without TensorFlow: what `:predict` on a signature that
parses Examples receives (TF Serving feeds them to the graph's ParseExample op; Shipyard's graph
starts after that op, so the server parses them itself).

The message types are declared here from their wire contract (tensorflow/core/example/
example.proto and feature.proto: field numbers and types), in a private descriptor pool.
"""

from __future__ import annotations

import functools
from typing import Any

from shipyard.errors import InvalidInputError

_PACKAGE = "shipyard.tf_example"


@functools.cache
def _example_class() -> Any:
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    F = descriptor_pb2.FieldDescriptorProto
    file = descriptor_pb2.FileDescriptorProto(
        name="shipyard_tf_example.proto", package=_PACKAGE, syntax="proto3"
    )

    def message(name: str, *fields: tuple[str, int, int, int, str]) -> Any:
        proto = file.message_type.add(name=name)
        for field_name, number, kind, label, type_name in fields:
            added = proto.field.add(name=field_name, number=number, type=kind, label=label)
            if type_name:
                added.type_name = type_name
        return proto

    repeated, optional = F.LABEL_REPEATED, F.LABEL_OPTIONAL
    message("BytesList", ("value", 1, F.TYPE_BYTES, repeated, ""))
    message("FloatList", ("value", 1, F.TYPE_FLOAT, repeated, ""))
    message("Int64List", ("value", 1, F.TYPE_INT64, repeated, ""))
    message(
        "Feature",
        ("bytes_list", 1, F.TYPE_MESSAGE, optional, f".{_PACKAGE}.BytesList"),
        ("float_list", 2, F.TYPE_MESSAGE, optional, f".{_PACKAGE}.FloatList"),
        ("int64_list", 3, F.TYPE_MESSAGE, optional, f".{_PACKAGE}.Int64List"),
    )
    features = message(
        "Features", ("feature", 1, F.TYPE_MESSAGE, repeated, f".{_PACKAGE}.Features.FeatureEntry")
    )
    entry = features.nested_type.add(name="FeatureEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, type=F.TYPE_STRING, label=optional)
    entry.field.add(
        name="value", number=2, type=F.TYPE_MESSAGE, label=optional, type_name=f".{_PACKAGE}.Feature"
    )
    message("Example", ("features", 1, F.TYPE_MESSAGE, optional, f".{_PACKAGE}.Features"))
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{_PACKAGE}.Example"))


def parse_example(data: bytes, index: int) -> dict[str, list[Any]]:
    """One serialized tf.Example as feature name → its list of values."""
    from google.protobuf.message import DecodeError

    example = _example_class()()
    try:
        example.ParseFromString(data)
    except DecodeError as exc:
        raise InvalidInputError(f"example {index} is not a serialized tf.Example", field="inputs") from exc
    features: dict[str, list[Any]] = {}
    for key, feature in example.features.feature.items():
        for kind in ("bytes_list", "float_list", "int64_list"):
            values = list(getattr(feature, kind).value) if feature.HasField(kind) else []
            if values:  # an empty feature is a missing one: its default applies, as in TensorFlow
                features[key] = values
                break
    return features
