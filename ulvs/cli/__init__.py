"""L5 command lines: ``ulvs`` (demo, lab, run) and ``ulvsadm`` (ipvsadm-compatible client)."""
