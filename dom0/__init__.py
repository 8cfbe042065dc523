"""The control domain: the xenrr toolstack CLI, host-side backends, the log ring, daemon and file.

Imports xen/ only (never stub/ or gdbext/, except the CLI hooking in their subcommands).
"""
