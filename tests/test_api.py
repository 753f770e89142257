"""The HTTP API: tokens (401), the import folder's bounds (400), the upload limit (413), the rate limit (429),
jobs visible in the case and the job list with the token's identity, the result equal to `analyze --json`,
detectors with their cards and the caveat, and the report download's headers."""
from __future__ import annotations

import json
import os

import pytest
from fastapi.testclient import TestClient

from workbench import api, cli, jobs
from workbench.store import Store, StoreError
from workbench.video import Limits


class FakeClock:
    """A clock the test moves by hand (the rate limit is checked without waiting)."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def site(tmp_path, tiny_detectors):
    """A case database with an API token for "alice", an import folder, and a TestClient on the API."""
    home = tmp_path / "home"
    import_dir = home / "import"
    import_dir.mkdir(parents=True)
    settings = api.ApiSettings(db_path=home / "workbench.db", evidence_dir=home / "evidence", import_dir=import_dir,
                               limits=Limits(), max_upload_bytes=2 * 1024**2, rate_per_minute=1000, clock=FakeClock())
    store = Store(settings.db_path)
    token = api.create_token(store, "alice", actor="admin")
    with TestClient(api.create_app(settings), base_url="http://127.0.0.1") as client:
        client.headers["Authorization"] = f"Bearer {token}"
        yield client, store, settings, token
    store.close()


def no_auth(client: TestClient) -> dict:
    return {k: v for k, v in client.headers.items() if k.lower() != "authorization"}


def test_health_needs_no_token_and_says_nothing_else(site):
    client, *_ = site
    response = client.get("/health", headers={"Authorization": ""})
    assert response.status_code == 200 and response.json() == {"status": "ok"}


@pytest.mark.parametrize("method, path", [("get", "/detectors"), ("get", "/jobs/1"), ("post", "/jobs/1/cancel"),
                                          ("get", "/jobs/1/result"), ("get", "/cases/1/report"), ("post", "/jobs")])
def test_every_endpoint_but_health_needs_a_valid_token(site, method, path):
    client, store, _, token = site
    client.headers.pop("Authorization")
    for headers in ({}, {"Authorization": "Bearer " + "x" * 43}, {"Authorization": token},
                    {"Authorization": f"Basic {token}"}):
        response = getattr(client, method)(path, headers=headers)
        assert response.status_code == 401, (headers, response.text)
        assert response.headers["WWW-Authenticate"] == "Bearer"
        assert set(response.json()) == {"error"}


def test_a_revoked_token_is_refused_at_once(site):
    client, store, _, _ = site
    assert client.get("/detectors").status_code == 200
    store.revoke_api_token("alice", "admin")
    assert client.get("/detectors").status_code == 401


def test_tokens_are_stored_hashed_and_their_lifecycle_is_audited(site):
    _, store, _, token = site
    rows = list(store.db.query("SELECT * FROM api_tokens"))
    assert [r["name"] for r in rows] == ["alice"] and rows[0]["token_sha256"] == api.token_sha256(token)
    assert token not in json.dumps(rows) and len(token) >= 43  # 32 random bytes, url-safe base64
    with pytest.raises(StoreError, match="already has an active API token"):
        api.create_token(store, "alice", "admin")
    with pytest.raises(StoreError, match="token name"):
        api.create_token(store, "../x", "admin")
    store.revoke_api_token("alice", "admin")
    with pytest.raises(StoreError, match="no active API token"):
        store.revoke_api_token("alice", "admin")
    again = api.create_token(store, "alice", "admin")  # a new token after a revocation
    assert api.identity_of(store, again) == "alice" and api.identity_of(store, token) is None
    entries = [(e["action"], e["actor"], e["subject"]) for e in reversed(store.audit_log())]
    assert entries == [("token.create", "admin", "token:alice"), ("token.revoke", "admin", "token:alice"),
                       ("token.create", "admin", "token:alice")]
    assert token not in json.dumps(store.audit_log()) and api.token_sha256(token) not in json.dumps(store.audit_log())
    assert store.verify_history()["ok"]


def test_token_commands_print_the_token_once_and_list_without_it(tmp_path, capsys):
    db = str(tmp_path / "w.db")
    assert cli.main(["token", "create", "bob", "--db", db, "--actor", "admin"]) == 0
    token = capsys.readouterr().out.strip()
    assert cli.main(["token", "list", "--db", db]) == 0
    listed = capsys.readouterr().out
    assert "bob" in listed and "active" in listed and token not in listed
    assert cli.main(["token", "revoke", "bob", "--db", db, "--actor", "admin"]) == 0
    assert cli.main(["token", "revoke", "bob", "--db", db]) == 2
    assert "no active API token" in capsys.readouterr().err
    assert cli.main(["token", "list", "--db", db]) == 0
    assert "revoked" in capsys.readouterr().out
    store = Store(db)
    assert api.identity_of(store, token) is None
    store.close()


def test_serve_refuses_a_non_loopback_host_without_the_flag(tmp_path, capsys):
    assert cli.main(["serve", "--api", "--host", "0.0.0.0", "--db", str(tmp_path / "w.db")]) == 2
    assert "not a loopback address" in capsys.readouterr().err
    assert cli.main(["serve", "--db", str(tmp_path / "w.db")]) == 2  # --api is required
    assert api.is_loopback("127.0.0.1") and api.is_loopback("::1") and api.is_loopback("localhost")
    assert not api.is_loopback("0.0.0.0") and not api.is_loopback("192.168.1.2")


# -- the import folder ----------------------------------------------------------------------------
def submit_path(client, path, **extra):
    return client.post("/jobs", json=dict({"path": path, "case": "api case", "detectors": ["tiny-test"]}, **extra))


@pytest.mark.parametrize("path", ["../x.mp4", "sub/../../x.mp4", "/etc/passwd", "./x.mp4", "", "a\\..\\b"])
def test_paths_outside_the_import_folder_are_refused(site, path):
    client, store, *_ = site
    response = submit_path(client, path)
    assert response.status_code == 400, response.text
    assert store.db["evidence"].count == 0 and store.db["jobs"].count == 0


def test_symlinks_out_of_the_import_folder_are_refused(site, tmp_path, no_face_clip):
    client, store, settings, _ = site
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "clip.mp4").write_bytes(no_face_clip.read_bytes())
    os.symlink(outside / "clip.mp4", settings.import_dir / "link.mp4")
    os.symlink(outside, settings.import_dir / "linkdir")
    for path in ("link.mp4", "linkdir/clip.mp4"):
        response = submit_path(client, path)
        assert response.status_code == 400 and "symbolic link" in response.json()["error"], response.text
    assert store.db["evidence"].count == 0 and store.db["jobs"].count == 0
    refused = [e for e in store.audit_log() if e["action"] == "evidence.refused"]
    assert len(refused) == 2 and {e["actor"] for e in refused} == {"alice"}
    assert submit_path(client, "missing.mp4").status_code == 404


def test_a_file_that_is_not_a_video_is_refused_by_the_sandboxed_intake(site):
    client, store, settings, _ = site
    (settings.import_dir / "notes.mp4").write_bytes(b"not a video at all" * 100)
    response = submit_path(client, "notes.mp4")
    assert response.status_code == 422 and response.json()["error"].startswith("refused:")
    response = client.post("/jobs", files={"file": ("notes.mp4", b"not a video" * 50)}, data={"case": "c"})
    assert response.status_code == 422
    assert store.db["evidence"].count == 0 and store.db["jobs"].count == 0


# -- limits ---------------------------------------------------------------------------------------
def test_an_oversized_upload_gets_413_and_stores_nothing(site):
    client, store, settings, _ = site
    big = b"\0" * (settings.max_upload_bytes + api.FORM_OVERHEAD_BYTES + 1)
    response = client.post("/jobs", files={"file": ("big.mp4", big)}, data={"case": "c", "detector": "tiny-test"})
    assert response.status_code == 413 and "limit" in response.json()["error"]

    def chunks():  # no Content-Length: the running count stops it
        for _ in range(5):
            yield b"\0" * (settings.max_upload_bytes // 2)

    response = client.post("/jobs", content=chunks(),
                           headers={"Content-Type": "multipart/form-data; boundary=xyz"})
    assert response.status_code == 413
    assert store.db["evidence"].count == 0 and store.db["jobs"].count == 0


def test_the_rate_limit_answers_429_with_retry_after(tmp_path, tiny_detectors):
    clock = FakeClock()
    settings = api.ApiSettings(db_path=tmp_path / "w.db", evidence_dir=tmp_path / "ev", import_dir=tmp_path,
                               rate_per_minute=3, clock=clock)
    store = Store(settings.db_path)
    alice, bob = api.create_token(store, "alice", "admin"), api.create_token(store, "bob", "admin")
    with TestClient(api.create_app(settings)) as client:
        as_alice = {"Authorization": f"Bearer {alice}"}
        assert [client.get("/jobs/99", headers=as_alice).status_code for _ in range(3)] == [404] * 3
        limited = client.get("/jobs/99", headers=as_alice)
        assert limited.status_code == 429 and limited.headers["Retry-After"] == "20"
        assert client.get("/jobs/99", headers={"Authorization": f"Bearer {bob}"}).status_code == 404  # per token
        clock.now += 20
        assert client.get("/jobs/99", headers=as_alice).status_code == 404
    store.close()


def test_errors_are_plain_json_without_tracebacks(site, monkeypatch):
    client, *_ = site
    monkeypatch.setattr(api, "detector_rows", lambda: 1 / 0)
    # As a real server would answer: TestClient otherwise re-raises the server's exception in the test.
    real = TestClient(client.app, raise_server_exceptions=False, headers=dict(client.headers))  # no lifespan: the
    response = real.get("/detectors")  # fixture's client owns the app's store
    assert response.status_code == 500 and response.json() == {"error": "internal error; the server log has the details"}
    assert "ZeroDivisionError" not in response.text
    response = client.get("/jobs/not-a-number")
    assert response.status_code == 400 and set(response.json()) == {"error"} and "Traceback" not in response.text
    response = client.post("/jobs", content=b"{}", headers={"Content-Type": "text/plain"})
    assert response.status_code == 415
    response = client.post("/jobs", json={"path": "x.mp4", "case": "c", "detectors": ["no-such"]})
    assert response.status_code == 400 and "unknown detector 'no-such'" in response.json()["error"]
    response = client.post("/jobs", json={"path": "x.mp4", "case": "c", "case_id": 1})
    assert response.status_code == 400 and "exactly one" in response.json()["error"]


# -- jobs through the API -------------------------------------------------------------------------
def test_jobs_from_an_upload_and_the_import_folder_are_in_the_case_and_the_job_list(site, no_face_clip, h264_clip,
                                                                                     capsys):
    client, store, settings, _ = site
    (settings.import_dir / "sub").mkdir()
    (settings.import_dir / "sub" / "numbers.mp4").write_bytes(h264_clip.read_bytes())
    uploaded = client.post("/jobs", files={"file": ("no_face.mp4", no_face_clip.read_bytes(), "video/mp4")},
                           data={"case": "api case", "detector": "tiny-test", "every_frame": "true"})
    assert uploaded.status_code == 202, uploaded.text
    case_id = uploaded.json()["case_id"]
    picked = submit_path(client, "sub/numbers.mp4", case=None, case_id=case_id, sampling={"sample_fps": 5})
    assert picked.status_code == 202, picked.text
    shas = {uploaded.json()["sha256"], picked.json()["sha256"]}
    assert {e["sha256"] for e in store.case_evidence(case_id)} == shas
    assert store.case(case_id)["created_by"] == "alice"
    for response in (uploaded, picked):
        job = store.job(response.json()["job_id"])
        assert job["actor"] == "alice" and job["case_id"] == case_id and job["state"] == "queued"
    assert store.job(uploaded.json()["job_id"])["sampling"]["sample_fps"] is None
    assert store.job(picked.json()["job_id"])["sampling"]["sample_fps"] == 5
    # The app's job list (Cases shows each file's latest job) and `python -m workbench jobs` show alice.
    latest = jobs.latest_jobs(store, shas)
    assert {j["actor"] for j in latest.values()} == {"alice"}
    assert cli.main(["jobs", "--db", str(settings.db_path)]) == 0
    assert capsys.readouterr().out.count("asked by alice") == 2
    status = client.get(f"/jobs/{picked.json()['job_id']}").json()
    assert status["state"] == "queued" and status["asked_by"] == "alice" and status["queue_position"] == 1
    submitted = [e for e in store.audit_log() if e["action"] in ("job.submit", "evidence.add", "case.create")]
    assert submitted and {e["actor"] for e in submitted} == {"alice"}


def test_cancel_through_the_api_records_the_identity(site, no_face_clip):
    client, store, *_ = site
    job_id = client.post("/jobs", files={"file": ("c.mp4", no_face_clip.read_bytes())},
                         data={"case": "c", "detector": "tiny-test"}).json()["job_id"]
    response = client.post(f"/jobs/{job_id}/cancel")
    assert response.status_code == 200 and response.json() == {"job_id": job_id, "state": "cancelled"}
    assert store.job(job_id)["cancelled_by"] == "alice"
    assert client.get(f"/jobs/{job_id}/result").status_code == 409
    assert client.post("/jobs/999/cancel").status_code == 404


def strip_run_facts(doc: dict) -> dict:
    """The document without what differs between two reads of the same stored result: the path the
    CLI was given, timings, whether it was reused, and the id of the ensemble row each run stores."""
    doc = json.loads(json.dumps(doc))
    doc["video"].pop("path")
    doc.pop("timings")
    for d in doc["detectors"].values():
        d.pop("reused")
    doc["ensemble"].pop("ensemble_id")
    return doc


def keys(value) -> object:
    if isinstance(value, dict):
        return {k: keys(v) for k, v in value.items()}
    if isinstance(value, list):
        return [keys(v) for v in value[:1]]
    return None


def test_the_result_is_the_analyze_json_contract(site, two_face_clip, capsys):
    client, store, settings, _ = site
    path, _ = two_face_clip
    response = client.post("/jobs", files={"file": ("two_faces.mp4", path.read_bytes())},
                           data={"case": "c", "detector": ["tiny-test", "tiny-even"], "sample_fps": "2"})
    job_id = response.json()["job_id"]
    assert client.get(f"/jobs/{job_id}/result").status_code == 409  # queued: no result yet
    assert jobs.run_queued(store.path) == [job_id]
    status = client.get(f"/jobs/{job_id}").json()
    assert status["state"] == "done" and status["fraction"] == 1.0
    result = client.get(f"/jobs/{job_id}/result")
    assert result.status_code == 200
    doc = result.json()
    assert doc["video"]["path"] is None and doc["video"]["original_name"] == "two_faces.mp4"
    assert doc["ensemble"]["ensemble_id"] == store.job(job_id)["result_id"]
    assert not any(d["reused"] for d in doc["detectors"].values())  # computed by this job
    assert doc["detectors"]["tiny-test"]["status"] == "ok" and doc["tracks"]

    # The CLI on the same file and settings reads the same stored analyses: the same document.
    assert cli.main(["analyze", str(path), "--db", str(settings.db_path), "--evidence-dir",
                     str(settings.evidence_dir), "--detector", "tiny-test", "--detector", "tiny-even",
                     "--sample-fps", "2", "--json", "-", "--quiet"]) == 0
    expected = json.loads(capsys.readouterr().out)
    assert all(d["reused"] for d in expected["detectors"].values())
    assert keys(doc) == keys(dict(expected, timings=doc["timings"]))
    assert strip_run_facts(doc) == strip_run_facts(expected)
    assert doc["ensemble"]["score"] == expected["ensemble"]["score"] is not None
    assert [doc["detectors"][n]["score"] for n in doc["detectors"]] == \
        [expected["detectors"][n]["score"] for n in expected["detectors"]]


# -- detectors and reports ------------------------------------------------------------------------
def test_detectors_lists_cards_and_the_scope_caveat(site):
    client, *_ = site
    body = client.get("/detectors").json()
    rows = {r["name"]: r for r in body["detectors"]}
    assert "face-swap" in body["caveat"].lower()
    assert rows["tiny-test"]["version"] == "1" and rows["tiny-test"]["installed"] is True
    assert rows["tiny-test"]["card"]["summary"].startswith("Random-init") and rows["tiny-test"]["card"]["scope_caveat"]


def test_the_case_report_is_a_sandboxed_attachment(site, no_face_clip):
    client, store, *_ = site
    case_id = client.post("/jobs", files={"file": ("<b>x</b>.mp4", no_face_clip.read_bytes())},
                          data={"case": "<script>alert(1)</script>", "detector": "tiny-test"}).json()["case_id"]
    response = client.get(f"/cases/{case_id}/report", params={"heatmaps": "false"})
    assert response.status_code == 200
    assert response.headers["Content-Disposition"] == f'attachment; filename="case-{case_id}-report.html"'
    assert response.headers["Content-Security-Policy"] == "sandbox"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Content-Type"].startswith("text/html")
    assert "<script>alert(1)</script>" not in response.text and "&lt;script&gt;alert(1)&lt;/script&gt;" in response.text
    assert [e["actor"] for e in store.audit_log() if e["action"] == "case.report"] == ["alice"]
    assert client.get("/cases/999/report").status_code == 404


def test_docs_are_served_only_when_enabled(tmp_path):
    for docs, code in ((True, 200), (False, 404)):
        settings = api.ApiSettings(db_path=tmp_path / "w.db", evidence_dir=tmp_path / "ev", import_dir=tmp_path,
                                   docs=docs)
        with TestClient(api.create_app(settings)) as client:
            assert client.get("/openapi.json").status_code == code
            assert client.get("/docs").status_code == code


def test_serve_warns_for_a_remote_host_and_keeps_docs_to_loopback(tmp_path, monkeypatch, capsys):
    import uvicorn

    served = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: served.append((app, options)))
    db = str(tmp_path / "w.db")
    assert cli.main(["serve", "--api", "--host", "0.0.0.0", "--allow-remote", "--port", "8601", "--db", db]) == 0
    err = capsys.readouterr().err
    assert "warning:" in err and "TLS reverse proxy" in err and "no API token yet" in err
    assert cli.main(["serve", "--api", "--db", db, "--rate-limit", "5"]) == 0
    (remote, remote_options), (local, local_options) = served
    assert remote_options["host"] == "0.0.0.0" and remote_options["port"] == 8601
    assert local_options["host"] == "127.0.0.1" and local_options["port"] == 8600
    assert local.state.settings.rate_per_minute == 5
    assert TestClient(remote).get("/openapi.json").status_code == 404
    assert TestClient(local).get("/openapi.json").status_code == 200
    for app in (remote, local):
        app.state.store.close()
