import subprocess

helpers = []


def test_starts_known_helper():
    # A library you do not control starts this helper and never waits for it.
    helpers.append(subprocess.Popen(["sh", "-c", "exit 0", "known-helper"]))


def test_other_children_still_count():
    helpers.append(subprocess.Popen(["sh", "-c", "exit 0"]))
