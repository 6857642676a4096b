"""How users start ferroloop: run(), Runner, the policy, install(), python -m ferroloop."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import textwrap

import pytest

import ferroloop


async def _loop_type():
    await asyncio.sleep(0)
    return type(asyncio.get_running_loop())


def test_run():
    assert ferroloop.run(_loop_type()) is ferroloop.Loop


def test_run_debug_flag():
    async def debug():
        return asyncio.get_running_loop().get_debug()

    assert ferroloop.run(debug(), debug=True) is True


def test_runner_with_loop_factory():
    with asyncio.Runner(loop_factory=ferroloop.new_event_loop) as runner:
        assert runner.run(_loop_type()) is ferroloop.Loop
        assert isinstance(runner.get_loop(), ferroloop.Loop)


def _policy_deprecated():
    """Python 3.14 deprecated asyncio's policies: ferroloop's policy and install() warn there."""
    if sys.version_info >= (3, 14):
        return pytest.warns(DeprecationWarning, match="deprecated")
    return contextlib.nullcontext()


def _policy_calls():
    """asyncio's own get/set_event_loop_policy warn on 3.14+; not what these tests check."""
    cm = contextlib.ExitStack()
    if sys.version_info >= (3, 14):
        cm.enter_context(pytest.warns(DeprecationWarning))
    return cm


def test_policy_and_install():
    with _policy_calls():
        old = asyncio.get_event_loop_policy()
    try:
        with _policy_deprecated():
            ferroloop.install()
        with _policy_deprecated():
            policy_cls = ferroloop.EventLoopPolicy
        with _policy_calls():
            assert isinstance(asyncio.get_event_loop_policy(), policy_cls)
        loop = asyncio.new_event_loop()
        assert isinstance(loop, ferroloop.Loop)
        loop.close()
        assert asyncio.run(_loop_type()) is ferroloop.Loop
    finally:
        with _policy_calls():
            asyncio.set_event_loop_policy(old)


def test_import_and_run_do_not_warn():
    # 3.14+: nothing of ferroloop's own import or its recommended entry points touches the
    # deprecated policy API.
    code = textwrap.dedent(
        """
        import asyncio, sys, ferroloop
        async def main():
            return type(asyncio.get_running_loop()).__name__
        assert ferroloop.run(main()) == "Loop"
        with asyncio.Runner(loop_factory=ferroloop.new_event_loop) as r:
            assert r.run(main()) == "Loop"
        if sys.version_info >= (3, 12):
            assert asyncio.run(main(), loop_factory=ferroloop.new_event_loop) == "Loop"
        """
    )
    res = subprocess.run(
        [sys.executable, "-W", "error::DeprecationWarning", "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr


@pytest.mark.skipif(sys.version_info < (3, 12), reason="asyncio.run(loop_factory=) is 3.12+")
def test_asyncio_run_with_loop_factory():
    assert asyncio.run(_loop_type(), loop_factory=ferroloop.new_event_loop) is ferroloop.Loop


def test_loop_is_abstract_event_loop():
    loop = ferroloop.new_event_loop()
    try:
        assert isinstance(loop, asyncio.AbstractEventLoop)
        assert isinstance(loop, ferroloop.Loop)
    finally:
        loop.close()


def test_subclassing_the_loop():
    class MyLoop(ferroloop.Loop):
        def __init__(self, tag):
            super().__init__()
            self.tag = tag

    loop = MyLoop("t")
    try:
        assert loop.tag == "t"
        assert loop.run_until_complete(_loop_type()) is MyLoop
    finally:
        loop.close()


def test_python_dash_m_ferroloop_runs_unmodified_program(tmp_path):
    script = tmp_path / "prog.py"
    script.write_text(
        textwrap.dedent(
            """
            import asyncio, sys

            async def main():
                await asyncio.sleep(0.01)
                print(type(asyncio.get_running_loop()).__module__, sys.argv[1:], __name__)

            asyncio.run(main())
            """
        )
    )
    out = subprocess.run(
        [sys.executable, "-m", "ferroloop", str(script), "a", "b"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert out.strip() == "ferroloop._loop ['a', 'b'] __main__"


def test_python_dash_m_ferroloop_module_and_code(tmp_path):
    (tmp_path / "mymod.py").write_text(
        "import asyncio\n"
        "async def main():\n"
        "    print(type(asyncio.get_running_loop()).__name__)\n"
        "if __name__ == '__main__':\n"
        "    asyncio.run(main())\n"
    )
    out = subprocess.run(
        [sys.executable, "-m", "ferroloop", "-m", "mymod"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        check=True,
    ).stdout
    assert out.strip() == "Loop"
    code = "import asyncio; print(asyncio.new_event_loop().__class__.__name__)"
    out = subprocess.run(
        [sys.executable, "-m", "ferroloop", "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert out.strip() == "Loop"


def test_python_dash_m_ferroloop_usage():
    res = subprocess.run(
        [sys.executable, "-m", "ferroloop"], capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 2
    assert "usage" in res.stderr


@pytest.mark.parametrize(
    "args, status, stream, text",
    [
        (["--version"], 0, "stdout", f"ferroloop {ferroloop.__version__} (Python "),
        (["-V"], 0, "stdout", "ferroloop "),
        (["--help"], 0, "stdout", "usage"),
        (["--bogus", "x.py"], 2, "stderr", "unknown option '--bogus'"),
        (["no-such-script.py"], 2, "stderr", "can't open file"),
    ],
)
def test_python_dash_m_ferroloop_options(args, status, stream, text, tmp_path):
    res = subprocess.run(
        [sys.executable, "-m", "ferroloop", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert res.returncode == status, res.stderr
    assert text in getattr(res, stream)
    assert "Traceback" not in res.stderr


def test_get_event_loop_under_policy():
    with _policy_calls():
        old = asyncio.get_event_loop_policy()
    try:
        with _policy_deprecated():
            policy = ferroloop.EventLoopPolicy()
        with _policy_calls():
            asyncio.set_event_loop_policy(policy)
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        assert asyncio.get_event_loop() is loop
        loop.close()
        asyncio.set_event_loop(None)
    finally:
        with _policy_calls():
            asyncio.set_event_loop_policy(old)


@pytest.mark.parametrize("name", ["Handle", "TimerHandle", "Loop", "EventLoopPolicy"])
def test_public_names(name):
    with _policy_deprecated() if name == "EventLoopPolicy" else contextlib.nullcontext():
        assert hasattr(ferroloop, name)


def test_version_has_one_source():
    # Cargo.toml's version is the package's: the native module reports it and maturin writes it
    # into the installed distribution's metadata.
    import importlib.metadata
    import tomllib
    from pathlib import Path

    assert ferroloop.__version__ == importlib.metadata.version("ferroloop")
    cargo = Path(__file__).resolve().parent.parent / "Cargo.toml"
    if cargo.exists():  # a checkout (the clean-room run has only a copy of tests/)
        with cargo.open("rb") as f:
            assert ferroloop.__version__ == tomllib.load(f)["package"]["version"]
