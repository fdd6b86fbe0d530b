import threading

from servers_example import start_server  # a helper of the project

servers = []


def test_helper_starts_a_server():
    server = start_server()
    servers.append(server)
    server.kill()  # never waited for


def test_thread_starts_a_server():
    starter = threading.Thread(
        target=lambda: servers.append(start_server()), name="starter"
    )
    starter.start()
    starter.join()
    servers[-1].kill()  # never waited for either
