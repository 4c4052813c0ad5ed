"""The probes, one module per checker kind; each registers itself with ``ulvs.health.base.register``."""
