"""Identities, certificates and dialog security (end-to-end encryption of message bodies between two nodes).

Pure computation on bytes (the ``cryptography`` package): no I/O, no clock (``now`` is passed in), so the core may
call it. ``certs`` reads, checks and makes X.509 certificates and keys; ``dialog`` makes, wraps and signs session
keys and seals message bodies. See ``docs/security.md``.
"""
