"""TF.js runner, Python side: what needs no Node (paths, wire format, install checks),
plus the generated op lists, re-checked against the installed TF.js when it is there."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import numpy as np
import pytest

from deploykit.errors import RuntimeLoadError
from deploykit.runtime_bench.tfjs import runner as tfjs_runner
from deploykit.runtime_bench.tfjs.runner import (
    PACKAGE_DIR,
    TFJSRunner,
    check_shard_paths,
    decode_array,
    encode_array,
    resolve_model_json,
)


def _manifest(*paths):
    return {"modelTopology": {}, "weightsManifest": [{"paths": list(paths), "weights": []}]}


def test_shard_paths_inside_the_model_directory_are_accepted(tmp_path):
    (tmp_path / "sub").mkdir()
    got = check_shard_paths(_manifest("group1-shard1of2.bin", "sub/group1-shard2of2.bin"), tmp_path)
    assert got == [tmp_path.resolve() / "group1-shard1of2.bin", tmp_path.resolve() / "sub" / "group1-shard2of2.bin"]


@pytest.mark.parametrize("bad", ["../secret.bin", "sub/../../x.bin", "/etc/passwd", "http://example.com/w.bin",
                                 "file:///etc/passwd", "", 7])
def test_shard_paths_leaving_the_directory_are_refused(tmp_path, bad):
    with pytest.raises(RuntimeLoadError, match="refused"):
        check_shard_paths(_manifest("ok.bin", bad), tmp_path)


def test_shard_symlink_out_of_the_directory_is_refused(tmp_path):
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"\0" * 4)
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    os.symlink(outside, model_dir / "w.bin")
    with pytest.raises(RuntimeLoadError, match="leaves the model's directory"):
        check_shard_paths(_manifest("w.bin"), model_dir)


def test_malformed_manifest_is_a_runtime_error(tmp_path):
    with pytest.raises(RuntimeLoadError, match="list"):
        check_shard_paths({"weightsManifest": {"paths": ["a.bin"]}}, tmp_path)


@pytest.mark.parametrize("x", [
    np.linspace(-3, 3, 24, dtype=np.float32).reshape(2, 3, 4),
    np.array([[1, -2, 2**31 - 1]], dtype=np.int32),
    np.array([True, False, True]),
    np.float32(1.5) * np.ones((), np.float32),
])
def test_wire_format_round_trips(x):
    enc = encode_array(x)
    assert json.loads(json.dumps(enc)) == enc  # plain JSON
    back = decode_array(enc)
    assert back.shape == x.shape and back.dtype == x.dtype
    np.testing.assert_array_equal(back, x)


def test_wire_format_is_little_endian_float32():
    enc = encode_array(np.array([1.0], dtype=">f8"))  # big-endian float64 in, LE float32 on the wire
    assert enc["dtype"] == "float32"
    import base64

    assert base64.b64decode(enc["data"]) == np.array([1.0], "<f4").tobytes()


def test_model_json_is_found_in_a_directory(tmp_path):
    assert resolve_model_json(tmp_path) == tmp_path / "model.json"
    assert resolve_model_json(tmp_path / "m.json") == tmp_path / "m.json"


def test_load_errors_are_one_line_and_need_no_node(tmp_path):
    with pytest.raises(RuntimeLoadError, match="not found"):
        TFJSRunner(tmp_path / "model.json").load()
    (tmp_path / "model.json").write_text("{ not json")
    with pytest.raises(RuntimeLoadError, match="not valid JSON") as info:
        TFJSRunner(tmp_path).load()
    assert "\n" not in str(info.value)
    (tmp_path / "model.json").write_text(json.dumps({"format": "layers-model"}))
    with pytest.raises(RuntimeLoadError, match="no modelTopology"):
        TFJSRunner(tmp_path).load()
    (tmp_path / "model.json").write_text(json.dumps(_manifest("gone.bin")))
    with pytest.raises(RuntimeLoadError, match="weight shard gone.bin is missing"):
        TFJSRunner(tmp_path).load()
    with pytest.raises(RuntimeLoadError, match="unknown TF.js backend 'webgl'"):
        TFJSRunner(tmp_path, backend="webgl")


def test_missing_node_modules_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setattr(tfjs_runner, "NODE_MODULES", tmp_path / "node_modules")
    with pytest.raises(RuntimeLoadError, match=r"make install.*npm ci --prefix") as info:
        tfjs_runner.check_installed()
    assert "\n" not in str(info.value)


def test_missing_node_says_so(monkeypatch):
    monkeypatch.delenv("DEPLOYKIT_NODE", raising=False)
    monkeypatch.setattr(tfjs_runner.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeLoadError, match="needs Node.js"):
        tfjs_runner.node_executable()


def test_runner_is_registered_for_model_json():
    from deploykit.runtime_bench import RUNNERS, SUFFIX_RUNTIME

    assert SUFFIX_RUNTIME[".json"] == "tfjs"
    assert RUNNERS["tfjs"] == "deploykit.runtime_bench.tfjs:TFJSRunner"
    assert TFJSRunner.runtime == "tfjs"


def test_js_files_ship_with_the_package():
    """pyproject's package-data must carry what Node and the browser load."""
    import tomllib
    from pathlib import Path

    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["deploykit"]
    from fnmatch import fnmatch

    for name in ("runner.mjs", "ops.mjs", "bench.html", "package.json", "package-lock.json", "supported_ops.txt",
                 "async_ops.txt", "FORMAT.md"):
        assert (PACKAGE_DIR / name).is_file(), name
        rel = f"runtime_bench/tfjs/{name}"
        assert any(fnmatch(rel, p) for p in patterns), f"{rel} not in package-data {patterns}"


