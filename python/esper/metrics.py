"""Metrics: a run's Prometheus series, held by Go, exported two ways (both opt-in).

Go keeps one registry per run (client_golang, never the process-wide default one): seeds by state,
germinations, fossilizations, prunes, cancellations, rollbacks, seed failures, breaker streaks and
trips, alarms by kind, the impact analysis, kernel-cache lookups and evictions, Urza operations, the
decision latency and the step rate. Nearly every series is computed from the session's state when it
is read, so the training step pays nothing for it. docs/metrics.md lists every name.

1. An HTTP endpoint served by Go (promhttp), for a Prometheus server to scrape::

       port = morph.serve_metrics(0)              # or esper.serve_metrics(morph, 0)
       # http://127.0.0.1:<port>/metrics

   It binds 127.0.0.1 unless ``host`` names another interface. Under torchrun, give every rank its
   own port (``MorphConfig(metrics_port=9400)`` adds ``LOCAL_RANK``).

2. A ``prometheus_client`` collector, for a process that already exposes its own ``/metrics``::

       from prometheus_client import REGISTRY
       REGISTRY.register(esper.metrics.PrometheusCollector(morph))

   Each scrape makes one call into Go (the text exposition) and parses it with
   ``prometheus_client.parser``. Like every custom collector it does not work in
   prometheus_client's multiprocess mode; use the endpoint there.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .tolaria import Morphogenesis

__all__ = ["serve_metrics", "PrometheusCollector", "DEFAULT_HOST"]

#: The interface an endpoint binds unless told otherwise: loopback only.
DEFAULT_HOST = "127.0.0.1"


def serve_metrics(morph: Morphogenesis, port: int = 0, host: str = DEFAULT_HOST) -> int:
    """Serve ``morph``'s metrics at ``http://host:port/metrics`` (Go's promhttp) until it closes.

    Args:
        morph: the run.
        port: the TCP port; 0 picks a free one.
        host: the interface to bind; loopback unless you name another (``"0.0.0.0"`` exposes the
            metrics to the network: do it only behind a firewall).

    Returns:
        The port bound.

    Raises:
        esper.StateError: the run already serves its metrics.
        esper.StorageError: the address cannot be bound (the port is taken).
    """
    return morph.serve_metrics(port, host=host)


class PrometheusCollector:
    """A ``prometheus_client`` collector of one run's metrics (read from Go at each scrape).

    It holds the run weakly: once the Morphogenesis is closed or collected, it yields nothing.

    Args:
        morph: the run.
    """

    def __init__(self, morph: Morphogenesis) -> None:
        self._morph = weakref.ref(morph)

    def describe(self) -> list[Any]:
        """No fixed description: registering does not call into Go (the names come with each scrape)."""
        return []

    def collect(self) -> Iterator[Any]:
        """Yield the run's metric families, parsed from Go's text exposition."""
        from prometheus_client.parser import text_string_to_metric_families

        morph = self._morph()
        if morph is None or morph.closed or morph._session is None:
            return  # closed, collected, or not started: a scrape never starts the session
        yield from text_string_to_metric_families(morph.metrics_text())
