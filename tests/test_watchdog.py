"""The blocking watchdog and loop metrics (ferroloop-only features: asyncio has neither).

The watchdog reports a callback or task step that keeps the loop busy past a threshold, with
the loop thread's stack taken while it is still blocked. Records are collected through
``set_blocking_handler`` (called on the watchdog's thread); one test checks the log format.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

import ferroloop

THRESHOLD = 0.05


def _line_of(marker: str) -> int:
    with open(__file__) as f:
        for number, text in enumerate(f, 1):
            if marker in text and "_line_of" not in text:
                return number
    raise AssertionError(marker)


class Collector:
    def __init__(self) -> None:
        self.records: list[ferroloop.BlockingRecord] = []
        self.threads: set[int] = set()
        self.lock = threading.Lock()

    def __call__(self, record: ferroloop.BlockingRecord) -> None:
        with self.lock:
            self.records.append(record)
            self.threads.add(threading.get_ident())

    def blocked(self) -> list[ferroloop.BlockingRecord]:
        return [r for r in self.records if not r.finished]

    def ended(self) -> list[ferroloop.BlockingRecord]:
        return [r for r in self.records if r.finished]

    def wait_ended(self, n: int, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.ended()) < n and time.monotonic() < deadline:
            time.sleep(0.01)


@pytest.fixture
def watched():
    loop = ferroloop.new_event_loop()
    collector = Collector()
    loop.set_blocking_handler(collector)
    loop.set_blocking_threshold(THRESHOLD)
    try:
        yield loop, collector
    finally:
        loop.close()


def test_sleep_in_a_coroutine_is_reported_with_its_line_and_task(watched):
    loop, collector = watched

    async def handler():
        time.sleep(0.3)  # BLOCKS-HERE

    async def main():
        await asyncio.create_task(handler(), name="slow-handler")

    loop.run_until_complete(main())
    collector.wait_ended(1)
    [blocked] = collector.blocked()
    assert blocked.task_name == "slow-handler"
    assert blocked.coroutine.endswith("handler()")
    assert THRESHOLD <= blocked.seconds < 0.3
    filename, lineno, function, line = blocked.frames[-1]
    assert filename == __file__
    assert lineno == _line_of("# BLOCKS-HERE")
    assert function == "handler"
    assert line.startswith("time.sleep(0.3)")
    [ended] = collector.ended()
    assert ended.task_name == "slow-handler"
    assert 0.29 <= ended.seconds < 2.0
    # Reported on the watchdog's thread, never the loop's.
    assert threading.get_ident() not in collector.threads


def _spin(seconds: float) -> int:
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end:  # SPIN-LINE
        n += 1
    return n


def test_cpu_bound_python_shows_the_loop_line(watched):
    loop, collector = watched

    async def crunch():
        _spin(0.3)

    loop.run_until_complete(crunch())
    collector.wait_ended(1)
    [blocked] = collector.blocked()
    functions = [f[2] for f in blocked.frames]
    assert functions[-2:] == ["crunch", "_spin"]
    assert blocked.frames[-1][1] in (_line_of("# SPIN-LINE"), _line_of("# SPIN-LINE") + 1)


def test_nothing_below_the_threshold(watched):
    loop, collector = watched

    async def main():
        for _ in range(20):
            time.sleep(0.005)
            await asyncio.sleep(0)

    loop.run_until_complete(main())
    time.sleep(0.1)
    assert collector.records == []


def test_nothing_when_off():
    loop = ferroloop.new_event_loop()
    collector = Collector()
    loop.set_blocking_handler(collector)
    try:
        assert loop.get_blocking_threshold() is None
        loop.run_until_complete(asyncio.sleep(0))
        loop.call_soon(time.sleep, 0.15)
        loop.run_until_complete(asyncio.sleep(0.01))
        loop.set_blocking_threshold(THRESHOLD)
        loop.set_blocking_threshold(None)
        loop.call_soon(time.sleep, 0.15)
        loop.run_until_complete(asyncio.sleep(0.01))
        time.sleep(0.1)
        assert collector.records == []
        assert loop.metrics()["timing"] is False
    finally:
        loop.close()


def test_timer_callback(watched):
    loop, collector = watched

    def on_timer():
        time.sleep(0.2)

    loop.call_later(0.01, on_timer)
    loop.run_until_complete(asyncio.sleep(0.05))
    collector.wait_ended(1)
    [blocked] = collector.blocked()
    assert blocked.task is None
    assert "on_timer" in blocked.callback
    assert blocked.frames[-1][2] == "on_timer"


def test_executor_result_callback(watched):
    loop, collector = watched

    def slow_done(fut):
        time.sleep(0.2)

    async def main():
        fut = loop.run_in_executor(None, sum, [1, 2])
        fut.add_done_callback(slow_done)
        await fut
        await asyncio.sleep(0.01)

    loop.run_until_complete(main())
    collector.wait_ended(1)
    [blocked] = collector.blocked()
    assert "slow_done" in blocked.callback
    assert blocked.frames[-1][2] == "slow_done"


def test_protocol_callback(watched):
    loop, collector = watched

    class Slow(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport

        def data_received(self, data):
            time.sleep(0.2)
            self.transport.close()

    a, b = socket.socketpair()

    async def main():
        tr, _ = await loop.connect_accepted_socket(Slow, a)
        b.sendall(b"x")
        while not tr.is_closing():
            await asyncio.sleep(0.01)

    try:
        loop.run_until_complete(main())
    finally:
        b.close()
    collector.wait_ended(1)
    [blocked] = collector.blocked()
    assert blocked.kind == "stream transport read"
    assert blocked.callback.endswith("Slow.data_received()")
    assert blocked.frames[-1][2] == "data_received"


def test_two_loops_in_two_threads_each_report_their_own():
    results: dict[str, Collector] = {}

    def run(name: str, delay: float) -> None:
        loop = ferroloop.new_event_loop()
        collector = Collector()
        results[name] = collector
        loop.set_blocking_handler(collector)
        loop.set_blocking_threshold(THRESHOLD)

        async def main():
            await asyncio.sleep(delay)
            await asyncio.create_task(asyncio.to_thread(lambda: None))
            time.sleep(0.2)

        try:
            loop.run_until_complete(asyncio.wait_for(main(), 10))
            collector.wait_ended(1)
        finally:
            loop.close()

    threads = [threading.Thread(target=run, args=(n, d)) for n, d in (("a", 0), ("b", 0.05))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for name in ("a", "b"):
        blocked = results[name].blocked()
        assert len(blocked) == 1, (name, results[name].records)
        assert blocked[0].frames[-1][2] == "main"
    assert results["a"].blocked()[0].loop is not results["b"].blocked()[0].loop


def test_log_report_format(caplog):
    loop = ferroloop.new_event_loop()
    loop.set_blocking_threshold("50ms")
    assert loop.get_blocking_threshold() == pytest.approx(0.05)

    async def handler():
        time.sleep(0.2)

    async def main():
        await asyncio.create_task(handler(), name="req-1")
        await asyncio.sleep(0.2)  # the closing report comes from the watchdog thread

    try:
        with caplog.at_level(logging.WARNING, logger="ferroloop"):
            loop.run_until_complete(main())
    finally:
        loop.close()
    messages = [r.getMessage() for r in caplog.records if r.name == "ferroloop"]
    assert len(messages) == 2, messages
    assert messages[0].startswith("Event loop blocked for 0.0")
    assert "(still blocked) by task 'req-1' (" in messages[0]
    assert f'File "{__file__}"' in messages[0]
    assert "time.sleep(0.2)" in messages[0]
    assert messages[1].startswith("Event loop was blocked for 0.2")
    assert "by task 'req-1'" in messages[1]


def test_reports_are_rate_limited(watched):
    loop, collector = watched

    async def main():
        for _ in range(14):
            time.sleep(0.07)
            await asyncio.sleep(0)

    loop.run_until_complete(main())
    time.sleep(0.1)
    assert len(collector.blocked()) == 10  # the burst; the rest is counted, not reported
    assert loop.metrics()["blocking_episodes"] >= 12


def test_environment_variable_turns_it_on(tmp_path):
    script = tmp_path / "app.py"
    script.write_text(
        "import asyncio, time, ferroloop\n"
        "async def main():\n"
        "    time.sleep(0.2)\n"
        "    await asyncio.sleep(0.1)\n"
        "ferroloop.run(main())\n"
    )
    env = dict(os.environ, FERROLOOP_WARN_BLOCKING="50ms")
    out = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert "Event loop blocked for" in out.stderr
    assert "time.sleep(0.2)" in out.stderr


def test_bad_thresholds():
    loop = ferroloop.new_event_loop()
    try:
        for bad in (-1, 0, "-5ms", "fast", float("nan"), float("inf")):
            with pytest.raises((ValueError, TypeError)):
                loop.set_blocking_threshold(bad)
        with pytest.raises(TypeError):
            loop.set_blocking_handler(42)
        for off in (None, "off", "0"):
            loop.set_blocking_threshold(off)
            assert loop.get_blocking_threshold() is None
    finally:
        loop.close()


# ---------------------------------------------------------------- metrics


def test_metrics_count_callbacks_timers_and_bytes():
    loop = ferroloop.new_event_loop()
    try:
        loop.set_metrics_timing(True)
        before = loop.metrics()
        for _ in range(100):
            loop.call_soon(lambda: None)
        t = loop.call_later(100, lambda: None)
        a, b = socket.socketpair()

        async def main():
            reader, writer = await asyncio.open_connection(sock=a)
            writer.write(b"x" * 1000)
            await writer.drain()
            b.sendall(b"y" * 500)
            assert await reader.readexactly(500) == b"y" * 500
            m = loop.metrics()
            writer.close()
            await writer.wait_closed()
            return m

        during = loop.run_until_complete(main())
        b.close()
        after = loop.metrics()
        assert after["callbacks"] - before["callbacks"] >= 100
        assert after["iterations"] > before["iterations"]
        assert during["timers"] == 1 and after["timers"] == 1
        assert during["transports"] == 1 and after["transports"] == 0
        assert during["fds"] >= 1
        assert after["bytes_sent"] - before["bytes_sent"] == 1000
        assert after["bytes_received"] - before["bytes_received"] == 500
        assert after["timing"] is True
        assert after["poll_seconds"] >= 0 and after["callback_seconds"] > 0
        assert 0 <= after["busy_ratio"] <= 1
        assert after["lag_samples"] > 0 and after["lag_max"] >= after["lag_p99"] >= 0
        t.cancel()
    finally:
        loop.close()


def test_metrics_lag_sees_a_blocked_batch():
    loop = ferroloop.new_event_loop()
    try:
        loop.set_metrics_timing(True)
        loop.call_soon(time.sleep, 0.1)
        loop.call_soon(lambda: None)  # waits behind the sleep
        loop.run_until_complete(asyncio.sleep(0))
        assert loop.metrics()["lag_max"] >= 0.09
    finally:
        loop.close()


def test_metrics_executor_fields():
    loop = ferroloop.new_event_loop()
    try:
        started = threading.Event()
        release = threading.Event()

        def job():
            started.set()
            release.wait(5)

        async def main():
            fut = loop.run_in_executor(None, job)
            await loop.run_in_executor(None, started.wait, 5)
            m = loop.metrics()
            release.set()
            await fut
            return m

        m = loop.run_until_complete(main())
        assert m["executor_busy"] >= 1 and m["executor_workers"] >= 1
        assert m["executor_queued"] == 0
        assert m["timing"] is False and m["busy_ratio"] is None
    finally:
        loop.close()


def test_blocking_server_example_names_the_blocking_line():
    """examples/blocking_server.py under the watchdog: the report, taken while the loop is
    blocked, ends at the line that blocks."""
    pytest.importorskip("aiohttp", reason="pip install -r scripts/requirements-integration.txt")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ)
    env.pop("PYTHONASYNCIODEBUG", None)
    env.pop("FERROLOOP_WARN_BLOCKING", None)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "ferroloop",
            "--warn-blocking",
            "50ms",
            "examples/blocking_server.py",
        ],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    report = out.stderr.split("Event loop blocked for", 1)[1]
    stack = report.split("Event loop was blocked for", 1)[0]
    assert stack.rstrip().endswith("time.sleep(0.25)"), out.stderr
    assert "in fetch_exchange_rates" in stack
    assert "RequestHandler._handle_request()" in report


def test_warn_blocking_option_rejects_bad_durations():
    out = subprocess.run(
        [sys.executable, "-m", "ferroloop", "--warn-blocking", "soon", "-c", "pass"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    assert "--warn-blocking" in out.stderr
