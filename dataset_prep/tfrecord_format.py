"""The TFRecord container and the `tf.train.Example` records it holds, written without TensorFlow.

A record is: uint64 length, uint32 masked CRC-32C of the length bytes, the payload, uint32 masked CRC-32C of the
payload (all little-endian). DALI's reader does not check the CRCs, TensorFlow's does, so they must be right.
A DALI index file has one line per record: its byte offset and its total size (framing included).
"""
from __future__ import annotations

import struct

import crc32c

_MASK_DELTA = 0xA282EAD8
IMAGE_KEY = "image/encoded"
LABEL_KEY = "image/class/label"


def masked_crc32c(data: bytes) -> int:
    crc = crc32c.crc32c(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def frame_record(payload: bytes) -> bytes:
    length = struct.pack("<Q", len(payload))
    return b"".join((length, struct.pack("<I", masked_crc32c(length)), payload,
                     struct.pack("<I", masked_crc32c(payload))))


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def _length_delimited(field_number: int, payload: bytes) -> bytes:
    return _varint(field_number << 3 | 2) + _varint(len(payload)) + payload


def _feature_entry(key: str, feature: bytes) -> bytes:
    # Features.feature is map<string, Feature>: each entry is a message {1: key, 2: value}
    return _length_delimited(1, _length_delimited(1, key.encode()) + _length_delimited(2, feature))


def image_example(jpeg: bytes, label: int) -> bytes:
    """Serialized `tf.train.Example` with `image/encoded` (BytesList) and `image/class/label` (Int64List)."""
    if label < 0:
        raise ValueError(f"labels are non-negative class indices, got {label}")
    bytes_feature = _length_delimited(1, _length_delimited(1, jpeg))  # Feature.bytes_list{value}
    int64_feature = _length_delimited(3, _length_delimited(1, _varint(label)))  # Feature.int64_list, packed
    features = _feature_entry(IMAGE_KEY, bytes_feature) + _feature_entry(LABEL_KEY, int64_feature)
    return _length_delimited(1, features)  # Example.features


class TFRecordWriter:
    """Appends framed records (see `frame_record`) to a shard file and the matching DALI index lines to its
    index file. Framing is left to the caller so that CRCs can be computed in worker processes."""

    def __init__(self, record_path: str, index_path: str):
        self.records = open(record_path, "wb")
        self.index = open(index_path, "w")
        self.offset = 0
        self.count = 0

    def write(self, record: bytes) -> None:
        self.records.write(record)
        self.index.write(f"{self.offset} {len(record)}\n")
        self.offset += len(record)
        self.count += 1

    def close(self) -> None:
        self.records.close()
        self.index.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
