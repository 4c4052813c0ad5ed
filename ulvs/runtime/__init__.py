"""L4 runtime: daemon, dataplane workers, control socket, kernel plumbing (I/O lives here)."""
