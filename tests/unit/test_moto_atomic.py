"""The S3 emulator of the region tests (tests/fixtures/moto_atomic.py) runs writes one at a
time, reads side by side: a conditional write's check and its act are then one step, as
on a real store."""

import threading
import time

from tests.fixtures.moto_atomic import SerializedWrites


class CheckThenAct:
    """A WSGI app with moto's shape of conditional write: look, wait a little, write."""

    def __init__(self):
        self.inside = {"PUT": 0, "GET": 0}
        self.most = {"PUT": 0, "GET": 0}
        self.lock = threading.Lock()
        self.object = None
        self.winners = 0

    def __call__(self, environ, start_response):
        method = environ["REQUEST_METHOD"]
        with self.lock:
            self.inside[method] += 1
            self.most[method] = max(self.most[method], self.inside[method])
        try:
            if method == "PUT":  # If-None-Match: *
                exists = self.object is not None
                time.sleep(0.02)
                if exists:
                    start_response("412 Precondition Failed", [])
                    return [b"PreconditionFailed"]
                self.object = environ["wsgi.input_name"]
                self.winners += 1
            else:
                time.sleep(0.02)
            start_response("200 OK", [])
            return [b"ok"]
        finally:
            with self.lock:
                self.inside[method] -= 1


def _run(app, methods):
    answers = []

    def call(i, method):
        app({"REQUEST_METHOD": method, "wsgi.input_name": i}, lambda status, headers: answers.append(status[:3]))

    threads = [threading.Thread(target=call, args=(i, method)) for i, method in enumerate(methods)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return answers


def test_racing_conditional_writes_have_one_winner_and_reads_stay_concurrent():
    racy = CheckThenAct()
    _run(racy, ["PUT"] * 6)
    assert racy.winners > 1  # the check-then-act app alone: several "win"

    app = CheckThenAct()
    answers = _run(SerializedWrites(app), ["PUT"] * 6 + ["GET"] * 6)
    assert app.winners == 1 and sorted(answers).count("412") == 5
    assert app.most["PUT"] == 1 and app.most["GET"] > 1
