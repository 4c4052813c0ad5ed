"""Health checking: keep dead real servers out of rotation and bring them back gently.

Its parts, split as keepalived's checker is (STYLE rule 12) but without its globals:

  ulvs.health.base       the vocabulary: a probe ``Target``, a probe ``Result``, the ``Checker``
                         interface and its registry (one checker per module, registered by
                         keepalived's name: TCP_CHECK, HTTP_GET, ...)
  ulvs.health.state      pure: the per-checker state machine (retries, alpha, warmup) and the
                         dest-level up/weight decision
  ulvs.health.policy     pure: the service policy (inhibit_on_failure, quorum with hysteresis,
                         sorry server, notify scripts, slow start, passive ejection, reload by
                         migrate).  Takes results and ``now``; returns events.  No I/O.
  ulvs.health.checkers   the probes (asyncio, run on the health monitor's own event loop)
  ulvs.health.monitor    the health monitor process: the shell that runs the probes, feeds the
                         policy and reports to the daemon (started by ``ulvs run``)
"""
