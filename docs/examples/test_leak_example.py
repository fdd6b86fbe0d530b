import subprocess

servers = []  # kept, as an application keeps the servers it started


def test_stop_server():
    server = subprocess.Popen(["sleep", "60"])
    servers.append(server)
    server.kill()  # stopped, but never waited for: a zombie
