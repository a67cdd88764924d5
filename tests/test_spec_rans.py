"""The rANS coder of spec/payload.md §2.3, implemented from the spec text alone.

``spec_decode_stream`` below uses only the standard library, numpy and zstandard (for the
table frame): no ``constriction``, no neurvol code. It must decode the spec's test vector,
streams written by neurvol's encoder and the rANS streams of the golden files, and refuse
what the spec says a reader must refuse.
"""
from __future__ import annotations

import re
import struct
from pathlib import Path
from typing import List, Sequence, Tuple

import numpy as np
import pytest
import zstandard

import neurvol
from neurvol.compress import streams
from neurvol.errors import NeurvolFormatError

SPEC = Path(__file__).resolve().parents[1] / "spec" / "payload.md"
GOLDEN = Path(__file__).resolve().parent / "golden"

# --- the decoder, as spec/payload.md §2.3 words it --------------------------------------

PRECISION = 24
TOTAL = 1 << PRECISION
WORD_BITS = 32
MAX_ALPHABET = 1 << 20


class SpecError(ValueError):
    """A stream the spec says a reader must reject."""


def cumulative_table(counts: Sequence[int]) -> List[int]:
    """§2.3.2: F_0 .. F_A from the counts, in binary64 (Python floats), in the spec's order."""
    a = len(counts)
    n = sum(counts)
    p = [c / n for c in counts]                   # 1. one correctly rounded division each
    s = 0.0
    for x in p:                                   # 2. left to right
        s += x
    scale = float(TOTAL - a) / s                  # 3.
    table, c = [], 0.0
    for i, x in enumerate(p):                     # 4.
        table.append(int(c * scale) + i)          # floor of a non-negative float
        c += x
    table.append(TOTAL)
    return table


def rans_symbols(words: Sequence[int], counts: Sequence[int], m: int) -> List[int]:
    """§2.3.3: decode ``m`` symbols from the words (read last to first)."""
    f = cumulative_table(counts)
    stack = list(words)
    if not stack:
        x = 0
    else:
        if stack[-1] == 0:
            raise SpecError("the last word is 0")
        x = stack.pop()
        if stack:
            x = (x << WORD_BITS) | stack.pop()
    out = []
    for _ in range(m):
        q = x % TOTAL
        lo, hi = 0, len(f) - 1                    # the i with F_i <= q < F_{i+1}
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if f[mid] <= q:
                lo = mid
            else:
                hi = mid
        i = lo
        x = (x >> PRECISION) * (f[i + 1] - f[i]) + (q - f[i])
        if x < 1 << WORD_BITS and stack:
            x = (x << WORD_BITS) | stack.pop()
        out.append(i)
    if stack or x != 0:
        raise SpecError("the final state is not 0 or words are left")
    return out


def spec_decode_stream(stream: bytes, m: int) -> Tuple[List[int], int]:
    """A whole coder-2 stream (§2.2 head + §2.3 data) -> (symbols, bytes used)."""
    coder, width, length = struct.unpack_from("<BBI", stream)
    if coder != 2 or width not in (1, 2, 4):
        raise SpecError("not a rans stream")
    data = stream[6:6 + length]
    if len(data) != length or length < 8:
        raise SpecError("truncated")
    a, t = struct.unpack_from("<II", data)
    if not 2 <= a <= MAX_ALPHABET or m < 1:
        raise SpecError("alphabet or symbol count out of range")
    if 8 + t > length:
        raise SpecError("table frame overruns the stream")
    table = zstandard.ZstdDecompressor().decompressobj().decompress(data[8:8 + t])
    if len(table) != 4 * a:
        raise SpecError("table size")
    counts = [int(c) for c in np.frombuffer(table, "<u4")]
    if sum(counts) != m:
        raise SpecError("counts do not add up to m")
    rest = data[8 + t:]
    if len(rest) % 4:
        raise SpecError("words are not whole")
    words = [int(w) for w in np.frombuffer(rest, "<u4")]
    symbols = rans_symbols(words, counts, m)
    if any(s >= 1 << (8 * width) for s in symbols):
        raise SpecError("symbol wider than the stream's width")
    return symbols, 6 + length


# --- the test vector of §2.3.5 ----------------------------------------------------------

