"""A contract fake of Harbor's API v2.0, for tests only: Harbor cannot run here.

This is *not* Harbor. It is a small ``http.server`` on 127.0.0.1 that answers the
endpoints registry/harbor.py uses the way Harbor's published API does
(goharbor/harbor ``api/v2.0/swagger.yaml``: ``swagger: '2.0'``, ``info.version:
'2.0'``, ``basePath: /api/v2.0``; read at commit 00184b0a59406c6243116e2c18022c5f53cdb1fb):

* ``HEAD /projects?project_name=`` (headProject): 200 / 404; 401 when not logged in.
* ``GET /projects?name=`` (listProjects): *fuzzy* name match, only projects the caller
  may see (public ones, and a robot's own).
* ``POST /projects`` (createProject): 201 with ``Location``; 409 if it exists; only
  a system-level robot may create.
* ``GET /projects/{project_name_or_id}/summary`` (getProjectSummary): ``quota``
  only when the caller may read the project's quota.
* ``GET /projects/{project_name}/repositories`` (listRepositories).
* ``GET /projects/{p}/repositories/{r}/artifacts`` (listArtifacts, ``with_tag``),
  ``GET``/``DELETE .../artifacts/{reference}`` (getArtifact/deleteArtifact).
* ``GET /quotas?reference=project&reference_id=`` (listQuotas): system-level
  ``quota: list`` only.

Harbor behaviour copied from its source, not only the swagger: paged lists answer
``X-Total-Count`` and ``Link: <relative url>; rel="prev" , <...>; rel="next"``
(``server/v2.0/handler/base.go`` ``Links``, ``lib/link.go``); page_size defaults to 10
and may be at most 100; a repository name inside a path is URL-decoded twice
(``a%252Fb``, ``unescapePathParams``); wrong credentials make the request anonymous
(``server/middleware/security``), so a private project answers 401 and a HEAD 401;
a project the caller may not reach answers 403 *even when it does not exist*
(``RequireProjectAccess`` runs first); errors are ``{"errors": [{"code", "message"}]}``;
Go's zero time marks "never pulled"; empty fields (``tags``, ``annotations``) are
left out of an artifact.

The data it serves (projects, robots, artifacts) and their JSON shapes are in
tests/support/harbor_server_state.py; tests fill a :class:`HarborState` and serve it with
:func:`running_harbor`.

Left out: the registry itself (``/v2/``), sessions, CSRF, ``q=``/``sort=`` queries,
labels, scans, accessories, users and groups; permissions are a flat set of
``"resource:action"`` strings per project (``"*"`` = every project, ``"/"`` = system).
"""

from __future__ import annotations

import base64
import http.server
import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

from tests.support.harbor_server_state import (  # re-exported: tests import the fake from here
    NEVER,
    PROJECT_ROBOT_ACCESS,
    SYSTEM_ROBOT_ACCESS,
    FakeArtifact,
    FakeProject,
    FakeRepository,
    FakeRobot,
    HarborState,
    artifact_json,
    find_artifact,
    project_json,
    project_robot,
    system_robot,
)

API = "/api/v2.0"
DEFAULT_PAGE_SIZE = 10
MAX_PAGE_SIZE = 100
_PROJECT_NAME = re.compile(r"[a-z0-9]+(?:[._-][a-z0-9]+)*")

__all__ = [
    "NEVER", "PROJECT_ROBOT_ACCESS", "SYSTEM_ROBOT_ACCESS", "FakeArtifact", "FakeProject",
    "FakeRepository", "FakeRobot", "HarborState", "RunningHarbor", "project_robot",
    "running_harbor", "system_robot",
]


