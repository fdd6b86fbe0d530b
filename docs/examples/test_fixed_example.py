import multiprocessing
import os
import subprocess

import pytest


def test_stop_server():
    server = subprocess.Popen(["sleep", "60"])
    server.kill()
    server.wait()  # collects the child: no zombie


def test_run_to_completion():
    subprocess.run(["true"], check=True)
    with subprocess.Popen(["sleep", "0"]) as proc:  # the with-block waits
        pass
    assert proc.returncode == 0


def test_fork():
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)


def work():
    pass


def test_process():
    proc = multiprocessing.get_context("spawn").Process(target=work)
    proc.start()
    proc.join()
    assert proc.exitcode == 0


@pytest.fixture(scope="module")
def server():
    proc = subprocess.Popen(["sleep", "60"])
    yield proc
    proc.terminate()
    proc.wait()  # a wider fixture waits for its child in its teardown


def test_uses_server(server):
    assert server.poll() is None
