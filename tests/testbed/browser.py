"""Headless Chromium (Debian `chromium`) for the console's tests: the DOM of a page after
its scripts ran, and a screenshot. Each call is one browser process with its own profile
directory, killed with its whole process group if it overstays, so none is left running."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess

TIMEOUT = 60.0
FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-extensions", "--no-first-run",
         "--hide-scrollbars", "--enable-logging=stderr", "--v=0")


def available() -> bool:
    return shutil.which("chromium") is not None


def _run(profile: str, *args: str) -> tuple[str, str]:
    process = subprocess.Popen(["chromium", *FLAGS, f"--user-data-dir={profile}", *args], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = process.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    if process.returncode != 0:
        raise RuntimeError(f"chromium exited {process.returncode}: {err[-2000:]}")
    return out, err


def dom(url: str, profile: str) -> tuple[str, list[str]]:
    """The page's DOM once loaded, and what its console said (CSP violations, script errors)."""
    out, err = _run(profile, "--dump-dom", url)
    return out, [line for line in err.splitlines() if ":CONSOLE" in line]


def screenshot(url: str, path: str, profile: str, size: str = "1280,800") -> None:
    _run(profile, f"--screenshot={path}", f"--window-size={size}", url)
