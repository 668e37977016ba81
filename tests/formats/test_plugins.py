"""Format detection by content, and format plug-ins found through entry points."""

from __future__ import annotations

import importlib
import io
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import clean, clean_manifest, smudge
from safetensors.torch import save as st_save

from theta_zarr import formats
from theta_zarr.formats import FormatError, all_formats, detect, get_format

PLUGIN_DIR = Path(__file__).parent / "example_plugin"
MODULE = "theta_zarr_rawbin"


def entry_points_txt() -> str:
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((PLUGIN_DIR / "pyproject.toml").read_text())["project"]
    group = project["entry-points"][formats.ENTRY_POINT_GROUP]
    lines = [f"[{formats.ENTRY_POINT_GROUP}]"] + [f"{k} = {v}" for k, v in group.items()]
    return "\n".join(lines) + "\n"


def install(site: Path, dist: str, entry_points: str) -> None:
    """An installed distribution, as pip would leave it: a .dist-info folder on sys.path."""
    info = site / f"{dist}-0.1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text(entry_points)


@pytest.fixture
def site(tmp_path):
    """A fresh site folder on sys.path; everything it changed is undone afterwards."""
    path = tmp_path / "site"
    path.mkdir()
    sys.path.insert(0, str(path))
    importlib.invalidate_caches()
    all_formats.cache_clear()
    try:
        yield path
    finally:
        sys.path.remove(str(path))
        sys.modules.pop(MODULE, None)
        importlib.invalidate_caches()
        all_formats.cache_clear()


@pytest.fixture
def rawbin(site):
    shutil.copy(PLUGIN_DIR / f"{MODULE}.py", site)
    install(site, "theta_zarr_example_plugin", entry_points_txt())
    return importlib.import_module(MODULE)


def rawbin_file(mod, name="embedding.weight", shape=(50, 40)) -> bytes:
    raw = np.arange(np.prod(shape), dtype="<f4").reshape(shape).tobytes()
    out = io.BytesIO()
    mod.save(out, name, "float32", shape, raw)
    return out.getvalue()


def test_plugin_is_listed_and_round_trips(rawbin, tmp_path):
    assert "rawbin" in [f.name for f in all_formats()]
    assert [f.name for f in all_formats()][:5] == ["dcp", "safetensors", "torch", "numpy", "npy"]
    assert type(get_format("rawbin")).__module__ == MODULE
    data = rawbin_file(rawbin)
    assert type(detect(data[:64], "w.bin")).__name__ == "RawbinFormat"
    m = clean_manifest(data, tmp_path, name="w.bin")
    assert m.format == {"name": "rawbin"}
    entry = m.params["embedding.weight"]
    assert entry.shape == (50, 40) and entry.dtype == "float32" and len(entry.chunks) == 2
    assert smudge(m, tmp_path) == data
    assert clean_manifest(smudge(m, tmp_path), tmp_path, name="w.bin").to_bytes() == m.to_bytes()


def test_plugin_errors_are_format_errors(rawbin, tmp_path):
    data = rawbin_file(rawbin)
    with pytest.raises(FormatError, match="w.bin: truncated"):
        clean_manifest(data[:-1], tmp_path, name="w.bin")
    with pytest.raises(FormatError, match="continues past"):
        clean_manifest(data + b"\0", tmp_path, name="w.bin")


def test_without_the_plugin_its_manifests_are_refused(rawbin, site, tmp_path):
    m = clean_manifest(rawbin_file(rawbin), tmp_path, name="w.bin")
    shutil.rmtree(next(site.glob("*.dist-info")))
    importlib.invalidate_caches()
    all_formats.cache_clear()
    assert "rawbin" not in [f.name for f in all_formats()]
    with pytest.raises(FormatError, match="no format plug-in named 'rawbin'"):
        smudge(m, tmp_path)
    # without its plug-in the file is only bytes: kept opaque, or refused when asked
    assert clean_manifest(rawbin_file(rawbin), tmp_path, name="w.bin").format_name == "opaque"
    with pytest.raises(FormatError, match="not a checkpoint"):
        clean(rawbin_file(rawbin), tmp_path, "w.bin", opaque=False)


