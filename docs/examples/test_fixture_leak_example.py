import subprocess

import pytest


@pytest.fixture(scope="module")
def database():
    # missing: a teardown (yield, then proc.wait()) that collects the child
    return subprocess.Popen(["sh", "-c", "exit 3"])


def test_query(database):
    pass


def test_insert(database):
    pass
