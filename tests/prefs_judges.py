"""Python judges for the `lfmkit prefs build` tests: `function(messages, completion) -> float`."""

import os
import signal

CALLS = {"n": 0}
KILL_AFTER = "LFMKIT_TEST_KILL_AFTER_CALLS"


def checksum(messages, completion):
    """A deterministic score in 0..10 that differs between most texts. With
    $LFMKIT_TEST_KILL_AFTER_CALLS set, the process SIGKILLs itself at that call (a kill in the
    middle of a run, at a known point rather than after a time)."""
    CALLS["n"] += 1
    limit = os.environ.get(KILL_AFTER)
    if limit and CALLS["n"] > int(limit):
        os.kill(os.getpid(), signal.SIGKILL)
    return sum(map(ord, completion)) % 11


def word_count(messages, completion):
    return len(completion.split())


def broken(messages, completion):
    raise ValueError("no idea")


def not_a_number(messages, completion):
    return "high"
