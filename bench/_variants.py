"""ferroloop with its diagnostics switched on, as pseudo-loops for the benchmarks.

``--loops ferroloop,ferroloop-watchdog`` measures what the blocking watchdog costs (it also
turns the timed metrics on); ``ferroloop-metrics`` the timed metrics alone. Neither is in the
default set of loops.
"""

from __future__ import annotations

import ferroloop


def watchdog_loop() -> ferroloop.Loop:
    loop = ferroloop.new_event_loop()
    loop.set_blocking_threshold(0.05)
    return loop


def metrics_loop() -> ferroloop.Loop:
    loop = ferroloop.new_event_loop()
    loop.set_metrics_timing(True)
    return loop