class HarborError(Exception):
    """An error answer: HTTP status and Harbor's error code and message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _unauthorized() -> HarborError:
    return HarborError(401, "UNAUTHORIZED", "unauthorized")


def _forbidden(message: str = "forbidden") -> HarborError:
    return HarborError(403, "FORBIDDEN", message)


def _not_found(message: str) -> HarborError:
    return HarborError(404, "NOT_FOUND", message)


@dataclass
class Answer:
    """A response: status, JSON body (None = empty body) and extra headers."""

    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Call:
    """One request as the handlers see it: the logged-in robot (None = anonymous), the
    path below /api/v2.0 split at "/" and decoded once, the query, the raw path, the body."""

    robot: FakeRobot | None
    parts: list[str]
    query: dict[str, str]
    raw: str
    body: bytes


class FakeHarbor:
    """The request handling, separate from the socket server so it reads as the API."""

    def __init__(self, state: HarborState) -> None:
        self.state = state

    def handle(self, method: str, raw: str, authorization: str, body: bytes) -> Answer:
        url = urlsplit(raw)
        query = dict(parse_qsl(url.query))
        robot = self._login(authorization)
        self.state.requests.append((method, raw, robot.name if robot else None))
        if self.state.fail_status:
            # what the nginx in front of Harbor answers while harbor-core is down
            return Answer(self.state.fail_status, "<html><h1>502 Bad Gateway</h1></html>")
        if url.path == "/v2/" and method in ("GET", "HEAD"):
            # The registry API's version check. Real Harbor answers 401 with a Bearer
            # challenge and then accepts the robot's token; this fake accepts the robot's
            # basic credentials directly (the OCI client handles both).
            if robot is None:
                error = {"code": "UNAUTHORIZED", "message": "unauthorized"}
                return Answer(401, {"errors": [error]},
                              {"WWW-Authenticate": 'Basic realm="harbor"'})
            return Answer(200, {})
        if not url.path.startswith(API + "/"):
            raise _not_found(f"no route for {url.path}")
        parts = url.path[len(API) + 1 :].split("/")
        # Harbor paths alternate fixed words and parameters: projects/{p}/repositories/{r}/...
        route = (method, tuple(p if i % 2 == 0 else "*" for i, p in enumerate(parts)))
        handlers = {
            ("HEAD", ("projects",)): self.head_project,
            ("GET", ("projects",)): self.list_projects,
            ("POST", ("projects",)): self.create_project,
            ("GET", ("projects", "*", "summary")): self.project_summary,
            ("GET", ("projects", "*", "repositories")): self.list_repositories,
            ("GET", ("projects", "*", "repositories", "*", "artifacts")): self.list_artifacts,
            ("GET", ("projects", "*", "repositories", "*", "artifacts", "*")): self.get_artifact,
            ("DELETE", ("projects", "*", "repositories", "*", "artifacts", "*")): (
                self.delete_artifact
            ),
            ("GET", ("quotas",)): self.list_quotas,
        }
        handler = handlers.get(route)
        if handler is None:
            raise _not_found(f"no route for {method} {url.path}")
        return handler(Call(robot, [unquote(p) for p in parts], query, raw, body))

    # --- auth ---------------------------------------------------------------------------

    def _login(self, authorization: str) -> FakeRobot | None:
        # Like Harbor's security middleware: a failed login is no login (anonymous).
        if not authorization.startswith("Basic "):
            return None
        try:
            name, _, secret = base64.b64decode(authorization[6:]).decode().partition(":")
        except ValueError:
            return None
        robot = self.state.robots.get(name)
        if robot is None or robot.secret != secret or robot.disabled:
            return None
        return robot

    def _project_access(
        self, robot: FakeRobot | None, name: str, permission: str
    ) -> FakeProject:
        # handler/base.go RequireProjectAccess: a missing project fails the check too.
        project = self.state.projects.get(name) or self._by_id(name)
        if project is not None:
            read_only = permission.split(":")[1] in ("read", "list", "pull")
            if (project.public and read_only) or (robot and robot.can(project.name, permission)):
                return project
        if robot is None:
            raise _unauthorized()
        raise _forbidden()

    def _by_id(self, value: str) -> FakeProject | None:
        for project in self.state.projects.values():
            if str(project.project_id) == value:
                return project
        return None

    # --- projects -----------------------------------------------------------------------

    def head_project(self, call: Call) -> Answer:
        if call.robot is None:  # project.go HeadProject: RequireAuthenticated
            raise _unauthorized()
        name = call.query.get("project_name", "")
        if name not in self.state.projects:
            raise _not_found(f"project {name} not found")
        return Answer(200)

    def list_projects(self, call: Call) -> Answer:
        robot, name = call.robot, call.query.get("name", "")
        visible = [
            p
            for p in sorted(self.state.projects.values(), key=lambda p: p.project_id)
            if (p.public or (robot and (p.name in robot.permissions or "*" in robot.permissions)))
            and name in p.name  # ListProjects: q.FuzzyMatchValue on name
        ]
        return self._page([project_json(p) for p in visible], call)

    def create_project(self, call: Call) -> Answer:
        robot = call.robot
        if robot is None:
            raise _unauthorized()
        if not robot.system:
            raise _forbidden("Only system level robot can create project")
        if not robot.can("/", "project:create"):
            raise _forbidden()
        request = json.loads(call.body or b"{}")
        name = str(request.get("project_name", ""))
        if not _PROJECT_NAME.fullmatch(name):
            raise HarborError(400, "BAD_REQUEST", f"invalid project name {name!r}")
        if name in self.state.projects:
            raise HarborError(409, "CONFLICT", f"The project named {name} already exists")
        public = str((request.get("metadata") or {}).get("public", "false")) == "true"
        # A robot is no system admin, so Harbor gives the project the default quota.
        project = self.state.add_project(
            name, public=public, hard_bytes=self.state.default_storage_limit
        )
        return Answer(201, headers={"Location": f"{API}/projects/{project.project_id}"})

    def project_summary(self, call: Call) -> Answer:
        project = self._project_access(call.robot, call.parts[1], "project:read")
        summary: dict[str, Any] = {"repo_count": len(project.repositories), "chart_count": 0}
        robot = call.robot
        if robot and robot.can(project.name, "quota:read") and project.hard_bytes is not None:
            summary["quota"] = {
                "hard": {"storage": project.hard_bytes},
                "used": {"storage": project.used_bytes},
            }
        return Answer(200, summary)

    # --- repositories and artifacts -----------------------------------------------------

    def list_repositories(self, call: Call) -> Answer:
        project = self._project_access(call.robot, call.parts[1], "repository:list")
        items = [
            {
                "id": repo.id,
                "project_id": project.project_id,
                "name": repo.name,
                "description": "",
                "artifact_count": len(repo.artifacts),
                "pull_count": repo.pull_count,
                "creation_time": "2026-01-01T00:00:00.000Z",
                "update_time": "2026-01-02T00:00:00.000Z",
            }
            for repo in sorted(project.repositories.values(), key=lambda r: r.name)
        ]
        return self._page(items, call)

    def list_artifacts(self, call: Call) -> Answer:
        project, repo = self._repository(call, "artifact:list")
        with_tag = call.query.get("with_tag", "true") == "true"
        items = [artifact_json(project, repo, a, with_tag) for a in repo.artifacts]
        return self._page(items, call)

    def get_artifact(self, call: Call) -> Answer:
        project, repo = self._repository(call, "artifact:read")
        artifact = self._artifact(repo, call.parts[5])
        with_tag = call.query.get("with_tag", "true") == "true"
        return Answer(200, artifact_json(project, repo, artifact, with_tag))

    def delete_artifact(self, call: Call) -> Answer:
        project, repo = self._repository(call, "artifact:delete")
        artifact = self._artifact(repo, call.parts[5])
        if artifact.immutable:
            raise HarborError(
                412, "PRECONDITION", "the operation is prohibited by immutable tag rules"
            )
        repo.artifacts.remove(artifact)
        project.used_bytes -= artifact.size
        return Answer(200)

    def _repository(self, call: Call, permission: str) -> tuple[FakeProject, FakeRepository]:
        project = self._project_access(call.robot, call.parts[1], permission)
        name = call.parts[3]  # decoded once with the path, as Go's router does
        if "/" in name:
            # "a%2Fb" decodes to "a/b" here: in Harbor the path then matches no route.
            raise _not_found(f"no route for repository {name!r} (Harbor expects a%252Fb)")
        name = unquote(name)  # unescapePathParams: the second decoding
        repo = project.repositories.get(f"{project.name}/{name}")
        if repo is None:
            raise _not_found(f"repository {project.name}/{name} not found")
        return project, repo

    @staticmethod
    def _artifact(repo: FakeRepository, reference: str) -> FakeArtifact:
        artifact = find_artifact(repo, reference)
        if artifact is None:
            raise _not_found(f"artifact {repo.name}:{reference} not found")
        return artifact

    # --- quotas -------------------------------------------------------------------------

    def list_quotas(self, call: Call) -> Answer:
        robot, query = call.robot, call.query
        if robot is None:  # quota.go ListQuotas: RequireSystemAccess(list, quota)
            raise _unauthorized()
        if not robot.can("/", "quota:list"):
            raise _forbidden()
        items = [
            {
                "id": project.project_id + 1000,
                "ref": {"id": project.project_id, "name": project.name, "owner_name": "admin"},
                "hard": {"storage": project.hard_bytes},
                "used": {"storage": project.used_bytes},
                "creation_time": "2026-01-01T00:00:00.000Z",
                "update_time": "2026-01-02T00:00:00.000Z",
            }
            for project in self.state.projects.values()
            if project.hard_bytes is not None
            and query.get("reference", "project") == "project"
            and query.get("reference_id", str(project.project_id)) == str(project.project_id)
        ]
        return self._page(items, call)

    # --- paging -------------------------------------------------------------------------

    @staticmethod
    def _page(items: list[Any], call: Call) -> Answer:
        """One page, with X-Total-Count and Link as handler/base.go ``Links`` builds them."""
        try:
            page = int(call.query.get("page", "1"))
            size = int(call.query.get("page_size", str(DEFAULT_PAGE_SIZE)))
        except ValueError as e:
            raise HarborError(400, "BAD_REQUEST", str(e)) from e
        if page < 1 or not 1 <= size <= MAX_PAGE_SIZE:
            raise HarborError(
                400, "BAD_REQUEST", f"page_size in query should be at most {MAX_PAGE_SIZE}"
            )
        total = len(items)
        url = urlsplit(call.raw)
        links = []
        for rel, number, wanted in (
            ("prev", page - 1, page > 1 and (page - 1) * size < total),
            ("next", page + 1, size * page < total),
        ):
            if wanted:
                query = {**dict(parse_qsl(url.query)), "page": str(number), "page_size": str(size)}
                # Harbor un-escapes the query it puts in the link (url.QueryUnescape)
                links.append(f'<{url.path}?{unquote(urlencode(query))}>; rel="{rel}"')
        headers = {"X-Total-Count": str(total)}
        if links:
            headers["Link"] = " , ".join(links)
        # go-swagger writes a nil list payload as [], not null
        return Answer(200, items[(page - 1) * size : page * size], headers)


@dataclass(frozen=True)
class RunningHarbor:
    url: str
    host: str
    state: HarborState


@contextmanager
def running_harbor(state: HarborState | None = None) -> Iterator[RunningHarbor]:
    """Serve the fake on a free 127.0.0.1 port until the block ends."""
    harbor = FakeHarbor(state or HarborState())

    class Handler(http.server.BaseHTTPRequestHandler):
        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            with harbor.state.lock:
                try:
                    answer = harbor.handle(
                        self.command, self.path, self.headers.get("Authorization", ""), body
                    )
                except HarborError as e:
                    answer = Answer(e.status, {"errors": [{"code": e.code, "message": e.message}]})
            if isinstance(answer.body, str):
                data, kind = answer.body.encode(), "text/html"
            elif answer.body is None:
                data, kind = b"", "application/json"
            else:
                data, kind = json.dumps(answer.body).encode(), "application/json"
            self.send_response(answer.status)
            self.send_header("Content-Type", kind)
            self.send_header("X-Request-Id", "fake-harbor")
            for key, value in answer.headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        do_GET = do_HEAD = do_POST = do_DELETE = _serve  # noqa: N815 - http.server's names

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    port = int(server.server_address[1])
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield RunningHarbor(f"http://127.0.0.1:{port}", f"127.0.0.1:{port}", harbor.state)
    finally:
        server.shutdown()
        server.server_close()
