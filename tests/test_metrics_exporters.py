"""``ferroloop.metrics``: loop.metrics() exported to Prometheus and OpenTelemetry (ferroloop
only). A stand-in loop with known metrics checks names, kinds, units, labels and values; real
loops check that what is exported is what ``loop.metrics()`` says, labelled by loop and thread.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import textwrap
import threading
from typing import Any

import pytest

import ferroloop
from ferroloop import metrics

prometheus_client = pytest.importorskip("prometheus_client")
pytest.importorskip("opentelemetry.sdk.metrics")

from opentelemetry.sdk.metrics import MeterProvider  # noqa: E402
from opentelemetry.sdk.metrics.export import (  # noqa: E402
    Gauge,
    InMemoryMetricReader,
    Sum,
)
from prometheus_client import CollectorRegistry, generate_latest  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

KNOWN: dict[str, Any] = {
    "iterations": 120,
    "callbacks": 345,
    "poll_seconds": 2.5,
    "callback_seconds": 0.5,
    "busy_ratio": 0.2,
    "lag_p50": 0.001,
    "lag_p99": 0.02,
    "lag_max": 0.3,
    "lag_samples": 64,
    "ready": 3,
    "timers": 7,
    "fds": 4,
    "transports": 2,
    "bytes_received": 1000,
    "bytes_sent": 2000,
    "executor_queued": 5,
    "executor_busy": 2,
    "executor_workers": 4,
    "blocking_episodes": 1,
    "timing": True,
}

# Prometheus family (as exposed) -> the metrics() key it carries.
PROM_COUNTERS = {
    "ferroloop_loop_iterations_total": "iterations",
    "ferroloop_loop_callbacks_total": "callbacks",
    "ferroloop_loop_poll_seconds_total": "poll_seconds",
    "ferroloop_loop_callback_seconds_total": "callback_seconds",
    "ferroloop_loop_received_bytes_total": "bytes_received",
    "ferroloop_loop_sent_bytes_total": "bytes_sent",
    "ferroloop_loop_blocking_episodes_total": "blocking_episodes",
}
PROM_GAUGES = {
    "ferroloop_loop_busy_ratio": "busy_ratio",
    "ferroloop_loop_lag_max_seconds": "lag_max",
    "ferroloop_loop_ready_callbacks": "ready",
    "ferroloop_loop_timers": "timers",
    "ferroloop_loop_fds": "fds",
    "ferroloop_loop_transports": "transports",
    "ferroloop_loop_executor_queued_jobs": "executor_queued",
    "ferroloop_loop_executor_busy_workers": "executor_busy",
    "ferroloop_loop_executor_workers": "executor_workers",
}
TIMED = {"poll_seconds", "callback_seconds", "busy_ratio", "lag_max"}


class FakeLoop:
    """Stands in for a loop: known metrics, running on the current thread."""

    def __init__(self, values: dict[str, Any], thread_id: int | None = None) -> None:
        self.values = values
        self._thread_id = thread_id

    def metrics(self) -> dict[str, Any]:
        return dict(self.values)


class BrokenLoop:
    _thread_id = None

    def metrics(self) -> dict[str, Any]:
        raise ValueError("closing")


def scrape(*loops: Any) -> dict[str, list[Any]]:
    """Exposition text of a collector over ``loops``, parsed: sample name -> samples."""
    registry = CollectorRegistry()
    registry.register(metrics.PrometheusCollector(loops=lambda: list(loops)))
    out: dict[str, list[Any]] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            out.setdefault(sample.name, []).append(sample)
    return out


def families(registry: CollectorRegistry) -> dict[str, str]:
    text = generate_latest(registry).decode()
    return {f.name: f.type for f in text_string_to_metric_families(text)}


# ------------------------------------------------------------------------------ Prometheus


def test_prometheus_families_and_values() -> None:
    fake = FakeLoop(KNOWN, threading.get_ident())
    samples = scrape(fake)
    labels = {"loop": hex(id(fake)), "thread": threading.current_thread().name}
    for name, key in {**PROM_COUNTERS, **PROM_GAUGES}.items():
        (sample,) = samples[name]
        assert sample.labels == labels, name
        assert sample.value == pytest.approx(KNOWN[key]), name
    lag = {s.labels["quantile"]: s.value for s in samples["ferroloop_loop_lag_seconds"]}
    assert lag == {"0.5": pytest.approx(0.001), "0.99": pytest.approx(0.02)}
    assert samples["ferroloop_loop_timing"][0].value == 1.0


def test_prometheus_types_help_and_units() -> None:
    registry = CollectorRegistry()
    registry.register(metrics.PrometheusCollector(loops=lambda: [FakeLoop(KNOWN)]))
    text = generate_latest(registry).decode()
    for name in PROM_COUNTERS:
        assert f"# TYPE {name} counter" in text
    for name in [*PROM_GAUGES, "ferroloop_loop_lag_seconds", "ferroloop_loop_timing"]:
        assert f"# TYPE {name} gauge" in text
    assert "# HELP ferroloop_loop_busy_ratio Share of the loop's time" in text


def test_prometheus_untimed_loop_exports_no_timings() -> None:
    values = dict(KNOWN, timing=False, poll_seconds=None, callback_seconds=None)
    values.update(busy_ratio=None, lag_p50=None, lag_p99=None, lag_max=None)
    samples = scrape(FakeLoop(values))
    for name, key in {**PROM_COUNTERS, **PROM_GAUGES}.items():
        assert (name in samples) == (key not in TIMED), name
    assert "ferroloop_loop_lag_seconds" not in samples
    assert samples["ferroloop_loop_timing"][0].value == 0.0
    # A loop not running (no thread): the thread label is empty.
    assert samples["ferroloop_loop_iterations_total"][0].labels["thread"] == ""


def test_prometheus_several_loops_and_a_failing_one() -> None:
    a = FakeLoop(dict(KNOWN, iterations=1))
    b = FakeLoop(dict(KNOWN, iterations=2))
    samples = scrape(a, BrokenLoop(), b)
    got = {s.labels["loop"]: s.value for s in samples["ferroloop_loop_iterations_total"]}
    assert got == {hex(id(a)): 1.0, hex(id(b)): 2.0}


def test_register_prometheus() -> None:
    registry = CollectorRegistry()
    collector = metrics.register_prometheus(registry)
    assert metrics.register_prometheus(registry) is collector  # once per registry
    assert families(registry)["ferroloop_loop_iterations"] == "counter"

    from prometheus_client import REGISTRY

    default = metrics.register_prometheus()
    try:
        assert "ferroloop_loop_busy_ratio" in generate_latest(REGISTRY).decode()
    finally:
        REGISTRY.unregister(default)
        metrics._registered.pop(id(REGISTRY), None)


def test_prometheus_real_loop_in_a_thread() -> None:
    """A real loop, running in a named thread: exported values are its metrics()."""
    loop = ferroloop.new_event_loop()
    loop.set_metrics_timing(True)
    started = threading.Event()
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)

    async def io() -> None:
        await loop.sock_sendall(a, b"x" * 100)
        assert await loop.sock_recv(b, 100) == b"x" * 100
        await asyncio.sleep(0.01)

    def run() -> None:
        loop.run_until_complete(io())
        loop.call_soon(started.set)
        loop.run_forever()

    thread = threading.Thread(target=run, name="metrics-loop")
    thread.start()
    try:
        assert started.wait(10)
        mine = hex(id(loop))
        registry = CollectorRegistry()
        registry.register(metrics.PrometheusCollector())
        text = generate_latest(registry).decode()
        running = {
            s.name: s
            for f in text_string_to_metric_families(text)
            for s in f.samples
            if s.labels["loop"] == mine
        }
        assert running["ferroloop_loop_iterations_total"].labels["thread"] == "metrics-loop"
        assert running["ferroloop_loop_timing"].value == 1.0
        assert running["ferroloop_loop_iterations_total"].value > 0
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        a.close()
        b.close()
    try:
        # Stopped: values settle, and the loop keeps the thread label it was seen with.
        expected = loop.metrics()
        assert expected["bytes_sent"] >= 100 and expected["bytes_received"] >= 100
        stopped = {
            s.name: s
            for f in text_string_to_metric_families(generate_latest(registry).decode())
            for s in f.samples
            if s.labels["loop"] == mine
        }
        for name, key in {**PROM_COUNTERS, **PROM_GAUGES}.items():
            assert stopped[name].value == pytest.approx(expected[key]), name
            assert stopped[name].labels["thread"] == "metrics-loop"
    finally:
        loop.close()
    # Closed: gone from the export.
    text = generate_latest(registry).decode()
    assert hex(id(loop)) not in text


# --------------------------------------------------------------------------- OpenTelemetry


def otel_points(reader: InMemoryMetricReader) -> dict[str, Any]:
    data = reader.get_metrics_data()
    out = {}
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                out[m.name] = m
    return out


OTEL_NAMES = {f.otel: f for f in metrics.FIELDS}


def test_otel_instruments_report_values() -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    fake = FakeLoop(KNOWN, threading.get_ident())
    try:
        instruments = metrics.register_otel(provider.get_meter("test"), loops=lambda: [fake])
        assert len(instruments) == len(metrics.FIELDS) + 2
        got = otel_points(reader)
        attrs = {
            "ferroloop.loop.id": hex(id(fake)),
            "thread.name": threading.current_thread().name,
        }
        for name, field in OTEL_NAMES.items():
            m = got[name]
            assert m.unit == field.unit, name
            (point,) = m.data.data_points
            assert dict(point.attributes) == attrs, name
            assert point.value == pytest.approx(KNOWN[field.key]), name
            if field.counter:
                assert isinstance(m.data, Sum) and m.data.is_monotonic, name
            else:
                assert isinstance(m.data, Gauge), name
        assert got["ferroloop.loop.iterations"].data.data_points[0].value == 120
        assert isinstance(got["ferroloop.loop.iterations"].data.data_points[0].value, int)
        lag = {
            p.attributes["quantile"]: p.value for p in got["ferroloop.loop.lag"].data.data_points
        }
        assert lag == {"0.5": pytest.approx(0.001), "0.99": pytest.approx(0.02)}
        assert got["ferroloop.loop.lag"].unit == "s"
        assert got["ferroloop.loop.timing"].data.data_points[0].value == 1
        assert got["ferroloop.loop.poll.time"].unit == "s"
        assert got["ferroloop.loop.io.received"].unit == "By"
    finally:
        provider.shutdown()


def test_otel_values_follow_the_loop() -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    values = dict(KNOWN, timing=False, busy_ratio=None, lag_p50=None, lag_p99=None, lag_max=None)
    fake = FakeLoop(values)
    try:
        metrics.register_otel(provider.get_meter("test"), loops=lambda: [fake])
        first = otel_points(reader)
        assert "ferroloop.loop.busy_ratio" not in first  # not measured: no point
        assert "ferroloop.loop.lag" not in first
        assert first["ferroloop.loop.timing"].data.data_points[0].value == 0
        fake.values = dict(values, iterations=500, ready=9)
        second = otel_points(reader)
        assert second["ferroloop.loop.iterations"].data.data_points[0].value == 500
        assert second["ferroloop.loop.ready"].data.data_points[0].value == 9
    finally:
        provider.shutdown()


def test_otel_real_loop(ferroloop_loop: ferroloop.Loop) -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    ferroloop_loop.set_metrics_timing(True)
    ferroloop_loop.run_until_complete(asyncio.sleep(0.01))
    try:
        metrics.register_otel(provider.get_meter("test"))
        expected = ferroloop_loop.metrics()
        got = otel_points(reader)
        mine = hex(id(ferroloop_loop))
        for name, field in OTEL_NAMES.items():
            points = [
                p for p in got[name].data.data_points if p.attributes["ferroloop.loop.id"] == mine
            ]
            assert len(points) == 1, name
            assert points[0].value == pytest.approx(expected[field.key]), name
    finally:
        provider.shutdown()


def test_register_otel_default_meter() -> None:
    code = textwrap.dedent(
        """
        import asyncio, ferroloop, ferroloop.metrics
        from opentelemetry import metrics
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        reader = InMemoryMetricReader()
        metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
        loop = ferroloop.new_event_loop()
        loop.run_until_complete(asyncio.sleep(0))
        ferroloop.metrics.register_otel()
        data = reader.get_metrics_data()
        (rm,) = data.resource_metrics
        (sm,) = rm.scope_metrics
        print(sm.scope.name, sorted(m.name for m in sm.metrics)[0])
        """
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["ferroloop", "ferroloop.loop.blocking_episodes"]


def test_exporters_imported_only_when_used() -> None:
    code = (
        "import sys, ferroloop, ferroloop.metrics\n"
        "assert 'prometheus_client' not in sys.modules\n"
        "assert not [m for m in sys.modules if m.startswith('opentelemetry')]\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
