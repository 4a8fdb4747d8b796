"""Content-addressed artifact store: stable digests, atomic writes, identical content → same id, latest/resolve,
s3 with manifest.json as the commit marker."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from rlhf_assets.registry.artifacts import ArtifactNotFound, ArtifactStore, artifact_digest, payload_files
from rlhf_assets.storage import Storage


def make_payload(d, weights=b"\x00\x01weights", extra=None):
    d.mkdir(parents=True, exist_ok=True)
    (d / "model.safetensors").write_bytes(weights)
    (d / "config.json").write_text('{"a": 1}')
    (d / "tokenizer").mkdir(exist_ok=True)
    (d / "tokenizer" / "tokenizer.json").write_text("{}")
    if extra:
        (d / extra).write_text("x")
    return d


MANIFEST = {"kind": "reward_model", "dataset_id": "ds1", "metrics": {"val_accuracy": 0.9}, "seed": 0,
            "created_at": "2026-01-01T00:00:00Z", "run": {"wall_time_s": 12.3}}


def _tree(root):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))


def test_digest_is_stable_and_ignores_volatile_fields(tmp_path):
    a = make_payload(tmp_path / "a")
    b = make_payload(tmp_path / "b")
    fa, fb = payload_files(a), payload_files(b)
    assert fa == fb and [f["path"] for f in fa] == ["config.json", "model.safetensors", "tokenizer/tokenizer.json"]
    d1 = artifact_digest(fa, MANIFEST)
    assert d1 == artifact_digest(fb, dict(MANIFEST, created_at="2030-05-05T00:00:00Z", run={"wall_time_s": 1}))
    assert d1 != artifact_digest(fb, dict(MANIFEST, metrics={"val_accuracy": 0.8}))
    make_payload(tmp_path / "c", weights=b"other")
    assert d1 != artifact_digest(payload_files(tmp_path / "c"), MANIFEST)


def test_identical_content_twice_gives_the_same_artifact(tmp_path):
    store = ArtifactStore(Storage(tmp_path / "root"))
    r1 = store.put_dir(make_payload(tmp_path / "a"), kind="reward_model", manifest=MANIFEST)
    r2 = store.put_dir(make_payload(tmp_path / "b"), kind="reward_model",
                       manifest=dict(MANIFEST, created_at="2027-01-01T00:00:00Z"))
    assert r1 == r2 and len(r1.id) == 64 and r1.kind == "reward_model"
    base = tmp_path / "root" / "artifacts" / "sha256"
    assert os.listdir(base) == [r1.id]
    assert _tree(base / r1.id) == ["config.json", "manifest.json", "model.safetensors", "tokenizer",
                                   "tokenizer/tokenizer.json"]
    m = store.manifest(r1.id)
    assert m["id"] == r1.id and m["kind"] == "reward_model" and m["dataset_id"] == "ds1"
    assert m["created_at"] == "2026-01-01T00:00:00Z"  # the first write wins; later identical puts change nothing
    assert {f["path"] for f in m["files"]} == {"config.json", "model.safetensors", "tokenizer/tokenizer.json"}
    assert store.verify(r1.id)
    assert store.get(r1.id) == base / r1.id


@pytest.mark.parametrize("where", ["copy", "rename"])
def test_a_crash_mid_write_leaves_no_artifact(tmp_path, monkeypatch, where):
    store = ArtifactStore(Storage(tmp_path / "root"))
    payload = make_payload(tmp_path / "a")
    if where == "copy":
        real, calls = shutil.copyfile, []

        def flaky_copy(src, dst, *a, **k):
            calls.append(src)
            if len(calls) == 2:
                raise OSError("disk full")
            return real(src, dst, *a, **k)

        monkeypatch.setattr("rlhf_assets.registry.artifacts.shutil.copyfile", flaky_copy)
    else:
        def broken_rename(src, dst):
            raise OSError("power cut")

        monkeypatch.setattr("rlhf_assets.registry.artifacts.os.rename", broken_rename)
    with pytest.raises(OSError):
        store.put_dir(payload, kind="reward_model", manifest=MANIFEST)
    base = tmp_path / "root" / "artifacts" / "sha256"
    assert os.listdir(base) == []  # no final directory, and the hidden temp dir was cleaned up
    assert store.list() == []
    monkeypatch.undo()
    ref = store.put_dir(payload, kind="reward_model", manifest=MANIFEST)  # a retry succeeds
    assert store.exists(ref.id)


def test_list_latest_and_resolve(tmp_path):
    store = ArtifactStore(Storage(tmp_path / "root"))
    old = store.put_dir(make_payload(tmp_path / "a", b"v1"), kind="reward_model",
                        manifest=dict(MANIFEST, created_at="2026-01-01T00:00:00Z"))
    new = store.put_dir(make_payload(tmp_path / "b", b"v2"), kind="reward_model",
                        manifest=dict(MANIFEST, created_at="2026-02-01T00:00:00Z"))
    other = store.put_dir(make_payload(tmp_path / "c", b"v3"), kind="policy",
                          manifest=dict(MANIFEST, created_at="2026-03-01T00:00:00Z"))
    assert [r.id for r in store.list()] == [other.id, new.id, old.id]
    assert [r.id for r in store.list("reward_model")] == [new.id, old.id]
    assert store.latest("reward_model") == new and store.latest() == other
    with pytest.raises(ArtifactNotFound):
        store.latest("calibrator")
    base = tmp_path / "root" / "artifacts" / "sha256"
    assert store.resolve(old.id) == base / old.id
    assert store.resolve("sha256:" + old.id) == base / old.id
    assert store.resolve(old.id[:10]) == base / old.id
    assert store.resolve("latest", kind="reward_model") == base / new.id
    assert store.resolve(str(tmp_path / "a")) == tmp_path / "a"  # a plain directory
    with pytest.raises(ArtifactNotFound, match="not a directory"):
        store.resolve("deadbeef00")
    # a directory without manifest.json (an interrupted upload) is not an artifact
    fake = base / ("f" * 64)
    make_payload(fake)
    assert "f" * 64 not in [r.id for r in store.list()]
    with pytest.raises(ArtifactNotFound):
        store.manifest("f" * 64)


def test_manifest_values_become_plain_json(tmp_path):
    import numpy as np

    store = ArtifactStore(Storage(tmp_path / "root"))
    ref = store.put_dir(make_payload(tmp_path / "a"), kind="reward_model",
                        manifest={"metrics": {"auc": float("nan"), "n": np.int64(3), "acc": np.float32(0.5)}})
    text = (tmp_path / "root" / "artifacts" / "sha256" / ref.id / "manifest.json").read_text()
    assert json.loads(text)["metrics"] == {"auc": None, "n": 3, "acc": 0.5}


# S3 (moto server) ---------------------------------------------------------------------------------------------


# s3_storage (moto on loopback) comes from rlhf_assets_tests/conftest.py


def test_s3_upload_then_manifest_last_and_cached_download(s3_storage, tmp_path, monkeypatch):
    storage, client, bucket = s3_storage
    store = ArtifactStore(storage, cache_dir=tmp_path / "cache")
    written = []
    real_write = Storage.write_bytes

    def spy(self, path, data):
        written.append(str(path).rsplit("/", 1)[-1])
        return real_write(self, path, data)

    monkeypatch.setattr(Storage, "write_bytes", spy)
    ref = store.put_dir(make_payload(tmp_path / "a"), kind="reward_model", manifest=MANIFEST)
    keys = sorted(o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"])
    prefix = f"prefix/artifacts/sha256/{ref.id}/"
    assert keys == [prefix + k for k in ("config.json", "manifest.json", "model.safetensors",
                                         "tokenizer/tokenizer.json")]
    assert written == ["manifest.json"]  # payload uploaded first, the commit marker after it
    assert ref.uri.startswith(f"s3://{bucket}/prefix/artifacts/sha256/")
    assert store.put_dir(make_payload(tmp_path / "b"), kind="reward_model", manifest=MANIFEST) == ref
    assert store.latest("reward_model").id == ref.id
    local = store.get(ref.id)  # the uploader's cache copy
    assert local == tmp_path / "cache" / ref.id and (local / "model.safetensors").read_bytes() == b"\x00\x01weights"
    reader = ArtifactStore(storage, cache_dir=tmp_path / "cache2")  # another machine: downloads and verifies
    assert (reader.get(ref.id) / "tokenizer" / "tokenizer.json").read_text() == "{}"
    assert store.verify(ref.id) and store.resolve("latest") == local
    # a prefix without manifest.json is absent
    client.put_object(Bucket=bucket, Key=f"prefix/artifacts/sha256/{'e' * 64}/model.safetensors", Body=b"half")
    assert [r.id for r in store.list()] == [ref.id] and not store.exists("e" * 64)
