"""Frame index of a DICOM instance: where each frame's bytes are.

Native frames follow from the header. Encapsulated frames come from the Extended Offset Table, else the Basic
Offset Table, else one scan of the fragment item headers (one 16-byte positional read per fragment). A
frame's range starts at its first fragment's item header and covers all its fragments;
the item headers are removed when it is decoded. Every offset is checked against the file before use.
Encapsulated indexes are kept per process by file identity (device, inode, size, mtime), so a file opened
again is not scanned again.
"""

from __future__ import annotations

import os
import struct
import threading
from collections import OrderedDict
from typing import TYPE_CHECKING

import numpy as np

from ...errors import CorruptFileError
from ...fileio import file_identity
from ..base import compressed_tile_limit

if TYPE_CHECKING:
    from .header import DicomInstance

_ITEM = (0xFFFE, 0xE000)
_SEQUENCE_END = (0xFFFE, 0xE0DD)


def native_frames(inst: DicomInstance) -> tuple[np.ndarray, np.ndarray]:
    n = inst.frames
    offsets = inst.pixel_offset + np.arange(n, dtype=np.int64) * inst.frame_nbytes
    return offsets, np.full(n, inst.frame_nbytes, dtype=np.int64)


def _error(inst: DicomInstance, message: str, frame: int | None = None) -> CorruptFileError:
    return CorruptFileError(message, path=inst.path, tile=None if frame is None else f"frame {frame}")


# Encapsulated frame indexes by (file identity at open, pixel data offset, frames): 16 bytes per frame plus
# about _ENTRY_OVERHEAD per index, at most _INDEX_BYTES in all (least recently used dropped first); an index
# over a quarter of that is not kept. Arrays are read-only: they are shared.
_INDEX_BYTES = 32 << 20
_ENTRY_OVERHEAD = 1024
_indexes: OrderedDict[tuple, tuple[np.ndarray, np.ndarray]] = OrderedDict()
_indexes_size = [0]
_indexes_lock = threading.Lock()


def _entry_bytes(table: tuple[np.ndarray, np.ndarray]) -> int:
    return table[0].nbytes + table[1].nbytes + _ENTRY_OVERHEAD


def frame_index(inst: DicomInstance) -> tuple[np.ndarray, np.ndarray]:
    """(offsets, lengths) of every frame of ``inst``, int64 (frames,), read-only; encapsulated indexes come
    from the per-process store when the same file, unchanged since ``inst`` was opened, was indexed before."""
    if not inst.encapsulated:
        return native_frames(inst)
    if inst.inflated is not None:  # Deflated: frames of the inflated copy in memory, indexed per open
        return encapsulated_frames(inst)
    key = (inst.identity, inst.pixel_offset, inst.frames)
    with _indexes_lock:
        hit = _indexes.get(key)
        if hit is not None:
            _indexes.move_to_end(key)
            return hit
    table = encapsulated_frames(inst)
    for arr in table:
        arr.flags.writeable = False
    size = _entry_bytes(table)
    try:
        unchanged = file_identity(inst.path) == inst.identity
    except OSError:
        unchanged = False
    if unchanged and size <= _INDEX_BYTES // 4:  # the header it was built from is the file's header now
        with _indexes_lock:
            if key not in _indexes:
                _indexes[key] = table
                _indexes_size[0] += size
            while _indexes_size[0] > _INDEX_BYTES:
                _, old = _indexes.popitem(last=False)
                _indexes_size[0] -= _entry_bytes(old)
    return table


def _forget_lock_in_child() -> None:
    global _indexes_lock
    _indexes_lock = threading.Lock()  # another thread may have held it at fork


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_lock_in_child)


