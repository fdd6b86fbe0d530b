import pytest


@pytest.mark.allow_zombies("it forks")  # should be reason="it forks"
def test_forks():
    pass
