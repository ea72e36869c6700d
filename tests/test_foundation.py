"""Foundation: settings, routing, serialization, bundled models, path confinement."""

from __future__ import annotations

import json
import multiprocessing
import os
from pathlib import Path

import pytest
import redis

from config import Settings
from worker.app import build_app
from worker.bundled import ModelIntegrityError, materialize_whisper, verify_sha256
from worker.errors import InvalidInput, PathOutsideRoot
from worker.families import load_families
from worker.family import DEAD_LETTER_QUEUE
from worker.paths import confined_path
from worker.redis_server import EmbeddedRedis

ROUTES = load_families().routes()
FAMILY_QUEUES = load_families().queues


def test_redis_url_sets_broker_and_backend() -> None:
    """MLWORKER_REDIS_URL (password and TLS URLs too) becomes broker and result backend."""
    for url in ("redis://:s3cret@10.0.0.5:6380/2", "rediss://:pw@redis.example:6379/0"):
        app = build_app(Settings(redis_url=url))  # type: ignore[arg-type]
        assert app.conf.broker_url == url
        assert app.conf.result_backend == url
        assert app.conf.accept_content == ["json"]
        assert app.conf.result_accept_content == ["json"]
        app.close()


def test_env_var_reaches_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Settings are read from MLWORKER_* environment variables."""
    monkeypatch.setenv("MLWORKER_REDIS_URL", "redis://127.0.0.1:1/3")
    monkeypatch.setenv("MLWORKER_INPUT_ROOT", str(tmp_path))
    monkeypatch.setenv("MLWORKER_TAGS_BATCH_SIZE", "7")
    settings = Settings()
    assert settings.broker_url() == "redis://127.0.0.1:1/3"
    assert settings.input_root == tmp_path.resolve()
    assert settings.tags_batch_size == 7
    assert "redis://127.0.0.1:1/3" not in repr(settings)  # the URL may hold a password


def test_each_task_name_lands_on_its_queue_as_json(tmp_path: Path) -> None:
    """send_task by name routes to the family queue with a JSON body (no worker needed)."""
    with EmbeddedRedis(tmp_path) as server:
        app = build_app(Settings(redis_url=server.url))  # type: ignore[arg-type]
        for name in ROUTES:
            app.send_task(name, kwargs={"probe": name})
        client = redis.Redis.from_url(server.url)
        expected = {q: [n for n, rq in ROUTES.items() if rq == q] for q in FAMILY_QUEUES}
        for queue, names in expected.items():
            messages = [json.loads(raw) for raw in client.lrange(queue, 0, -1)]
            assert sorted(m["headers"]["task"] for m in messages) == sorted(names)
            assert {m["content-type"] for m in messages} == {"application/json"}
        assert client.llen(DEAD_LETTER_QUEUE) == 0
        app.close()


def _materialize(cache: str) -> str:
    return str(materialize_whisper("whisper-base", Path(cache)))


def test_bundled_whisper_joins_once_under_a_race(tmp_path: Path) -> None:
    """Four processes joining the split model at once agree on one verified directory."""
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        dirs = set(pool.map(_materialize, [str(tmp_path)] * 4))
    assert len(dirs) == 1
    model_dir = Path(dirs.pop())
    assert {p.name for p in model_dir.iterdir()} >= {"model.bin", "config.json", "tokenizer.json"}
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".whisper-base-")] == []
    stat = (model_dir / "model.bin").stat()
    assert _materialize(str(tmp_path)) == str(model_dir)
    assert (model_dir / "model.bin").stat().st_mtime_ns == stat.st_mtime_ns  # not re-joined


def test_tampered_model_is_refused(tmp_path: Path) -> None:
    """A model.bin whose sha256 differs from the recorded one is not loaded."""
    model_dir = materialize_whisper("whisper-base", tmp_path)
    with (model_dir / "model.bin").open("r+b") as fh:
        fh.seek(1000)
        fh.write(b"\x00\x01\x02\x03")
    with pytest.raises(ModelIntegrityError):
        materialize_whisper("whisper-base", tmp_path)
    with pytest.raises(ModelIntegrityError):
        verify_sha256(model_dir / "model.bin", "0" * 64)


def test_paths_are_confined_to_the_input_root(tmp_path: Path) -> None:
    """Relative, absolute, '..' and symlink escapes are refused; files inside are accepted."""
    root = tmp_path / "root"
    root.mkdir()
    (root / "ok.wav").write_bytes(b"x")
    secret = tmp_path / "secret.txt"
    secret.write_text("no")
    os.symlink(secret, root / "link.wav")
    assert confined_path("audio_path", "ok.wav", root) == (root / "ok.wav").resolve()
    assert confined_path("audio_path", str(root / "ok.wav"), root) == (root / "ok.wav").resolve()
    for bad in ("../secret.txt", str(secret), "link.wav", "/etc/passwd"):
        with pytest.raises(PathOutsideRoot, match="audio_path"):
            confined_path("audio_path", bad, root)
    for bad_value in ("", None, 5, "a\x00b"):
        with pytest.raises(InvalidInput, match="audio_path"):
            confined_path("audio_path", bad_value, root)
    with pytest.raises(InvalidInput, match="does not exist"):
        confined_path("audio_path", "missing.wav", root)


def test_invalid_input_survives_a_json_round_trip() -> None:
    """The error a client rebuilds from the JSON result names the field."""
    exc = InvalidInput("top_n", "must be an integer between 1 and 50")
    rebuilt = InvalidInput(*json.loads(json.dumps(exc.args)))
    assert str(rebuilt) == "top_n: must be an integer between 1 and 50"
    assert rebuilt.field == "top_n"


def test_readme_documents_every_setting() -> None:
    """Every settings field appears in the README's configuration table."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    missing = [name for name in Settings.model_fields if f"`MLWORKER_{name.upper()}`" not in readme]
    assert missing == []
