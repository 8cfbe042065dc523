"""The schema of a log header's content: what `xenrr record` writes and what a replay may trust.

Owns HEADER_SCHEMA (JSON Schema, checked with the jsonschema library) and `check_header`. The file
layer (dom0/logfile.py) only guarantees a CRC-checked JSON object of bounded size and nesting; a
header whose CRC was recomputed over edited content (a buggy writer, a hostile producer) is caught
here. Invariant: a header that passes `check_header` can be used by a replay without any KeyError,
TypeError or ValueError, and names a memory size the CLI itself would accept.
"""
from __future__ import annotations

import functools

from dom0.logfile import LogFormatError, LogHeader
from xen.smp import MAX_QUANTUM, MAX_VCPUS

MAX_MEMORY_BYTES = 4096 * 1024 * 1024        # the CLI's --memory limit (4096 MiB)
_U64 = {"type": "integer", "minimum": 0, "maximum": 2**64 - 1}

HEADER_SCHEMA = {
    "type": "object",
    "required": ["config", "initial_state"],
    "properties": {
        "config": {
            "type": "object",
            "required": ["guest", "memory_bytes"],
            "properties": {
                "guest": {"type": "string", "minLength": 1, "maxLength": 4096, "pattern": "^[^\\x00]*$"},
                "memory_bytes": {"type": "integer", "minimum": 4096, "maximum": MAX_MEMORY_BYTES,
                                 "multipleOf": 4096},
                "cmdline": {"type": "string", "maxLength": 1024, "pattern": "^[^\\x00]*$"},
                "clock": {"enum": ["real", "virtual"]},
                "vcpus": {"type": "integer", "minimum": 1, "maximum": MAX_VCPUS},
                "quantum": {"type": "integer", "minimum": 1, "maximum": MAX_QUANTUM},
                "xenstore": {
                    "type": "object",
                    "required": ["domid", "name"],
                    "properties": {
                        "domid": {"type": "integer", "minimum": 1, "maximum": 0x7FEF},     # below DOMID_FIRST_RESERVED
                        "name": {"type": "string", "minLength": 1, "maxLength": 64,
                                 "pattern": "^[A-Za-z0-9_.@-]+$"},
                        "keyboard": {"const": "pv"},
                        "uuid": {"type": "string",
                                 "pattern": "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"},
                    },
                },
            },
        },
        "initial_state": {
            "type": "object",
            "required": ["digest"],
            "properties": {
                "entry": _U64, "rsp": _U64, "rsi": _U64,
                "digest": {"type": "string", "pattern": "^([0-9a-f]{2})+$", "maxLength": 1024},
                "start_state": {"type": "object", "required": ["icount", "bytes"],
                                "properties": {"icount": _U64, "bytes": {"type": "integer", "minimum": 1}}},
            },
        },
    },
}


@functools.cache
def _validator():
    """The schema's validator and jsonschema's best_match, imported by the first check (`xenrr run` needs neither)."""
    import jsonschema
    return jsonschema.Draft202012Validator(HEADER_SCHEMA), jsonschema.exceptions.best_match


def check_header(header: LogHeader) -> None:
    """LogFormatError (one line, naming the field) unless the header's content fits HEADER_SCHEMA."""
    validator, best_match = _validator()
    error = best_match(
        validator.iter_errors({"config": header.config, "initial_state": header.initial_state}))
    if error is not None:
        where = "/".join(str(part) for part in error.absolute_path) or "header"
        message = error.message if len(error.message) <= 120 else error.message[:117] + "..."
        raise LogFormatError(f"log header is malformed: {where}: {message}")
