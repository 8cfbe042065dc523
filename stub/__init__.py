"""The gdbstub: GDB remote-protocol framing, the server, and the replay timeline (reverse execution)."""
