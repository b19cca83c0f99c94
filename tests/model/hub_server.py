"""A tiny stand-in for the Hugging Face Hub's file-download protocol, so huggingface_hub's own code runs offline.

What huggingface_hub (hf_hub_download) asks, and what the Hub answers (huggingface_hub/file_download.py,
utils/_http.py::hf_raise_for_status):
    HEAD /{owner}/{name}/resolve/{revision}/{file}   -> 200 with X-Repo-Commit, ETag (a git blob SHA-1 for a
        small file), X-Linked-Etag + X-Linked-Size (the SHA-256 and size of an LFS file), Content-Length
    GET  the same                                     -> the bytes (a Range request gets 206 from its offset)
    errors: 404 + X-Error-Code RepoNotFound / RevisionNotFound / EntryNotFound (with X-Repo-Commit);
            401 + X-Error-Code RepoNotFound for a private repository without the right Bearer token
"""

from __future__ import annotations

import hashlib
import threading
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote

LFS_SUFFIXES = (".safetensors", ".bin")


@dataclass
class Repo:
    commits: dict[str, dict[str, bytes]]  # commit hash -> {file name: bytes}
    refs: dict[str, str]  # branch or tag -> commit hash
    token: str | None = None  # private: this Bearer token may read it


@dataclass
class FakeHub:
    repos: dict[str, Repo] = field(default_factory=dict)
    truncate: set[str] = field(default_factory=set)  # files whose GET ends half-way (shorter Content-Length)
    corrupt: set[str] = field(default_factory=set)  # files whose GET bytes differ from their X-Linked-Etag
    requests: Counter = field(default_factory=Counter)  # (method, path) -> count
    url: str = ""

    def add(self, repo: str, files: dict[str, bytes], refs: dict[str, dict[str, bytes]] | None = None,
            token: str | None = None) -> str:
        """A repository whose `main` holds `files` (and each other ref its own files); returns main's commit."""
        commits, names = {}, {}
        for ref, content in {"main": files, **(refs or {})}.items():
            commit = hashlib.sha1(repr(sorted((k, hashlib.sha1(v).hexdigest()) for k, v in content.items()))
                                  .encode() + ref.encode()).hexdigest()
            commits[commit] = content
            names[ref] = commit
        self.repos[repo] = Repo(commits, names, token)
        return names["main"]

    def start(self) -> ThreadingHTTPServer:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_HEAD(self) -> None:  # noqa: N802 (http.server's naming)
                self._answer(body=False)

            def do_GET(self) -> None:  # noqa: N802
                self._answer(body=True)

            def _error(self, status: int, code: str, commit: str | None = None) -> None:
                self.send_response(status)
                self.send_header("X-Error-Code", code)
                self.send_header("X-Error-Message", code)
                if commit:
                    self.send_header("X-Repo-Commit", commit)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def _answer(self, body: bool) -> None:
                hub.requests[(self.command, self.path)] += 1
                parts = unquote(self.path).split("?")[0].lstrip("/").split("/")
                if len(parts) < 5 or parts[2] != "resolve":
                    return self._error(404, "RepoNotFound")
                repo_id, revision, name = "/".join(parts[:2]), parts[3], "/".join(parts[4:])
                repo = hub.repos.get(repo_id)
                if repo is None:
                    return self._error(404, "RepoNotFound")
                if repo.token and self.headers.get("Authorization") != f"Bearer {repo.token}":
                    return self._error(401, "RepoNotFound")
                commit = repo.refs.get(revision, revision if revision in repo.commits else None)
                if commit is None:
                    return self._error(404, "RevisionNotFound")
                files = repo.commits[commit]
                if name not in files:
                    return self._error(404, "EntryNotFound", commit)
                data = files[name]
                self.send_response(200 if "Range" not in self.headers else 206)
                self.send_header("X-Repo-Commit", commit)
                if name.endswith(LFS_SUFFIXES):
                    self.send_header("ETag", f'"{hashlib.sha1(data).hexdigest()}"')
                    self.send_header("X-Linked-Etag", f'"{hashlib.sha256(data).hexdigest()}"')
                    self.send_header("X-Linked-Size", str(len(data)))
                else:
                    blob = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
                    self.send_header("ETag", f'"{blob}"')
                if body and name in hub.corrupt:
                    data = bytes(b ^ 0xFF for b in data[:64]) + data[64:]
                if body and name in hub.truncate:
                    data = data[: len(data) // 2]
                if body and "Range" in self.headers:
                    data = data[int(self.headers["Range"].split("=")[1].split("-")[0]):]
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if body:
                    self.wfile.write(data)

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{server.server_address[1]}"
        return server