def test_lockfile_pins_tfjs_4_22_0():
    lock = json.loads((PACKAGE_DIR / "package-lock.json").read_text())
    pkgs = lock["packages"]
    for name in ("tfjs", "tfjs-core", "tfjs-converter", "tfjs-backend-cpu", "tfjs-backend-wasm"):
        assert pkgs[f"node_modules/@tensorflow/{name}"]["version"] == "4.22.0", name
    assert "node_modules/@tensorflow/tfjs-node" not in pkgs  # native, downloads binaries


def _installed() -> bool:
    try:
        tfjs_runner.check_installed()
        tfjs_runner.node_executable()
        return True
    except RuntimeLoadError:
        return False


@pytest.mark.parametrize("args,committed", [([], "supported_ops.txt"), (["--async"], "async_ops.txt")])
def test_committed_op_lists_match_the_installed_runtime(args, committed):
    if not _installed():
        pytest.skip("TF.js not installed (make install)")
    out = subprocess.run([shutil.which("node") or "node", str(PACKAGE_DIR / "ops.mjs"), *args], capture_output=True,
                         text=True, timeout=60, cwd=PACKAGE_DIR, check=True).stdout
    text = (PACKAGE_DIR / committed).read_text()
    assert out == text, f"regenerate: node ops.mjs {' '.join(args)} > {committed}"
    lines = text.splitlines()
    assert lines[0].startswith("#") and "4.22.0" in lines[0]
    assert lines[1:] == sorted(set(lines[1:]))
    if not args:
        assert {"Conv2D", "_FusedConv2D", "MatMul", "Relu6", "Softmax"} <= set(lines)
        assert "RaggedGather" not in lines  # op_list/ragged.js exists but the 4.22 mapper never loads it
    else:
        assert {"Enter", "Exit", "Merge", "Switch", "LoopCond", "NextIteration", "Where", "NonMaxSuppressionV5"} <= set(lines)
        assert set(lines[1:]) <= set((PACKAGE_DIR / "supported_ops.txt").read_text().splitlines())


def test_browser_server_serves_only_its_files(tmp_path):
    import http.client
    import threading

    from deploykit.runtime_bench.tfjs.browser import _Server

    served = tmp_path / "model.json"
    served.write_text("{}")
    secret = tmp_path / "secret.txt"
    secret.write_text("no")
    server = _Server({"/model/model.json": served, "/model/a b.bin": served}, b'{"warmup": 1}')
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        def get(path, method="GET", body=None):
            conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=5)
            conn.request(method, path, body=body)
            resp = conn.getresponse()
            return resp.status, resp.read(), resp
        status, body, resp = get("/model/model.json")
        assert status == 200 and body == b"{}"
        assert resp.getheader("Cross-Origin-Embedder-Policy") == "require-corp"  # lets wasm use threads
        assert get("/model/a%20b.bin")[0] == 200
        assert get("/config.json")[1] == b'{"warmup": 1}'
        for path in ("/secret.txt", "/model/../secret.txt", "/model/%2e%2e/secret.txt", "/", "/etc/passwd",
                     str(secret)):
            assert get(path)[0] == 404, path
        assert get("/elsewhere", "POST", b"{}")[0] == 400
        assert get("/result", "POST", b'{"results": []}')[0] == 204
        assert server.got_result.is_set() and server.result == {"results": []}
    finally:
        server.shutdown()
        server.server_close()


def test_browser_needs_chromium(monkeypatch, tmp_path):
    from deploykit.runtime_bench.tfjs import browser

    monkeypatch.setenv("DEPLOYKIT_CHROMIUM", str(tmp_path / "no-chromium"))
    with pytest.raises(RuntimeLoadError, match="apt-get install chromium"):
        browser.chromium_executable()