VECTOR_SYMBOLS = [0, 1, 0, 3, 0, 0, 1, 3, 0, 1, 0, 3, 0, 0, 2, 0]
VECTOR_COUNTS = [9, 3, 1, 3, 0]
VECTOR_TABLE = [0, 9437182, 12582910, 13631486, 16777215, 16777216]
VECTOR_WORDS = [0xD151A07B, 0x000016B3]
VECTOR = bytes.fromhex(
    "020127000000"
    "0500000017000000"
    "28b52ffd2014750000428102883102000000ff8ef70400"
    "7ba051d1b3160000")


def spec_vector_bytes() -> bytes:
    """The test vector as printed in spec/payload.md §2.3.5 (hex before the comments)."""
    text = SPEC.read_text(encoding="utf-8")
    section = text[text.index("#### 2.3.5"):text.index("### 2.4")]
    block = re.search(r"```\n(.*?)```", section, re.S).group(1)
    hexes = []
    for line in block.splitlines():
        fields = re.split(r"\s{2,}", line.strip())   # hex groups, then two spaces, a comment
        hexes.append(fields[0].replace(" ", ""))
    return bytes.fromhex("".join(hexes))


def test_the_spec_prints_this_vector() -> None:
    assert spec_vector_bytes() == VECTOR
    text = SPEC.read_text(encoding="utf-8")
    assert "F = " + ", ".join(str(v) for v in VECTOR_TABLE) in text
    assert " ".join(str(s) for s in VECTOR_SYMBOLS) in text


def test_vector_quantization() -> None:
    assert cumulative_table(VECTOR_COUNTS) == VECTOR_TABLE


def test_vector_decodes_with_the_spec_decoder() -> None:
    symbols, used = spec_decode_stream(VECTOR, len(VECTOR_SYMBOLS))
    assert symbols == VECTOR_SYMBOLS
    assert used == len(VECTOR)
    assert rans_symbols(VECTOR_WORDS, VECTOR_COUNTS, 16) == VECTOR_SYMBOLS


def _take(data: bytes):
    pos = [0]

    def take(n: int, what: str) -> bytes:
        if pos[0] + n > len(data):
            raise NeurvolFormatError(f"{what}: truncated")
        out = data[pos[0]:pos[0] + n]
        pos[0] += n
        return out

    return take


def test_vector_decodes_with_neurvol() -> None:
    out, coder = streams.decode_stream(_take(VECTOR), len(VECTOR_SYMBOLS), "vector")
    assert coder == "rans"
    assert out.tolist() == VECTOR_SYMBOLS


# --- streams from neurvol's encoder -----------------------------------------------------


def _symbol_sets() -> List[np.ndarray]:
    rng = np.random.default_rng(20241205)
    sets = []
    for alphabet, n, concentration in [(2, 300, 0.3), (5, 256, 1.0), (17, 5000, 0.1),
                                       (256, 4000, 2.0), (300, 20000, 0.05),
                                       (70000, 3000, 1.0), (1 << 20, 600, 1.0)]:
        p = rng.dirichlet(np.full(min(alphabet, 4096), concentration))
        sym = rng.choice(p.size, size=n, p=p)
        if alphabet > p.size:          # a few large symbols: a wide, sparse alphabet
            sym[rng.integers(0, n, 5)] = rng.integers(p.size, alphabet, 5)
        sets.append(sym.astype(np.uint64))
    # all zeros (no coder words at all) and one symbol other than zero
    sets.append(np.zeros(1000, np.uint64))
    one = np.zeros(1000, np.uint64)
    one[537] = 1
    sets.append(one)
    return sets


@pytest.mark.parametrize("symbols", _symbol_sets(), ids=lambda s: f"n{s.size}-max{int(s.max())}")
def test_neurvol_encoder_streams_decode_with_the_spec_decoder(symbols: np.ndarray) -> None:
    if int(symbols.max()) >= streams.MAX_ALPHABET:
        symbols = np.minimum(symbols, streams.MAX_ALPHABET - 1)
    coded = streams.encode_stream(symbols, coders=(streams.CODER_RANS,))
    assert coded[0] == streams.CODER_RANS
    decoded, used = spec_decode_stream(coded, symbols.size)
    assert used == len(coded)
    assert decoded == symbols.tolist()


