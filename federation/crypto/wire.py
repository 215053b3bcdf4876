"""Compact ciphertexts on the wire: SEAL's own serialisation with bit-packed coefficients.

TenSEAL serialises a CKKS vector as a small protobuf around SEAL's ``Ciphertext::save``
bytes, zstd-compressed by SEAL. Every coefficient of a ciphertext is a residue modulo a
data prime of ``b`` bits, stored by SEAL in a 64-bit word; zstd recovers only part of
the unused high bits (23.8 B/value at the default [38, 40] set, where the coefficients
need 2 x 4096 x 38 bits per 2048 values = 19 B/value). This codec is lossless and does
no cryptography: it decompresses SEAL's bytes, keeps every header byte verbatim, and
stores each coefficient in exactly ``b`` bits; ``unpack`` rebuilds SEAL bytes (without
compression) that TenSEAL/SEAL load and validate as usual (SEAL refuses a coefficient
not below its prime, so a forged packing cannot smuggle out-of-range values in).

Seeded ciphertexts (the second polynomial sent as a PRNG seed, 9.5 B/value here) would
halve this again, but they have to come out of the library's encryption: neither
TenSEAL 0.3.18 nor the Python SEAL bindings on PyPI (seal-python 4.4.0: its
``encrypt_symmetric`` returns a full ``Ciphertext``, ``contains_seed()`` is False) expose
SEAL's seeded ``Serializable<Ciphertext>``, and expanding a seed by hand would mean
re-implementing SEAL's sampling, i.e. home-made encryption. See docs/protocol.md.

Packed layout (all integers little-endian)::

    b"Fp" | version u8 | k u8 | k widths u8 | len(pre) u16 | pre | len(post) u16 | post
          | SEAL outer header (16 B) | len(body head) u16 | body head | packed coefficients

``pre``/``post``: TenSEAL's protobuf fields before/after the SEAL bytes (vector size,
scale); ``body head``: SEAL's ciphertext fields and inner array header, up to the
coefficients, which SEAL lays out as ``size`` polynomials x ``k`` primes x ``N``. The
coefficients of each prime are packed as planes (``_planes``): for 38 bits, their low
32 bits as one little-endian uint32 array, then their 6 top bits as 6 bit planes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np
import tenseal as ts
import zstandard

from federation.errors import MALFORMED, FederationError

PACKED_MAGIC = b"Fp"
PACKED_VERSION = 1
_SEAL_HEADER = struct.Struct("<HBBBBHQ")  # magic, header size, major, minor, compr, reserved, size
_SEAL_MAGIC = 0xA15E
_COMPR_NONE, _COMPR_ZSTD = 0, 2
# SEAL's Ciphertext::save_members: parms_id (4 x u64), is_ntt_form (u8), size, N, k (u64),
# scale (f64), correction factor (u64), then the coefficient DynArray (its own SEAL
# header and a u64 count) whose words follow.
_CT_FIELDS = struct.Struct("<32sBQQQdQ")
_ARRAY_COUNT = struct.Struct("<Q")
_BODY_HEAD = _CT_FIELDS.size + _SEAL_HEADER.size + _ARRAY_COUNT.size
_U16 = struct.Struct("<H")
_SEAL_BYTES_FIELD = 0x12  # protobuf: field 2, length-delimited (CKKSVectorProto.ciphertexts)
_MAX_RAW = 1 << 26


def widths_for(coeff_mod_bit_sizes: tuple[int, ...]) -> tuple[int, ...]:
    """Bits per coefficient of a fresh ciphertext: one width per data prime (the special
    prime, last, is not part of a ciphertext). SEAL's primes of ``b`` bits are < 2^b."""
    return tuple(coeff_mod_bit_sizes[:-1])


def _bad(message: str) -> FederationError:
    return FederationError(MALFORMED, f"packed ciphertext: {message}")


