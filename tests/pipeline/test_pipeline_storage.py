"""flows.storage: local and S3 stores behave alike; trees are read through their manifest only."""

from __future__ import annotations

import time

import pyarrow as pa
import pytest

from aegpo.tables import PROFILE_SCHEMA, ROLLOUT_SCHEMA, from_parquet_bytes, to_parquet_bytes, with_parts
from flows.storage import LocalStorage, S3Storage, StorageError, StorageSettings, open_storage

from pipeline_helpers import free_port


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return LocalStorage(tmp_path / "store")
    endpoint, bucket, _ = request.getfixturevalue("s3_bucket")
    return open_storage(f"s3://{bucket}/pre/fix", settings=StorageSettings(endpoint_url=endpoint))


def test_bytes_json_list_delete(store):
    obj = store.put_bytes("a/b.bin", b"hello")
    assert obj.size == 5 and obj.uri.endswith("a/b.bin") and store.get_bytes("a/b.bin") == b"hello"
    store.put_json("a/c.json", {"x": 1})
    assert store.get_json("a/c.json") == {"x": 1}
    assert store.list("a/") == ["a/b.bin", "a/c.json"] and store.exists("a/b.bin")
    store.delete(["a/b.bin"])
    assert not store.exists("a/b.bin")
    with pytest.raises(FileNotFoundError, match="a/b.bin"):
        store.get_bytes("a/b.bin")


def test_tree_round_trip_and_manifest_last(store, tmp_path):
    src = tmp_path / "ckpt"
    (src / "sub").mkdir(parents=True)
    (src / "w.safetensors").write_bytes(b"v1-weights")
    (src / "sub" / "m.json").write_text("{}")
    first = store.put_tree("run/checkpoint", src)
    out = tmp_path / "out"
    assert store.get_tree("run/checkpoint", out)["version"] == first["version"]
    assert (out / "w.safetensors").read_bytes() == b"v1-weights" and (out / "sub" / "m.json").is_file()

    # A writer killed after uploading new files but before the manifest: readers still get v1.
    store.put_bytes("run/checkpoint/v-crashed/w.safetensors", b"v2-half")
    assert store.get_tree("run/checkpoint", tmp_path / "out2")["version"] == first["version"]
    assert (tmp_path / "out2" / "w.safetensors").read_bytes() == b"v1-weights"

    # A completed write replaces the tree and removes older versions.
    time.sleep(0.01)
    (src / "w.safetensors").write_bytes(b"v2-weights")
    second = store.put_tree("run/checkpoint", src)
    assert second["version"] != first["version"]
    store.get_tree("run/checkpoint", out)
    assert (out / "w.safetensors").read_bytes() == b"v2-weights"
    assert all(k.startswith(f"run/checkpoint/{second['version']}/") or k.endswith("MANIFEST.json")
               for k in store.list("run/checkpoint/"))


def test_tree_with_a_corrupt_file_is_refused(store, tmp_path):
    src = tmp_path / "s"
    src.mkdir()
    (src / "f.bin").write_bytes(b"good")
    manifest = store.put_tree("t", src)
    store.put_bytes(f"t/{manifest['version']}/f.bin", b"evil")
    with pytest.raises(StorageError, match="does not match"):
        store.get_tree("t", tmp_path / "dst")
    assert not (tmp_path / "dst").exists()


def test_parquet_bytes_round_trip_checks_schema(store):
    schema = with_parts(ROLLOUT_SCHEMA, ["dense"], "reward_")
    assert schema.names[-1] == "reward_dense"
    table = pa.table({"step": pa.array([1], pa.int32())})
    store.put_bytes("t.parquet", to_parquet_bytes(table))
    with pytest.raises(ValueError, match="column 'prompt_id' is missing"):
        from_parquet_bytes(store.get_bytes("t.parquet"), PROFILE_SCHEMA, "t.parquet")


def test_local_keys_cannot_escape_the_folder(tmp_path):
    with pytest.raises(StorageError, match="outside"):
        LocalStorage(tmp_path / "s").put_bytes("../evil", b"x")


def test_unreachable_endpoint_names_it_quickly():
    endpoint = f"http://127.0.0.1:{free_port()}"
    store = open_storage("s3://bucket/x", settings=StorageSettings(endpoint_url=endpoint, max_attempts=2,
                                                                    connect_timeout=1))
    t0 = time.monotonic()
    with pytest.raises(StorageError, match=f"S3 endpoint {endpoint} is unreachable") as info:
        store.check()
    assert info.value.transient and time.monotonic() - t0 < 20


def test_missing_bucket_is_a_clear_permanent_error(s3_endpoint):
    store = S3Storage("no-such-bucket", "", StorageSettings(endpoint_url=s3_endpoint))
    with pytest.raises(StorageError) as info:
        store.put_bytes("k", b"x")
    assert "no-such-bucket" in str(info.value) and not info.value.transient


def test_settings_from_env_and_uris(tmp_path):
    s = StorageSettings.from_env({"AEGPO_STORAGE_URI": "s3://b/p", "AWS_ENDPOINT_URL": "http://x:1",
                                  "AWS_SECRET_ACCESS_KEY": "hunter2", "AEGPO_S3_MAX_ATTEMPTS": "3"})
    assert (s.uri, s.endpoint_url, s.max_attempts) == ("s3://b/p", "http://x:1", 3)
    assert "hunter2" not in s.describe() and "http://x:1" in s.describe()
    assert isinstance(open_storage(None, tmp_path, StorageSettings()), LocalStorage)
    assert open_storage("store", tmp_path, StorageSettings()).root == (tmp_path / "store").resolve()
    with pytest.raises(StorageError, match="expected a folder"):
        open_storage("gs://bucket", tmp_path, StorageSettings())
    with pytest.raises(StorageError, match="must be numbers"):
        StorageSettings.from_env({"AEGPO_S3_MAX_ATTEMPTS": "many"})
