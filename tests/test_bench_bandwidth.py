"""tinyfbi.bench.bandwidth: the L3 size read from sysfs, the count and independence of cold copies, and
the probe's sum (its speed is never asserted: wall-clock time is not tested)."""
import numpy as np

from kernels import bitpack
from tinyfbi.bench import bandwidth


def fake_cache(tmp_path, levels):
    for k, (level, size) in enumerate(levels):
        d = tmp_path / f"index{k}"
        d.mkdir()
        (d / "level").write_text(f"{level}\n")
        (d / "size").write_text(f"{size}\n")
    return tmp_path


def test_l3_bytes_is_the_largest_level(tmp_path):
    root = fake_cache(tmp_path, [(1, "32K"), (1, "32K"), (2, "512K"), (3, "32768K")])
    assert bandwidth.l3_bytes(root) == 32 << 20
    (tmp_path / "big").mkdir()
    assert bandwidth.l3_bytes(fake_cache(tmp_path / "big", [(2, "1M"), (3, "1G")])) == 1 << 30
    assert bandwidth.l3_bytes(tmp_path / "missing") is None


def test_cold_copies_fill_four_l3s_and_are_independent():
    l3 = 1 << 20
    a = np.arange(1000, dtype=np.float32)                              # 4000 bytes
    copies = bandwidth.cold_copies(a, l3)
    assert len(copies) == -(-bandwidth.COLD_FACTOR * l3 // a.nbytes)
    assert all(not np.shares_memory(c, a) and np.array_equal(c, a) for c in copies)
    assert bandwidth.cold_count(10 * l3, l3) == 2                      # never fewer than two
    w = np.random.default_rng(0).standard_normal((64, 512)).astype(np.float32)
    packed = bitpack.pack_signs(w, lut=True).with_nib4()
    packs = bandwidth.cold_copies(packed, l3)
    smallest = min(packed.bits.nbytes, packed.lut.nbytes, packed.nib4.nbytes)
    assert len(packs) == -(-bandwidth.COLD_FACTOR * l3 // smallest)
    for p in packs[:3]:
        for name in ("bits", "lut", "nib4"):
            assert not np.shares_memory(getattr(p, name), getattr(packed, name))
            assert np.array_equal(getattr(p, name), getattr(packed, name))


def test_read_probe_sums_its_chunk():
    call, nbytes = bandwidth.read_probe(nbytes=8 << 20, chunk=1 << 20)
    assert nbytes == 1 << 20
    assert int(call(3)) == nbytes // 8                                  # a buffer of uint64 ones


def test_alternated_ms_takes_turns_and_reports_both_clocks():
    seen = []
    calls = {"a": lambda i: seen.append(("a", i)), "b": lambda i: seen.append(("b", i))}
    out = bandwidth.alternated_ms(calls, rounds=3, n=4, min_s=0.0)
    assert set(out) == {"a", "b"} and all(len(out[k][c]) == 3 for k in out for c in ("wall", "cpu"))
    # per round: one warm call (index 0), then indices 1..4 for a, then the same for b
    assert [name for name, _ in seen] == (["a"] * 5 + ["b"] * 5) * 3
    assert [i for _, i in seen[:5]] == [0, 1, 2, 3, 4]
