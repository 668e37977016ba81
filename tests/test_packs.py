"""Pack files in the cache: a clean of many small chunks writes one pack, and every
cache mechanism (reads, copies, existence, freshening, gc, prune, quarantine, fsck)
treats a packed object as it treats a loose one."""

from __future__ import annotations

import errno
import os
import signal
import struct
import time

import numpy as np
import pytest
from helpers import cached_object_path, run_python

from theta_zarr import chunking, codecs, gc, packs
from theta_zarr.cache import QUARANTINE, RAW_HEADER, Cache, QuarantinedError
from theta_zarr.chunkwriter import ChunkWriter
from theta_zarr.dtypes import by_name
from theta_zarr.objects import MissingObjectError, object_key


def small_tensors(n: int, seed: int = 0, size: int = 256) -> dict[str, np.ndarray]:
    """``n`` float32 tensors of ``size`` elements (1 KiB: above the inline limit)."""
    rng = np.random.default_rng(seed)
    return {f"experts.{i}.w": rng.standard_normal(size, dtype=np.float32) for i in range(n)}


def write(cache: Cache, tensors: dict[str, np.ndarray], workers: int = 2) -> dict:
    writer = ChunkWriter(cache, workers=workers)
    with writer:
        for name, arr in tensors.items():
            writer.add_buffer(name, by_name("float32"), arr.shape, memoryview(arr).cast("B"))
        return writer.finish()


def loose_objects(cache: Cache) -> list[str]:
    return [f for _, _, files in os.walk(os.path.join(cache.root, "objects")) for f in files]


def pack_files(cache: Cache) -> list[str]:
    return packs.list_packs(os.path.join(cache.root, packs.FOLDER))


def flip_last_byte(path: str, entry: tuple[int, int]) -> None:
    """Corrupt the last byte of the packed object at ``entry`` (offset, length)."""
    offset, length = entry
    os.chmod(path, 0o644)
    with open(path, "r+b") as f:
        f.seek(offset + length - 1)
        last = f.read(1)
        f.seek(offset + length - 1)
        f.write(b"\xff" if last != b"\xff" else b"\x00")


