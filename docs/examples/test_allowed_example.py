import os
import subprocess

import pytest

children = {}


@pytest.mark.allow_zombies(reason="checks the exit status a supervisor sees")
def test_leaves_a_zombie_on_purpose():
    worker = children["worker"] = subprocess.Popen(["sh", "-c", "exit 7"])
    # Wait until it has exited, without collecting it: it is a zombie now,
    # and the marker lets this test leave it.
    os.waitid(os.P_PID, worker.pid, os.WEXITED | os.WNOWAIT)


def test_the_zombie_was_reaped_through_its_popen():
    # The plugin reaped it after the test above, through its Popen object,
    # so the Popen knows how its child ended.
    assert children["worker"].returncode == 7


@pytest.mark.allow_zombies
class TestLegacyDaemon:
    def test_start(self):
        subprocess.Popen(["true"]).kill()

    def test_restart(self):
        subprocess.Popen(["true"]).kill()
