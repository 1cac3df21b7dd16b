"""The builder's child process: it dies with its parent, and neither it nor ONNX generation looks up any host."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# What each sends when telemetry is left on; removed from the children's environment so the fix, not the test
# machine, is what keeps them quiet.
TELEMETRY_SWITCHES = ("ORT_DISABLE_TELEMETRY", "HF_HUB_DISABLE_TELEMETRY", "DO_NOT_TRACK")


def gone(pid: int) -> bool:
    """No such process, or a zombie (dead, waiting for a parent that is not ours to reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def wait_until(condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


@pytest.mark.timeout(60)
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_the_builder_child_dies_with_its_killed_parent() -> None:
    """A kernel killed mid-export (kill -9, OOM) must not leave a builder converting for nobody."""
    parent_code = textwrap.dedent("""
        import os, sys, threading
        from slmnb.opt.builder import spawn

        def work():  # as in a notebook: the export runs in a thread that waits for its child
            child = spawn([sys.executable, "-c", "import time; time.sleep(600)"], dict(os.environ))
            print(child.pid, flush=True)
            child.wait()

        thread = threading.Thread(target=work)
        thread.start()
        thread.join()
    """)
    parent = subprocess.Popen([sys.executable, "-c", parent_code], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    child = 0
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        assert not gone(child)
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=10)
        assert wait_until(lambda: gone(child), timeout=5), "the builder child outlived its parent"
    finally:
        parent.kill()
        if child and not gone(child):
            os.kill(child, signal.SIGKILL)


SITECUSTOMIZE = '''
"""Records every host lookup and outbound connection made from Python, and keeps the process alive a while
at exit, long enough for a telemetry thread (onnxruntime's sends about nine seconds after it starts) to act."""
import atexit, os, socket, time

_LOG, _STARTED = os.environ["NET_LOG"], time.monotonic()


def _record(what, detail):
    with open(_LOG, "a") as log:
        log.write(f"{os.getpid()} {what} {detail!r}\\n")


def _wrap(owner, name, is_network=lambda args: True):
    real = getattr(owner, name)

    def wrapper(*args, **kwargs):
        if is_network(args):
            _record(name, args[:2])
        return real(*args, **kwargs)

    setattr(owner, name, wrapper)


for _name in ("getaddrinfo", "gethostbyname", "gethostbyname_ex", "create_connection"):
    _wrap(socket, _name)
for _name in ("connect", "connect_ex", "sendto"):
    _wrap(socket.socket, _name, lambda args: any(isinstance(a, tuple) for a in args[1:]))
atexit.register(lambda: time.sleep(max(0.0, float(os.environ.get("LINGER", "0")) - (time.monotonic() - _STARTED))))
'''


def strace_works() -> bool:
    if shutil.which("strace") is None:
        return False
    probe = subprocess.run(["strace", "-f", "-qq", "-e", "trace=connect", "-o", os.devnull, "true"],
                           capture_output=True, check=False)
    return probe.returncode == 0


@pytest.mark.timeout(400)
def test_neither_the_builder_child_nor_onnx_generation_looks_up_any_host(tmp_path: Path) -> None:
    """Offline machines saw DNS queries for onnxruntime's telemetry host on every export.

    Python-level lookups (huggingface_hub, transformers) are recorded by a sitecustomize in every process;
    onnxruntime's own, from native threads, only show under strace, which this test uses where it works.
    """
    from slmnb.models import model_folder

    hf_dir = model_folder("tiny-llama")
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    net_log, trace = tmp_path / "net.log", tmp_path / "strace.log"
    net_log.touch()
    out = tmp_path / "out"
    script = textwrap.dedent(f"""
        import time
        from pathlib import Path
        from slmnb.opt.builder import run_builder
        from slmnb.opt.runtime import onnx_model

        run_builder({str(hf_dir)!r}, Path({str(out)!r}), "fp32", log_path=Path({str(tmp_path / "builder.log")!r}))
        model = onnx_model(Path({str(out)!r}))
        assert list(model.stream([1, 2, 3], 4))
        time.sleep(12)  # onnxruntime in this process started at og.Model: give its telemetry time to act
    """)
    env = {name: value for name, value in os.environ.items() if name not in TELEMETRY_SWITCHES}
    env.update(PYTHONPATH=os.pathsep.join([str(site), str(ROOT)]), NET_LOG=str(net_log), LINGER="14")
    command = [sys.executable, "-c", script]
    traced = strace_works()
    if traced:
        command = ["strace", "-f", "-qq", "-e", "trace=connect,sendto", "-o", str(trace), *command]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=380, check=False, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (out / "genai_config.json").is_file()
    assert net_log.read_text() == ""
    if traced:
        dns = [line for line in trace.read_text().splitlines() if "htons(53)" in line]
        assert dns == [], "\n".join(dns[:5])
    else:
        pytest.skip("strace is not usable here: only the Python-level lookups were checked")
