"""Out-of-band buffers in memfd segments, in this process: bytearray and
memoryview out of band, in arguments, functions and result batches, a custom
pickler, segments that cannot be made, many mappings at once, and the
worker's mapping cache."""

from __future__ import annotations

import mmap
import os
import pickle

import cloudpickle  # type: ignore[import-untyped, unused-ignore]
import numpy as np
import pytest

from parmap import _codec, _shm, _shm_cache


def _roundtrip(obj: object, threshold: int | None, **kw: object) -> tuple[object, _shm.Pickled]:
    pickled = _shm.dumps(obj, threshold, **kw)  # type: ignore[arg-type]
    maps = _shm.map_segments([os.dup(s.fd) for s in pickled.segments])
    for s in pickled.segments:
        s.close()
    return _shm.loads(pickled.data, pickled.refs, maps), pickled


def test_a_memoryview_goes_out_of_band() -> None:
    view = memoryview(bytes(os.urandom(8192)))
    back, pickled = _roundtrip([view, b"small"], 4096)
    assert pickled.refs == ((0, 0, 8192, False),)
    assert len(pickled.data) < 4096
    assert isinstance(back, list)
    assert bytes(back[0]) == bytes(view)
    assert isinstance(back[0], memoryview)
    assert pickled.nbytes == len(pickled.data) + 8192


def test_a_pickler_class_is_used_with_and_without_segments() -> None:
    arr = np.arange(4096, dtype=np.int64)
    back, pickled = _roundtrip(arr, 1024, pickler=cloudpickle.Pickler)
    assert pickled.refs
    assert np.array_equal(back, arr)  # type: ignore[arg-type]
    back, pickled = _roundtrip(arr, None, pickler=cloudpickle.Pickler)
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


def test_a_large_bytearray_goes_out_of_band_and_comes_back_a_bytearray() -> None:
    data = bytearray(os.urandom(1 << 17))
    small = bytearray(b"x" * 100)
    back, pickled = _roundtrip([data, small, data, memoryview(data)], 1 << 16)
    # One buffer for the bytearray (sent once though named twice), one for
    # the memoryview; the small bytearray stays in the stream.
    assert [(length, as_bytearray) for _, _, length, as_bytearray in pickled.refs] == [
        (len(data), True),
        (len(data), False),
    ]
    assert len(pickled.data) < 1024
    assert isinstance(back, list)
    assert type(back[0]) is bytearray and back[0] == data
    assert back[2] is back[0]  # identity within one object survives
    assert type(back[1]) is bytearray and back[1] == small
    back[0][0] ^= 0xFF  # the receiver's copy is its own
    assert back[0] != data and bytes(back[3]) == bytes(data)


def test_a_bytearray_below_the_threshold_or_with_none_stays_in_the_stream() -> None:
    data = bytearray(os.urandom(1 << 17))
    for threshold in (1 << 18, None):
        back, pickled = _roundtrip(data, threshold)
        assert pickled.refs == () and pickled.segments == ()
        assert len(pickled.data) > len(data)
        assert type(back) is bytearray and back == data


def test_a_bytearray_bound_into_a_closure_goes_out_of_band_with_cloudpickle() -> None:
    data = bytearray(os.urandom(1 << 17))

    def size() -> int:
        return len(data)

    back, pickled = _roundtrip(size, 1 << 16, pickler=cloudpickle.Pickler)
    assert [as_bytearray for *_, as_bytearray in pickled.refs] == [True]
    assert len(pickled.data) < len(data)
    assert back() == len(data)  # type: ignore[operator]


def test_the_same_bytearray_in_two_messages_is_copied_once() -> None:
    data = bytearray(os.urandom(1 << 17))
    broadcast = _shm.Broadcast()
    first = _shm.Collector(1 << 16, broadcast)
    _, refs = first.dumps((data, 1))
    (segment,) = first.segments()
    second = _shm.Collector(1 << 16, broadcast)
    _, again = second.dumps((data, 2))
    fresh, *reused = second.segments()
    assert fresh.size == 0 and reused == [segment]  # nothing copied, the old one referred to
    assert again == ((1, 0, len(data), True),) and refs == ((0, 0, len(data), True),)
    segment.close()
    fresh.close()


def test_a_result_batch_sends_a_large_bytearray_out_of_band() -> None:
    data = bytearray(os.urandom(1 << 21))
    body, segments = _codec.encode_batch([data, 7, "text"], 0.5, [], 1 << 20)
    assert len(segments) == 1 and len(body) < 4096
    maps = _shm.map_segments([os.dup(segments[0].fd)])
    segments[0].close()
    tag, values, errors, pickled, busy, _ = pickle.loads(body)
    assert tag == _codec.BATCH and errors is None and busy == 0.5
    values, failed = _codec.decode_batch(values, errors, pickled, maps)
    assert failed is None
    assert values[1:] == [7, "text"]
    assert type(values[0]) is bytearray and values[0] == data
    # Without a threshold, the same batch is one plain pickle.
    body, segments = _codec.encode_batch([data, 7], 0.5, [], None)
    assert segments == () and len(body) > len(data)


def test_a_buffer_below_the_threshold_but_past_a_frame_stays_in_band() -> None:
    # The pickler writes a buffer of 64 KiB and more to the file on its own
    # (as a PickleBuffer, for an array): that write must pass through intact.
    for arr in (np.arange(20_000.0).reshape(100, 200), np.asfortranarray(np.ones((300, 300)))):
        back, pickled = _roundtrip({"a": arr, "b": bytes(70_000)}, 1 << 20)
        assert pickled.refs == ()
        assert isinstance(back, dict) and np.array_equal(back["a"], arr)
        assert back["b"] == bytes(70_000)
