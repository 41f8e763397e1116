from tests.conftest import wait_for


def test_echo_round_trip(client):
    task = client.enqueue("echo", [1, "two"], {"three": 3})
    done = client.wait(task.id, timeout=20)
    assert done.state == "completed"
    assert done.result["args"] == [1, "two"]
