"""gunicorn worker classes for tests/integration/test_ways_to_run.py (``-k _ways_workers.NAME``).

uvicorn-worker's ``UvicornWorker`` takes uvicorn's settings from ``CONFIG_KWARGS``; its ``loop``
accepts a ``"module:callable"`` loop factory, as ``uvicorn --loop`` does. These are the
subclasses the README shows.
"""

from uvicorn_worker import UvicornWorker


class FerroloopWorker(UvicornWorker):
    CONFIG_KWARGS = {"loop": "ferroloop:new_event_loop", "http": "auto"}


class AsyncioWorker(UvicornWorker):
    # The reference: asyncio's own loop. The default, "auto", would take uvloop where it is
    # installed.
    CONFIG_KWARGS = {"loop": "asyncio", "http": "auto"}
