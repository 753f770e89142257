"""Weights installer: downloads from a local HTTP server (never the internet), safe archives, safe pickles."""
from __future__ import annotations

import io
import json
import os
import socket
import stat
import tarfile
import types
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from detectors import weights_manager as wm
from detectors.weights import sha256_file, WeightsError
from detectors.weights import MANIFEST, load_safetensors_strict, manifest_files, read_manifest, verify
from helpers import ENDLESS_CAP, Server
from workbench.cli import main as cli_main

DET = "fakedet"


# -- a local HTTP server (tests/helpers.py) -----------------------------------------------------
@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


# -- helpers ---------------------------------------------------------------------------------------
def tiny_state(seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return nn.Linear(4, 2).state_dict()


def checkpoint_bytes(seed: int = 0) -> bytes:
    """An upstream-style checkpoint: wrapped in state_dict, DataParallel `module.` prefixes, extra fields."""
    buf = io.BytesIO()
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in tiny_state(seed).items()}}, buf)
    return buf.getvalue()


def tar_bytes(files: dict[str, bytes], extra=None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        if extra:
            extra(tf)
    return buf.getvalue()


def write_manifest(path: Path, upstreams: list[dict], weights: list[dict] = ()) -> Path:
    lines = []
    for table, rows in (("weights", weights), ("upstream", upstreams)):
        for row in rows:
            lines.append(f"[[{table}]]")
            for k, v in row.items():
                if k == "converts":
                    items = ", ".join(f"{{raw = {json.dumps(r)}, to = {json.dumps(t)}}}" for r, t in v)
                    lines.append(f"converts = [{items}]")
                elif v is not None:
                    lines.append(f"{k} = {json.dumps(v)}")
            lines.append("")
    path.write_text("\n".join(lines))
    return path


def upstream(url: str, fmt: str, converts, name: str = "test", size=None, sha256=None, max_bytes=64 * 1024**2) -> dict:
    return {"detector": DET, "name": name, "url": url, "size": size, "max_bytes": max_bytes, "sha256": sha256,
            "licence": "test", "source": "test", "format": fmt, "converts": converts}


def weights_rows(converts) -> list[dict]:
    return [{"detector": DET, "file": to, "licence": "test", "source": "test", "made": "test", "format": "safetensors"}
            for _, to in converts]


@pytest.fixture
def env(tmp_path):
    root = tmp_path / "weights"
    root.mkdir()
    out = io.StringIO()

    def manager(manifest: Path, **kw) -> wm.WeightsManager:
        kw.setdefault("converter_for", lambda det: wm.generic_convert)
        return wm.WeightsManager(root, manifest, progress=False, out=out, **kw)

    return types.SimpleNamespace(root=root, tmp=tmp_path, out=out, manager=manager)


def tree(path: Path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*")}


def read_only(path: Path) -> bool:
    return not (path.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


TAR_CONVERTS = [("fakedet/a.pth", "fakedet/a.safetensors"), ("fakedet/b.pth", "fakedet/b.safetensors")]


def tar_setup(env, server, files=None, extra=None, **up):
    data = tar_bytes(files if files is not None else
                     {"fakedet/a.pth": checkpoint_bytes(0), "fakedet/b.pth": checkpoint_bytes(1), "fakedet/README": b"hi"},
                     extra)
    server.files["/rel/fakedet.tar.gz"] = data
    manifest = write_manifest(env.tmp / "manifest.toml",
                              [upstream(server.url("/rel/fakedet.tar.gz"), "tar.gz", TAR_CONVERTS, **up)],
                              weights_rows(TAR_CONVERTS))
    return manifest, data


# -- tests ---------------------------------------------------------------------------------------
def test_install_tar_converts_to_read_only_safetensors_with_tofu(env, server):
    manifest, data = tar_setup(env, server)
    done = env.manager(manifest).install(DET)
    assert done == ["fakedet/a.safetensors", "fakedet/b.safetensors"]
    for i, rel in enumerate(done):
        path = env.root / rel
        assert read_only(path)
        state = load_file(str(path))
        assert set(state) == {"weight", "bias"}  # unwrapped and `module.` stripped
        assert torch.equal(state["weight"], tiny_state(i)["weight"])
    assert "trust on first use: upstream publishes no checksum; recorded sha256" in env.out.getvalue()
    records = env.manager(manifest).records()
    dl = "raw/fakedet/test/fakedet.tar.gz"
    assert records[dl]["sha256"] == wm_sha(data) == sha256_file(env.root / dl)
    assert records[dl]["trust"] == "first-use" and records[dl]["size"] == len(data)
    assert records["fakedet/a.safetensors"]["trust"] == "first-use" and records["fakedet/a.safetensors"]["installed_at"].endswith("Z")
    # only named members were extracted, and their copies are gone after conversion
    assert not (env.root / "raw/fakedet/test/extracted/fakedet/README").exists()
    assert not (env.root / "raw/fakedet/test/extracted/fakedet/a.pth").exists()
    # the detector side: manifest_files takes the recorded sha256, verify() and strict load pass
    (w_a, _) = manifest_files(DET, manifest, env.root / "installed.toml")
    assert w_a.sha256 == records["fakedet/a.safetensors"]["sha256"]
    model = nn.Linear(4, 2)
    assert load_safetensors_strict(model, w_a, env.root / w_a.file) == w_a.sha256
    # without a record: unverified, refused
    (bare, _) = manifest_files(DET, manifest, env.tmp / "nothing.toml")
    with pytest.raises(WeightsError, match="no sha256"):
        verify(bare, env.root / bare.file)
    # a second install reuses the recorded download
    server.log.clear()
    env.manager(manifest).install(DET)
    assert server.log == []


def test_single_pickle_uses_the_detectors_converter(env, server, monkeypatch):
    calls = []

    def convert_checkpoint(raw_path: Path) -> dict[str, torch.Tensor]:
        calls.append(raw_path)
        return {"renamed." + k: v for k, v in wm.generic_convert(raw_path).items()}

    from detectors.registry import register, unregister
    from tiny_detector import TinyDetector

    class FakeDet(TinyDetector):  # a detector names its own converter
        name = DET

    FakeDet.convert_checkpoint = staticmethod(convert_checkpoint)
    register(FakeDet)
    try:
        server.files["/dl/final_1"] = checkpoint_bytes()
        conv = [("final_1", "fakedet/final_1.safetensors")]
        manifest = write_manifest(env.tmp / "m.toml", [upstream(server.url("/dl/final_1"), "pickle", conv)],
                                  weights_rows(conv))
        env.manager(manifest, converter_for=wm.find_converter).install(DET)
    finally:
        unregister(DET)
    assert len(calls) == 1
    assert set(load_file(str(env.root / "fakedet/final_1.safetensors"))) == {"renamed.weight", "renamed.bias"}
    assert read_only(env.root / "raw/fakedet/test/final_1")


def test_a_detector_names_its_own_converter():
    from detectors import boken, selimsef, wm as wm_detector

    assert wm.find_converter("no-such-detector-xyz") is wm.generic_convert
    assert wm.find_converter("selimsef") is selimsef.convert_checkpoint
    assert wm.find_converter("boken") is boken.convert_checkpoint
    assert wm.find_converter("wm") is wm_detector.convert_checkpoint
    assert wm.find_converter("sbi-mobilenetv2") is wm.generic_convert  # trained here: nothing to convert


def test_truncated_download_is_resumable(env, server):
    manifest, data = tar_setup(env, server)
    server.cut["/rel/fakedet.tar.gz"] = 100
    with pytest.raises(WeightsError, match=r"stopped at 100 of \d+ bytes.*run the same command again to resume"):
        env.manager(manifest).install(DET)
    part = env.root / "raw/fakedet/test/fakedet.tar.gz.part"
    assert part.stat().st_size == 100
    assert env.manager(manifest).install(DET)
    assert server.log[-1][1] == "bytes=100-"
    assert sha256_file(env.root / "raw/fakedet/test/fakedet.tar.gz") == wm_sha(data)
    assert not part.exists()


def wm_sha(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def test_size_mismatch_refused(env, server):
    data = tar_bytes({"fakedet/a.pth": checkpoint_bytes(), "fakedet/b.pth": checkpoint_bytes()})
    manifest, _ = tar_setup(env, server, size=len(data) + 1)
    with pytest.raises(WeightsError, match="the manifest says"):
        env.manager(manifest).install(DET)
    assert not (env.root / "fakedet").exists()


def test_sha256_mismatch_refused_and_match_is_manifest_trust(env, server):
    manifest, data = tar_setup(env, server, sha256="0" * 64)
    with pytest.raises(WeightsError, match="does not match the manifest's"):
        env.manager(manifest).install(DET)
    assert not (env.root / "fakedet").exists()
    assert not list(env.root.rglob("*.part"))
    manifest, data = tar_setup(env, server, sha256=wm_sha(tar_bytes(
        {"fakedet/a.pth": checkpoint_bytes(0), "fakedet/b.pth": checkpoint_bytes(1), "fakedet/README": b"hi"})))
    env.manager(manifest).install(DET)
    assert env.manager(manifest).records()["raw/fakedet/test/fakedet.tar.gz"]["trust"] == "manifest"
    assert "trust on first use" not in env.out.getvalue()


def test_tofu_recorded_then_tampering_refused(env, server, capsys):
    manifest, _ = tar_setup(env, server)
    env.manager(manifest).install(DET)
    args = ["weights", "verify", "--manifest", str(manifest), "--weights-dir", str(env.root)]
    assert cli_main(args) == 0
    target = env.root / "fakedet/a.safetensors"
    os.chmod(target, 0o644)
    target.write_bytes(target.read_bytes()[:-1] + b"\x00")
    capsys.readouterr()
    assert cli_main(args) == 2
    err = capsys.readouterr().err
    assert "fakedet/a.safetensors" in err and "does not match" in err
    (w_a, _) = manifest_files(DET, manifest, env.root / "installed.toml")
    with pytest.raises(WeightsError, match="does not match the manifest"):
        verify(w_a, target)
    # upstream changes its file: a fresh download no longer matches the first-use record
    dl = env.root / "raw/fakedet/test/fakedet.tar.gz"
    os.chmod(dl, 0o644)
    dl.unlink()
    server.files["/rel/fakedet.tar.gz"] = tar_bytes({"fakedet/a.pth": checkpoint_bytes(5), "fakedet/b.pth": checkpoint_bytes(6)})
    with pytest.raises(WeightsError, match="recorded at first install"):
        env.manager(manifest).install(DET)


def _symlink(tf):
    info = tarfile.TarInfo("fakedet/link")
    info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
    tf.addfile(info)


def _hardlink(tf):
    info = tarfile.TarInfo("fakedet/hard")
    info.type, info.linkname = tarfile.LNKTYPE, "fakedet/a.pth"
    tf.addfile(info)


def _device(tf):
    info = tarfile.TarInfo("fakedet/dev")
    info.type = tarfile.CHRTYPE
    tf.addfile(info)


@pytest.mark.parametrize("case", ["traversal", "absolute", "symlink", "hardlink", "device", "oversized", "too-many"])
def test_unsafe_archives_refused_and_nothing_written(env, server, case):
    good = {"fakedet/a.pth": checkpoint_bytes(0), "fakedet/b.pth": checkpoint_bytes(1)}
    files, extra, kw, match = dict(good), None, {}, None
    if case == "traversal":
        files["../evil"], match = b"x", "climbs out"
    elif case == "absolute":
        files[str(env.tmp / "abs_evil")], match = b"x", "absolute path"
    elif case == "symlink":
        extra, match = _symlink, "symbolic link"
    elif case == "hardlink":
        extra, match = _hardlink, "hard link"
    elif case == "device":
        extra, match = _device, "device"
    elif case == "oversized":
        kw, match = {"max_archive_bytes": 1000}, "bytes uncompressed"
    elif case == "too-many":
        kw, match = {"max_archive_members": 1}, "more than 1 members"
    manifest, _ = tar_setup(env, server, files=files, extra=extra)
    before = tree(env.tmp)
    with pytest.raises(WeightsError, match=match):
        env.manager(manifest, **kw).install(DET)
    new = tree(env.tmp) - before
    assert all(p.startswith("weights") for p in new), new
    assert not (env.root / "fakedet").exists()
    assert not (env.root / "raw/fakedet/test/extracted").exists() or not any(
        p.is_file() for p in (env.root / "raw/fakedet/test/extracted").rglob("*"))
    assert not (env.tmp / "abs_evil").exists() and not (env.tmp.parent / "evil").exists()


def test_missing_member_named_in_manifest_refused(env, server):
    manifest, _ = tar_setup(env, server, files={"fakedet/a.pth": checkpoint_bytes()})
    with pytest.raises(WeightsError, match="fakedet/b.pth not found"):
        env.manager(manifest).install(DET)


class Evil:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_malicious_pickle_refused_and_its_code_never_runs(env, server):
    # the payload is live: an unsafe load would create the file
    probe = env.tmp / "probe"
    buf = io.BytesIO()
    torch.save({"state_dict": {"w": torch.zeros(1)}, "x": Evil(str(probe))}, buf)
    torch.load(io.BytesIO(buf.getvalue()), weights_only=False)
    assert probe.exists()

    canary = env.tmp / "CANARY"
    buf = io.BytesIO()
    torch.save({"state_dict": {"w": torch.zeros(1)}, "x": Evil(str(canary))}, buf)
    server.files["/dl/evil"] = buf.getvalue()
    conv = [("evil", "fakedet/evil.safetensors")]
    manifest = write_manifest(env.tmp / "m.toml", [upstream(server.url("/dl/evil"), "pickle", conv)], weights_rows(conv))
    with pytest.raises(WeightsError, match="weights_only=True"):
        env.manager(manifest).install(DET)
    assert not canary.exists()
    assert not (env.root / "fakedet/evil.safetensors").exists()
    # also through `add` and the detector-converter path
    with pytest.raises(WeightsError, match="weights_only=True"):
        env.manager(manifest, converter_for=wm.find_converter).add(DET, env.root / "raw/fakedet/test/evil")
    assert not canary.exists()


def test_non_http_urls_refused(env, server, tmp_path):
    secret = tmp_path / "secret"
    secret.write_bytes(checkpoint_bytes())
    conv = [("secret", "fakedet/secret.safetensors")]
    manifest = write_manifest(env.tmp / "m.toml", [upstream(secret.as_uri(), "pickle", conv)], weights_rows(conv))
    with pytest.raises(WeightsError, match="only http and https"):
        env.manager(manifest).install(DET)
    server.redirects["/dl/secret"] = secret.as_uri()
    manifest = write_manifest(env.tmp / "m.toml", [upstream(server.url("/dl/secret"), "pickle", conv)], weights_rows(conv))
    with pytest.raises(WeightsError, match="file:"):
        env.manager(manifest).install(DET)
    assert not (env.root / "fakedet").exists()


def test_add_local_files(env, server, tmp_path):
    data = tar_bytes({"fakedet/a.pth": checkpoint_bytes(0), "fakedet/b.pth": checkpoint_bytes(1)})
    local = tmp_path / "fakedet.tar.gz"
    local.write_bytes(data)
    manifest = write_manifest(env.tmp / "m.toml", [upstream("https://example.invalid/fakedet.tar.gz", "tar.gz", TAR_CONVERTS,
                                                             sha256="f" * 64)], weights_rows(TAR_CONVERTS))
    with pytest.raises(WeightsError, match="does not match the manifest's"):
        env.manager(manifest).add(DET, local)
    assert local.exists()  # the user's own file is never touched
    manifest = write_manifest(env.tmp / "m.toml", [upstream("https://example.invalid/fakedet.tar.gz", "tar.gz", TAR_CONVERTS)],
                              weights_rows(TAR_CONVERTS))
    assert env.manager(manifest).add(DET, local) == ["fakedet/a.safetensors", "fakedet/b.safetensors"]
    assert "trust on first use" in env.out.getvalue()
    assert server.log == []  # nothing downloaded


def test_cli_list_install_verify_exit_codes(env, server, capsys):
    manifest, _ = tar_setup(env, server)
    base = ["--manifest", str(manifest), "--weights-dir", str(env.root)]
    assert cli_main(["weights", "list", *base]) == 0
    assert "not installed" in capsys.readouterr().out
    assert cli_main(["weights", "verify", *base]) == 0
    assert cli_main(["weights", "install", "nobody", *base]) == 2
    assert capsys.readouterr().err.startswith("refused: no upstream source for 'nobody'")
    assert cli_main(["weights", "install", DET, *base]) == 0  # with the progress bar on stderr
    assert cli_main(["weights", "list", *base]) == 0
    out = capsys.readouterr().out
    assert "fakedet/a.safetensors" in out and "first-use" in out and "not installed" not in out
    assert cli_main(["weights", "add", DET, str(env.tmp / "missing.pth"), *base]) == 2
    os.remove(env.root / "fakedet/b.safetensors")
    assert cli_main(["weights", "verify", *base]) == 2
    assert "recorded as installed but missing" in capsys.readouterr().err


def test_shipped_manifest_lists_upstreams_and_their_outputs():
    ups = wm.read_upstreams(MANIFEST)
    outputs = {e.file for e in read_manifest(MANIFEST)}
    by = {}
    for u in ups:
        by.setdefault((u.detector, u.name), []).append(u)
        assert u.url.startswith("https://github.com/")
        for raw, to in u.converts:
            assert to in outputs, to
            wm.safe_relative(raw), wm.safe_relative(to)
    assert len(by["selimsef", "selimsef-release"]) == 7
    assert len(by["selimsef", "fakefinder"][0].converts) == 7
    assert len(by["boken", "fakefinder"][0].converts) == 3
    assert len(by["wm", "fakefinder"][0].converts) == 4
    (sbi,) = [e for e in read_manifest(MANIFEST) if e.detector == "sbi-mobilenetv2"]
    assert sbi.sha256 == "62f163f0a2e6a6addf5315e942d7079b8cbe4e80fa40b4161612f9a75ad786d0"  # v2.0 (retrained with FairFace)


def test_download_without_a_known_size_stops_at_the_ceiling(env, server, capsys):
    server.endless["/rel/endless.tar.gz"] = 0
    ceiling = 1024**2
    manifest = write_manifest(env.tmp / "m.toml", [upstream(server.url("/rel/endless.tar.gz"), "tar.gz", TAR_CONVERTS,
                                                            max_bytes=ceiling)], weights_rows(TAR_CONVERTS))
    with pytest.raises(WeightsError, match="ceiling of 1048576 bytes; stopped, the partial file was deleted"):
        env.manager(manifest).install(DET)
    assert not [p for p in env.root.rglob("*") if p.is_file()]  # no .part, no record
    sent = server.endless["/rel/endless.tar.gz"]
    assert sent < ENDLESS_CAP  # the client hung up; the server never reached its own cap
    with capsys.disabled():
        print(f"\nendless download: refused past the {ceiling} B ceiling after the server had sent {sent} B")


def test_announced_length_above_the_ceiling_is_refused_before_reading(env, server):
    server.files["/rel/big.tar.gz"] = b"x" * 4096
    manifest = write_manifest(env.tmp / "m.toml", [upstream(server.url("/rel/big.tar.gz"), "tar.gz", TAR_CONVERTS,
                                                            max_bytes=1000)], weights_rows(TAR_CONVERTS))
    with pytest.raises(WeightsError, match="server reports 4096 bytes, above the manifest's ceiling of 1000"):
        env.manager(manifest).install(DET)
    assert not [p for p in env.root.rglob("*") if p.is_file()]


def test_rows_without_size_or_ceiling_are_refused(env, server, tmp_path):
    manifest = write_manifest(env.tmp / "m.toml", [upstream(server.url("/rel/x.tar.gz"), "tar.gz", TAR_CONVERTS,
                                                            max_bytes=None)], weights_rows(TAR_CONVERTS))
    with pytest.raises(WeightsError, match="neither `size` nor `max_bytes`"):
        wm.read_upstreams(manifest)
    with pytest.raises(WeightsError, match="unbounded download"):
        wm.download(server.url("/rel/x.tar.gz"), tmp_path / "x.tar.gz", progress=False)
    assert all(u.size or u.max_bytes for u in wm.read_upstreams(MANIFEST))


def test_no_network_says_how_to_install_by_hand(env):
    # A port on 127.0.0.1 that nothing listens on: the connection is refused, as offline.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/rel/fakedet.tar.gz"
    manifest = write_manifest(env.tmp / "manifest.toml", [upstream(url, "tar.gz", TAR_CONVERTS)],
                              weights_rows(TAR_CONVERTS))
    with pytest.raises(wm.NoNetwork) as caught:
        env.manager(manifest).install(DET)
    message = str(caught.value)
    assert f"Download {url} on a machine that has one" in message
    assert f"`python -m workbench weights add {DET} FILE`" in message
    assert not (env.root / "fakedet").exists()
