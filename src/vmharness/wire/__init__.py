"""The wire layer: every file format vmharness writes, and what host and guest agree on.

    files.py       atomic writes, bounded reads, SHA-256 of a file
    codec.py       the JSON codec: dataclasses <-> JSON led by type hints, versioned documents
    formats.py     every kind of JSON document, with its format version
    conditions.py  the conditions file (TOML) the guest agent reads
    guest.py       host-guest constants: disk labels, file names, console markers

It imports nothing else of vmharness: every other layer may use it.
"""
