"""Scalars to TensorBoard event files, without TensorFlow (so a bare JAX image logs too).

An event file is TFRecord-framed Event protos: each record is its length (uint64), a masked CRC-32C
of the length, the bytes, and a masked CRC-32C of the bytes. The first Event names the file
version; every other one holds a step, a wall time and a Summary of (tag, simple_value) pairs,
which TensorBoard shows as scalars. The few protobuf fields needed are encoded here by hand.
"""
from __future__ import annotations

import os
import socket
import struct
import threading
import time
from typing import Mapping

from t5lite import files


def _crc32c_table() -> list[int]:
  table = []
  for byte in range(256):
    crc = byte
    for _ in range(8):
      crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
    table.append(crc)
  return table


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
  """CRC-32C (Castagnoli), the checksum TFRecord frames carry."""
  crc = 0xFFFFFFFF
  for byte in data:
    crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
  return crc ^ 0xFFFFFFFF


def _masked(crc: int) -> int:
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def tfrecord(data: bytes) -> bytes:
  """One TFRecord frame around `data`."""
  length = struct.pack("<Q", len(data))
  return (length + struct.pack("<I", _masked(crc32c(length))) + data
          + struct.pack("<I", _masked(crc32c(data))))


def _varint(n: int) -> bytes:
  out = bytearray()
  while True:
    byte, n = n & 0x7F, n >> 7
    out.append(byte | (0x80 if n else 0))
    if not n:
      return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
  """A length-delimited protobuf field."""
  return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def event(wall_time: float, step: int = 0, scalars: Mapping[str, float] = (),
          file_version: str = "") -> bytes:
  """An Event proto: wall_time (1, double), step (2, int64), file_version (3) or summary (5)."""
  out = bytes([1 << 3 | 1]) + struct.pack("<d", wall_time)
  if step:
    out += _varint(2 << 3) + _varint(step & 0xFFFFFFFFFFFFFFFF)
  if file_version:
    out += _field(3, file_version.encode())
  if scalars:
    values = b"".join(
        _field(1, _field(1, tag.encode()) + bytes([2 << 3 | 5]) + struct.pack("<f", value))
        for tag, value in scalars.items())
    out += _field(5, values)
  return out


class EventWriter:
  """An event file in `directory` (local or gs://), flushed after every write."""

  def __init__(self, directory: str):
    files.makedirs(directory)
    name = (f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}."
            f"{os.getpid()}.{threading.get_ident() % 100000}.t5lite")
    self.path = files.join(directory, name)
    self._file = files.open_file(self.path, "wb")
    self._lock = threading.Lock()
    self._write(event(time.time(), file_version="brain.Event:2"))

  def _write(self, data: bytes) -> None:
    with self._lock:
      self._file.write(tfrecord(data))
      self._file.flush()

  def scalars(self, step: int, values: Mapping[str, float]) -> None:
    self._write(event(time.time(), step, {k: float(v) for k, v in values.items()}))

  def close(self) -> None:
    with self._lock:
      self._file.close()
