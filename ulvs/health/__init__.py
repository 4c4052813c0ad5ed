"""Health checking: keep dead real servers out of rotation and bring them back gently.

Three parts, split as keepalived's checker is (STYLE rule 12) but without its globals:

  ulvs.health.base       the vocabulary: a probe ``Target``, a probe ``Result``, the ``Checker``
                         interface and its registry (one checker per module, registered by
                         keepalived's name: TCP_CHECK, HTTP_GET, ...)
  ulvs.health.state      pure: per-dest check state machines and the service policy (retries,
                         alpha/omega, quorum with hysteresis, inhibit_on_failure, sorry server,
                         slow start).  Takes results and ``now``; returns events.  No I/O.
  ulvs.health.checkers   the probes (asyncio, run on the health monitor's own event loop)
"""
