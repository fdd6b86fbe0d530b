import subprocess


def start_server():
    return subprocess.Popen(["sleep", "60"])
