"""Reads TensorBoard event files as TensorBoard does: TFRecords (a length, its checksum, the data,
its checksum; masked CRC-32C) of `Event` protocol buffers. The checksums are computed here, not by
the library that wrote the files, so a file TensorBoard would reject fails the test."""

from __future__ import annotations

import struct
from pathlib import Path

from tensorboardX.proto import event_pb2


def _crc32c_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_TABLE = _crc32c_table()


def masked_crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    crc ^= 0xFFFFFFFF
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def read_scalars(folder: Path) -> dict[str, list[tuple[int, float, float]]]:
    """tag -> [(step, wall time, value)] over every event file in `folder`, by step."""
    scalars: dict[str, list[tuple[int, float, float]]] = {}
    for path in sorted(folder.glob("events.out.tfevents.*")):
        data, position = path.read_bytes(), 0
        while position < len(data):
            header = data[position : position + 8]
            (length,) = struct.unpack("<Q", header)
            (length_crc,) = struct.unpack("<I", data[position + 8 : position + 12])
            assert length_crc == masked_crc32c(header), f"{path}: bad length checksum at {position}"
            record = data[position + 12 : position + 12 + length]
            (record_crc,) = struct.unpack("<I", data[position + 12 + length : position + 16 + length])
            assert record_crc == masked_crc32c(record), f"{path}: bad record checksum at {position}"
            position += 16 + length
            event = event_pb2.Event.FromString(record)
            for value in event.summary.value:
                scalars.setdefault(value.tag, []).append((event.step, event.wall_time, value.simple_value))
    return {tag: sorted(points) for tag, points in scalars.items()}