def test_a_broken_plugin_is_reported(site):
    install(site, "broken_plugin", f"[{formats.ENTRY_POINT_GROUP}]\n"
                                   "broken = no_such_module_tz:Format\n")
    with pytest.raises(FormatError, match="plug-in 'broken' failed to load"):
        all_formats()


def test_a_plugin_cannot_replace_a_builtin(site):
    (site / "shadow_tz.py").write_text(
        "from theta_zarr.formats.safetensors import SafetensorsFormat\n"
        "class Shadow(SafetensorsFormat):\n    pass\n")
    install(site, "shadow_plugin", f"[{formats.ENTRY_POINT_GROUP}]\nshadow = shadow_tz:Shadow\n")
    try:
        assert type(get_format("safetensors")).__name__ == "SafetensorsFormat"
        assert len([f for f in all_formats() if f.name == "safetensors"]) == 1
    finally:
        sys.modules.pop("shadow_tz", None)


def test_the_builtins_are_registered_as_entry_points():
    from importlib.metadata import entry_points

    names = {ep.name for ep in entry_points(group=formats.ENTRY_POINT_GROUP)}
    assert {"safetensors", "torch", "numpy"} <= names


# -- detection by content ----------------------------------------------------------------------

def test_detection_is_by_content_not_name(tmp_path):
    st = st_save({"w": torch.arange(10.0)})
    m = clean_manifest(st, tmp_path, name="x.pt")
    assert m.format_name == "safetensors"
    assert smudge(m, tmp_path) == st

    buf = io.BytesIO()
    torch.save({"w": torch.arange(10.0)}, buf)
    assert clean_manifest(buf.getvalue(), tmp_path, name="x.safetensors").format_name == "torch"

    buf = io.BytesIO()
    np.savez(buf, w=np.arange(10.0))
    assert clean_manifest(buf.getvalue(), tmp_path, name="x.pt").format_name == "numpy"

    buf = io.BytesIO()
    np.save(buf, np.arange(10.0))
    assert clean_manifest(buf.getvalue(), tmp_path, name="x.npz").format_name == "npy"


OTHER_FILES = [
    b"just some text\nin a file named like a checkpoint\n",
    b"",
    b"PK\x03\x04" + b"\0" * 60,  # a zip that is neither
]


@pytest.mark.parametrize("data", OTHER_FILES, ids=["text", "empty", "zip"])
def test_other_files_are_kept_opaque_or_refused_naming_them(data, tmp_path):
    m = clean_manifest(data, tmp_path, name="weights/model.safetensors")
    assert m.format_name == "opaque" and m.params["bytes"].shape == (len(data),)
    assert smudge(m, tmp_path) == data
    with pytest.raises(FormatError) as info:
        clean(data, tmp_path, "weights/model.safetensors", opaque=False)
    msg = str(info.value)
    assert msg.startswith("weights/model.safetensors: not a checkpoint")
    assert "safetensors, torch, numpy" in msg and "\n" not in msg


def test_a_git_lfs_pointer_is_never_stored_as_the_file(tmp_path):
    data = (b"version https://git-lfs.github.com/spec/v1\noid sha256:" + b"0" * 64 +
            b"\nsize 1\n")
    with pytest.raises(FormatError) as info:
        clean_manifest(data, tmp_path, name="weights/model.safetensors")
    msg = str(info.value)
    assert msg.startswith("weights/model.safetensors: ") and "git-lfs pointer" in msg
    assert "\n" not in msg


def test_zip_that_is_not_a_checkpoint_is_refused(tmp_path):
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("notes.txt", "hello")
    assert clean_manifest(buf.getvalue(), tmp_path, name="m.pt").format_name == "opaque"
    with pytest.raises(FormatError, match="m.pt: not a checkpoint"):
        clean(buf.getvalue(), tmp_path, "m.pt", opaque=False)
