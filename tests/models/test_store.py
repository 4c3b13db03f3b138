"""Model stores: the local graphs dir and an S3-compatible bucket (a real moto_server)."""
from __future__ import annotations

import os
import subprocess
import sys
import uuid

import pytest

from model_versions import NAME, build_version
from service.errors import ModelLoadError, PublishError
from service.models.manifest import read_manifest
from service.models.publish import S3Location, parse_s3_url, publish, verified_files
from service.models.store import LocalStore, S3Store, normalise_prefix
from support import REPO


@pytest.fixture
def bucket(s3_server) -> str:
    name = f"models-{uuid.uuid4().hex[:8]}"
    s3_server.client().create_bucket(Bucket=name)
    return name


def publish_dir(s3_server, tmp_path, bucket: str, version: int, kind: str = "good",
                prefix: str = "releases/") -> list[str]:
    directory = build_version(tmp_path / f"build-{uuid.uuid4().hex}", version, kind)
    return publish(s3_server.client(), directory, NAME, version, S3Location(bucket, prefix),
                   say=lambda line: None)


def test_local_store_lists_and_fetches_in_place(tmp_path):
    for version in (1, 2, 10):
        build_version(tmp_path, version)
    (tmp_path / NAME / ".staging-x").mkdir()  # a half-written version is invisible
    store = LocalStore(tmp_path)
    assert store.list_versions(NAME) == [1, 2, 10]
    assert store.fetch(NAME, 2) == tmp_path / NAME / "2"
    assert store.list_versions("nothing") == []
    with pytest.raises(ModelLoadError, match="version 3 is not in"):
        store.fetch(NAME, 3)


@pytest.mark.parametrize("raw, bucket, prefix", [
    ("s3://b", "b", ""), ("s3://b/", "b", ""), ("s3://b/p", "b", "p/"), ("s3://b/p/q/", "b", "p/q/"),
])
def test_parse_s3_url(raw, bucket, prefix):
    assert parse_s3_url(raw) == S3Location(bucket, prefix)


@pytest.mark.parametrize("raw", ["b/p", "s3://", "http://b/p"])
def test_parse_s3_url_refuses_other_urls(raw):
    with pytest.raises(PublishError):
        parse_s3_url(raw)


def test_normalise_prefix():
    assert [normalise_prefix(p) for p in ("", "/", "a", "/a/b/")] == ["", "", "a/", "a/b/"]


def test_publish_uploads_manifest_last_and_refuses_overwrites(s3_server, tmp_path, bucket):
    keys = publish_dir(s3_server, tmp_path, bucket, 1)
    assert [k.rsplit("/", 1)[1] for k in keys] == ["model.pb", "confusion.png", "manifest.json"]
    assert keys[0] == f"releases/{NAME}/1/model.pb"
    with pytest.raises(PublishError, match="already exists"):
        publish_dir(s3_server, tmp_path, bucket, 1)


def test_publish_verifies_the_graph_first(tmp_path):
    directory = build_version(tmp_path, 2, "checksum")
    with pytest.raises(PublishError, match="does not match"):
        verified_files(directory, NAME, 2)
    with pytest.raises(PublishError, match="not digits-cnn version 3"):
        verified_files(build_version(tmp_path / "x", 2), NAME, 3)


def test_s3_store_lists_only_versions_with_a_manifest(s3_server, tmp_path, bucket):
    publish_dir(s3_server, tmp_path, bucket, 1)
    publish_dir(s3_server, tmp_path, bucket, 12)
    client = s3_server.client()
    client.put_object(Bucket=bucket, Key=f"releases/{NAME}/13/model.pb", Body=b"uploading...")
    client.put_object(Bucket=bucket, Key=f"releases/{NAME}-other/14/manifest.json", Body=b"{}")
    store = S3Store(client, bucket, "/releases", tmp_path / "cache")
    assert store.list_versions(NAME) == [1, 12]
    assert store.list_versions("nothing") == []


def test_s3_fetch_downloads_verifies_and_reuses_the_cache(s3_server, tmp_path, bucket):
    publish_dir(s3_server, tmp_path, bucket, 1)
    store = S3Store(s3_server.client(), bucket, "releases", tmp_path / "cache")
    directory = store.fetch(NAME, 1)
    assert directory == tmp_path / "cache" / NAME / "1"
    assert read_manifest(directory).version == 1
    first = (directory / "model.pb").stat().st_ino
    assert store.fetch(NAME, 1) == directory
    assert (directory / "model.pb").stat().st_ino == first  # reused, not downloaded again

    (directory / "model.pb").write_bytes(b"damaged in the cache")
    assert store.fetch(NAME, 1) == directory  # no longer matches the manifest: fetched afresh
    assert (directory / "model.pb").read_bytes() == (build_version(tmp_path / "ref", 1) / "model.pb").read_bytes()
    assert [p.name for p in directory.parent.iterdir()] == ["1"]  # no temp dirs left behind


def test_s3_fetch_rejects_a_graph_that_does_not_match_its_manifest(s3_server, tmp_path, bucket):
    good = build_version(tmp_path / "good", 2)
    bad = build_version(tmp_path / "bad", 2, "checksum")
    client = s3_server.client()
    client.put_object(Bucket=bucket, Key=f"{NAME}/2/model.pb", Body=(bad / "model.pb").read_bytes())
    client.put_object(Bucket=bucket, Key=f"{NAME}/2/manifest.json",
                      Body=(good / "manifest.json").read_bytes())
    store = S3Store(client, bucket, "", tmp_path / "cache")
    with pytest.raises(ModelLoadError, match=r"s3://.*/model\.pb: sha256 .* does not match"):
        store.fetch(NAME, 2)
    assert not (tmp_path / "cache" / NAME / "2").exists()  # nothing corrupt is cached
    with pytest.raises(ModelLoadError, match="cannot download"):
        store.fetch(NAME, 3)


def test_s3_store_unreachable_endpoint_is_a_load_error(tmp_path):
    from service.blobstore import make_s3_client
    from service.config import S3Settings

    client = make_s3_client(S3Settings("http://127.0.0.1:9", "us-east-1", "k", "s"),
                            retries={"max_attempts": 1}, connect_timeout=1)
    with pytest.raises(ModelLoadError, match="cannot list"):
        S3Store(client, "b", "", tmp_path).list_versions(NAME)


def test_publish_cli_with_aws_environment_variables(s3_server, tmp_path, bucket):
    graphs = tmp_path / "graphs"
    build_version(graphs, 3)
    no_s3_section = tmp_path / "empty.conf"
    no_s3_section.write_text("")
    env = {**os.environ, "AWS_ENDPOINT_URL": s3_server.endpoint_url, **s3_server.CREDENTIALS}
    result = subprocess.run(
        [sys.executable, "-m", "service", "publish", "--model", NAME, "--to", f"s3://{bucket}/p",
         "--graphs-dir", str(graphs), "--config", str(no_s3_section)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "publishing digits-cnn version 3" in result.stdout
    assert result.stdout.index("model.pb") < result.stdout.index("manifest.json")
    assert S3Store(s3_server.client(), bucket, "p", tmp_path / "c").list_versions(NAME) == [3]

    again = subprocess.run(result.args, cwd=REPO, env=env, capture_output=True, text=True,
                           timeout=60)
    assert again.returncode == 2 and "already exists" in again.stderr
