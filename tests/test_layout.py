"""Project-wide rules: only the UI imports streamlit; hardened Streamlit config."""
from __future__ import annotations

import ast
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_no_core_module_imports_streamlit():
    core = [p for pkg in ("workbench", "detectors", "explain") for p in (ROOT / pkg).rglob("*.py")
            if "ui" not in p.relative_to(ROOT).parts]
    assert len(core) >= 10
    offenders = [str(p.relative_to(ROOT)) for p in core if "streamlit" in imported_modules(p)]
    assert offenders == []


def test_streamlit_config_is_hardened():
    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert config["client"]["showErrorDetails"] == "none"
    assert config["server"]["enableXsrfProtection"] is True
    assert config["server"]["enableCORS"] is True
    assert config["server"]["address"] == "127.0.0.1"
    assert config["server"]["enableStaticServing"] is False
    assert config["server"]["runOnSave"] is False
    # Uploads are held in server memory until ingested; big evidence goes through the import folder.
    assert 0 < config["server"]["maxUploadSize"] <= 500
    # DNS rebinding: only this machine's own names may open the WebSocket (tests/test_http_security.py).
    assert set(config["server"]["allowedHosts"]) <= {"localhost", "127.0.0.1", "::1"}
    assert {"localhost", "127.0.0.1"} <= set(config["server"]["allowedHosts"])
    assert config["server"]["corsAllowedOrigins"] == []
    assert config["server"]["enableAgentApi"] is False
    assert config["client"]["allowedOrigins"] == [], "no parent frame may drive the app by postMessage"
    assert config["browser"]["gatherUsageStats"] is False
    assert config["global"]["developmentMode"] is False


def test_requirements_are_pinned():
    lines = [l.split("#")[0].strip() for l in (ROOT / "requirements.txt").read_text().splitlines()]
    reqs = [l for l in lines if l]
    assert all("==" in r for r in reqs), reqs
    pins = dict(r.split("==") for r in reqs)
    assert pins["torch"] == "2.14.1" and pins["torchvision"] == "0.29.1" and pins["facenet-pytorch"] == "2.5.3"
    assert "opencv-python" not in pins
