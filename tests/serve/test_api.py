"""The live server's JSON API in process (Starlette's test client) on the tiny causal LM: answers, and the
refusals of bad, oversized, foreign and too many requests."""

import json
import logging
import threading
import warnings

import pytest
from starlette.testclient import TestClient

from sae.cli import main
from sae.serve import Inspector, create_app
from sae.serve.app import inject_live
from sae.serve.server import allowed_hosts, is_loopback
from sae.serve.worker import Busy, ModelWorker

TEXT = "the|cat|sat|on|the|mat"


@pytest.fixture(scope="module")
def client(causal_inspector):
    with TestClient(create_app(causal_inspector, None, ["testserver"])) as c:
        yield c


def test_activations_answer_tokens_top_latents_and_asked_latents(client):
    r = client.post("/api/activations", json={"text": TEXT})
    assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
    data = r.json()
    assert data["tokens"] == ["<bos>", "the", "cat", "sat", "on", "the", "mat"]
    assert data["special"][0] and not any(data["special"][1:])
    assert 0 < len(data["top"]) <= 5
    peaks = [t["max"] for t in data["top"]]
    assert peaks == sorted(peaks, reverse=True)
    assert [row["latent"] for row in data["latents"]] == [t["latent"] for t in data["top"]]  # none asked: the top
    first = data["latents"][0]
    assert len(first["acts"]) == 7 and max(first["acts"]) == data["top"][0]["max"]
    asked = client.post("/api/activations", json={"text": TEXT, "latents": [3, 95, 3]}).json()
    assert [row["latent"] for row in asked["latents"]] == [3, 95]


def test_steer_and_ablate_change_the_output(client):
    plain = client.post("/api/steer", json={"text": "the|cat|sat", "latents": [3], "strengths": [0.0], "max_new_tokens": 6})
    steered = client.post("/api/steer", json={"text": "the|cat|sat", "latents": [3], "strengths": [8.0], "max_new_tokens": 6})
    assert plain.status_code == steered.status_code == 200
    p, s = plain.json(), steered.json()
    assert p["kind"] == "causal" and p["greedy"]["with"] == p["greedy"]["without"]  # strength 0 changes nothing
    assert s["greedy"]["with"] != s["greedy"]["without"] and s["greedy"]["without"] == p["greedy"]["without"]
    assert s["sampled"]["without"] == p["sampled"]["without"]  # the same seed, the same sample
    assert s["max_new_tokens"] == 6 and not s["timed_out"]
    ablated = client.post("/api/ablate", json={"text": TEXT, "latents": list(range(32))}).json()
    assert set(ablated["loss"]) == {"with", "without"} and ablated["loss"]["with"] != ablated["loss"]["without"]
    again = client.post("/api/activations", json={"text": TEXT}).json()
    assert again == client.post("/api/activations", json={"text": TEXT}).json()  # nothing left installed


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"text": ""}, 422, "non-empty string"),
        ({"text": "the|" * 101}, 422, "more than the limit of 400"),
        ({"text": "|".join(["cat"] * 70)}, 422, "more than the model's context of 64"),
        ({"text": TEXT, "latents": [96]}, 422, "out of range for a dictionary of 96"),
        ({"text": TEXT, "latents": ["1"]}, 422, "list of integer latent ids"),
        ({"text": TEXT, "latents": [1], "strengths": [1e9], "_": "steer"}, 422, "at most 100.0"),
        ({"text": TEXT, "latents": [1], "max_new_tokens": 13, "_": "steer"}, 422, "from 1 to 12"),
        ({"text": TEXT, "_": "steer"}, 422, "at least one latent"),
        ([1, 2], 422, "a JSON object"),
    ],
)
def test_bad_requests_are_refused_with_422(client, body, status, message):
    path = "/api/" + (body.pop("_", "activations") if isinstance(body, dict) else "activations")
    r = client.post(path, json=body)
    assert r.status_code == status and message in r.json()["error"], r.text


