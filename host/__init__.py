"""The multi-domain host: xl.cfg configs, the long-running hypervisor with its control socket,
physical-CPU workers and the credit scheduler, and the xl-like commands that drive them.

Imports dom0/ and xen/ (never stub/ or gdbext/); nothing below imports it, except the CLI hooking in
its subcommands.
"""
