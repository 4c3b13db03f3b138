"""Settings: defaults serve the shipped graphs; bad values are refused naming their key."""
from __future__ import annotations

from pathlib import Path

import pytest

from service.config import REPO_ROOT, PoolSettings, load_settings
from service.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "service.conf"
    path.write_text(text)
    return path


def test_shipped_config_and_defaults_agree():
    shipped = load_settings(REPO_ROOT / "conf" / "service.conf")
    defaults = load_settings(None)
    assert [m.name for m in shipped.models] == [m.name for m in defaults.models]
    assert shipped.service == defaults.service
    assert shipped.models[0].min_accuracy == 0.995
    assert shipped.cherrypy["server.socket_port"] == 8080


def test_model_sections_build_pool_settings(tmp_path):
    settings = load_settings(write(tmp_path, """
[service]
models = ["digits-cnn"]
images_root = "/srv/images"
[model:digits-cnn]
version = 3
pool_size = 2
batch_timeout_ms = 1
"""))
    (model,) = settings.models
    assert model.version == 3 and model.pool.pool_size == 2 and model.pool.batch_timeout_ms == 1.0
    assert settings.service.images_root == Path("/srv/images")


@pytest.mark.parametrize("cores, workers, pool_size, own, threads", [
    (2, 1, 1, 0, 2), (2, 2, 1, 0, 1), (8, 2, 2, 0, 2), (2, 4, 1, 0, 1), (8, 2, 1, 3, 3)])
def test_intra_op_threads_0_splits_the_cores_between_workers_and_sessions(
        monkeypatch, cores, workers, pool_size, own, threads):
    monkeypatch.setattr("os.cpu_count", lambda: cores)
    pool = PoolSettings(pool_size=pool_size, intra_op_threads=own)
    assert pool.for_workers(workers).threads_per_session() == threads


@pytest.mark.parametrize("text, key", [
    ("[service]\nworkers = -1\n", "workers"),
    ("[service]\nmax_body_bytes = 'big'\n", "max_body_bytes"),
    ("[service]\nmax_pixels = -1\n", "max_pixels"),
    ("[service]\nbogus = 1\n", "bogus"),
    ("[service]\ndefault_model = \"nope\"\n", "default_model"),
    ("[service]\nmodels = [\"digits:cnn\"]\n", "models: 'digits:cnn' is not a model name"),
    ("[auth]\nfeedback_summary = \"everyone\"\n", "feedback_summary"),
    ("[model:digits-cnn]\npool_size = 0\n", "pool_size"),
    ("[model:digits-cnn]\nmax_batch_size = 1.5\n", "max_batch_size"),
    ("[service]\nmax_batch_size = unquoted words\n", "max_batch_size"),
    ("[weird]\nx = 1\n", "weird"),
])
def test_bad_values_name_their_key(tmp_path, text, key):
    with pytest.raises(ConfigError, match=key):
        load_settings(write(tmp_path, text))


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config"):
        load_settings(tmp_path / "nope.conf")


def test_operations_sections(tmp_path):
    settings = load_settings(write(tmp_path, """
[s3]
endpoint_url = "http://127.0.0.1:9000"
[store]
kind = "s3"
bucket = "models"
poll_interval_s = 5
[inputlog]
metadata_only = True
[logging]
format = "json"
"""))
    assert settings.s3.endpoint_url == "http://127.0.0.1:9000"
    assert settings.store.kind == "s3" and settings.store.poll_interval_s == 5.0
    assert settings.inputlog.metadata_only and settings.logging.format == "json"


@pytest.mark.parametrize("text, key", [
    ("[store]\nkind = \"ftp\"\n", "kind"),
    ("[store]\nkind = \"s3\"\n", "bucket"),
    ("[inputlog]\nenabled = 1\n", "enabled"),
    ("[logging]\nformat = \"xml\"\n", "format"),
    ("[ratelimit]\nredis_url = \"http://127.0.0.1:6379\"\n", r"\[ratelimit\]: redis_url"),
    ("[ratelimit]\nredis_url = \"127.0.0.1:6379\"\n", r"\[ratelimit\]: redis_url"),
    ("[ratelimit]\nredis_url = 6379\n", r"\[ratelimit\] redis_url"),
    ("[ratelimit]\nfail_open = \"no\"\n", r"\[ratelimit\] fail_open"),
    ("[ratelimit]\nredis_timeout_s = 0\n", r"\[ratelimit\]: redis_timeout_s"),
])
def test_operations_sections_name_bad_keys(tmp_path, text, key):
    with pytest.raises(ConfigError, match=key):
        load_settings(write(tmp_path, text))


def test_rate_limits_in_redis_are_off_unless_a_url_is_given(tmp_path):
    assert load_settings(None).ratelimit.redis_url is None
    assert load_settings(None).ratelimit.fail_open is True
    for url in ("redis://127.0.0.1:6379/0", "rediss://:secret@redis.example:6380/1",
                "unix:///run/redis/redis.sock?db=2"):
        settings = load_settings(write(tmp_path, f'[ratelimit]\nredis_url = "{url}"\n'
                                                 "fail_open = False\n"))
        assert (settings.ratelimit.redis_url, settings.ratelimit.fail_open) == (url, False)
