import subprocess

import pytest

children = []  # kept, as an application keeps the processes it started


def start_vendored_tool(folder):
    # Stands for a library you cannot change: it starts its tool and never
    # waits for it.
    tool = folder / "vendored-tool"
    tool.write_text("#!/bin/sh\nexit 0\n")
    tool.chmod(0o755)
    return subprocess.Popen([str(tool)])


def test_uses_the_vendored_tool(tmp_path):
    children.append(start_vendored_tool(tmp_path))  # the hook keeps it back


@pytest.mark.server
def test_starts_a_server():
    server = subprocess.Popen(["sleep", "60"])
    children.append(server)
    server.kill()  # never waited for: a leak, with the team's note
