import pytest


# optionalhook: the hook exists only while pytest-nozombies is loaded; without
# it (-p no:nozombies, or not installed) pytest would stop at an unknown hook.
@pytest.hookimpl(optionalhook=True)
def pytest_nozombies_leak(leak, item):
    # A library starts its vendored tool and never waits for it, and nothing
    # can be done about that here: keep it out of the reports.
    if leak.argv and leak.argv[0].endswith("vendored-tool"):
        return False
    # Point whoever reads the failure at the team's guide.
    if item is not None and item.get_closest_marker("server") is not None:
        leak.details.append("servers must be stopped in their fixture's teardown")
    return None


def pytest_configure(config):
    config.addinivalue_line("markers", "server: the test starts a server")
