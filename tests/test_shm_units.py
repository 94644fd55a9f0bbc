"""Out-of-band buffers in memfd segments, in this process: bytearray and
memoryview out of band, a custom dump function, segments that cannot be
made, many mappings at once, and the worker's mapping cache."""

from __future__ import annotations

import mmap
import os
import pickle

import numpy as np
import pytest

from parmap import _shm, _shm_cache


def _roundtrip(obj: object, threshold: int | None, **kw: object) -> tuple[object, _shm.Pickled]:
    pickled = _shm.dumps(obj, threshold, **kw)  # type: ignore[arg-type]
    maps = _shm.map_segments([os.dup(s.fd) for s in pickled.segments])
    for s in pickled.segments:
        s.close()
    return _shm.loads(pickled.data, pickled.refs, maps), pickled


def test_a_memoryview_goes_out_of_band() -> None:
    view = memoryview(bytes(os.urandom(8192)))
    back, pickled = _roundtrip([view, b"small"], 4096)
    assert pickled.refs == ((0, 0, 8192),)
    assert len(pickled.data) < 4096
    assert isinstance(back, list)
    assert bytes(back[0]) == bytes(view)
    assert isinstance(back[0], memoryview)
    assert pickled.nbytes == len(pickled.data) + 8192


def test_a_dump_function_is_used_with_and_without_segments() -> None:
    arr = np.arange(4096, dtype=np.int64)
    back, pickled = _roundtrip(arr, 1024, dump=pickle.dumps)
    assert pickled.refs
    assert np.array_equal(back, arr)  # type: ignore[arg-type]
    back, pickled = _roundtrip(arr, None, dump=pickle.dumps)
    assert pickled.refs == ()
    assert pickled.segments == ()
    assert np.array_equal(back, arr)  # type: ignore[arg-type]


def test_a_segment_of_impossible_size_closes_its_descriptor() -> None:
    before = len(os.listdir("/proc/self/fd"))
    with pytest.raises((OSError, ValueError)):
        _shm.Segment(-1)
    assert len(os.listdir("/proc/self/fd")) == before


def test_past_the_tracked_maps_segments_are_copied() -> None:
    seg = _shm.Segment(mmap.PAGESIZE)
    seg.write(0, memoryview(b"abc"))
    # Python 3.11 and 3.12: each mapping holds a descriptor, so few are kept.
    held = [_shm.map_fd(seg.fd, seg.size) for _ in range(_shm.MAX_TRACKED_MAPS)]
    copied = _shm.map_fd(seg.fd, seg.size)
    assert isinstance(copied, bytearray)
    assert bytes(copied[:3]) == b"abc"
    for m in held:
        if isinstance(m, mmap.mmap):
            m.close()
    del held
    seg.close()


def test_written_of_a_closed_mapping_is_unknown() -> None:
    seg = _shm.Segment(mmap.PAGESIZE)
    m = mmap.mmap(seg.fd, seg.size, flags=mmap.MAP_PRIVATE, prot=_shm.PROT)
    seg.close()
    m[0]  # fault the page in, unwritten
    assert _shm_cache.written(m) is False
    m[0] = 1
    assert _shm_cache.written(m) is True
    m.close()
    assert _shm_cache.written(m) is None


def test_the_cache_reuses_an_unwritten_mapping_and_remaps_a_written_one() -> None:
    size = _shm_cache.CACHE_MIN_SIZE
    seg = _shm.Segment(size)
    seg.write(0, memoryview(b"first"))
    cache = _shm_cache.MappingCache()
    assert cache._enabled()
    (a,) = cache.map_segments([os.dup(seg.fd)], job_id=1)
    assert isinstance(a, mmap.mmap)
    assert a[:5] == b"first"
    (b,) = cache.map_segments([os.dup(seg.fd)], job_id=1)
    assert b is a  # nothing was written: the same mapping
    assert len(cache) == 1
    b[0:5] = b"WRITE"
    (c,) = cache.map_segments([os.dup(seg.fd)], job_id=1)
    assert c is not a
    assert isinstance(c, mmap.mmap)
    assert c[:5] == b"first"  # a fresh copy-on-write view of the segment
    empty = _shm.Segment(0)
    assert cache.map_segments([os.dup(empty.fd)], job_id=1) == [None]
    seg.close()
    empty.close()


def test_a_memoryview_goes_out_of_band_and_a_bytearray_in_band() -> None:
    # As the README says: CPython's pickler writes a bytearray itself, so
    # only the memoryview of the same bytes reaches shared memory.
    data = bytearray(os.urandom(1 << 16))
    collector = _shm.Collector(1024)
    stream, refs = collector.dumps([data, memoryview(data)])
    assert [length for _, _, length in refs] == [len(data)]
    assert len(stream) > len(data)  # the bytearray's bytes are in the stream
    back = _shm.loads(stream, refs, [bytes(data)])
    assert back[0] == data and isinstance(back[0], bytearray)
    assert bytes(back[1]) == bytes(data)
