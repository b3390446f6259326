"""Sharing through DVC remotes, against real storage: a shared directory and an OpenSSH server
started on loopback by the test. Repo A runs the tiny pipeline and pushes; a fresh clone B pulls
and must get byte-identical outputs, a clean `dvc status`, a `dvc repro` that runs nothing, and
an adapter it can summarize with."""

import hashlib
import os
import shutil
import sys
from pathlib import Path

import pytest
from project import dvc, make_project, ran_stages, read_json, sh
from servers import SSHD, CuttingRelay, SSHServer

pytestmark = pytest.mark.slow

SHARED = ["models/adapter", "models/base", "data/predictions", "data/tokenized", "data/formatted", "metrics", "reports"]
LOOPBACK = {"NONET_ALLOW_LOOPBACK": "1"}  # the nonet guard still refuses every other address
DIALOGUE = "#Person1#: Shall we meet at noon?\n#Person2#: Yes, at the station."


def need_sshd() -> None:
    if not Path(SSHD).is_file():
        msg = "OpenSSH server not installed (bash scripts/setup_env.sh --test installs it)"
        if os.environ.get("SUMLORA_REQUIRE_SSHD") == "1":  # set by .ci/run: CI must run these tests
            pytest.fail(msg)
        pytest.skip(msg)


@pytest.fixture(scope="module")
def repo_a(tmp_path_factory, dialogsum_dir, tiny_llama_dir):
    a = make_project(tmp_path_factory.mktemp("remote") / "a", dialogsum_dir, tiny_llama_dir)
    dvc(a, "repro")
    (a / "dialogue.txt").write_text(DIALOGUE)
    sh(a, "git", "add", "-A")
    sh(a, "git", "commit", "-qm", "first run")
    return a


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def add_remote(a: Path, name: str, url: str, keyfile: Path | None = None, default: bool = False) -> None:
    dvc(a, "remote", "add", *(["-d"] if default else []), name, url)
    if keyfile:  # credentials stay in the git-ignored .dvc/config.local
        dvc(a, "remote", "modify", "--local", name, "keyfile", str(keyfile))
    sh(a, "git", "commit", "-qam", f"remote {name}")


def clone_and_pull(a: Path, b: Path, name: str, keyfile: Path | None = None) -> Path:
    sh(a.parent, "git", "clone", "-q", str(a), str(b))
    if keyfile:
        dvc(b, "remote", "modify", "--local", name, "keyfile", str(keyfile))
    dvc(b, "pull", "-r", name, extra_env=LOOPBACK)
    return b


def summarize(repo: Path) -> str:
    return sh(repo, sys.executable, "-m", "sumlora.summarize", "--adapter", "models/adapter", "dialogue.txt").stdout


def check_clone(a: Path, b: Path) -> None:
    for rel in SHARED:  # the exact outputs of A's commit, byte for byte
        assert files(b / rel) == files(a / rel), rel
    assert files(b / "models/adapter"), "no adapter pulled"
    assert read_json(b / "metrics/rouge.json") == read_json(a / "metrics/rouge.json")
    assert dvc(b, "status", "--json").stdout.strip() == "{}"
    out = dvc(b, "repro").stdout
    assert ran_stages(out) == set() and "up to date" in out, out
    summary = summarize(b)  # B uses the pulled adapter, and gets what A gets
    assert summary.strip() and summary == summarize(a)


def check_store_intact(store: Path) -> int:
    """Every object in a DVC remote is named by the MD5 of its bytes: a partial upload would show.
    An interrupted upload may leave a hidden temporary file (``.NAME.tmp``) which DVC never reads."""
    every = [p for p in (store / "files" / "md5").rglob("*") if p.is_file()]
    objects = [p for p in every if not p.name.startswith(".")]
    assert all(p.name.endswith(".tmp") for p in every if p.name.startswith(".")), every
    for p in objects:
        name = (p.parent.name + p.name).removesuffix(".dir")
        assert hashlib.md5(p.read_bytes()).hexdigest() == name, f"corrupt object in the remote: {p}"
    return len(objects)