def _varint(data: bytes, i: int) -> tuple[int, int]:
    value, shift = 0, 0
    while i < len(data) and shift < 64:
        byte = data[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, i
        shift += 7
    raise _bad("truncated protobuf varint")


def _split_tenseal(data: bytes) -> tuple[bytes, bytes, bytes]:
    """(fields before, SEAL bytes, fields after) of a TenSEAL CKKSVector serialisation."""
    i = 0
    while i < len(data):
        start = i
        key, i = _varint(data, i)
        wire_type = key & 7
        if wire_type == 0:
            _, i = _varint(data, i)
        elif wire_type == 1:
            i += 8
        elif wire_type == 2:
            length, i = _varint(data, i)
            if key == _SEAL_BYTES_FIELD:
                if i + length > len(data):
                    raise _bad("truncated SEAL bytes")
                return data[:start], data[i : i + length], data[i + length :]
            i += length
        else:
            raise _bad(f"unexpected protobuf wire type {wire_type}")
    raise _bad("no SEAL ciphertext in the TenSEAL serialisation")


_PLANES = ((32, np.dtype("<u4")), (16, np.dtype("<u2")), (8, np.dtype("u1")))


def _planes(width: int) -> tuple[list[tuple[int, np.dtype]], int, int]:
    """How a ``width``-bit coefficient is laid out: whole-byte planes (32, 16, 8 bits,
    each a plain little-endian array, so that numpy reads them without a strided copy),
    then the remaining ``rem`` < 8 bits as bit planes. Returns (planes, rem, its shift)."""
    planes, shift = [], 0
    for bits, dtype in _PLANES:
        while width - shift >= bits:
            planes.append((shift, dtype))
            shift += bits
    return planes, width - shift, shift


def _pack_bits(words: np.ndarray, width: int) -> bytes:
    """Keep the low ``width`` bits of each word (count * width / 8 bytes)."""
    planes, rem, top_shift = _planes(width)
    parts = [(words >> np.uint64(shift)).astype(dtype).tobytes() for shift, dtype in planes]
    if rem:
        top = (words >> np.uint64(top_shift)).astype(np.uint8)
        bits = (top >> np.arange(rem, dtype=np.uint8)[:, None]) & np.uint8(1)  # (rem, count)
        parts.append(np.packbits(bits, axis=1, bitorder="little").tobytes())
    return b"".join(parts)


# _BIT_SPREAD[b]: a word whose byte j is bit j of b, so that one byte of a bit plane (bit
# ``k`` of 8 consecutive coefficients) becomes bit ``k`` of those coefficients' top bytes
# with one table look-up (np.unpackbits + a weighted reduction was 3x slower).
_BIT_SPREAD = np.array([sum(((b >> j) & 1) << (8 * j) for j in range(8)) for b in range(256)],
                       dtype="<u8")
_PLANE_SHIFTS = np.arange(8, dtype=np.uint64)[:, None]


def _unpack_bits_into(data: bytes | memoryview, width: int, out: np.ndarray) -> None:
    """Write ``out.size`` coefficients packed by ``_pack_bits`` into ``out`` (little-endian
    uint64, zero-filled; its size a multiple of 8): each plane goes straight to its bytes of
    every word through a strided view (the planes sit at byte offsets their size divides),
    so there is no temporary uint64 array of the whole width and no OR pass over it."""
    planes, rem, top_shift = _planes(width)
    count = out.size
    offset = 0
    for shift, dtype in planes:
        view = out.view(dtype)[shift // 8 // dtype.itemsize :: 8 // dtype.itemsize]
        view[:] = np.frombuffer(data, dtype=dtype, count=count, offset=offset)
        offset += count * dtype.itemsize
    if rem:
        bit_planes = np.frombuffer(data, dtype=np.uint8, count=rem * count // 8,
                                   offset=offset).reshape(rem, count // 8)
        spread = np.take(_BIT_SPREAD, bit_planes)  # take: 5x faster than [] on uint8 indices
        spread <<= _PLANE_SHIFTS[:rem]
        top = np.bitwise_or.reduce(spread, axis=0)
        out.view(np.uint8)[top_shift // 8 :: 8] = top.view(np.uint8)


def _unpack_bits(data: bytes | memoryview, count: int, width: int) -> np.ndarray:
    out = np.zeros(count, dtype="<u8")
    _unpack_bits_into(data, width, out)
    return out


def _packed_size(count: int, width: int) -> int:
    return count * width // 8


def _geometry(head: bytes | memoryview, widths: tuple[int, ...]) -> tuple[int, int, int]:
    """(polynomials, primes, N) from SEAL's ciphertext fields, checked against ``widths``."""
    _parms, ntt, size, degree, k, _scale, _corr = _CT_FIELDS.unpack_from(head, 0)
    array_header = _SEAL_HEADER.unpack_from(head, _CT_FIELDS.size)
    (count,) = _ARRAY_COUNT.unpack_from(head, _CT_FIELDS.size + _SEAL_HEADER.size)
    if ntt > 1 or not 1 <= size <= 8 or degree not in (1 << p for p in range(10, 17)):
        raise _bad(f"unexpected ciphertext shape (size {size}, N {degree})")
    if k != len(widths):
        raise _bad(f"{k} primes, the federation's ciphertexts have {len(widths)}")
    array_ok = array_header[0] == _SEAL_MAGIC and array_header[4] == _COMPR_NONE
    if not array_ok or count != size * k * degree:
        raise _bad("coefficient array header does not match the ciphertext")
    return size, k, degree


def pack(tenseal_bytes: bytes, widths: tuple[int, ...]) -> bytes:
    """TenSEAL CKKSVector bytes (one ciphertext) -> the compact form."""
    pre, seal_bytes, post = _split_tenseal(tenseal_bytes)
    magic, hsize, _major, _minor, compr, _res, total = _SEAL_HEADER.unpack_from(seal_bytes, 0)
    if magic != _SEAL_MAGIC or hsize != _SEAL_HEADER.size or total != len(seal_bytes):
        raise _bad("not a SEAL serialisation")
    body = seal_bytes[_SEAL_HEADER.size :]
    if compr == _COMPR_ZSTD:
        body = zstandard.ZstdDecompressor().decompress(body, max_output_size=_MAX_RAW)
    elif compr != _COMPR_NONE:
        raise _bad(f"SEAL compression mode {compr} is not supported")
    head = body[:_BODY_HEAD]
    if len(head) != _BODY_HEAD:
        raise _bad("SEAL ciphertext shorter than its header")
    size, k, degree = _geometry(head, widths)
    if len(body) != _BODY_HEAD + 8 * size * k * degree:
        raise _bad("SEAL ciphertext length does not match its shape")
    coeffs = np.frombuffer(body, dtype="<u8", offset=_BODY_HEAD).reshape(size, k, degree)
    parts = [PACKED_MAGIC, bytes([PACKED_VERSION, k, *widths]), _U16.pack(len(pre)), pre,
             _U16.pack(len(post)), post, seal_bytes[: _SEAL_HEADER.size],
             _U16.pack(len(head)), head]
    for j, width in enumerate(widths):
        words = np.ascontiguousarray(coeffs[:, j, :]).reshape(-1)
        if np.any(words >> np.uint64(width)):
            raise _bad(f"a coefficient of prime {j} does not fit in {width} bits")
        parts.append(_pack_bits(words, width))
    return b"".join(parts)


def _sized(data: memoryview, at: int) -> tuple[memoryview, int]:
    """A u16-length-prefixed field at ``at``: (its bytes, the offset after it)."""
    if at + _U16.size > len(data):
        raise _bad("truncated")
    (n,) = _U16.unpack_from(data, at)
    at += _U16.size
    if at + n > len(data):
        raise _bad("truncated")
    return data[at : at + n], at + n


@dataclass(frozen=True)
class CiphertextFacts:
    """What SEAL's header says of a ciphertext (the fields SEAL loads it with): its level
    (parms_id), number of polynomials and scale, read without copying the ciphertext
    back out of TenSEAL."""

    parms_id: tuple[int, ...]
    size: int
    scale: float


@dataclass(frozen=True)
class _Parsed:
    """Where the parts of a compact ciphertext are (parsed in place, nothing copied)."""

    pre: memoryview
    post: memoryview
    seal_at: int  # offset of SEAL's outer header
    head: memoryview
    coeffs_at: int  # offset of the packed coefficients
    size: int
    degree: int


def _parse(data: memoryview, widths: tuple[int, ...]) -> _Parsed:
    k = len(widths)
    if bytes(data[:2]) != PACKED_MAGIC:
        raise _bad("bad magic (an update from an older FedFace, or not a ciphertext)")
    if len(data) < 4 + k or data[2] != PACKED_VERSION:
        raise _bad(f"unsupported packing version {data[2] if len(data) > 2 else None}")
    if data[3] != k or tuple(data[4 : 4 + k]) != widths:
        raise _bad(f"coefficient widths differ from the federation's {list(widths)}")
    pre, at = _sized(data, 4 + k)
    post, seal_at = _sized(data, at)
    if seal_at + _SEAL_HEADER.size > len(data):
        raise _bad("truncated")
    magic, hsize, *_ = _SEAL_HEADER.unpack_from(data, seal_at)
    if magic != _SEAL_MAGIC or hsize != _SEAL_HEADER.size:
        raise _bad("bad SEAL header")
    head, at = _sized(data, seal_at + _SEAL_HEADER.size)
    if len(head) != _BODY_HEAD:
        raise _bad("ciphertext header has the wrong length")
    size, _, degree = _geometry(head, widths)
    packed_len = sum(_packed_size(size * degree, w) for w in widths)
    if at + packed_len != len(data):
        raise _bad(f"{len(data) - at - packed_len} bytes more or less than the coefficients")
    return _Parsed(pre, post, seal_at, head, at, size, degree)


def _facts(parsed: _Parsed) -> CiphertextFacts:
    parms, _ntt, _size, _n, _k, scale, _corr = _CT_FIELDS.unpack_from(parsed.head, 0)
    return CiphertextFacts(struct.unpack("<4Q", parms), parsed.size, scale)


def _unpack_coefficients(data: memoryview, parsed: _Parsed, widths: tuple[int, ...],
                         coeffs: np.ndarray) -> None:
    """The packed coefficients into ``coeffs`` (size x k x N uint64, zero-filled)."""
    per_prime, at = parsed.size * parsed.degree, parsed.coeffs_at
    for j, width in enumerate(widths):
        n = _packed_size(per_prime, width)
        if len(widths) == 1:  # one prime (add-only sets): its words are contiguous
            _unpack_bits_into(data[at : at + n], width, coeffs.reshape(per_prime))
        else:
            coeffs[:, j, :] = _unpack_bits(data[at : at + n], per_prime, width).reshape(
                parsed.size, parsed.degree)
        at += n


def unpack(packed: bytes | memoryview, widths: tuple[int, ...]) -> bytes:
    """The compact form -> TenSEAL CKKSVector bytes (SEAL bytes uncompressed)."""
    return _unpack(packed, widths)[0]


def _unpack(packed: bytes | memoryview, widths: tuple[int, ...]) -> tuple[bytes, CiphertextFacts]:
    """Parsed in place (memoryview slices) and unpacked straight into the output buffer."""
    data = memoryview(packed)
    parsed = _parse(data, widths)
    k = len(widths)
    per_prime = parsed.size * parsed.degree
    seal_len = _SEAL_HEADER.size + _BODY_HEAD + 8 * per_prime * k
    magic, hsize, major, minor, _compr, reserved, _total = _SEAL_HEADER.unpack_from(
        data, parsed.seal_at)
    prefix = b"".join([parsed.pre, bytes([_SEAL_BYTES_FIELD]), _encode_varint(seal_len),
                       _SEAL_HEADER.pack(magic, hsize, major, minor, _COMPR_NONE, reserved,
                                         seal_len), parsed.head])
    post = parsed.post
    out = bytearray(len(prefix) + 8 * per_prime * k + len(post))
    out[: len(prefix)] = prefix
    out[len(out) - len(post) :] = post
    coeffs = np.frombuffer(out, dtype="<u8", count=per_prime * k,
                           offset=len(prefix)).reshape(parsed.size, k, parsed.degree)
    _unpack_coefficients(data, parsed, widths, coeffs)
    return bytes(out), _facts(parsed)


@dataclass(frozen=True)
class Coefficients:
    """A compact ciphertext as numbers, for adding without TenSEAL (``aggregator.rounds``).

    ``header``: every byte before the coefficients, verbatim (what ``pack_coefficients``
    puts back); ``metadata``: the same without SEAL's compression mode and compressed
    size, which ``unpack`` rewrites anyway, so two ciphertexts with equal ``metadata``
    load into SEAL with equal metadata; ``coeffs``: size x k x N residues (not yet checked
    against the primes: SEAL does that on load, a caller that skips SEAL must)."""

    header: bytes
    metadata: bytes
    facts: CiphertextFacts
    coeffs: np.ndarray


def parse_coefficients(packed: bytes | memoryview, widths: tuple[int, ...]) -> Coefficients:
    data = memoryview(packed)
    parsed = _parse(data, widths)
    coeffs = np.zeros((parsed.size, len(widths), parsed.degree), dtype="<u8")
    _unpack_coefficients(data, parsed, widths, coeffs)
    compr_at = parsed.seal_at + 5  # magic u16, header size u8, major u8, minor u8, compr
    metadata = b"".join([data[:compr_at], data[compr_at + 1 : parsed.seal_at + 8],
                         data[parsed.seal_at + _SEAL_HEADER.size : parsed.coeffs_at]])
    return Coefficients(bytes(data[: parsed.coeffs_at]), metadata, _facts(parsed), coeffs)


def pack_coefficients(header: bytes, coeffs: np.ndarray, widths: tuple[int, ...]) -> bytes:
    """The compact form of ``coeffs`` (size x k x N, each below its prime) behind the
    ``header`` of a ciphertext of the same shape (``Coefficients.header``)."""
    parts = [header]
    for j, width in enumerate(widths):
        parts.append(_pack_bits(np.ascontiguousarray(coeffs[:, j, :]).reshape(-1), width))
    return b"".join(parts)


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def serialize_vector(vec: ts.CKKSVector, widths: tuple[int, ...]) -> bytes:
    """A TenSEAL vector (one ciphertext) in its compact wire form."""
    return pack(vec.serialize(), widths)


def load_vector(context: ts.Context, packed: bytes | memoryview,
                widths: tuple[int, ...]) -> ts.CKKSVector:
    """Rebuild and load a compact ciphertext; raises ``FederationError(malformed)`` from
    the codec, and TenSEAL's own errors (left to the caller) from SEAL's validation."""
    return load_vector_facts(context, packed, widths)[0]


def load_vector_facts(context: ts.Context, packed: bytes | memoryview,
                      widths: tuple[int, ...]) -> tuple[ts.CKKSVector, CiphertextFacts]:
    """``load_vector`` and the facts of the ciphertext SEAL loaded."""
    raw, facts = _unpack(packed, widths)
    return ts.ckks_vector_from(context, raw), facts
