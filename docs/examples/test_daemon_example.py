import os
import signal
import time


def start_daemon():
    """Start a daemon the classic way: fork, fork again, let the middle exit."""
    read_end, write_end = os.pipe()
    middle = os.fork()
    if middle == 0:
        if os.fork() == 0:
            os.write(write_end, str(os.getpid()).encode())  # its "pid file"
            time.sleep(60)  # the daemon's work
            os._exit(0)
        os._exit(0)
    os.waitpid(middle, 0)  # the middle process is waited for, as it should be
    os.close(write_end)
    pid = int(os.read(read_end, 20))
    os.close(read_end)
    return pid


def wait_until_exited(pid):
    """Poll /proc until the process is a zombie or gone (reaped by its parent)."""
    while True:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                if stat.read().rpartition(")")[2].split()[0] == "Z":
                    return
        except FileNotFoundError:
            return
        time.sleep(0.01)


def test_daemon_stops():
    pid = start_daemon()
    os.kill(pid, signal.SIGTERM)
    wait_until_exited(pid)
