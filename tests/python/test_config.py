"""`fluxo serve --config FILE`: a TOML file sets what flags set, flags and
FLUXO_* variables override it, and a bad file is refused with a message
that names the problem."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient

import fluxo_helpers as H

LISTEN_RE = re.compile(r"^fluxo: kafka listening on (\S+):(\d+)\s*$")


def start_serve(args: list[str], cwd: Path, env_extra: dict | None = None) -> tuple[subprocess.Popen, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLUXO_")}
    env.update(env_extra or {})
    proc = subprocess.Popen([H.fluxo_bin(), "serve", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    m = LISTEN_RE.match(line)
    if not m:
        proc.kill()
        _, err = proc.communicate(timeout=10)
        raise AssertionError(f"no listening line, got {line!r}; stderr:\n{err}")
    return proc, f"{m.group(1)}:{m.group(2)}"


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0


@pytest.mark.timeout(60)
def test_config_file_sets_listener_data_dir_and_topic_defaults(tmp_path):
    conf_dir = tmp_path / "etc"
    conf_dir.mkdir()
    conf = conf_dir / "fluxo.toml"
    conf.write_text(
        'data_dir = "data"\n'
        "[kafka]\n"
        'addr = "127.0.0.1:0"\n'
        "num_partitions = 3\n"
        "[http]\n"
        'addr = "127.0.0.1:0"\n'
        "[postgres]\n"
        'addr = "127.0.0.1:0"\n'
        "[mqtt]\n"
        'addr = "127.0.0.1:0"\n'
    )
    # Run from elsewhere: the relative data_dir is taken from the file's directory.
    run_dir = tmp_path / "cwd"
    run_dir.mkdir()
    proc, bootstrap = start_serve(["--config", str(conf)], run_dir)
    try:
        p = Producer({"bootstrap.servers": bootstrap})
        p.produce("auto-created", b"v")
        assert p.flush(15) == 0
        assert H.topic_partition_count(bootstrap, "auto-created") == 3
    finally:
        stop(proc)
    assert (conf_dir / "data" / "topics.json").exists()
    assert not (run_dir / "fluxo-data").exists()


@pytest.mark.timeout(60)
def test_flags_and_env_override_the_file(tmp_path):
    conf = tmp_path / "fluxo.toml"
    conf.write_text(
        f'data_dir = "{tmp_path / "data"}"\n'
        "[kafka]\n"
        'addr = "127.0.0.1:0"\n'
        "auto_create_topics = true\n"
        "num_partitions = 3\n"
        "[http]\n"
        'addr = "127.0.0.1:0"\n'
        "[postgres]\n"
        'addr = "127.0.0.1:0"\n'
        "[mqtt]\n"
        'addr = "127.0.0.1:0"\n'
    )
    proc, bootstrap = start_serve(
        ["--config", str(conf), "--num-partitions", "2"], tmp_path,
        env_extra={"FLUXO_AUTO_CREATE_TOPICS": "false"})
    try:
        a = AdminClient({"bootstrap.servers": bootstrap})
        md = a.list_topics("nope", timeout=10)
        assert md.topics["nope"].error is not None, "auto-creation is off through the env"
        H.create_topic(bootstrap, "explicit", partitions=2)
        assert H.topic_partition_count(bootstrap, "explicit") == 2
    finally:
        stop(proc)


@pytest.mark.parametrize("body,needle", [
    ("[kafka]\nadress = \"127.0.0.1:0\"\n", "adress"),
    ("[kafka]\nnum_partitions = 0\n", "num_partitions"),
    ("[kafka\n", "line 1"),
])
def test_bad_config_file_is_refused_with_a_precise_message(tmp_path, body, needle):
    conf = tmp_path / "fluxo.toml"
    conf.write_text(body)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLUXO_")}
    proc = subprocess.run([H.fluxo_bin(), "serve", "--config", str(conf),
                           "--data-dir", str(tmp_path / "d"), "--kafka-addr", "127.0.0.1:0"],
                          capture_output=True, text=True, timeout=30, env=env)
    assert proc.returncode != 0
    assert needle in proc.stderr, proc.stderr
    assert str(conf) in proc.stderr or needle == "num_partitions", proc.stderr


def test_missing_config_file_is_refused(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLUXO_")}
    proc = subprocess.run([H.fluxo_bin(), "serve", "--config", str(tmp_path / "none.toml")],
                          capture_output=True, text=True, timeout=30, env=env)
    assert proc.returncode != 0
    assert "none.toml" in proc.stderr, proc.stderr
