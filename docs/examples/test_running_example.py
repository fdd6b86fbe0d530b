import subprocess

children = []


def test_starts_a_server():
    # Runs until this pytest process exits and its stdin pipe closes.
    server = subprocess.Popen(["cat"], stdin=subprocess.PIPE)
    children.append(server)  # never stopped, never waited for
