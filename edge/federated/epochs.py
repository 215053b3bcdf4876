"""The box's side of key epochs: take the next CKKS secret context, sealed to this box.

The key holder seals each new epoch to every remaining box (``federation.crypto.epochs``);
the aggregator relays the bundle, signed, retained, on ``key/<device>``. The client's
worker hands it here: it is opened with the box's exchange key (``keys/device-kx.key``,
0600) only if the key holder signed it (``keys/keyholder.pub``, from the key bundle),
names this federation, device and exchange key, and is of a NEWER epoch; the new secret
context then replaces ``federation-secret.tenseal`` atomically (0600) and the client
encrypts and decrypts with it from then on. The old context is not kept: the
aggregator fails the round left open under it, so nothing in flight needs it, and a
result of an older epoch is refused (``wrong_key``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from federation.crypto.ckks import FederationContext, secret_context_bytes
from federation.crypto.epochs import EXCHANGE_KEY_NAME, open_context, read_exchange_key, read_header
from federation.crypto.keys import KEYHOLDER_PUB_NAME, read_public_key, write_secret_file

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EpochKeys:
    """What the box needs to take a new epoch (None in the client: it cannot)."""

    fed_id: str
    device_id: str
    exchange_key: X25519PrivateKey
    keyholder: Ed25519PublicKey
    secret_context: Path  # the file the box loads at start (federation.secret_context)

    def take(self, sealed: bytes, current: FederationContext) -> FederationContext | None:
        """The new context of ``sealed`` (installed on disk), or None when it is the key the
        box already has (the retained bundle comes again on every reconnect). Raises
        FederationError (bad_signature, wrong_recipient, old_epoch, wrong_key, malformed)."""
        if read_header(sealed).key_id == current.key_id:
            return None
        ctx = open_context(sealed, fed=self.fed_id, device_id=self.device_id,
                           exchange_key=self.exchange_key, keyholder=self.keyholder,
                           after_epoch=current.epoch)
        write_secret_file(self.secret_context, secret_context_bytes(ctx), overwrite=True)
        log.warning("key epoch %d installed: federation key %s replaces %s (epoch %d)",
                    ctx.epoch, ctx.key_id, current.key_id, current.epoch)
        return ctx


def epoch_keys_for(fed_id: str, device_id: str, secret_context: Path) -> EpochKeys | None:
    """The box's epoch keys, beside its secret context (``keys/``): its exchange key
    (made by ``provision``) and the key holder's public key (from the key bundle). None,
    said once in the log, when either is missing: the box cannot take a new epoch and
    sits out the rounds of one (re-provision it)."""
    keys_dir = Path(secret_context).parent
    kx, holder = keys_dir / EXCHANGE_KEY_NAME, keys_dir / KEYHOLDER_PUB_NAME
    missing = [str(p) for p in (kx, holder) if not p.exists()]
    if missing:
        log.warning("this box cannot take a new federation key epoch (missing %s): after a "
                    "key rotation it sits out until re-provisioned", ", ".join(missing))
        return None
    return EpochKeys(fed_id, device_id, read_exchange_key(kx), read_public_key(holder),
                     Path(secret_context))
