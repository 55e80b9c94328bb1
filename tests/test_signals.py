"""A real export stopped by SIGINT (Ctrl-C) or SIGTERM (timeout, CI cancel, container stop) at two points:
while calibrating (before anything is staged) and while converting (inside the staging folder). Each leaves
nothing behind, exits 130 / 143 and says so in one line. A SIGKILLed export's staging folder is removed by
the next run into the folder, and only a dead process's."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from edgehybrid.fsutil import STAGING_PREFIX, remove_stale_staging

FIXTURE = "mobilevit_xxs.cifar10"


def _start(out: Path, *extra: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "edgehybrid", "export", FIXTURE, "-t", "onnx", "-o", str(out),
                             *extra], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)


def _wait_for(proc: subprocess.Popen, ready, timeout: float = 120) -> list[str]:
    """Collect stderr in a thread until ``ready(text so far)``; returns the list the thread keeps filling."""
    seen: list[str] = []
    reader = threading.Thread(target=lambda: seen.extend(iter(proc.stderr.readline, "")), daemon=True)
    reader.start()
    proc.reader = reader
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready("".join(seen)):
            return seen
        assert proc.poll() is None, f"the export ended before the point: {''.join(seen)[-800:]}"
        time.sleep(0.05)
    raise AssertionError(f"the export never reached the point: {''.join(seen)[-800:]}")


def _staged(out: Path) -> list[Path]:
    return list(out.glob(STAGING_PREFIX + "*")) if out.is_dir() else []


POINTS = {
    # calibrating: the plan is being measured, nothing staged yet
    "calibrating": (("--int8", "--calib-size", "24"), lambda out: (lambda text: "calibrating on" in text)),
    # converting: torch.export / torch.onnx at work inside the staging folder
    "converting": ((), lambda out: (lambda text: bool(_staged(out)))),
}


@pytest.mark.parametrize("sig, code, word", [(signal.SIGINT, 130, "interrupted"),
                                             (signal.SIGTERM, 143, "terminated (SIGTERM)")])
@pytest.mark.parametrize("point", list(POINTS))
def test_a_stopped_export_leaves_nothing(tmp_path, sig, code, word, point):
    out = tmp_path / "exports"
    extra, ready = POINTS[point]
    proc = _start(out, *extra)
    seen = _wait_for(proc, ready(out))
    proc.send_signal(sig)
    rc = proc.wait(timeout=120)
    proc.reader.join(timeout=10)
    err = "".join(seen)
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert rc == code, err[-800:]
    assert len(errors) == 1 and word in errors[0], err[-800:]
    assert "Traceback" not in err
    assert not out.exists() or list(out.iterdir()) == [], list(out.iterdir())


def test_a_killed_exports_staging_folder_goes_with_the_next_run_and_a_live_ones_stays(tmp_path):
    out = tmp_path / "exports"
    proc = _start(out)
    _wait_for(proc, lambda text: bool(_staged(out)))
    proc.kill()  # SIGKILL: nothing unwinds
    proc.wait(timeout=60)
    (left,) = _staged(out)
    assert f"-{proc.pid}-" in left.name
    alive = out / f"{left.name.rsplit('-', 2)[0]}-{os.getpid()}-livefold"  # this process: alive
    alive.mkdir()
    assert remove_stale_staging(out) == [left]
    assert not left.exists() and alive.exists()
