"""Real servers on loopback for the remote-storage tests: OpenSSH's sshd, an S3 API server (moto's
server mode, with signature checking on), and a TCP relay in front of either that can drop every
connection after a given number of bytes (a server that stops in the middle of a push)."""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from sumlora.testing import free_port  # noqa: F401 - the tests import it from here too

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


def _wait_for_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def keygen(path: Path) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return path


class SSHServer:
    """sshd on 127.0.0.1:port with a generated host key; logs in the current user by public key."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.user = getpass.getuser()
        self.host_key = keygen(self.root / "host_ed25519")
        self.user_key = keygen(self.root / "user_ed25519")
        (self.root / "authorized_keys").write_text(Path(f"{self.user_key}.pub").read_text())
        self.config = self.root / "sshd_config"
        self.config.write_text("\n".join([
            f"Port {self.port}", "ListenAddress 127.0.0.1", f"HostKey {self.host_key}",
            f"AuthorizedKeysFile {self.root / 'authorized_keys'}", f"PidFile {self.root / 'sshd.pid'}",
            "StrictModes no", "UsePAM no", "PasswordAuthentication no", "KbdInteractiveAuthentication no",
            "PubkeyAuthentication yes", "PermitRootLogin prohibit-password", "Subsystem sftp internal-sftp",
            "LogLevel VERBOSE", ""]))
        self.proc: subprocess.Popen | None = None

    def start(self) -> SSHServer:
        if os.geteuid() == 0:
            Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # privilege separation directory
        log = open(self.root / "sshd.log", "ab")
        # -D: stay in the foreground (a child of this test); -e: log to stderr (the log file)
        self.proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(self.config)], stdout=log, stderr=log,
                                     start_new_session=True)
        try:
            _wait_for_port(self.port)
        except TimeoutError:
            self.stop()
            raise RuntimeError(f"sshd did not start: {(self.root / 'sshd.log').read_text()[-2000:]}") from None
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None

    def url(self, path: Path, port: int | None = None) -> str:
        return f"ssh://{self.user}@127.0.0.1:{port or self.port}{Path(path).resolve()}"

    def log(self) -> str:
        return (self.root / "sshd.log").read_text(errors="replace")


class S3Server:
    """moto's S3 API server on 127.0.0.1:port, a separate process. Requests are authenticated (signatures
    checked, as AWS does) once an IAM user with an S3 policy and its access key exist: ``key_id`` and
    ``secret``. ``client()`` is a boto3 S3 client talking to it over HTTP."""

    SETUP_CALLS = 3  # create_user, create_access_key, put_user_policy: unauthenticated, then auth starts

    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.key_id = self.secret = ""

    def start(self) -> S3Server:
        log = open(self.root / "s3.log", "ab")
        env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": str(self.SETUP_CALLS)}
        self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                     env=env, stdout=log, stderr=log, start_new_session=True)
        _wait_for_port(self.port, timeout=30)
        import boto3

        iam = boto3.client("iam", endpoint_url=self.url, region_name="us-east-1", aws_access_key_id="setup",
                           aws_secret_access_key="setup")
        iam.create_user(UserName="dvc")
        key = iam.create_access_key(UserName="dvc")["AccessKey"]
        iam.put_user_policy(UserName="dvc", PolicyName="s3", PolicyDocument=(
            '{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}'))
        self.key_id, self.secret = key["AccessKeyId"], key["SecretAccessKey"]
        return self

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.url, region_name="us-east-1", aws_access_key_id=self.key_id,
                            aws_secret_access_key=self.secret)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None

    def log(self) -> str:
        return (self.root / "s3.log").read_text(errors="replace")


class CuttingRelay:
    """Forwards 127.0.0.1:port to a target port. Once ``cut_after`` bytes have gone from clients
    to the server, it closes every connection and stops listening, as a server that goes away
    mid-transfer. ``start()`` again listens on the same port (the server is back)."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.port = free_port()
        self.cut_after: int | None = None
        self.sent = 0
        self.cut = threading.Event()
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None

    def start(self, cut_after: int | None = None) -> CuttingRelay:
        self.cut_after, self.sent = cut_after, 0
        self.cut.clear()
        self._listener = socket.create_server(("127.0.0.1", self.port), reuse_port=False)
        threading.Thread(target=self._accept, args=(self._listener,), daemon=True).start()
        return self

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # listener closed
            server = socket.create_connection(("127.0.0.1", self.target_port))
            with self._lock:
                self._socks += [client, server]
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, upstream: bool) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
                if upstream:
                    with self._lock:
                        self.sent += len(data)
                        over = self.cut_after is not None and self.sent >= self.cut_after
                    if over:
                        self.stop()
                        return
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def stop(self) -> None:
        """Refuse new connections and drop the open ones."""
        self.cut.set()
        with self._lock:
            socks, self._socks = self._socks, []
            listener, self._listener = self._listener, None
        for s in socks + ([listener] if listener else []):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
