import pytest


@pytest.mark.allow_zombies(reson="it forks")  # should be reason="it forks"
def test_forks():
    pass
