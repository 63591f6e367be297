"""Fixtures for search tests: a real, throwaway PostgreSQL server started (and installed, on a bare Debian CI
machine) by the test set-up itself, and a helper that runs the `condense` command in a fresh process."""
from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run_cli(*args: str, timeout: float = 240, **popen: object) -> subprocess.CompletedProcess:
    """`python -m condense.cli ARGS` in a new process, this checkout first on the path."""
    return subprocess.run([sys.executable, "-m", "condense.cli", *args], env=cli_env(), capture_output=True,
                          text=True, timeout=timeout, **popen)


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def _pg_bin() -> Path | None:
    found = shutil.which("initdb")
    cands = ([found] if found else []) + sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)
    return Path(cands[0]).resolve().parent if cands else None  # resolved: createdb and pg_ctl live beside it


def _install_postgres() -> Path:
    """CI starts bare: install Debian's PostgreSQL (needs root and apt-get)."""
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.fail("PostgreSQL is not installed and cannot be installed here (needs root and apt-get): "
                    "install it with `apt-get install -y postgresql`")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update"], check=True, env=env, capture_output=True, timeout=600)
    subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", "postgresql"], check=True, env=env,
                   capture_output=True, timeout=900)
    pg = _pg_bin()
    if pg is None:
        pytest.fail("apt-get installed postgresql but no initdb was found under /usr/lib/postgresql/*/bin")
    return pg


def _run(cmd: list[str]) -> None:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        pytest.fail(f"PostgreSQL set-up step failed: {' '.join(cmd)}\n{r.stdout[-1000:]}\n{r.stderr[-1000:]}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def postgres_url():
    """postgresql://condense@127.0.0.1:PORT/condense_test on a fresh cluster; stopped and removed afterwards."""
    pg = _pg_bin() or _install_postgres()
    root = Path(tempfile.mkdtemp(prefix="condense-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:  # initdb and postgres refuse to run as root: run them as the postgres user
        shutil.chown(root, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    data, sock, log = root / "data", root / "sock", root / "server.log"
    subprocess.run([*as_user, "mkdir", "-p", str(sock)], check=True)
    _run([*as_user, str(pg / "initdb"), "-D", str(data), "-U", "condense", "--auth=trust", "-E", "UTF8"])
    port = _free_port()
    opts = f"-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=off"
    _run([*as_user, str(pg / "pg_ctl"), "-D", str(data), "-o", opts, "-l", str(log), "-w", "-t", "60", "start"])
    try:
        _run([*as_user, str(pg / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "condense", "condense_test"])
        yield f"postgresql://condense@127.0.0.1:{port}/condense_test"
    finally:
        subprocess.run([*as_user, str(pg / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                       capture_output=True, timeout=60)
        time.sleep(0.2)
        shutil.rmtree(root, ignore_errors=True)
