"""CKKS parameters and federation contexts (TenSEAL).

A federation has ONE CKKS secret key, created once (``keys.create_federation_keys``) and
copied to every edge box. The aggregator gets a public-only context that can deserialize
and add ciphertexts but neither decrypt nor (with symmetric encryption) encrypt.

Parameter choice (measured with ``python -m bench.federation.ckks_params``, see the module docstring
there): the aggregation is add-only (boxes send Enc(c*n*w) and the count, the aggregator
only adds, boxes divide after decryption), so no multiplicative level is needed and the
smallest ring that holds the precision serves: N=4096 (2048 slots per ciphertext), ONE
38-bit data prime plus a 40-bit special prime (78 bits total, far below the 109-bit
limit of 128-bit security at N=4096), scale 2^26.

- Bytes on the wire follow the data prime: a ciphertext is 2 polynomials x N
  coefficients mod the data prime, zstd-compressed by SEAL, about 23.8 bytes per value
  with a 38-bit prime (24.0 with 40 bits).
- The scale sets the absolute precision (fresh noise is up to ~2^11 in slot units over
  a 1M-value model, so ~3e-5 absolute error per decrypted sum at scale 2^26, divided
  by c*sum(n) in the average, see ``packing``); the data prime minus the scale
  sets the range: decoded values must stay below 2^(38-1-26) = 2048 in magnitude or
  they wrap around. ``packing`` documents how count_scale keeps c*n*w inside that.
- Symmetric encryption: fresh symmetric ciphertexts carry less noise than public-key
  ones (no public-key noise term), measured ~5x smaller error at the same size; the
  boxes hold the secret key anyway, and the aggregator then cannot encrypt at all (it
  holds no public key), so it cannot inject values into a sum. TenSEAL serializes the
  full ciphertext either way (no seed compression), so the size is the same.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
from dataclasses import dataclass, field
from typing import Any

import tenseal as ts
import zstandard

from federation.errors import (
    MALFORMED,
    PUBLIC_KEY_CANNOT_DECRYPT,
    SECRET_KEY_REFUSED,
    FederationError,
)

CONTEXT_MAGIC = b"FFK1"
_HEADER_LEN = struct.Struct(">I")
_MAX_CONTEXT_HEADER = 4096


@dataclass(frozen=True)
class CkksParams:
    """CKKS ring parameters of a federation.

    ``coeff_mod_bit_sizes``: the data primes followed by the special prime (SEAL keeps
    the last one for key switching; ciphertexts are sent modulo the others).
    """

    poly_modulus_degree: int = 4096
    coeff_mod_bit_sizes: tuple[int, ...] = (38, 40)
    global_scale_bits: int = 26
    symmetric: bool = True

    def __post_init__(self) -> None:
        n = self.poly_modulus_degree
        if n < 1024 or n & (n - 1):
            raise ValueError(f"poly_modulus_degree must be a power of two >= 1024, got {n}")
        if len(self.coeff_mod_bit_sizes) < 2:
            raise ValueError("coeff_mod_bit_sizes needs a data prime and a special prime")
        if not all(17 <= b <= 60 for b in self.coeff_mod_bit_sizes):
            raise ValueError(f"each prime must be 17..60 bits: {self.coeff_mod_bit_sizes}")
        if not 10 <= self.global_scale_bits < self.data_bits:
            raise ValueError(
                f"global_scale_bits {self.global_scale_bits} must be below the data "
                f"modulus ({self.data_bits} bits)"
            )

    @property
    def slots(self) -> int:
        """Real values per ciphertext (N/2). Never encrypt a longer vector at once."""
        return self.poly_modulus_degree // 2

    @property
    def data_bits(self) -> int:
        """Bits of the modulus the ciphertexts live in (all primes but the special one)."""
        return sum(self.coeff_mod_bit_sizes[:-1])

    @property
    def value_bound(self) -> float:
        """Magnitude a decrypted slot must stay below (else it wraps around)."""
        return float(2.0 ** (self.data_bits - 1 - self.global_scale_bits))

    @property
    def scale(self) -> float:
        return float(2.0**self.global_scale_bits)

    def to_dict(self) -> dict[str, object]:
        return {
            "poly_modulus_degree": self.poly_modulus_degree,
            "coeff_mod_bit_sizes": list(self.coeff_mod_bit_sizes),
            "global_scale_bits": self.global_scale_bits,
            "symmetric": self.symmetric,
        }

    @classmethod
    def from_dict(cls, data: object) -> CkksParams:
        if not isinstance(data, dict):
            raise FederationError(MALFORMED, "CKKS parameters must be a JSON object")
        try:
            bits = data["coeff_mod_bit_sizes"]
            if not isinstance(bits, list) or not all(type(b) is int for b in bits):
                raise TypeError("coeff_mod_bit_sizes")
            for key in ("poly_modulus_degree", "global_scale_bits"):
                if type(data[key]) is not int:
                    raise TypeError(key)
            if type(data["symmetric"]) is not bool:
                raise TypeError("symmetric")
            return cls(
                poly_modulus_degree=data["poly_modulus_degree"],
                coeff_mod_bit_sizes=tuple(bits),
                global_scale_bits=data["global_scale_bits"],
                symmetric=data["symmetric"],
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise FederationError(MALFORMED, f"invalid CKKS parameters: {exc}") from None


DEFAULT_PARAMS = CkksParams()


@dataclass(frozen=True)
class FederationContext:
    """A TenSEAL context plus the federation key id it belongs to.

    ``key_id`` (hex) is fixed when the federation keys are created and travels in every
    encrypted update, so a box with another federation's key, or an aggregator with the
    wrong public context, gets a clear ``wrong_key`` error instead of garbage.
    """

    context: ts.Context = field(repr=False, compare=False)
    key_id: str
    params: CkksParams
    # Key epoch (federation.crypto.epochs): 0 for the keys of ``keys create``, one more
    # at each rotation; rounds announce it and a box never goes back to an older one.
    epoch: int = 0

    @property
    def is_private(self) -> bool:
        return bool(self.context.is_private())

    def public(self) -> FederationContext:
        """The public-only counterpart (for the aggregator)."""
        return load_context(public_context_bytes(self))


def _build_context(params: CkksParams) -> ts.Context:
    enc_type = ts.ENCRYPTION_TYPE.SYMMETRIC if params.symmetric else ts.ENCRYPTION_TYPE.ASYMMETRIC
    ctx = ts.context(
        ts.SCHEME_TYPE.CKKS,
        params.poly_modulus_degree,
        coeff_mod_bit_sizes=list(params.coeff_mod_bit_sizes),
        encryption_type=enc_type,
    )
    ctx.global_scale = params.scale
    return ctx


def new_secret_context(params: CkksParams = DEFAULT_PARAMS, epoch: int = 0) -> FederationContext:
    """Create a fresh federation key (secret context): once per federation, and once per
    key epoch (``federation.crypto.epochs``)."""
    ctx = _build_context(params)
    raw = ctx.serialize(
        save_public_key=False, save_secret_key=True, save_galois_keys=False, save_relin_keys=False
    )
    key_id = hashlib.sha256(b"fedface-key-id\0" + raw).hexdigest()[:32]
    return FederationContext(context=ctx, key_id=key_id, params=params, epoch=epoch)


def _container(fctx: FederationContext, raw: bytes, secret: bool) -> bytes:
    header = json.dumps(
        {"v": 1, "key_id": fctx.key_id, "params": fctx.params.to_dict(), "secret": secret,
         "epoch": fctx.epoch},
        sort_keys=True,
        separators=(",", ":"),
    ).encode()
    return CONTEXT_MAGIC + _HEADER_LEN.pack(len(header)) + header + raw


def _context_bytes(fctx: FederationContext, secret: bool) -> bytes:
    # never relin/Galois keys: the federation only adds ciphertexts
    raw = fctx.context.serialize(
        save_public_key=not fctx.params.symmetric,
        save_secret_key=secret,
        save_galois_keys=False,
        save_relin_keys=False,
    )
    return _container(fctx, raw, secret=secret)


def public_context_bytes(fctx: FederationContext) -> bytes:
    """Serialize WITHOUT the secret key (and without relin/Galois keys: add-only)."""
    return _context_bytes(fctx, secret=False)


def secret_context_bytes(fctx: FederationContext) -> bytes:
    """Serialize WITH the secret key. Write only via ``keys.write_secret_file``."""
    if not fctx.is_private:
        raise FederationError(
            PUBLIC_KEY_CANNOT_DECRYPT, "this context holds no secret key to serialize"
        )
    return _context_bytes(fctx, secret=True)


@dataclass(frozen=True)
class ContextHeader:
    """What a context container says of itself, read without loading the key material."""

    key_id: str
    secret: bool
    epoch: int
    header: dict[str, Any]
    body_offset: int


def read_context_header(data: bytes) -> ContextHeader:
    """The container's header (cheap: ``fedface-edge status`` shows the key a box holds
    after a rotation without loading TenSEAL's keys). Raises FederationError(MALFORMED)."""
    if len(data) < 8 or data[:4] != CONTEXT_MAGIC:
        raise FederationError(MALFORMED, "not a FedFace CKKS context (bad magic)")
    (hlen,) = _HEADER_LEN.unpack_from(data, 4)
    if hlen > _MAX_CONTEXT_HEADER or 8 + hlen > len(data):
        raise FederationError(MALFORMED, "CKKS context header length out of range")
    try:
        header = json.loads(data[8 : 8 + hlen].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FederationError(MALFORMED, f"CKKS context header is not JSON: {exc}") from None
    if not isinstance(header, dict) or header.get("v") != 1:
        raise FederationError(MALFORMED, "unsupported CKKS context container version")
    key_id = header.get("key_id")
    secret = header.get("secret")
    if not isinstance(key_id, str) or not isinstance(secret, bool):
        raise FederationError(MALFORMED, "CKKS context header lacks key_id/secret")
    epoch = header.get("epoch", 0)  # absent: a context written before key epochs
    if type(epoch) is not int or epoch < 0:
        raise FederationError(MALFORMED, "CKKS context header has an invalid epoch")
    return ContextHeader(key_id, secret, epoch, header, 8 + hlen)


def load_context(data: bytes) -> FederationContext:
    """Parse a context container written by ``public_context_bytes``/``secret_context_bytes``."""
    head = read_context_header(data)
    params = CkksParams.from_dict(head.header.get("params"))
    try:
        ctx = ts.context_from(data[head.body_offset :])
    except Exception as exc:  # TenSEAL raises bare ValueError/RuntimeError on bad bytes
        raise FederationError(MALFORMED, f"TenSEAL could not load the context: {exc}") from None
    if bool(ctx.is_private()) != head.secret:
        raise FederationError(MALFORMED, "CKKS context header disagrees with its key material")
    if not head.secret:
        ctx.global_scale = params.scale
    return FederationContext(context=ctx, key_id=head.key_id, params=params, epoch=head.epoch)


def require_public_only(fctx: FederationContext) -> None:
    """Refuse a context that holds a secret key (the aggregator must never hold one)."""
    if fctx.is_private:
        raise FederationError(
            SECRET_KEY_REFUSED,
            "this CKKS context holds the federation SECRET key; the aggregator must be "
            "given the public context (federation-public.tenseal), never the secret one",
        )


def require_secret(fctx: FederationContext) -> None:
    """Refuse a public-only context where decryption is needed (edge boxes)."""
    if not fctx.is_private:
        raise FederationError(
            PUBLIC_KEY_CANNOT_DECRYPT,
            "this CKKS context is public-only and cannot decrypt; boxes need the "
            "federation secret context (federation-secret.tenseal)",
        )


_MODULUS_SAVE = struct.Struct("<16sQ")  # SEAL Modulus::save: its SEAL header, the value


def data_primes(fctx: FederationContext) -> tuple[int, ...]:
    """The data primes of a fresh ciphertext, as SEAL chose them (TenSEAL does not convert
    ``seal::Modulus`` to Python, so they are read from SEAL's own save of the first data
    level's parameters: scheme u8, N u64, k u64, then k saved moduli). Each is checked
    against its declared bit size, so a layout change in SEAL fails here, loudly."""
    parms = fctx.context.seal_context().data.first_context_data().parms()
    with tempfile.TemporaryDirectory(prefix="fedface-parms-") as tmp:
        path = os.path.join(tmp, "parms")
        parms.save(path)
        with open(path, "rb") as f:
            saved = f.read()
    body = saved[16:]
    if saved[5] == 2:  # SEAL's compr_mode_type::zstd
        body = zstandard.ZstdDecompressor().decompress(body, max_output_size=1 << 20)
    _scheme, degree, k = struct.unpack_from("<BQQ", body, 0)
    primes = tuple(_MODULUS_SAVE.unpack_from(body, 17 + i * _MODULUS_SAVE.size)[1]
                   for i in range(k))
    bits = fctx.params.coeff_mod_bit_sizes[:-1]
    if degree != fctx.params.poly_modulus_degree or tuple(p.bit_length() for p in primes) != bits:
        raise ValueError(f"SEAL's data primes {primes} do not match the parameters {bits}")
    return primes
