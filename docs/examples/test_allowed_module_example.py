import os

import pytest

pytestmark = pytest.mark.allow_zombies(reason="every test here forks and walks away")


def test_fork_and_forget():
    if os.fork() == 0:
        os._exit(0)


def test_fork_and_forget_again():
    if os.fork() == 0:
        os._exit(1)
