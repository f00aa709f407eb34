"""fttrainer.report: the status-patch client against a recording HTTP server on loopback, and the
termination message's shape and size limit."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from ftcrd import names
from ftcrd.termination import TerminationMessage, shrink
from ftcrd.types import round_metric
from fttrainer import report
from fttrainer.report import Reporter, camel_metrics, write_termination

STATUS_PATH = "/apis/finetune.dev/v1alpha1/namespaces/ns1/finetunejobs/job1/status"


class Recorder:
    def __init__(self, status: int = 200) -> None:
        self.requests: list[dict] = []
        self.status = status
        rec = self

        class Handler(BaseHTTPRequestHandler):
            def do_PATCH(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                rec.requests.append(
                    {
                        "path": self.path,
                        "headers": dict(self.headers),
                        "body": json.loads(body),
                        "t": time.monotonic(),
                    }
                )
                self.send_response(rec.status)
                self.send_header("Content-Type", "application/json")
                out = b'{"kind":"Status","message":"forbidden: nope"}' if rec.status >= 400 else b"{}"
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}{STATUS_PATH}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def recorder():
    r = Recorder()
    yield r
    r.close()


def wait_for(cond, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return False


def step(rep: Reporter, i: int, stage: str = "training", total: int = 400, **metrics: float):
    rep.progress(
        step=i, total_steps=total, epoch=i / total, examples=i * 8, stage=stage, metrics=metrics or {"loss": 0.69}
    )


def test_payload_shape(recorder, tmp_path):
    token = tmp_path / "token"
    token.write_text("s3cret-token\n")
    rep = Reporter(url=recorder.url, token_path=token, interval=60)
    rep.progress(
        step=120,
        total_steps=400,
        epoch=0.3,
        examples=960,
        stage="training",
        metrics={"loss": 0.5, "rewards/accuracies": 0.75, "rewards/chosen": 0.1, "grad_norm": 3.0},
    )
    assert wait_for(lambda: len(recorder.requests) == 1)
    rep.close()
    req = recorder.requests[0]
    assert req["path"] == STATUS_PATH
    assert req["headers"]["Content-Type"] == "application/merge-patch+json"
    assert req["headers"]["Authorization"] == "Bearer s3cret-token"
    status = req["body"]["status"]
    assert set(status) == {"progress", "metrics"}
    p = status["progress"]
    assert p["step"] == 120 and p["totalSteps"] == 400 and p["examples"] == 960
    assert p["percent"] == 30.0 and p["summary"] == "30% (120/400)" and p["stage"] == "training"
    assert p["epoch"] == 0.3 and p["updatedAt"].endswith("Z")
    assert status["metrics"] == {"loss": 0.5, "rewardAccuracy": 0.75, "rewardsChosen": 0.1, "gradNorm": 3.0}
    # The keys are the CRD model's own: the status validates against ftcrd.types.
    from ftcrd.types import FineTuneJobStatus

    FineTuneJobStatus.model_validate(status)


def test_throttled_but_latest_state_wins(recorder):
    rep = Reporter(url=recorder.url, token="t", interval=0.5)
    t0 = time.monotonic()
    step(rep, 1)  # first report (a stage change) goes at once
    for i in range(2, 50):
        step(rep, i)
        time.sleep(0.01)
    elapsed = time.monotonic() - t0
    time.sleep(0.7)
    # ~0.5 s of calls: the first at once, then one per interval, then the trailing state
    assert 2 <= len(recorder.requests) <= 2 + elapsed / 0.5
    rep.close()
    bodies = [r["body"]["status"]["progress"] for r in recorder.requests]
    assert bodies[0]["step"] <= 3  # sent at once (the thread may already see a step or two more)
    assert bodies[-1]["step"] == 49  # trailing state delivered
    gaps = [b["t"] - a["t"] for a, b in zip(recorder.requests, recorder.requests[1:], strict=False)]
    assert all(g >= 0.4 for g in gaps), gaps


def test_stage_change_and_checkpoint_are_sent_immediately(recorder):
    rep = Reporter(url=recorder.url, token="t", interval=3600)
    step(rep, 0, stage="loading")
    assert wait_for(lambda: len(recorder.requests) == 1)
    step(rep, 1, stage="training")
    assert wait_for(lambda: len(recorder.requests) == 2)
    step(rep, 2, stage="training")  # same stage, inside the interval: held back
    time.sleep(0.3)
    assert len(recorder.requests) == 2
    # what the checkpoint storage holds: sent at once, without any other progress (a held trainer makes none)
    records = [
        {
            "step": s * 10,
            "path": f"/checkpoints/step-{s * 10}",
            "createdAt": "2026-01-01T00:00:00Z",
            "metrics": {"loss": 1.0 / s},
        }
        for s in range(1, 13)
    ]
    rep.checkpoints(records)
    assert wait_for(lambda: recorder.requests[-1]["body"]["status"].get("checkpoints", [{}])[-1].get("step") == 120)
    cps = recorder.requests[-1]["body"]["status"]["checkpoints"]
    assert [c["step"] for c in cps] == list(range(30, 130, 10))  # the last 10
    assert cps[-1]["path"] == "/checkpoints/step-120" and cps[-1]["metrics"] == {"loss": round_metric(1 / 12)}
    assert cps[-1]["createdAt"].endswith("Z")
    rep.checkpoints(records[:1])  # pruned to what is kept: the list is replaced, not appended to
    assert wait_for(lambda: [c["step"] for c in recorder.requests[-1]["body"]["status"]["checkpoints"]] == [10])
    step(rep, 400, stage="uploading")
    rep.close()
    last = recorder.requests[-1]["body"]["status"]["progress"]
    assert last["stage"] == "uploading" and last["percent"] == 100.0


def test_eta(recorder):
    rep = Reporter(url=recorder.url, token="t", interval=3600)
    t0 = time.monotonic()
    step(rep, 10, total=110)
    time.sleep(0.2)
    step(rep, 20, total=110)
    elapsed = time.monotonic() - t0
    rep.close()
    eta = recorder.requests[-1]["body"]["status"]["progress"]["etaSeconds"]
    assert 1 <= eta <= round(elapsed / 10 * 90) + 1  # ~0.02 s/step * 90 steps left


def test_failures_are_logged_never_raised_and_hide_the_token(caplog):
    r = Recorder(status=403)
    try:
        rep = Reporter(url=r.url, token="very-secret", interval=0)
        with caplog.at_level("WARNING", logger="fttrainer.report"):
            step(rep, 1)
            rep.close()
        assert rep.failures >= 1 and rep.sent == 0
        assert "HTTP 403" in caplog.text and "forbidden: nope" in caplog.text
        assert "very-secret" not in caplog.text
    finally:
        r.close()
    # An API that is not there at all: same story, and close() does not hang.
    rep = Reporter(url="http://127.0.0.1:1/x", token="t", interval=0, timeout=1)
    step(rep, 1)
    t0 = time.monotonic()
    rep.close()
    assert time.monotonic() - t0 < 5 and rep.failures >= 1


def test_from_env_disabled_outside_cluster_and_on_other_ranks(monkeypatch, tmp_path):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("FTJ_NAME", "job1")
    monkeypatch.setenv("FTJ_NAMESPACE", "ns1")
    rep = Reporter.from_env(0)
    assert not rep.enabled
    step(rep, 1)
    rep.checkpoints([{"step": 1, "path": "/x"}])
    rep.close()

    sa = tmp_path / "sa"
    sa.mkdir()
    (sa / "token").write_text("tok")
    monkeypatch.setenv("FTJ_SERVICEACCOUNT_DIR", str(sa))
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    assert not Reporter.from_env(1).enabled
    rep = Reporter.from_env(0)
    assert rep.enabled and rep.url == f"https://10.0.0.1:443{STATUS_PATH}"
    rep.close()
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "fd00::1")
    rep = Reporter.from_env(0)
    assert rep.url is not None and rep.url.startswith("https://[fd00::1]:443/")
    rep.close()


def test_camel_metrics():
    m = camel_metrics(
        {
            "loss": 1,
            "rewards/margins": 0.2,
            "logps/rejected": -3.0,
            "lr": 1e-6,
            "eval_loss": 0.4,
            "tokens": 123.0,
            "nan": float("nan"),
            "flag": True,
            "text": "x",
        }
    )
    assert m == {
        "loss": 1.0,
        "rewardMargin": 0.2,
        "logpsRejected": -3.0,
        "learningRate": 1e-6,
        "evalLoss": 0.4,
        "tokens": 123,
    }


def test_status_metrics_are_rounded(recorder):
    rep = Reporter(url=recorder.url, token="t", interval=3600)
    step(rep, 1, loss=0.12643009051680565, lr=5e-7, tokens=123456.0)
    rep.close()
    # what `kubectl get ftj` shows in the LOSS column
    assert recorder.requests[-1]["body"]["status"]["metrics"] == {
        "loss": 0.1264,
        "learningRate": 5e-7,
        "tokens": 123456,
    }


# -- termination message ---------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def fresh_process(monkeypatch):
    """write_termination remembers a success for the life of the process; each test is a new process."""
    monkeypatch.setitem(report._written, "success", False)


def message(**fields) -> TerminationMessage:
    return TerminationMessage.model_validate(fields)


def test_write_termination_success_shape(tmp_path, monkeypatch):
    path = tmp_path / "termination-log"
    monkeypatch.setenv("TERMINATION_MESSAGE_PATH", str(path))
    artifact = {"uri": "gs://b/models/c1/job/", "sizeBytes": 123, "sha256": "ab" * 32, "files": 7}
    metrics = camel_metrics({"loss": 0.612345678, "rewards/accuracies": 0.8})
    write_termination(message(status="succeeded", artifact=artifact, metrics=metrics, steps=40, examples=320))
    got = json.loads(path.read_text())
    assert got["metrics"] == {"loss": 0.6123, "rewardAccuracy": 0.8}
    assert got["artifact"] == artifact and got["steps"] == 40 and got["status"] == "succeeded"
    assert TerminationMessage.parse(path.read_bytes()).verified


def test_write_termination_stays_under_4k(tmp_path, monkeypatch):
    path = tmp_path / "termination-log"
    monkeypatch.setenv("TERMINATION_MESSAGE_PATH", str(path))
    metrics = camel_metrics({f"detail_{i}/something_long": float(i) for i in range(500)})
    metrics |= {"loss": 0.5, "rewardAccuracy": 0.9}
    write_termination(message(status="succeeded", artifact={"uri": "gs://b/p/"}, metrics=metrics, steps=3))
    data = path.read_bytes()
    assert len(data) < 4096
    got = json.loads(data)
    assert got["metrics"] == {"loss": 0.5, "rewardAccuracy": 0.9}  # detail dropped first, core kept
    assert got["artifact"] == {"uri": "gs://b/p/"}


def test_a_huge_failure_message_is_truncated(tmp_path, monkeypatch):
    path = tmp_path / "termination-log"
    monkeypatch.setenv("TERMINATION_MESSAGE_PATH", str(path))
    write_termination(message(status="failed", reason="TrainerFailed", message="é" * 10000))  # a traceback
    data = path.read_bytes()
    got = json.loads(data)
    assert len(data) < 4096 and got["reason"] == "TrainerFailed" and got["message"].endswith("[truncated]")


def test_a_success_is_never_overwritten(tmp_path, monkeypatch):
    path = tmp_path / "termination-log"
    monkeypatch.setenv("TERMINATION_MESSAGE_PATH", str(path))
    artifact = {"uri": "gs://b/p/", "sha256": "ab" * 32}
    write_termination(message(status="succeeded", artifact=artifact, steps=3))
    write_termination(message(status="failed", reason="TrainerFailed", message="a peer died at teardown"))
    assert json.loads(path.read_text())["status"] == "succeeded"


def test_shrink_keeps_small_results_identical():
    r = {"status": "failed", "reason": "InvalidDataset", "message": "row 3: field 'chosen': must be a non-empty string"}
    assert json.loads(shrink(r, 4000)) == r
    assert json.loads(message(**r).encode()) == r


def test_unknown_reasons_and_log_tails_are_not_messages():
    assert TerminationMessage.parse('{"status": "failed", "reason": "Crash"}') is None
    assert TerminationMessage.parse("Traceback (most recent call last): ...") is None
    assert TerminationMessage.parse("") is None
    assert not TerminationMessage.parse('{"status": "succeeded", "artifact": {"uri": "gs://b/p/"}}').verified


def test_write_termination_without_a_log_is_a_no_op(monkeypatch, tmp_path):
    monkeypatch.delenv("TERMINATION_MESSAGE_PATH", raising=False)
    monkeypatch.setattr(names, "TERMINATION_LOG", str(tmp_path / "missing" / "termination-log"))
    write_termination(message(status="succeeded"))  # nothing to write to: logged, no error
    assert not (tmp_path / "missing").exists()
