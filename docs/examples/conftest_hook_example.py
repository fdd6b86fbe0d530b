import pytest


def pytest_nozombies_leak(leak, item):
    # The vendored tool forks a helper it never waits for, and nothing can
    # be done about it here: keep it out of the reports.
    if leak.argv and leak.argv[0].endswith("vendored-tool"):
        return False
    # Point whoever reads the failure at the team's guide.
    if item is not None and item.get_closest_marker("server") is not None:
        leak.details.append("servers must be stopped in their fixture's teardown")
    return None


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "server: the test starts a server")