def encapsulated_frames(inst: DicomInstance) -> tuple[np.ndarray, np.ndarray]:
    """(offsets, lengths) of each frame's fragments (item headers included), int64 (frames,)."""
    with open(inst.path, "rb") as fh:
        fh.seek(inst.pixel_offset)
        head = fh.read(8)
        if len(head) < 8:
            raise _error(inst, "pixel data ends before its Basic Offset Table item")
        group, elem, bot_length = struct.unpack("<HHI", head)
        if (group, elem) != _ITEM:
            raise _error(inst, f"encapsulated pixel data starts with ({group:04X},{elem:04X}), not an item")
        first = inst.pixel_offset + 8 + bot_length
        if bot_length % 4 or first > inst.file_size:
            raise _error(inst, f"Basic Offset Table length {bot_length} is invalid")
        eot = _extended_offsets(inst)
        if eot is not None:
            offsets, lengths = eot
            return _ranges_from_offsets(inst, first, offsets, lengths + 8)
        if bot_length:
            if bot_length // 4 != inst.frames:
                raise _error(inst, f"Basic Offset Table has {bot_length // 4} entries, NumberOfFrames is "
                             f"{inst.frames}")
            raw = fh.read(bot_length)
            if len(raw) != bot_length:
                raise _error(inst, "file ends inside the Basic Offset Table")
            offsets = np.frombuffer(raw, dtype="<u4").astype(np.int64)
            return _ranges_from_offsets(inst, first, offsets, None)
    return _scan(inst, first)


def _extended_offsets(inst: DicomInstance) -> tuple[np.ndarray, np.ndarray] | None:
    ds = inst.ds
    if 0x7FE00001 not in ds:
        return None
    try:
        raw_off = ds[0x7FE00001].value
        raw_len = ds[0x7FE00002].value if 0x7FE00002 in ds else None
    except Exception as exc:
        raise _error(inst, f"Extended Offset Table cannot be read: {exc}") from exc
    if not isinstance(raw_off, bytes) or not isinstance(raw_len, bytes) or len(raw_off) % 8 or len(raw_len) % 8:
        raise _error(inst, "Extended Offset Table or its lengths are malformed")
    offsets = np.frombuffer(raw_off, dtype="<u8")
    lengths = np.frombuffer(raw_len, dtype="<u8")
    if len(offsets) != inst.frames or len(lengths) != inst.frames:
        raise _error(inst, f"Extended Offset Table has {len(offsets)} offsets and {len(lengths)} lengths, "
                     f"NumberOfFrames is {inst.frames}")
    if (offsets >= 1 << 62).any() or (lengths >= 1 << 62).any():
        raise _error(inst, "Extended Offset Table points past the end of the file")
    return offsets.astype(np.int64), lengths.astype(np.int64)


