"""A loopback, in-memory, Hub-compatible HTTP server for the tests (standard library only).

It answers the calls huggingface_hub makes for `create_repo`, `upload_folder` / `push_to_hub` (regular uploads,
no LFS or Xet), `model_info`, `list_repo_tree`, `hf_hub_download` / `snapshot_download` and `whoami`. Writes
need the server's token; any request carrying another token gets 401, as on the real Hub.

    server = HubServer(token="hf_test").start()      # then HF_ENDPOINT=server.url before huggingface_hub loads
"""

import base64
import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse


class Repo:
    def __init__(self):
        self.commits = []  # [(sha, {path: bytes})], newest last
        self.lock = threading.Lock()

    def files(self, revision: str = "main") -> dict:
        if not self.commits:
            return {}
        if revision == "main":
            return self.commits[-1][1]
        for sha, files in self.commits:
            if sha == revision:
                return files
        raise KeyError(revision)

    def sha(self, revision: str = "main") -> str:
        if revision == "main":
            return self.commits[-1][0] if self.commits else "0" * 40
        if any(sha == revision for sha, _ in self.commits):
            return revision
        raise KeyError(revision)


class HubServer:
    def __init__(self, token: str = "hf_test_token", user: str = "user"):
        self.token, self.user = token, user
        self.repos: dict[str, Repo] = {}
        self.requests: list[tuple[str, str]] = []
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def start(self) -> "HubServer":
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output clean
                pass

            # -- helpers -------------------------------------------------------------------------------------
            def send(self, status: int, body=b"", headers=None, content_type="application/json"):
                if not isinstance(body, (bytes, bytearray)):
                    body = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def error(self, status: int, message: str, error_code: str | None = None):
                headers = {"X-Error-Message": message}
                if error_code:
                    headers["X-Error-Code"] = error_code
                self.send(status, {"error": message}, headers)

            def body(self) -> bytes:
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def authorized(self, required: bool) -> bool:
                """False (after answering 401) for a wrong token, or for no token where one is required."""
                header = self.headers.get("Authorization")
                if header is None and not required:
                    return True
                if header == f"Bearer {server.token}":
                    return True
                self.error(401, "Invalid credentials in Authorization header" if header else "Unauthorized")
                return False

            def repo(self, repo_id: str) -> Repo | None:
                repo = server.repos.get(repo_id)
                if repo is None:
                    self.error(404, f"Repository {repo_id} not found", "RepoNotFound")
                return repo

            def snapshot(self, repo_id: str, revision: str):
                """(files, sha) of a readable revision, or None after answering 401 / 404."""
                if not self.authorized(required=False) or (repo := self.repo(repo_id)) is None:
                    return None
                try:
                    return repo.files(revision), repo.sha(revision)
                except KeyError:
                    self.error(404, f"Invalid rev id: {revision}", "RevisionNotFound")
                    return None

            # -- verbs ---------------------------------------------------------------------------------------
            def do_GET(self):
                self.route("GET")

            def do_HEAD(self):
                self.route("HEAD")

            def do_POST(self):
                self.route("POST")

            def route(self, method: str):
                path = unquote(urlparse(self.path).path)
                server.requests.append((method, path))
                routes = [
                    ("POST", r"^/api/repos/create$", self.create_repo),
                    ("POST", r"^/api/validate-yaml$", self.validate_yaml),
                    ("GET", r"^/api/whoami-v2$", self.whoami),
                    ("POST", r"^/api/models/(.+?/.+?)/preupload/(.+)$", self.preupload),
                    ("POST", r"^/api/models/(.+?/.+?)/commit/(.+)$", self.commit),
                    ("GET", r"^/api/models/(.+?/.+?)/tree/([^/]+)(?:/(.*))?$", self.tree),
                    ("GET", r"^/api/models/(.+?/.+?)/revision/(.+)$", self.model_info),
                    ("GET", r"^/api/models/([^/]+/[^/]+)$", self.model_info),
                    ("HEAD", r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$", self.resolve),
                    ("GET", r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$", self.resolve),
                ]
                for verb, pattern, handler in routes:
                    match = re.match(pattern, path)
                    if verb == method and match:
                        return handler(*match.groups())
                self.error(404, f"No route for {method} {path}")

            def create_repo(self):
                payload = json.loads(self.body() or b"{}")
                if not self.authorized(required=True):
                    return
                repo_id = f"{payload.get('organization') or server.user}/{payload['name']}"
                if repo_id in server.repos:
                    return self.error(409, "You already created this model repo", "RepoExists")
                server.repos[repo_id] = Repo()
                self.send(200, {"url": f"{server.url}/{repo_id}", "name": repo_id, "id": repo_id})

            def validate_yaml(self):
                self.body()
                if self.authorized(required=False):
                    self.send(200, {"errors": [], "warnings": []})

            def whoami(self):
                if self.authorized(required=True):
                    self.send(200, {"type": "user", "name": server.user, "auth": {"accessToken": {"role": "write"}}})

            def preupload(self, repo_id, revision):
                payload = json.loads(self.body())
                if not self.authorized(required=True) or self.repo(repo_id) is None:
                    return
                files = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in payload["files"]]
                self.send(200, {"files": files, "commitOid": server.repos[repo_id].sha()})

            def commit(self, repo_id, revision):
                lines = [json.loads(line) for line in self.body().splitlines() if line.strip()]
                if not self.authorized(required=True) or (repo := self.repo(repo_id)) is None:
                    return
                with repo.lock:
                    files = dict(repo.files())
                    for line in lines:
                        value = line["value"]
                        if line["key"] == "file":
                            files[value["path"]] = base64.b64decode(value["content"])
                        elif line["key"] == "deletedFile":
                            files.pop(value["path"], None)
                        elif line["key"] == "deletedFolder":
                            files = {
                                p: c for p, c in files.items() if not p.startswith(value["path"].rstrip("/") + "/")
                            }
                        elif line["key"] != "header":
                            return self.error(400, f"Unsupported commit operation {line['key']!r} (no LFS here)")
                    sha = hashlib.sha1(json.dumps(lines, sort_keys=True).encode() + str(len(repo.commits)).encode())
                    repo.commits.append((sha.hexdigest(), files))
                sha = repo.sha()
                self.send(
                    200, {"commitUrl": f"{server.url}/{repo_id}/commit/{sha}", "commitOid": sha, "pullRequestUrl": None}
                )

            def model_info(self, repo_id, revision="main"):
                if (snapshot := self.snapshot(repo_id, revision)) is None:
                    return
                files, sha = snapshot
                self.send(
                    200,
                    {
                        "id": repo_id,
                        "modelId": repo_id,
                        "sha": sha,
                        "private": False,
                        "siblings": [{"rfilename": p, "size": len(c)} for p, c in sorted(files.items())],
                    },
                )

            def tree(self, repo_id, revision, folder=None):
                if (snapshot := self.snapshot(repo_id, revision)) is None:
                    return
                files, _ = snapshot
                prefix = f"{folder.rstrip('/')}/" if folder else ""
                recursive = "recursive=true" in (urlparse(self.path).query or "").lower()
                entries, folders = [], set()
                for path, content in sorted(files.items()):
                    if not path.startswith(prefix):
                        continue
                    rest = path[len(prefix) :]
                    if "/" in rest and not recursive:
                        folders.add(prefix + rest.split("/")[0])
                        continue
                    entries.append({"type": "file", "path": path, "size": len(content), "oid": _git_oid(content)})
                entries += [{"type": "directory", "path": f, "oid": "0" * 40} for f in sorted(folders)]
                self.send(200, entries)

            def resolve(self, repo_id, revision, filename):
                if (snapshot := self.snapshot(repo_id, revision)) is None:
                    return
                files, sha = snapshot
                if filename not in files:
                    return self.error(404, f"Entry {filename} not found", "EntryNotFound")
                content = files[filename]
                headers = {"X-Repo-Commit": sha, "ETag": f'"{_git_oid(content)}"'}
                self.send(200, content, headers, content_type="application/octet-stream")

        return Handler


def _git_oid(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()