def test_golden_rans_streams_decode_with_the_spec_decoder(monkeypatch) -> None:
    """Every rANS stream neurvol decodes while reading the rans golden file, re-decoded
    from the spec: the same symbols."""
    from neurvol.compress.coders import rans as rans_coder
    seen = []
    original = rans_coder.rans_decode

    def spy(data: bytes, n: int, *rest) -> np.ndarray:
        out = original(data, n, *rest)
        seen.append((bytes(data), n, out.copy()))
        return out

    monkeypatch.setattr(rans_coder, "rans_decode", spy)
    with neurvol.open(GOLDEN / "codec2_rans.nvol") as nv:
        nv.decode()
    assert seen, "the rans golden file holds no rans stream"
    for data, n, expected in seen:
        head = struct.pack("<BBI", 2, 4, len(data))
        decoded, _ = spec_decode_stream(head + data, n)
        assert decoded == expected.tolist()


# --- what a reader must refuse (§2.3.1, §2.3.3) ------------------------------------------


def _stream(counts: Sequence[int], words: Sequence[int], width: int = 1) -> bytes:
    table = zstandard.ZstdCompressor(level=19).compress(np.asarray(counts, "<u4").tobytes())
    data = struct.pack("<II", len(counts), len(table)) + table + np.asarray(words, "<u4").tobytes()
    return struct.pack("<BBI", 2, width, len(data)) + data


REFUSED = {
    "alphabet of 1": (_stream([5], []), 5),
    "alphabet of 0": (_stream([], []), 0),
    "no symbols": (_stream([0, 0], []), 0),
    "counts do not add up": (_stream([9, 3, 1, 3, 0], VECTOR_WORDS), 15),
    "last word 0": (_stream(VECTOR_COUNTS, VECTOR_WORDS + [0]), 16),
    "a word left over": (_stream(VECTOR_COUNTS, [7] + VECTOR_WORDS), 16),
    "final state not 0": (_stream(VECTOR_COUNTS, [VECTOR_WORDS[0] ^ 1, VECTOR_WORDS[1]]), 16),
    "words not whole": (VECTOR[:2] + struct.pack("<I", 40) + VECTOR[6:] + b"\x01", 16),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_spec_decoder_refuses(case: str) -> None:
    stream, m = REFUSED[case]
    with pytest.raises(SpecError):
        spec_decode_stream(stream, m)


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_neurvol_refuses_what_the_spec_refuses(case: str) -> None:
    stream, m = REFUSED[case]
    with pytest.raises(NeurvolFormatError):
        streams.decode_stream(_take(stream), m, case)


def test_all_zero_stream_has_no_words() -> None:
    """§2.3.4: coding symbol 0 from state 0 leaves it 0, so such a stream has no words."""
    stream = _stream([1000, 0], [])
    assert spec_decode_stream(stream, 1000)[0] == [0] * 1000
    coded = streams.encode_stream(np.zeros(1000, np.uint64), coders=(streams.CODER_RANS,))
    a, t = struct.unpack_from("<II", coded, 6)
    assert len(coded) == 6 + 8 + t


def test_a_trailing_run_of_zeros_is_free_and_read_back() -> None:
    """Symbols decoded last are coded first, from state 0: a run of symbol 0 there adds no
    word, so a valid stream can hold far fewer words than its histogram's information.
    Readers must not refuse it (resources.md §3; the reference once did, on real grid
    codes ending in zeros)."""
    rng = np.random.default_rng(7)
    symbols = np.sort(rng.choice(27, size=60000, p=rng.dirichlet(np.ones(27))))[::-1]
    symbols = np.ascontiguousarray(symbols).astype(np.uint64)
    coded = streams.encode_stream(symbols, coders=(streams.CODER_RANS,))
    assert coded[0] == streams.CODER_RANS
    a, t = struct.unpack_from("<II", coded, 6)
    words = (len(coded) - 6 - 8 - t) // 4
    counts = np.bincount(symbols.astype(np.int64))
    p = counts[counts > 0] / symbols.size
    information_bits = float(np.sum(counts[counts > 0] * -np.log2(p)))
    assert 32 * words + 96 < information_bits - counts[0]   # the zeros coded for free
    assert spec_decode_stream(coded, symbols.size)[0] == symbols.tolist()
    back, _ = streams.decode_stream(_take(coded), symbols.size, "trailing zeros")
    np.testing.assert_array_equal(back, symbols)