def _ranges_from_offsets(inst: DicomInstance, first: int, offsets: np.ndarray,
                         lengths: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Absolute frame ranges from offsets relative to the first fragment (BOT or EOT)."""
    n = len(offsets)
    starts = first + offsets
    bad = np.flatnonzero((starts < first) | (starts > inst.file_size - 8))
    if bad.size:
        i = int(bad[0])
        raise _error(inst, f"offset table entry {int(offsets[i])} points past the end of the file", i)
    if n > 1 and (np.diff(starts) <= 0).any():
        i = int(np.flatnonzero(np.diff(starts) <= 0)[0]) + 1
        raise _error(inst, "offset table entries are not increasing", i)
    if offsets[0] != 0:
        raise _error(inst, f"offset table's first entry is {int(offsets[0])}, not 0", 0)
    if lengths is not None:
        ends = starts + lengths
    else:
        # A frame runs to the next one; the last one to the end of its fragments, which only a scan would
        # find: read up to the bounded size of one frame (decoding stops at the sequence delimiter).
        ends = np.empty(n, np.int64)
        ends[:-1] = starts[1:]
        ends[-1] = min(inst.file_size, int(starts[-1]) + compressed_tile_limit(inst.frame_nbytes))
    if (ends > inst.file_size).any():
        i = int(np.flatnonzero(ends > inst.file_size)[0])
        raise _error(inst, "frame runs past the end of the file: the pixel data is truncated", i)
    return starts.astype(np.int64), (ends - starts).astype(np.int64)


def _scan(inst: DicomInstance, first: int) -> tuple[np.ndarray, np.ndarray]:
    """Frame ranges from one pass over the fragment item headers (no offset table)."""
    size = inst.file_size
    if first >= size:
        raise _error(inst, "pixel data holds no fragments: the file is truncated")
    starts_with = inst.frame_starts()
    frag_pos: list[int] = []
    frag_len: list[int] = []
    prefixes: list[bytes] = []
    unpack = struct.Struct("<II").unpack_from
    item, end_tag = 0xE000FFFE, 0xE0DDFFFE  # (FFFE,E000) and (FFFE,E0DD) read as little-endian uint32
    with open(inst.path, "rb", buffering=0) as fh:
        fd = fh.fileno()
        pos = first
        tag = 0
        while pos + 8 <= size:
            # one small positional read per fragment: its item header and the first bytes of its payload
            head = os.pread(fd, 16, pos)
            if len(head) < 8:
                break
            tag, length = unpack(head, 0)
            if tag != item:
                break
            if length == 0xFFFFFFFF or pos + 8 + length > size:
                raise _error(inst, f"fragment {len(frag_pos)} of {length} bytes runs past the end of the file")
            frag_pos.append(pos)
            frag_len.append(length)
            prefixes.append(head[8:])
            pos += 8 + length
        if tag != end_tag:
            if pos + 8 > size or tag == item:
                raise _error(inst, f"pixel data is truncated after fragment {len(frag_pos)} (no sequence delimiter)")
            group, elem = tag & 0xFFFF, tag >> 16
            raise _error(inst, f"expected a fragment item at byte {pos}, found ({group:04X},{elem:04X})")
    nfrag = len(frag_pos)
    n = inst.frames
    if nfrag == n:
        first_frags = list(range(n))
    elif n == 1 and nfrag > 0:
        first_frags = [0]
    elif nfrag > n and starts_with and (begins := [p.startswith(starts_with) for p in prefixes]) and (
            sum(begins) == n and begins[0]):
        first_frags = [i for i, b in enumerate(begins) if b]
    else:
        raise _error(inst, f"pixel data holds {nfrag} fragments for NumberOfFrames {n}, and the frames' "
                     "boundaries cannot be found")
    pos_arr = np.asarray(frag_pos, dtype=np.int64)
    end_arr = pos_arr + 8 + np.asarray(frag_len, dtype=np.int64)
    idx = np.asarray(first_frags, dtype=np.int64)
    last = np.empty(n, np.int64)
    last[:-1] = idx[1:] - 1
    last[-1] = nfrag - 1
    starts = pos_arr[idx]
    return starts, end_arr[last] - starts


def tile_table(instances: list[DicomInstance], file_ids: np.ndarray, frame_numbers: np.ndarray,
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(offsets, bytecounts, file_ids) of a tile grid whose tiles are frames ``frame_numbers`` (-1: missing)
    of ``instances[file_ids]``; builds (once) the frame index of each instance the grid uses."""
    offsets = np.zeros(frame_numbers.shape, np.int64)
    counts = np.zeros(frame_numbers.shape, np.int64)
    present = frame_numbers >= 0
    ids = file_ids[present]
    one_file = ids.size > 0 and bool((ids == ids[0]).all())  # the usual level: no sort, no mask per file
    for f in (ids[:1] if one_file else np.unique(ids)):
        inst = instances[int(f)]
        sel = present if one_file else present & (file_ids == f)
        frames = frame_numbers[sel]
        if frames.max() >= inst.frames:
            raise _error(inst, f"frame {int(frames.max())} is past NumberOfFrames {inst.frames}")
        table_off, table_len = inst.frame_table()
        offsets[sel] = table_off[frames]
        counts[sel] = table_len[frames]
    return offsets, counts, np.where(present, file_ids, 0).astype(np.int64)