def test_shared_directory_remote_round_trip(repo_a, tmp_path):
    store = tmp_path / "store"
    add_remote(repo_a, "shared", str(store), default=True)
    dvc(repo_a, "push", "-r", "shared")
    assert check_store_intact(store) > 0
    check_clone(repo_a, clone_and_pull(repo_a, tmp_path / "b", "shared"))
    # one adapter of one commit, without cloning: dvc get (through the repo's default remote)
    rev = sh(repo_a, "git", "rev-parse", "HEAD").stdout.strip()
    dvc(tmp_path, "get", str(repo_a), "models/adapter", "--rev", rev, "-o", "adapter-got")
    assert files(tmp_path / "adapter-got") == files(repo_a / "models/adapter")


@pytest.fixture
def sshd(tmp_path):
    need_sshd()
    server = SSHServer(tmp_path / "sshd").start()
    yield server
    server.stop()


def test_ssh_remote_round_trip(repo_a, tmp_path, sshd):
    store = tmp_path / "ssh-store"
    add_remote(repo_a, "ssh", sshd.url(store), sshd.user_key)
    dvc(repo_a, "push", "-r", "ssh", extra_env=LOOPBACK)
    assert "Accepted publickey" in sshd.log()  # it really went through sshd
    assert check_store_intact(store) > 0
    check_clone(repo_a, clone_and_pull(repo_a, tmp_path / "b", "ssh", sshd.user_key))


def test_ssh_push_refused_auth_then_interrupted_then_retried(repo_a, tmp_path, sshd):
    store = tmp_path / "ssh-store"
    relay = CuttingRelay(sshd.port)
    add_remote(repo_a, "flaky", sshd.url(store, port=relay.port), sshd.user_key)

    # 1. a key the server does not know: refused, with a message that says so
    (tmp_path / "stranger").mkdir()
    from servers import keygen

    stranger = keygen(tmp_path / "stranger" / "id")
    dvc(repo_a, "remote", "modify", "--local", "flaky", "keyfile", str(stranger))
    relay.start()
    refused = dvc(repo_a, "push", "-r", "flaky", check=False, extra_env=LOOPBACK)
    assert refused.returncode != 0
    assert "permission denied" in (refused.stdout + refused.stderr).lower(), refused.stderr[-2000:]
    dvc(repo_a, "remote", "modify", "--local", "flaky", "keyfile", str(sshd.user_key))

    # 2. the server goes away after 64 KiB of the upload: push fails, and says it did
    relay.stop()
    relay.start(cut_after=64 * 1024)
    cut = dvc(repo_a, "push", "-r", "flaky", check=False, extra_env=LOOPBACK)
    assert relay.cut.is_set(), "the relay never cut the connection"
    assert cut.returncode != 0, cut.stdout
    # DVC words it by where the cut lands: "failed to transfer ... Connection not open" or
    # "unexpected error - Connection lost"; both say the connection went
    assert "connection" in cut.stderr.lower() and "ERROR" in cut.stderr, cut.stderr
    check_store_intact(store)  # what did arrive is whole

    # 3. the server is back: the retry completes, and nothing in the remote is corrupt
    relay.start()
    missing = dvc(repo_a, "status", "-c", "-r", "flaky", "--json", extra_env=LOOPBACK)
    assert missing.stdout.strip() not in ("", "{}"), "everything arrived: the cut came too late to test anything"
    dvc(repo_a, "push", "-r", "flaky", extra_env=LOOPBACK)
    assert dvc(repo_a, "status", "-c", "-r", "flaky", "--json", extra_env=LOOPBACK).stdout.strip() == "{}"
    assert check_store_intact(store) > 0
    relay.stop()
    relay.start()
    check_clone(repo_a, clone_and_pull(repo_a, tmp_path / "b", "flaky", sshd.user_key))
    relay.stop()
    shutil.rmtree(tmp_path / "b")
