"""MedLedger core: plain Python rules for crypto, the ledger and clinical codes.

Nothing here imports Flask or SQLAlchemy or keeps global mutable state; time,
randomness and storage are passed in so every rule can be tested on its own.
"""
