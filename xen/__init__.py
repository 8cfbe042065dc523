"""The hypervisor: a Xen PV x86-64 hypervisor in Python on an emulated vCPU (see docs/architecture.md).

Imports nothing from dom0/, stub/ or gdbext/: the layers above use it, never the other way round.
"""