def age(path: str, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_a_clean_of_many_small_chunks_writes_one_pack_and_every_read_finds_them(tmp_path):
    cache = Cache(str(tmp_path / "cache"))
    tensors = small_tensors(packs.PACK_MIN + 50)
    entries = write(cache, tensors)
    assert loose_objects(cache) == []
    assert len(pack_files(cache)) == 1
    digests = [e.chunks[0] for e in entries.values()]

    fresh = Cache(cache.root)  # another process: reads the pack's index from disk
    assert fresh.missing(digests) == set()
    assert all(fresh.has(d) for d in digests)
    listed = {d: size for d, size, _ in fresh.iter_digests()}
    assert set(listed) == set(digests)
    for name, arr in tensors.items():
        d = entries[name].chunks[0]
        assert bytes(fresh.get(d)) == arr.tobytes()
        assert listed[d] == len(codecs.header("raw")) + arr.nbytes
    out = os.open(tmp_path / "out", os.O_RDWR | os.O_CREAT)
    try:
        for i, (name, arr) in enumerate(tensors.items()):
            fresh.copy_to(entries[name].chunks[0], out, i * arr.nbytes, arr.nbytes)
        got = os.pread(out, 1 << 20, 0)
    finally:
        os.close(out)
    assert got == b"".join(a.tobytes() for a in tensors.values())
    # a second clean of the same tensors writes nothing
    writer = ChunkWriter(fresh, workers=2)
    with writer:
        for name, arr in tensors.items():
            writer.add_buffer(name, by_name("float32"), arr.shape, memoryview(arr).cast("B"))
        writer.finish()
    assert writer.stats.new_objects == 0 and len(pack_files(fresh)) == 1


def test_objects_added_together_across_the_pack_threshold_are_all_packed(tmp_path):
    """A batch that starts the pack part way, with a repeat of a held object and one
    inside the batch: each is stored once, and its size is said once."""
    cache = Cache(str(tmp_path / "cache"))
    packer = cache.packer()
    objects = {chunking.digest(bytes([i % 256, i // 256]) * 600): bytes([i % 256]) * 640
               for i in range(packs.PACK_MIN + 5)}
    items = list(objects.items())
    held = items[:packs.PACK_MIN - 2]
    assert packer.add_many([(d, [o]) for d, o in held]) == [640] * len(held)
    rest = items[packs.PACK_MIN - 2:]
    batch = [(d, [o]) for d, o in rest[:3]] + [(held[0][0], [held[0][1]])] + \
        [(d, [o]) for d, o in rest[3:]] + [(rest[0][0], [rest[0][1]])]
    assert packer.add_many(batch) == [640] * 3 + [0] + [640] * (len(rest) - 3) + [0]
    packer.commit()
    assert loose_objects(cache) == [] and len(pack_files(cache)) == 1
    fresh = Cache(cache.root)
    assert fresh.missing(list(objects)) == set()


def test_a_few_new_small_chunks_stay_loose(tmp_path):
    cache = Cache(str(tmp_path / "cache"))
    entries = write(cache, small_tensors(packs.PACK_MIN - 1))
    assert pack_files(cache) == []
    assert len(loose_objects(cache)) == len(entries)


def test_a_pack_another_process_wrote_after_this_one_looked_is_found(tmp_path):
    reader = Cache(str(tmp_path / "cache"))
    assert reader.missing([chunking.digest(b"x" * 600)]) != set()  # packs read (none)
    entries = write(Cache(reader.root), small_tensors(packs.PACK_MIN))
    d = next(iter(entries.values())).chunks[0]
    assert reader.missing([d]) == set()
    assert len(bytes(reader.get(d))) == 1024


def test_looking_again_for_an_absent_object_reuses_the_table_of_packed_digests(tmp_path):
    """Every object the cache lacked (a lazy read, ``has``) rebuilt the table of every
    packed digest from every pack's index: 2,000 misses against 50,000 packed objects
    took 14 s.  It is rebuilt only when a pack comes or goes."""
    cache = Cache(str(tmp_path / "cache"))
    entries = write(cache, small_tensors(packs.PACK_MIN))
    reader = Cache(cache.root)
    absent = [chunking.digest(b"absent %d" % i * 100) for i in range(3)]
    table = reader._load_packs()
    assert not any(reader.has(d) for d in absent)
    assert reader.missing(absent) == set(absent)
    with pytest.raises(MissingObjectError):
        reader.get(absent[0])
    assert reader._load_packs(force=True) is table
    # a pack another process writes is still found, and one it removes is gone
    more = write(Cache(cache.root), small_tensors(packs.PACK_MIN, seed=1))
    d = next(iter(more.values())).chunks[0]
    assert reader.has(d) and reader._load_packs(force=True) is not table
    for path in pack_files(reader):
        if d not in packs.read_index(path).entries:
            os.unlink(path)
    assert not {e.chunks[0] for e in entries.values()} & set(reader._load_packs(force=True))


def test_digests_with_zero_bytes_at_either_end_round_trip(tmp_path):
    """numpy's fixed-width bytes type drops trailing zero bytes: one digest in 256 ends
    with one, and its object was then missing from its own pack."""
    folder = str(tmp_path / "packs")
    digests = ["blake3:" + "00" * 31 + "01", "blake3:" + "ab" * 31 + "00",
               "blake3:" + "00" * 32, "blake3:" + "ff" * 32]
    [path] = packs.write_pack(folder, ((d, d.encode()) for d in digests))
    pack = packs.read_index(path)
    assert sorted(pack.entries) == sorted(digests)
    for d in digests:
        assert pack.read(*pack.entries[d]) == d.encode()


def _corrupt_index(path: str, how: str) -> None:
    data = bytearray(open(path, "rb").read())
    magic, count, start = packs.TRAILER.unpack(data[-packs.TRAILER.size:])
    entry = packs.ENTRY.size
    if how == "offset":  # the first entry points past the objects
        data[start + 32:start + 40] = struct.pack("<Q", start)
    elif how == "length":
        data[start + 40:start + 48] = struct.pack("<Q", packs.MAX_ENTRY + 1)
    elif how == "order":  # two entries swapped
        first, second = data[start:start + entry], data[start + entry:start + 2 * entry]
        data[start:start + 2 * entry] = second + first
    elif how == "trailer":
        data[-packs.TRAILER.size:] = packs.TRAILER.pack(magic, count + 1, start)
    elif how == "cut":
        data = data[:start + entry]
    elif how == "empty-entry":  # an object of 0 bytes: none is that small
        data[start + 40:start + 48] = struct.pack("<Q", 0)
    elif how == "overlap":  # the first entry spans every object: they add up to too much
        data[start + 32:start + 48] = struct.pack("<QQ", 0, start)
    elif how == "oversized":  # a sparse file whose trailer claims more objects than fit
        os.chmod(path, 0o644)
        with open(path, "r+b") as f:
            size = packs.PACK_MAX + packs.MAX_ENTRY + 1
            f.truncate(size)
            f.seek(size)
            f.write(packs.TRAILER.pack(magic, 0, size))
        return
    os.chmod(path, 0o644)
    open(path, "wb").write(bytes(data))


@pytest.mark.parametrize("how", ["offset", "length", "order", "trailer", "cut", "empty-entry",
                                 "overlap", "oversized"])
def test_a_malformed_pack_index_is_refused_and_fsck_names_it(tmp_path, how):
    cache = Cache(str(tmp_path / "cache"))
    entries = write(cache, small_tensors(packs.PACK_MIN))
    [path] = pack_files(cache)
    _corrupt_index(path, how)
    with pytest.raises(packs.PackError, match=os.path.basename(path)):
        packs.read_index(path)
    fresh = Cache(cache.root)
    d = next(iter(entries.values())).chunks[0]
    with pytest.raises(MissingObjectError):
        fresh.get(d)
    problems = gc.check_stored(fresh, set())
    assert len(problems) == 1 and os.path.basename(path) in problems[0]
    # gc (here the node cache's prune, the same step) moves it to quarantine, where it is
    # kept a grace period as corrupt objects are; fsck no longer names it
    gc.prune(fresh, time.time() - 3600)
    assert pack_files(fresh) == []
    assert os.listdir(os.path.join(cache.root, QUARANTINE)) == [os.path.basename(path)]
    assert gc.check_stored(Cache(cache.root), set()) == []


def test_a_malformed_pack_is_read_once_and_forgotten_once_replaced(tmp_path):
    """A malformed pack's index was read again at every look for an absent object (the
    whole index, where the fault is at its end), and it stayed among the bad packs of a
    process after a good pack of the same name replaced it."""
    cache = Cache(str(tmp_path / "cache"))
    entries = write(cache, small_tensors(packs.PACK_MIN))
    digests = [e.chunks[0] for e in entries.values()]
    [path] = pack_files(cache)
    good = open(path, "rb").read()
    _corrupt_index(path, "order")
    reader = Cache(cache.root)
    assert reader.missing(digests) == set(digests) and list(reader.bad_packs) == [path]
    # the good bytes written back in place, the bad file's date kept: not read again
    st = os.stat(path)
    with open(path, "r+b") as f:
        f.write(good)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert reader.missing(digests) == set(digests) and list(reader.bad_packs) == [path]
    os.utime(path)  # a pack written in its place
    assert reader.missing(digests) == set() and reader.bad_packs == {}
    junk = os.path.join(os.path.dirname(path), f"pack-junk{packs.SUFFIX}")
    with open(junk, "wb") as f:
        f.write(b"junk" * 10)
    absent = chunking.digest(b"absent" * 200)
    assert reader.missing([absent]) == {absent} and list(reader.bad_packs) == [junk]
    os.unlink(junk)
    assert reader.missing([absent]) == {absent} and reader.bad_packs == {}


def test_a_pack_that_cannot_be_opened_is_named_by_fsck(tmp_path):
    """A pack that cannot be opened (a symlink loop here; permissions, an I/O error) was
    skipped without a word: its objects read as missing and fsck never named the pack."""
    cache = Cache(str(tmp_path / "cache"))
    entries = write(cache, small_tensors(packs.PACK_MIN))
    [path] = pack_files(cache)
    os.unlink(path)
    os.symlink(os.path.basename(path), path)  # points at itself
    fresh = Cache(cache.root)
    assert fresh.missing([e.chunks[0] for e in entries.values()]) != set()
    problems = gc.check_stored(fresh, set())
    assert problems == [f"cannot read pack {os.path.basename(path)} in {fresh.url}: "
                        f"{os.strerror(errno.ELOOP)}"]


def test_a_corrupt_packed_object_takes_its_pack_to_quarantine_and_the_rest_stay(tmp_path):
    cache = Cache(str(tmp_path / "cache"))
    tensors = small_tensors(packs.PACK_MIN)
    entries = write(cache, tensors)
    [path] = pack_files(cache)
    pack = packs.read_index(path)
    bad = entries["experts.7.w"].chunks[0]
    flip_last_byte(path, pack.entries[bad])
    reader = Cache(cache.root)
    with pytest.raises(QuarantinedError, match=bad):
        reader.get(bad)
    assert pack_files(reader) == []
    assert os.listdir(os.path.join(cache.root, QUARANTINE)) == [os.path.basename(path)]
    assert reader.missing([e.chunks[0] for e in entries.values()]) == {bad}
    for name, arr in tensors.items():
        if name != "experts.7.w":
            assert bytes(reader.get(entries[name].chunks[0])) == arr.tobytes()
    # the next clean of the file stores the chunk again
    write(reader, tensors)
    assert bytes(reader.get(bad)) == tensors["experts.7.w"].tobytes()


def test_a_corrupt_loose_copy_of_a_packed_object_is_quarantined_alone(tmp_path):
    """Two cleans running at once can store one object both in a pack and loose.  Where
    the loose copy went bad, reading it moved the pack to quarantine instead (its good copy
    of the object with it, the rest exploded loose), and the corrupt file stayed."""
    cache = Cache(str(tmp_path / "cache"))
    tensors = small_tensors(packs.PACK_MIN)
    entries = write(cache, tensors)
    [path] = pack_files(cache)
    d = entries["experts.7.w"].chunks[0]
    Cache(cache.root).put(d, tensors["experts.7.w"].tobytes())  # the other clean's copy
    loose = cached_object_path(cache.root, d)
    os.chmod(loose, 0o644)
    loose.write_bytes(loose.read_bytes()[:-1] + b"\0")
    with pytest.raises(QuarantinedError, match="moved it to"):
        Cache(cache.root).get(d)
    assert pack_files(cache) == [path] and loose_objects(cache) == []
    assert bytes(Cache(cache.root).get(d)) == tensors["experts.7.w"].tobytes()


def test_a_corrupt_packed_object_leaves_its_pack_where_the_rest_cannot_be_stored(tmp_path):
    """The pack went to quarantine even when its other objects could not be stored loose
    (a full disk): every object of the pack left the cache with the corrupt one."""
    cache = Cache(str(tmp_path / "cache"))
    tensors = small_tensors(packs.PACK_MIN)
    entries = write(cache, tensors)
    [path] = pack_files(cache)
    bad = entries["experts.7.w"].chunks[0]
    flip_last_byte(path, packs.read_index(path).entries[bad])
    # a file where the loose objects' folder goes: every loose write fails, as on a full disk
    with open(os.path.join(cache.root, "objects"), "wb"):
        pass
    reader = Cache(cache.root)
    with pytest.raises(QuarantinedError, match=f"{bad}.*stays in place.*could not be stored"):
        reader.get(bad)
    assert pack_files(reader) == [path]
    assert not os.path.exists(os.path.join(cache.root, QUARANTINE))
    for name, arr in tensors.items():
        if name != "experts.7.w":
            assert bytes(reader.get(entries[name].chunks[0])) == arr.tobytes()
    # once loose objects can be written, the next read quarantines the pack as usual
    os.unlink(os.path.join(cache.root, "objects"))
    with pytest.raises(QuarantinedError, match="moved its pack to"):
        Cache(cache.root).get(bad)
    assert Cache(cache.root).missing([e.chunks[0] for e in entries.values()]) == {bad}


def test_gc_deletes_dead_packed_objects_and_keeps_the_live_ones(tmp_path):
    cache = Cache(str(tmp_path / "cache"))
    tensors = small_tensors(packs.PACK_MIN + 20)
    entries = write(cache, tensors)
    [path] = pack_files(cache)
    age(path, 7200)
    digests = [e.chunks[0] for e in entries.values()]
    live, dead = set(digests[:30]), set(digests[30:])
    cutoff = time.time() - 3600
    sweep = gc.plan_objects(cache, live, cutoff)
    assert {k for k, _ in sweep.keys} == {object_key(d) for d in dead}
    gc.delete_unused(cache, sweep, cutoff)
    assert len(sweep.keys) == len(dead)
    fresh = Cache(cache.root)
    assert fresh.missing(digests) == dead
    for name, e in entries.items():
        if e.chunks[0] in live:
            assert bytes(fresh.get(e.chunks[0])) == tensors[name].tobytes()
    assert path not in pack_files(fresh)


def test_gc_deletes_an_object_from_every_pack_holding_it(tmp_path):
    """Two cleans running at once can pack the same objects twice: gc deleted them from
    the pack its lookup table named, reported them deleted, and left the other copy."""
    cache = Cache(str(tmp_path / "cache"))
    entries = write(cache, small_tensors(packs.PACK_MIN))
    digests = {e.chunks[0] for e in entries.values()}
    extra = os.urandom(1024)  # the second pack's index differs, so does its name
    second = [(d, cache.get_encoded(d)) for d in sorted(digests)]
    second.append((chunking.digest(extra), codecs.header("raw") + extra))
    packs.write_pack(os.path.join(cache.root, packs.FOLDER), iter(second))
    assert len(pack_files(cache)) == 2
    for path in pack_files(cache):
        age(path, 7200)
    cutoff = time.time() - 3600
    sweep = gc.plan_objects(Cache(cache.root), set(), cutoff)
    gc.delete_unused(Cache(cache.root), sweep, cutoff)
    assert len(sweep.keys) == len(digests) + 1
    assert pack_files(cache) == []
    assert Cache(cache.root).missing(digests) == digests


def test_gc_keeps_a_pack_a_clean_freshened_since_it_listed_it(tmp_path):
    cache = Cache(str(tmp_path / "cache"))
    tensors = small_tensors(packs.PACK_MIN)
    entries = write(cache, tensors)
    [path] = pack_files(cache)
    age(path, 7200)
    cutoff = time.time() - 3600
    sweep = gc.plan_objects(cache, set(), cutoff)
    assert len(sweep.keys) == len(entries)
    write(Cache(cache.root), tensors)  # a clean finds them all: the pack is renewed
    gc.delete_unused(cache, sweep, cutoff)
    assert sweep.keys == []
    assert Cache(cache.root).missing([e.chunks[0] for e in entries.values()]) == set()


def test_prune_trims_packs_by_age_as_it_trims_loose_objects(tmp_path):
    cache = Cache(str(tmp_path / "cache"))
    old = write(cache, small_tensors(packs.PACK_MIN, seed=1))
    [old_pack] = pack_files(cache)
    age(old_pack, 3 * 86400)
    new = write(cache, small_tensors(packs.PACK_MIN, seed=2))
    gc.prune(cache, time.time() - 86400)
    fresh = Cache(cache.root)
    assert fresh.missing([e.chunks[0] for e in old.values()]) == \
        {e.chunks[0] for e in old.values()}
    assert fresh.missing([e.chunks[0] for e in new.values()]) == set()
    assert len(pack_files(fresh)) == 1


def test_prune_by_size_keeps_the_date_of_the_packed_objects_it_keeps(tmp_path):
    """A pack rewritten without the objects a prune --max-size dropped was dated now: the
    old objects it kept looked most recently used, and the next prune evicted a newer
    checkpoint's chunks instead of them."""
    cache = Cache(str(tmp_path / "cache"))
    old = [e.chunks[0] for e in write(cache, small_tensors(packs.PACK_MIN, seed=1)).values()]
    [old_pack] = pack_files(cache)
    age(old_pack, 3 * 3600)
    then = os.stat(old_pack).st_mtime
    new = [e.chunks[0] for e in write(cache, small_tensors(packs.PACK_MIN, seed=2)).values()]
    [new_pack] = [p for p in pack_files(cache) if p != old_pack]
    age(new_pack, 2 * 3600)
    size = len(codecs.header("raw")) + 1024  # of each object
    cutoff = time.time() - 3600
    gc.prune(cache, cutoff, max_bytes=size * (packs.PACK_MIN + packs.PACK_MIN // 2))
    [kept] = [p for p in pack_files(cache) if p != new_pack]
    assert os.stat(kept).st_mtime == pytest.approx(then, abs=1)
    gc.prune(cache, cutoff, max_bytes=size * packs.PACK_MIN)  # the old ones go first
    fresh = Cache(cache.root)
    assert fresh.missing(new) == set() and fresh.missing(old) == set(old)


def test_a_failed_clean_leaves_no_pack(tmp_path):
    cache = Cache(str(tmp_path / "cache"))
    writer = ChunkWriter(cache, workers=2)
    with pytest.raises(ValueError), writer:
        for name, arr in small_tensors(packs.PACK_MIN * 2).items():
            writer.add_buffer(name, by_name("float32"), arr.shape, memoryview(arr).cast("B"))
        writer.add_buffer("short", by_name("float32"), (300,), memoryview(b"x" * 8))
    assert pack_files(cache) == []
    assert [n for _, _, files in os.walk(cache.root) for n in files] == []


@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
def test_a_clean_ended_by_a_signal_leaves_no_temporary_pack(tmp_path, signame):
    """Ctrl-C (or a job's timeout) during ``git add`` of many small tensors ends the
    filter at once: the pack it was writing, up to ``PACK_MAX`` bytes, stayed in the
    cache's packs folder until gc's grace period ran out."""
    root = tmp_path / "cache"
    proc = run_python(f"""
        import os, signal
        from theta_zarr import chunking, codecs, interrupts, packs
        from theta_zarr.cache import Cache
        interrupts.install()
        packer = Cache({str(root)!r}).packer()
        for i in range(packs.PACK_MIN + 10):
            raw = i.to_bytes(4, "little") * 256
            packer.add(chunking.digest(raw), codecs.encode(raw, "raw"))
        os.kill(os.getpid(), signal.{signame})
        print("unreachable")
    """)
    assert proc.returncode == 128 + getattr(signal, signame) and proc.stdout == b""
    assert os.listdir(root / packs.FOLDER) == []


def test_a_pack_whose_write_failed_is_never_committed(tmp_path):
    """A write that failed partway (a full disk: here a file size limit) left part of a
    block in the pack; a fetch, which commits what it fetched even on error, then wrote
    an index whose offsets no longer matched the file once there was room again: every
    object after the failed one was corrupt.  The pack is dropped, and the writer refuses
    further objects."""
    folder = tmp_path / "packs"
    proc = run_python(f"""
        import os, resource, signal
        from theta_zarr import chunking, codecs, packs
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # an over-long write fails instead
        writer = packs.PackWriter({str(folder)!r})
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (packs.WRITE_BLOCK * 3 // 2, hard))
        for i in range(3 * packs.WRITE_BLOCK // 1024):
            raw = i.to_bytes(4, "little") * 256
            try:
                writer.add(chunking.digest(raw), codecs.encode(raw, "raw"))
            except OSError:
                resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))  # room again
                print("failed", flush=True)
                break
        for call in (lambda: writer.add(chunking.digest(b"x" * 1024), [b"x" * 1024]),
                     writer.commit):
            try:
                call()
                print("went on")
            except OSError:
                print("refused")
        print(os.listdir({str(folder)!r}))
    """)
    assert proc.stdout.decode().split("\n") == ["failed", "refused", "refused", "[]", ""], \
        proc.stderr.decode()


def test_one_process_cleaning_again_finds_what_its_earlier_clean_packed(tmp_path):
    """``watch`` keeps one cache for hours: a step's unchanged small chunks must be found
    in the pack its previous step wrote, not stored again."""
    cache = Cache(str(tmp_path / "cache"))
    tensors = small_tensors(packs.PACK_MIN + 10)
    write(cache, tensors)
    tensors["experts.0.w"] = tensors["experts.0.w"] + 1
    writer = ChunkWriter(cache, workers=2)
    with writer:
        for name, arr in tensors.items():
            writer.add_buffer(name, by_name("float32"), arr.shape, memoryview(arr).cast("B"))
        writer.finish()
    assert writer.stats.new_objects == 1
    assert len(pack_files(cache)) == 1 and len(loose_objects(cache)) == 1


def test_a_file_of_packed_chunks_is_written_whole_and_verified(tmp_path):
    """The file writer joins neighbouring packed chunks into one write: the safetensors
    file comes back byte for byte; a corrupt packed chunk is refused."""
    from helpers import clean_manifest
    from safetensors.numpy import save

    from theta_zarr.filewriter import write_checkpoint

    data = save(small_tensors(packs.PACK_MIN + 5))
    m = clean_manifest(data, tmp_path, "experts.safetensors")
    cache = Cache(str(tmp_path / "cache"))
    assert len(pack_files(cache)) == 1 and loose_objects(cache) == []

    def rebuilt() -> bytes:
        fd = os.open(tmp_path / "out", os.O_RDWR | os.O_CREAT | os.O_TRUNC)
        try:
            write_checkpoint(m, fd, Cache(cache.root), workers=2, name="out")
            return os.pread(fd, len(data) + 1, 0)
        finally:
            os.close(fd)

    assert rebuilt() == data
    [path] = pack_files(cache)
    os.chmod(path, 0o644)
    with open(path, "r+b") as f:
        f.seek(100)  # inside the first object's payload
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 1]))
    with pytest.raises(QuarantinedError):
        rebuilt()


def test_a_run_of_packed_chunks_is_read_at_once_and_each_chunk_verified(tmp_path,
                                                                       monkeypatch):
    """A checkout of 10^5 small tensors read each packed chunk with a call and a pread of
    its own; back-to-back objects of one pack are now read together, each still checked
    against its digest (a bad one, or one not packed, is left to the single read)."""
    cache = Cache(str(tmp_path / "cache"))
    tensors = small_tensors(packs.PACK_MIN + 20)
    entries = write(cache, tensors, workers=1)
    loose = os.urandom(1024)
    cache.put(chunking.digest(loose), loose)
    chunks = [(e.chunks[0], e.nbytes) for e in entries.values()]
    chunks.append((chunking.digest(loose), len(loose)))
    [path] = pack_files(cache)
    flip_last_byte(path, packs.read_index(path).entries[chunks[7][0]])
    reads = []
    real = packs.Pack.read
    monkeypatch.setattr(packs.Pack, "read", lambda self, *a: reads.append(a) or real(self, *a))
    got = Cache(cache.root).read_packed_raws(chunks)
    assert len(reads) == 1 and reads[0][1] == sum(n + len(RAW_HEADER) for _, n in chunks[:-1])
    raws = list(tensors.values())
    for i, (piece, (_, n)) in enumerate(zip(got, chunks, strict=True)):
        if i == 7 or i == len(chunks) - 1:  # the corrupt one, the loose one
            assert piece is None
        else:
            assert bytes(piece) == raws[i].tobytes() and len(piece) == n
    assert os.path.exists(path)  # the corrupt object is for the single read to report


def test_a_pack_cut_short_after_it_was_read_is_quarantined_and_its_readable_part_kept(
        tmp_path):
    cache = Cache(str(tmp_path / "cache"))
    tensors = small_tensors(packs.PACK_MIN)
    entries = write(cache, tensors)
    [path] = pack_files(cache)
    reader = Cache(cache.root)
    assert reader.missing([e.chunks[0] for e in entries.values()]) == set()  # index read
    pack = packs.read_index(path)
    order = sorted(pack.entries, key=lambda d: pack.entries[d][0])
    last = order[-1]
    os.chmod(path, 0o644)
    os.truncate(path, pack.entries[last][0] + 10)  # the last object cut, the index gone
    with pytest.raises(QuarantinedError, match=last):
        reader.get(last)
    assert pack_files(reader) == []
    assert reader.missing(order) == {last}
    name = next(n for n, e in entries.items() if e.chunks[0] == order[0])
    assert bytes(reader.get(order[0])) == tensors[name].tobytes()


def test_a_pack_holds_at_most_max_objects_and_an_index_claiming_more_is_refused(
        tmp_path, monkeypatch):
    """The count is bounded as the bytes are: a hostile index of 3 x 10^7 tiny entries
    would otherwise cost gigabytes to hold."""
    folder = str(tmp_path / "packs")
    digests = [chunking.digest(bytes([i]) * 600) for i in range(5)]
    monkeypatch.setattr(packs, "MAX_OBJECTS", 3)
    written = packs.write_pack(folder, ((d, d.encode()) for d in digests))
    assert len(written) == 2  # the writer closed the first pack at 3 objects
    assert sorted(d for p in written for d in packs.read_index(p).entries) == sorted(digests)
    monkeypatch.setattr(packs, "MAX_OBJECTS", 10)
    [five] = packs.write_pack(str(tmp_path / "more"), ((d, d.encode()) for d in digests))
    monkeypatch.setattr(packs, "MAX_OBJECTS", 4)
    with pytest.raises(packs.PackError, match="more than a pack holds"):
        packs.read_index(five)


def test_a_process_that_handles_large_chunks_only_never_reads_a_packs_index(
        tmp_path, monkeypatch):
    """Every git command that starts the filter read every pack index before its first
    lookup (1 s per 10^6 packed objects): a 4 MiB chunk is never in a pack, so a clean,
    an existence check and a checkout of large chunks leave the packs unread."""
    root = str(tmp_path / "cache")
    write(Cache(root), small_tensors(packs.PACK_MIN))  # a pack in the cache
    reads = []
    real = packs.read_index
    monkeypatch.setattr(packs, "read_index", lambda path: reads.append(path) or real(path))
    cache = Cache(root)
    big = {"w": np.arange(1 << 17, dtype=np.float32)}  # one 512 KiB chunk
    entries = write(cache, big)
    d = entries["w"].chunks[0]
    assert cache.missing([d]) == set() and cache.has(d)
    fd = os.open(tmp_path / "out", os.O_RDWR | os.O_CREAT)
    try:
        cache.copy_to(d, fd, 0, big["w"].nbytes)
    finally:
        os.close(fd)
    assert bytes(cache.get(d)) == big["w"].tobytes()
    # the file writer's batches of large chunks look in no pack either
    from theta_zarr.filewriter import write_checkpoint
    from theta_zarr.manifest import Manifest

    m = Manifest({"name": "safetensors", "order": ["w"]}, entries)
    fd = os.open(tmp_path / "out.safetensors", os.O_RDWR | os.O_CREAT)
    try:
        size = write_checkpoint(m, fd, cache, workers=2, name="out.safetensors")
        assert os.pread(fd, size, 0)[-big["w"].nbytes:] == big["w"].tobytes()
    finally:
        os.close(fd)
    assert reads == []
    # a small chunk still finds its pack
    small = small_tensors(1)["experts.0.w"]
    assert cache.missing([chunking.digest(small.tobytes())]) == set() and reads


def test_a_manifest_of_many_small_chunks_is_checked_against_the_packs_first(
        tmp_path, monkeypatch):
    """A checkout asks which chunks the cache lacks: for 10^5 packed chunks that was a
    ``stat`` of each one's loose path (none there), 0.35 s, before the packs were read."""
    from theta_zarr import checkpoint
    from theta_zarr.manifest import Manifest

    root = str(tmp_path / "cache")
    entries = write(Cache(root), small_tensors(packs.PACK_MIN))
    m = Manifest({"name": "safetensors", "order": list(entries)}, entries)
    many, some = Cache(root), Cache(root)
    looked = []
    real = os.path.exists
    monkeypatch.setattr(os.path, "exists", lambda p: looked.append(p) or real(p))
    assert checkpoint.missing_chunks(m, many) == set()
    assert looked == []
    # a few small chunks are looked for loose first (the packs stay unread if all are)
    assert checkpoint.missing_chunks(m, some, list(entries)[:3]) == set()
    assert len(looked) == 3


def test_a_clean_of_many_new_small_chunks_lists_the_loose_objects_once(tmp_path, monkeypatch):
    """Each new small chunk was looked for as a loose file before it was packed: 10^5
    ``stat`` calls on files that do not exist.  Past the first ``PACK_MIN`` the loose
    objects are listed once; one already stored loose is still found, not packed again."""
    cache = Cache(str(tmp_path / "cache"))
    tensors = small_tensors(3 * packs.PACK_MIN)
    names = list(tensors)
    late = tensors[names[-1]].tobytes()  # stored loose before the clean that meets it
    cache.put(chunking.digest(late), late)
    looked = []
    real = os.stat
    monkeypatch.setattr(os, "stat", lambda p, *a, **kw: (
        looked.append(p) if "/objects/" in str(p) else None) or real(p, *a, **kw))
    fresh = Cache(cache.root)
    entries = write(fresh, tensors)
    assert len(looked) <= packs.PACK_MIN + 1
    monkeypatch.setattr(os, "stat", real)
    [path] = pack_files(fresh)
    held = packs.read_index(path).entries
    assert chunking.digest(late) not in held and len(held) == len(tensors) - 1
    assert all(bytes(Cache(cache.root).get(e.chunks[0])) == tensors[n].tobytes()
               for n, e in entries.items())


def test_a_manifest_answered_from_its_stat_record_freshens_its_packs_without_a_stat_each(
        tmp_path, monkeypatch):
    """A re-add answered from the stat record freshens the manifest's chunks: for 10^5
    packed chunks that was a ``stat`` of each one's loose path first (about 1 s)."""
    from theta_zarr import checkpoint
    from theta_zarr.manifest import Manifest

    root = str(tmp_path / "cache")
    entries = write(Cache(root), small_tensors(packs.PACK_MIN + 10))
    m = Manifest({"name": "safetensors", "order": list(entries)}, entries)
    [path] = pack_files(Cache(root))
    age(path, 2 * 3600)
    aged = os.stat(path).st_mtime
    cache = Cache(root)
    looked = []
    real = os.stat
    monkeypatch.setattr(os, "stat", lambda p, *a, **kw: (
        looked.append(p) if "/objects/" in str(p) else None) or real(p, *a, **kw))
    assert checkpoint.freshen(cache, m) == set()
    assert looked == []
    monkeypatch.setattr(os, "stat", real)
    assert os.stat(path).st_mtime > aged + 3600  # freshened past FRESHEN_AFTER: gc keeps it
    os.unlink(path)  # gone (a gc): the caller is told to store them again
    assert checkpoint.freshen(Cache(root), m) == m.digests()
