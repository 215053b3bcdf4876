"""The federation's cryptography, all of it through maintained libraries (TenSEAL/SEAL,
cryptography): ``ckks`` (parameters and contexts; the aggregator's is public-only),
``packing`` (an update as CKKS ciphertexts of ``[c*n*w, c*n]``, the streaming sum, the
decrypt and divide), ``wire`` (ciphertexts bit-packed on the wire), ``budget``
(the parameter policy from a federation's declared size), ``keys`` /
``key_files`` / ``key_bundle`` (key files, 0600, and the bundle a technician installs),
``signing`` (Ed25519, the key ring), ``fingerprint``
and ``dp`` (clipping and Gaussian noise, the privacy ledger).

Depends only on ``federation.errors`` and ``federation.files`` of the contract.
"""
