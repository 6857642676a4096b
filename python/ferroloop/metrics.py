"""Export ``loop.metrics()`` of every live ferroloop loop to Prometheus and OpenTelemetry.

This module owns the exporters, not the measurements (``Loop.metrics()`` makes those):

* ``PrometheusCollector`` is a ``prometheus_client`` custom collector; ``register_prometheus()``
  adds one to a registry (the default one unless told). Every scrape reads every live loop.
* ``register_otel()`` creates OpenTelemetry observable counters and gauges on a meter (the
  global ``ferroloop`` meter unless told) whose callbacks read every live loop.

Each series is labelled by the loop (``loop``: ``hex(id(loop))``, stable for the loop's life)
and the name of the thread running it (``thread``: between runs, the thread an export last saw
it run on; empty for a loop never seen running). Counters are exported as counters, levels as gauges; the timed fields
(``poll_seconds``, ``callback_seconds``, ``busy_ratio``, the lag) only while the loop measures
them (``metrics()["timing"]``, also exported as ``ferroloop_loop_timing``), the lag only once
there are samples. Closed loops disappear from the export.

``prometheus_client`` and ``opentelemetry-api`` are optional (``pip install
ferroloop[prometheus]`` / ``ferroloop[otel]``) and imported only when an exporter is used:
importing ferroloop, or this module, imports neither.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NamedTuple

__all__ = [
    "FIELDS",
    "PrometheusCollector",
    "loop_samples",
    "register_otel",
    "register_prometheus",
]

# ---------------------------------------------------------------------------- the contract


class Field(NamedTuple):
    """One field of ``loop.metrics()`` and how each exporter names it."""

    key: str  # the key in loop.metrics()
    prometheus: str  # family name (counters get ``_total`` from prometheus_client)
    counter: bool  # monotonic (counter) or a level (gauge)
    otel: str  # OpenTelemetry instrument name
    unit: str  # UCUM unit for OpenTelemetry
    doc: str


FIELDS: tuple[Field, ...] = (
    Field("iterations", "ferroloop_loop_iterations", True, "ferroloop.loop.iterations",
          "{iteration}", "Loop iterations run."),
    Field("callbacks", "ferroloop_loop_callbacks", True, "ferroloop.loop.callbacks",
          "{callback}", "Callbacks, task steps and native transport events run."),
    Field("poll_seconds", "ferroloop_loop_poll_seconds", True, "ferroloop.loop.poll.time",
          "s", "Time spent waiting for I/O (while timing is on)."),
    Field("callback_seconds", "ferroloop_loop_callback_seconds", True,
          "ferroloop.loop.callback.time", "s", "Time spent running callbacks (while timing is on)."),
    Field("bytes_received", "ferroloop_loop_received_bytes", True, "ferroloop.loop.io.received",
          "By", "Bytes received by the loop's native I/O paths."),
    Field("bytes_sent", "ferroloop_loop_sent_bytes", True, "ferroloop.loop.io.sent",
          "By", "Bytes sent by the loop's native I/O paths."),
    Field("blocking_episodes", "ferroloop_loop_blocking_episodes", True,
          "ferroloop.loop.blocking_episodes", "{episode}",
          "Callbacks or task steps that ran past the blocking watchdog's threshold."),
    Field("busy_ratio", "ferroloop_loop_busy_ratio", False, "ferroloop.loop.busy_ratio",
          "1", "Share of the loop's time spent running callbacks (while timing is on)."),
    Field("lag_max", "ferroloop_loop_lag_max_seconds", False, "ferroloop.loop.lag.max",
          "s", "Largest loop lag seen (while timing is on)."),
    Field("ready", "ferroloop_loop_ready_callbacks", False, "ferroloop.loop.ready",
          "{callback}", "Callbacks ready to run."),
    Field("timers", "ferroloop_loop_timers", False, "ferroloop.loop.timers",
          "{timer}", "Scheduled timers."),
    Field("fds", "ferroloop_loop_fds", False, "ferroloop.loop.fds",
          "{fd}", "File descriptors registered with the loop's reactor."),
    Field("transports", "ferroloop_loop_transports", False, "ferroloop.loop.transports",
          "{transport}", "Open transports."),
    Field("executor_queued", "ferroloop_loop_executor_queued_jobs", False,
          "ferroloop.loop.executor.queued", "{job}",
          "Jobs waiting in the default executor's queue."),
    Field("executor_busy", "ferroloop_loop_executor_busy_workers", False,
          "ferroloop.loop.executor.busy", "{thread}", "Default executor workers running a job."),
    Field("executor_workers", "ferroloop_loop_executor_workers", False,
          "ferroloop.loop.executor.workers", "{thread}", "Default executor worker threads."),
)  # fmt: skip

# The lag percentiles share one family, told apart by ``quantile``.
LAG_QUANTILES: tuple[tuple[str, str], ...] = (("lag_p50", "0.5"), ("lag_p99", "0.99"))
LAG_FAMILY = "ferroloop_loop_lag_seconds"
LAG_OTEL = "ferroloop.loop.lag"
LAG_DOC = (
    "Loop lag (how long an iteration's ready callbacks wait after the poll returns) over the "
    "recent window, by quantile (while timing is on)."
)
TIMING_FAMILY = "ferroloop_loop_timing"
TIMING_OTEL = "ferroloop.loop.timing"
TIMING_DOC = "1 while the loop measures its timed metrics, else 0."

LABELS = ("loop", "thread")

# ------------------------------------------------------------------------------- sampling


def _default_loops() -> list[Any]:
    from ._loop import live_loops

    return live_loops()


# The thread each loop last ran on, so a loop between runs keeps its labels.
_last_thread: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()


def _thread_name(loop: Any, names: dict[int, str]) -> str:
    thread_id = getattr(loop, "_thread_id", None)
    name = names.get(thread_id) if thread_id is not None else None
    try:
        if name is not None:
            _last_thread[loop] = name
        else:
            name = _last_thread.get(loop, "")
    except TypeError:  # not weakly referenceable
        name = name or ""
    return name


def _read(loop: Any) -> dict[str, Any] | None:
    # Read from the scraping thread while the loop's thread may change its transports: a
    # rare "changed size during iteration" is retried; a loop closing meanwhile is skipped.
    for _ in range(3):
        try:
            return dict(loop.metrics())
        except RuntimeError:
            continue
        except Exception:
            return None
    return None


def loop_samples(
    loops: Callable[[], Iterable[Any]] | None = None,
) -> list[tuple[dict[str, str], dict[str, Any]]]:
    """``(labels, loop.metrics())`` for each live loop (``loops()`` if given)."""
    names = {t.ident: t.name for t in threading.enumerate() if t.ident is not None}
    out = []
    for loop in (loops or _default_loops)():
        m = _read(loop)
        if m is None:
            continue
        out.append(({"loop": hex(id(loop)), "thread": _thread_name(loop, names)}, m))
    return out


def _value(m: dict[str, Any], key: str) -> int | float | None:
    v = m.get(key)
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None  # absent, or None: not measured
    return v


# ----------------------------------------------------------------------------- Prometheus


class PrometheusCollector:
    """A ``prometheus_client`` collector for every live ferroloop loop.

    ``REGISTRY.register(PrometheusCollector())``, or ``register_prometheus()``. ``loops``
    replaces the source of loops (a callable returning objects with ``metrics()``).
    """

    def __init__(self, loops: Callable[[], Iterable[Any]] | None = None) -> None:
        self._loops = loops

    def _families(self, samples: list[tuple[dict[str, str], dict[str, Any]]]) -> list[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        families = []
        for f in FIELDS:
            cls = CounterMetricFamily if f.counter else GaugeMetricFamily
            fam = cls(f.prometheus, f.doc, labels=LABELS)
            for labels, m in samples:
                v = _value(m, f.key)
                if v is not None:
                    fam.add_metric([labels["loop"], labels["thread"]], v)
            families.append(fam)
        lag = GaugeMetricFamily(LAG_FAMILY, LAG_DOC, labels=(*LABELS, "quantile"))
        for labels, m in samples:
            for key, q in LAG_QUANTILES:
                v = _value(m, key)
                if v is not None:
                    lag.add_metric([labels["loop"], labels["thread"], q], v)
        families.append(lag)
        timing = GaugeMetricFamily(TIMING_FAMILY, TIMING_DOC, labels=LABELS)
        for labels, m in samples:
            timing.add_metric([labels["loop"], labels["thread"]], 1.0 if m.get("timing") else 0.0)
        families.append(timing)
        return families

    def collect(self) -> Iterator[Any]:
        yield from self._families(loop_samples(self._loops))

    def describe(self) -> Iterator[Any]:
        """The families without samples (the registry checks names with it)."""
        yield from self._families([])


_registered: dict[int, PrometheusCollector] = {}
_register_lock = threading.Lock()


def register_prometheus(registry: Any = None) -> PrometheusCollector:
    """Register a ``PrometheusCollector`` with ``registry`` (``prometheus_client.REGISTRY``
    by default) and return it; a second call for the same registry returns the first one."""
    if registry is None:
        from prometheus_client import REGISTRY

        registry = REGISTRY
    with _register_lock:
        existing = _registered.get(id(registry))
        if existing is not None:
            return existing
        collector = PrometheusCollector()
        registry.register(collector)
        _registered[id(registry)] = collector
        return collector


# -------------------------------------------------------------------------- OpenTelemetry


def register_otel(meter: Any = None, loops: Callable[[], Iterable[Any]] | None = None) -> list[Any]:
    """Create OpenTelemetry observable instruments reporting every live loop's metrics.

    ``meter`` defaults to ``opentelemetry.metrics.get_meter("ferroloop")`` (the global meter
    provider's). Counters become observable counters, levels observable gauges; attributes
    are ``ferroloop.loop.id`` and ``thread.name``. Returns the instruments.
    """
    from opentelemetry import metrics as otel_metrics

    if meter is None:
        from . import __version__

        meter = otel_metrics.get_meter("ferroloop", __version__)
    Observation = otel_metrics.Observation

    def attributes(labels: dict[str, str]) -> dict[str, str]:
        return {"ferroloop.loop.id": labels["loop"], "thread.name": labels["thread"]}

    def field_callback(key: str) -> Callable[[Any], Iterable[Any]]:
        def callback(_options: Any) -> Iterable[Any]:
            out = []
            for labels, m in loop_samples(loops):
                v = _value(m, key)
                if v is not None:
                    out.append(Observation(v, attributes(labels)))
            return out

        return callback

    def lag_callback(_options: Any) -> Iterable[Any]:
        out = []
        for labels, m in loop_samples(loops):
            for key, q in LAG_QUANTILES:
                v = _value(m, key)
                if v is not None:
                    out.append(Observation(v, {**attributes(labels), "quantile": q}))
        return out

    def timing_callback(_options: Any) -> Iterable[Any]:
        return [
            Observation(1 if m.get("timing") else 0, attributes(labels))
            for labels, m in loop_samples(loops)
        ]

    instruments = []
    for f in FIELDS:
        create = meter.create_observable_counter if f.counter else meter.create_observable_gauge
        instruments.append(
            create(f.otel, callbacks=[field_callback(f.key)], unit=f.unit, description=f.doc)
        )
    instruments.append(
        meter.create_observable_gauge(
            LAG_OTEL, callbacks=[lag_callback], unit="s", description=LAG_DOC
        )
    )
    instruments.append(
        meter.create_observable_gauge(
            TIMING_OTEL, callbacks=[timing_callback], unit="1", description=TIMING_DOC
        )
    )
    return instruments
