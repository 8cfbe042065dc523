"""What the user touches: the GDB extension, the debugger shell and the scripted debugging API.

Reaches a replay only through GDB and the remote protocol; imports none of xen/, dom0/ or stub/.
"""
