"""cryo's container runtime: containerd 0.2's ``types.API`` on trio, checkpointing with CRIU.

The package owns the runtime server and its parts (container table, checkpoint store,
event log, CRIU and runc drivers). It must not import `daemon`: the daemon reaches it
only over gRPC (and starts it with `daemon.supervisor.launch`). ``python -m runtime``
runs it in the foreground.
"""
