"""L5 command lines: ``ulvs`` and (with the dataplane) ``ulvsadm``."""