def test_body_type_size_and_host_are_checked(client):
    r = client.post("/api/activations", content=json.dumps({"text": TEXT}), headers={"content-type": "text/plain"})
    assert r.status_code == 415  # another site's form cannot post JSON without a preflight
    r = client.post("/api/activations", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400
    big = json.dumps({"text": "x" * 3000})
    r = client.post("/api/activations", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "2048 bytes" in r.json()["error"]

    def chunks():  # no Content-Length: the cap is counted as the body arrives
        yield b'{"text": "'
        for _ in range(100):
            yield b"x" * 100

    r = client.post("/api/activations", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413
    r = client.get("/api/info", headers={"host": "evil.example:8000"})
    assert r.status_code == 400  # a rebound DNS name is not one of the server's own
    assert client.get("/api/activations").status_code == 405


def test_a_full_queue_answers_503_and_a_slow_model_504(causal_inspector):
    from dataclasses import replace

    gate = threading.Event()
    worker = ModelWorker(queue_size=1)
    limits = replace(causal_inspector.limits, timeout=0.5)
    inspector = Inspector(causal_inspector.model, causal_inspector.sae, limits)
    with TestClient(create_app(inspector, None, ["testserver"], worker=worker)) as c:
        worker.submit(gate.wait)  # the model is busy
        r = c.post("/api/activations", json={"text": TEXT})  # waits in the queue, gives up
        assert r.status_code == 504 and "within 0.5 s" in r.json()["error"]
        worker.submit(gate.wait)  # the queue's one place
        r = c.post("/api/activations", json={"text": TEXT})
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        gate.set()
        assert c.post("/api/activations", json={"text": TEXT}).status_code == 200
    full, block = ModelWorker(queue_size=1), threading.Event()
    try:
        with pytest.raises(Busy, match="1 requests are already waiting"):
            for _ in range(3):  # one runs, one waits, the third is refused
                full.submit(block.wait)
    finally:
        block.set()
        full.close()


def test_one_log_line_per_request(client, caplog):
    with caplog.at_level(logging.INFO, logger="sae.serve"):
        client.post("/api/activations", json={"text": TEXT})
        client.get("/api/info", headers={"host": "evil.example"})
    lines = [r.getMessage() for r in caplog.records if r.name == "sae.serve"]
    assert len(lines) == 2
    assert "POST /api/activations 200" in lines[0] and "GET /api/info 400" in lines[1]


def test_the_page_gets_the_live_panel_and_may_call_the_api(client):
    page = "<html><head><meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; script-src 'self'\">"
    page += "</head><body><main></main></body></html>"
    out = inject_live(page)
    assert "script-src 'self'; connect-src 'self'\"" in out
    assert out.index('href="/live/live.css"') < out.index("</head>") < out.index('src="/live/live.js"')
    with pytest.raises(ValueError, match="</body>"):
        inject_live("<html></html>")
    r = client.get("/")
    assert r.status_code == 200 and "/live/live.js" in r.text  # no browser folder: the bare page
    assert "connect-src 'self'" in r.headers["content-security-policy"]
    assert client.get("/live/live.js").status_code == 200
    assert client.get("/live/../app.py").status_code == 404


def test_hosts_loopback_and_the_command_line(tmp_path, capsys, monkeypatch):
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5")
    assert allowed_hosts("0.0.0.0", ("box.lan",)) == ["127.0.0.1", "localhost", "::1", "[::1]", "box.lan"]
    with pytest.raises(ValueError, match="host name or address"):
        allowed_hosts("127.0.0.1", ("*",))
    assert main(["serve", str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err.startswith("error: ")
    from sae.serve import server

    ran = []
    fake = type("Fake", (), {"run": lambda self: ran.append(1)})
    monkeypatch.setattr(server, "_uvicorn", lambda app, host, port: fake())
    with pytest.warns(UserWarning, match="reachable from other machines"):
        server.run_server(object(), "0.0.0.0", 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        server.run_server(object(), "127.0.0.1", 1)
    assert ran == [1, 1]


def test_generation_stops_at_its_time_limit_and_transcoders_are_read_and_steered(causal_inspector):
    from dataclasses import replace

    from sae import SAEConfig, SparseAutoencoder

    quick = Inspector(causal_inspector.model, causal_inspector.sae, replace(causal_inspector.limits, generation_timeout=1e-6))
    out = quick.steer("the|cat", [3], [4.0], max_new_tokens=12)
    assert out["timed_out"] and len(out["greedy"]["without"].split()) < 12
    hooks = dict(hook_name="blocks.1.mlp.hook_in", target_hook="blocks.1.mlp.hook_out")
    tc = SparseAutoencoder(SAEConfig(d_in=32, d_out=32, n_latents=48, k=4, **hooks), seed=0)
    inspector = Inspector(causal_inspector.model, tc, causal_inspector.limits)
    assert inspector.info()["transcoder"]
    assert len(inspector.activations(TEXT)["tokens"]) == 7
    active = [t["latent"] for t in inspector.activations(TEXT)["top"]]  # ablated at the target, where they write
    loss = inspector.ablate(TEXT, active, max_new_tokens=2)["loss"]
    assert loss["with"] != loss["without"]
    assert set(inspector.steer(TEXT, active[:1], [8.0], max_new_tokens=2)["greedy"]) == {"with", "without"}
