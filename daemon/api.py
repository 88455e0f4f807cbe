"""The Docker Engine API subset cryo serves: `DockerApi`, the router.

Every request is matched, after an optional `/v1.NN` prefix, against the route table
below and handed to `daemon.backend.Backend`. What the docker CLI needs to create,
start, inspect, list, stop, kill, pause, remove, wait for and read the logs of a
container, and — the reason cryo exists — `docker checkpoint create|ls|rm` and
`docker start --checkpoint`, the experimental routes of Docker 17:

    POST   /containers/{name}/checkpoints        {"CheckpointID","CheckpointDir","Exit"} → 201
    GET    /containers/{name}/checkpoints?dir=   → 200 [{"Name": …}]
    DELETE /containers/{name}/checkpoints/{id}?dir= → 204
    POST   /containers/{name}/start?checkpoint=<id>&checkpoint-dir=<dir>

`/_ping` answers with `API-Version` and `Docker-Experimental: true`, without which the
CLI hides its `checkpoint` commands.

Owns: routes, query and body parsing, the JSON shapes Docker clients read.
Must not: decide what an operation means (`daemon.backend`), or speak HTTP/1.1 framing
(`daemon.http`).
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from daemon.backend import WAIT_CONDITIONS, Backend, DaemonError, DaemonEvent, Image
from daemon.http import HttpError, Request, Response
from daemon.store import ContainerRecord

API_VERSION = "1.41"
MIN_API_VERSION = "1.24"
CRYO_VERSION = "0.1.0"
_VERSION_PREFIX = re.compile(r"^/v(\d+)\.(\d+)(/.*)$")

Route = Callable[[Request, dict[str, str]], Awaitable[Response]]


def _version_tuple(text: str) -> tuple[int, int]:
    major, minor = text.split(".")
    return int(major), int(minor)


@dataclass(frozen=True)
class _Route:
    method: str
    pattern: re.Pattern[str]
    handle: Route


class DockerApi:
    """Requests → backend calls → Docker-shaped responses."""

    def __init__(self, backend: Backend, *, runtime_version: str = "") -> None:
        self.backend = backend
        self.runtime_version = runtime_version
        self.default_headers = [
            ("Api-Version", API_VERSION),
            ("Docker-Experimental", "true"),
            ("Ostype", "linux"),
            ("Server", f"cryo/{CRYO_VERSION} (linux)"),
        ]
        self._routes: list[_Route] = []
        add = self._add
        add("GET", "/_ping", self.ping)
        add("HEAD", "/_ping", self.ping)
        add("GET", "/version", self.version)
        add("GET", "/info", self.info)
        add("GET", "/events", self.events)
        add("GET", "/images/json", self.image_list)
        add("GET", "/images/{name:.+}/json", self.image_inspect)
        add("POST", "/images/create", self.image_pull)
        add("POST", "/containers/create", self.container_create)
        add("GET", "/containers/json", self.container_list)
        add("GET", "/containers/{name}/json", self.container_inspect)
        add("POST", "/containers/{name}/start", self.container_start)
        add("POST", "/containers/{name}/stop", self.container_stop)
        add("POST", "/containers/{name}/restart", self.container_restart)
        add("POST", "/containers/{name}/kill", self.container_kill)
        add("POST", "/containers/{name}/pause", self.container_pause)
        add("POST", "/containers/{name}/unpause", self.container_unpause)
        add("POST", "/containers/{name}/wait", self.container_wait)
        add("POST", "/containers/{name}/attach", self.container_attach)
        add("GET", "/containers/{name}/logs", self.container_logs)
        add("DELETE", "/containers/{name}", self.container_remove)
        add("POST", "/containers/{name}/checkpoints", self.checkpoint_create)
        add("GET", "/containers/{name}/checkpoints", self.checkpoint_list)
        add("DELETE", "/containers/{name}/checkpoints/{checkpoint}", self.checkpoint_delete)

    def _add(self, method: str, template: str, handle: Route) -> None:
        regex = re.sub(
            r"\{(\w+)(?::([^}]+))?\}",
            lambda m: f"(?P<{m.group(1)}>{m.group(2) or '[^/]+'})",
            template,
        )
        self._routes.append(_Route(method, re.compile(f"^{regex}$"), handle))

    async def __call__(self, request: Request) -> Response:
        """The `daemon.http.Handler`: route, run, and turn `DaemonError` into HTTP."""
        path = request.path
        versioned = _VERSION_PREFIX.match(path)
        if versioned is not None:
            asked = (int(versioned.group(1)), int(versioned.group(2)))
            if asked > _version_tuple(API_VERSION):
                raise HttpError(
                    400,
                    f"client version {asked[0]}.{asked[1]} is too new. Maximum supported "
                    f"API version is {API_VERSION}",
                )
            if asked < _version_tuple(MIN_API_VERSION):
                raise HttpError(
                    400,
                    f"client version {asked[0]}.{asked[1]} is too old. Minimum supported "
                    f"API version is {MIN_API_VERSION}, please upgrade your client to a "
                    "newer version",
                )
            path = versioned.group(3)
        allowed: list[str] = []
        for route in self._routes:
            match = route.pattern.match(path)
            if match is None:
                continue
            if route.method != request.method:
                allowed.append(route.method)
                continue
            try:
                return await route.handle(request, match.groupdict())
            except DaemonError as exc:
                raise HttpError(exc.status, exc.message) from None
        if allowed:
            raise HttpError(
                405,
                f"method {request.method} not allowed on {path}",
                headers=[("Allow", ", ".join(sorted(set(allowed))))],
            )
        raise HttpError(404, f"page not found: {request.method} {path}")

    # -- system -----------------------------------------------------------------------

    async def ping(self, request: Request, _: dict[str, str]) -> Response:
        headers = [("Cache-Control", "no-cache, no-store, must-revalidate"), ("Pragma", "no-cache")]
        return Response(200, b"OK", "text/plain; charset=utf-8", headers)

    async def version(self, request: Request, _: dict[str, str]) -> Response:
        uname = platform.uname()
        details = {
            "ApiVersion": API_VERSION,
            "MinAPIVersion": MIN_API_VERSION,
            "Os": "linux",
            "Arch": _arch(),
            "KernelVersion": uname.release,
            "Experimental": "true",
            "GitCommit": "",
            "GoVersion": f"python{platform.python_version()}",
            "BuildTime": "",
        }
        components = [{"Name": "Engine", "Version": CRYO_VERSION, "Details": details}]
        if self.runtime_version:
            components.append(
                {
                    "Name": "cryo-runtime (containerd 0.2 API)",
                    "Version": self.runtime_version,
                    "Details": {"GitCommit": ""},
                }
            )
        body = {
            "Platform": {"Name": "cryo"},
            "Components": components,
            "Version": CRYO_VERSION,
            "ApiVersion": API_VERSION,
            "MinAPIVersion": MIN_API_VERSION,
            "GitCommit": "",
            "GoVersion": details["GoVersion"],
            "Os": "linux",
            "Arch": details["Arch"],
            "KernelVersion": uname.release,
            "Experimental": True,
            "BuildTime": "",
        }
        return Response.json(body)

    async def info(self, request: Request, _: dict[str, str]) -> Response:
        records = self.backend.store.all()
        running = sum(r.state.status == "running" for r in records)
        paused = sum(r.state.status == "paused" for r in records)
        body = {
            "ID": "cryo",
            "Containers": len(records),
            "ContainersRunning": running,
            "ContainersPaused": paused,
            "ContainersStopped": len(records) - running - paused,
            "Images": len(self.backend.images),
            "Driver": "vfs",
            "DockerRootDir": str(self.backend.store.root),
            "ExperimentalBuild": True,
            "ServerVersion": CRYO_VERSION,
            "OSType": "linux",
            "OperatingSystem": _os_name(),
            "Architecture": _arch(),
            "KernelVersion": platform.uname().release,
            "NCPU": os.cpu_count() or 1,
            "MemTotal": _mem_total(),
            "Name": platform.node(),
            "Runtimes": {
                "runc": {"path": self.backend.runc or "runc"},
                "process": {"path": "host"},
            },
            "DefaultRuntime": "runc",
            "LoggingDriver": "json-file",
            "CgroupDriver": "none",
            "Warnings": [],
        }
        return Response.json(body)

    async def events(self, request: Request, _: dict[str, str]) -> Response:
        since = _timestamp_ns(request.query_value("since"), "since")
        until = _timestamp_ns(request.query_value("until"), "until")
        accept = _event_filter(request.query_value("filters"))
        stream = self.backend.event_stream(since, until, accept)

        async def lines() -> AsyncIterator[bytes]:
            async for event in stream:
                yield (json.dumps(event.to_json()) + "\n").encode()

        return Response(200, content_type="application/json", stream=lines())

    # -- images -----------------------------------------------------------------------

    async def image_list(self, request: Request, _: dict[str, str]) -> Response:
        return Response.json([_image_summary(image) for image in self.backend.images.values()])

    async def image_inspect(self, request: Request, params: dict[str, str]) -> Response:
        image = self.backend.image(params["name"])
        return Response.json(
            {
                "Id": image.id,
                "RepoTags": [image.reference],
                "Created": image.created,
                "Size": image.size,
                "Os": "linux",
                "Architecture": _arch(),
                "Config": {"Cmd": list(image.default_cmd), "Env": None},
            }
        )

    async def image_pull(self, request: Request, _: dict[str, str]) -> Response:
        wanted = request.query_value("fromImage") or ""
        raise HttpError(
            404,
            f"pull access denied for {wanted}: cryo has no registry; its images are built in "
            f"({', '.join(self.backend.images) or 'none: busybox-static is not installed'})",
        )

    # -- containers -------------------------------------------------------------------

    async def container_create(self, request: Request, _: dict[str, str]) -> Response:
        record = await self.backend.create(request.query_value("name"), request.json())
        return Response.json({"Id": record.id, "Warnings": []}, status=201)

    async def container_list(self, request: Request, _: dict[str, str]) -> Response:
        show_all = _flag(request.query_value("all"))
        accept = _container_filter(request.query_value("filters"))
        records = [
            r for r in self.backend.store.all() if (show_all or r.state.running) and accept(r)
        ]
        limit = request.query_value("limit")
        if limit and limit.lstrip("-").isdigit() and int(limit) > 0:
            records = records[: int(limit)]
        return Response.json([_container_summary(r) for r in records])

    async def container_inspect(self, request: Request, params: dict[str, str]) -> Response:
        record = self.backend.get(params["name"])
        return Response.json(self._container_json(record))

    async def container_start(self, request: Request, params: dict[str, str]) -> Response:
        started = await self.backend.start(
            params["name"],
            checkpoint=request.query_value("checkpoint") or None,
            checkpoint_dir=request.query_value("checkpoint-dir") or None,
        )
        return Response.empty(204 if started else 304)

    async def container_stop(self, request: Request, params: dict[str, str]) -> Response:
        stopped = await self.backend.stop(params["name"], _seconds(request))
        return Response.empty(204 if stopped else 304)

    async def container_restart(self, request: Request, params: dict[str, str]) -> Response:
        await self.backend.stop(params["name"], _seconds(request))
        await self.backend.start(params["name"])
        return Response.empty(204)

    async def container_kill(self, request: Request, params: dict[str, str]) -> Response:
        await self.backend.kill(params["name"], request.query_value("signal"))
        return Response.empty(204)

    async def container_pause(self, request: Request, params: dict[str, str]) -> Response:
        await self.backend.pause(params["name"])
        return Response.empty(204)

    async def container_unpause(self, request: Request, params: dict[str, str]) -> Response:
        await self.backend.unpause(params["name"])
        return Response.empty(204)

    async def container_wait(self, request: Request, params: dict[str, str]) -> Response:
        condition = request.query_value("condition") or "not-running"
        record = self.backend.get(params["name"])
        if condition not in WAIT_CONDITIONS:
            raise HttpError(400, f"invalid condition: {condition!r}")

        async def answer() -> AsyncIterator[bytes]:
            # Headers go out at once (the CLI waits for them before it starts the
            # container it is waiting for); the body when the container stops.
            code = await self.backend.wait(record.id, condition=condition)
            yield (json.dumps({"StatusCode": code, "Error": None}) + "\n").encode()

        return Response(200, content_type="application/json", stream=answer())

    async def container_attach(self, request: Request, params: dict[str, str]) -> Response:
        if _flag(request.query_value("stdin")):
            raise HttpError(400, "cryo containers take no stdin: attach without -i")
        if _flag(request.query_value("logs")):
            raise HttpError(400, "attach with logs is not supported: use docker logs")
        stream = self.backend.attach(
            params["name"],
            stdout=_flag(request.query_value("stdout")),
            stderr=_flag(request.query_value("stderr")),
        )
        if (request.header("upgrade") or "").lower() != "tcp":
            return Response(200, content_type="application/vnd.docker.raw-stream", stream=stream)
        return Response.upgraded("tcp", stream, "application/vnd.docker.raw-stream")

    async def container_logs(self, request: Request, params: dict[str, str]) -> Response:
        frames = self.backend.logs(
            params["name"],
            stdout=_flag(request.query_value("stdout")),
            stderr=_flag(request.query_value("stderr")),
            follow=_flag(request.query_value("follow")),
            tail=request.query_value("tail"),
        )
        return Response(200, content_type="application/vnd.docker.raw-stream", stream=frames)

    async def container_remove(self, request: Request, params: dict[str, str]) -> Response:
        await self.backend.remove(params["name"], force=_flag(request.query_value("force")))
        return Response.empty(204)

    # -- checkpoints ------------------------------------------------------------------

    async def checkpoint_create(self, request: Request, params: dict[str, str]) -> Response:
        body = request.json()
        if not isinstance(body, dict):
            raise HttpError(400, "a checkpoint needs a JSON body with CheckpointID")
        checkpoint_id = body.get("CheckpointID")
        directory = body.get("CheckpointDir") or None
        exit_after = body.get("Exit", True)
        if not isinstance(checkpoint_id, str):
            raise HttpError(400, "CheckpointID must be a string")
        if directory is not None and not isinstance(directory, str):
            raise HttpError(400, "CheckpointDir must be a string")
        if not isinstance(exit_after, bool):
            raise HttpError(400, "Exit must be true or false")
        await self.backend.checkpoint_create(
            params["name"], checkpoint_id, directory, exit=exit_after
        )
        return Response.empty(201)

    async def checkpoint_list(self, request: Request, params: dict[str, str]) -> Response:
        names = await self.backend.checkpoint_list(
            params["name"], request.query_value("dir") or None
        )
        return Response.json([{"Name": name} for name in names])

    async def checkpoint_delete(self, request: Request, params: dict[str, str]) -> Response:
        await self.backend.checkpoint_delete(
            params["name"], params["checkpoint"], request.query_value("dir") or None
        )
        return Response.empty(204)

    # -- shapes -----------------------------------------------------------------------

    def _container_json(self, record: ContainerRecord) -> dict[str, Any]:
        state = record.state
        return {
            "Id": record.id,
            "Created": record.created,
            "Path": record.args[0],
            "Args": record.args[1:],
            "State": {
                "Status": state.status,
                "Running": state.running,
                "Paused": state.status == "paused",
                "Restarting": False,
                "OOMKilled": False,
                "Dead": state.status == "dead",
                "Pid": state.pid,
                "ExitCode": state.exit_code,
                "Error": state.error,
                "StartedAt": state.started_at,
                "FinishedAt": state.finished_at,
            },
            "Image": record.image_id,
            "ResolvConfPath": "",
            "HostnamePath": "",
            "HostsPath": "",
            "LogPath": str(self.backend.log_path(record, "stdout")),
            "Name": "/" + record.name,
            "RestartCount": 0,
            "Driver": "vfs",
            "Platform": "linux",
            "MountLabel": "",
            "ProcessLabel": "",
            "AppArmorProfile": "",
            "ExecIDs": None,
            "HostConfig": {
                "Runtime": record.runtime,
                "NetworkMode": "none",
                "AutoRemove": record.auto_remove,
                "RestartPolicy": {"Name": "no", "MaximumRetryCount": 0},
                "LogConfig": {"Type": "json-file", "Config": {}},
            },
            "GraphDriver": {"Name": "vfs", "Data": None},
            "Mounts": [],
            "Config": {
                "Hostname": record.hostname,
                "Domainname": "",
                "User": "",
                "AttachStdin": False,
                "AttachStdout": False,
                "AttachStderr": False,
                "Tty": False,
                "OpenStdin": False,
                "StdinOnce": False,
                "Env": record.env,
                "Cmd": record.args,
                "Image": record.image,
                "Volumes": None,
                "WorkingDir": record.cwd,
                "Entrypoint": None,
                "OnBuild": None,
                "Labels": record.labels,
            },
            "NetworkSettings": {"Networks": {}, "Ports": {}},
            "Cryo": {
                "Bundle": str(self.backend.bundle(record)),
                "CheckpointDir": self.backend.checkpoint_dir(record, None),
                "ExitedByCheckpoint": state.checkpointed,
            },
        }


# -- small parsers and shapes -----------------------------------------------------------


def _flag(value: str | None) -> bool:
    return value is not None and value.lower() in ("1", "true", "yes")


def _seconds(request: Request) -> float | None:
    text = request.query_value("t")
    if text is None or text == "":
        return None
    try:
        return float(text)
    except ValueError:
        raise HttpError(400, f"invalid value for t: {text!r}") from None


def _timestamp_ns(text: str | None, what: str) -> int | None:
    if not text:
        return None
    try:
        seconds, _, fraction = text.partition(".")
        return int(seconds) * 1_000_000_000 + int((fraction + "000000000")[:9])
    except ValueError:
        raise HttpError(
            400, f"invalid value for {what}: {text!r} (seconds since the epoch)"
        ) from None


def _event_filter(text: str | None) -> Callable[[DaemonEvent], bool]:
    wanted = _filter_values(text, ("type", "container", "event"))

    def accept(event: DaemonEvent) -> bool:
        if "type" in wanted and "container" not in wanted["type"]:
            return False
        if "event" in wanted and event.action not in wanted["event"]:
            return False
        if "container" in wanted:
            c = event.container
            if not wanted["container"] & {c.id, c.name, c.id[:12]}:
                return False
        return True

    return accept


CONTAINER_FILTERS = ("id", "name", "status", "label", "exited")
CONTAINER_STATUSES = frozenset(
    {"created", "running", "paused", "exited", "dead", "restarting", "removing"}
)


def _filter_values(text: str | None, allowed: tuple[str, ...]) -> dict[str, set[str]]:
    """Docker's `filters` query value: {"key": ["v", …]} (or the older {"key": {"v": true}})."""
    if not text:
        return {}
    try:
        raw = json.loads(text)
    except ValueError:
        raise HttpError(400, f"invalid filters: {text!r}") from None
    if not isinstance(raw, dict):
        raise HttpError(400, f"invalid filters: {text!r}")
    wanted: dict[str, set[str]] = {}
    for key, values in raw.items():
        if key not in allowed:
            raise HttpError(400, f"invalid filter '{key}'")
        if isinstance(values, dict):
            values = list(values)
        if not isinstance(values, list):
            raise HttpError(400, f"invalid filter values for '{key}'")
        wanted[key] = {str(v) for v in values}
    return wanted


def _container_filter(text: str | None) -> Callable[[ContainerRecord], bool]:
    """`docker ps -f`: values of one key are alternatives; different keys all apply."""
    wanted = _filter_values(text, CONTAINER_FILTERS)
    statuses = wanted.get("status", set())
    unknown = statuses - CONTAINER_STATUSES
    if unknown:
        raise HttpError(400, f"invalid filter 'status={sorted(unknown)[0]}'")
    try:  # Docker matches names as regular expressions
        names = [re.compile(v.removeprefix("/")) for v in wanted.get("name", ())]
    except re.error as exc:
        raise HttpError(400, f"invalid filter 'name': {exc}") from None
    exited = wanted.get("exited")

    def labelled(record: ContainerRecord, spec: str) -> bool:
        key, has_value, value = spec.partition("=")
        return key in record.labels and (not has_value or record.labels[key] == value)

    def accept(record: ContainerRecord) -> bool:
        if "id" in wanted and not any(record.id.startswith(v) for v in wanted["id"]):
            return False
        if names and not any(pattern.search(record.name) for pattern in names):
            return False
        if statuses and record.state.status not in statuses:
            return False
        if "label" in wanted and not all(labelled(record, v) for v in wanted["label"]):
            return False
        return not exited or (
            record.state.status == "exited" and str(record.state.exit_code) in exited
        )

    return accept


def _container_summary(record: ContainerRecord) -> dict[str, Any]:
    return {
        "Id": record.id,
        "Names": ["/" + record.name],
        "Image": record.image,
        "ImageID": record.image_id,
        "Command": " ".join(record.args),
        "Created": int(_parse_time(record.created)),
        "Ports": [],
        "Labels": record.labels,
        "State": record.state.status,
        "Status": _status_text(record),
        "HostConfig": {"NetworkMode": "none"},
        "NetworkSettings": {"Networks": {}},
        "Mounts": [],
    }


def _image_summary(image: Image) -> dict[str, Any]:
    return {
        "Id": image.id,
        "ParentId": "",
        "RepoTags": [image.reference],
        "RepoDigests": [],
        "Created": int(_parse_time(image.created)),
        "Size": image.size,
        "SharedSize": -1,
        "Labels": {},
        "Containers": -1,
    }


def _parse_time(text: str) -> float:
    for pattern in ("%Y-%m-%dT%H:%M:%S.%fZ", "%Y-%m-%dT%H:%M:%SZ"):
        try:
            parsed = datetime.datetime.strptime(text, pattern)
        except ValueError:
            continue
        return parsed.replace(tzinfo=datetime.UTC).timestamp()
    return 0.0


def _ago(seconds: float) -> str:
    if seconds < 1:
        return "Less than a second"
    if seconds < 60:
        return f"{int(seconds)} seconds"
    if seconds < 3600:
        minutes = int(seconds // 60)
        return "About a minute" if minutes == 1 else f"{minutes} minutes"
    hours = int(seconds // 3600)
    return "About an hour" if hours == 1 else f"{hours} hours"


def _status_text(record: ContainerRecord) -> str:
    state = record.state
    now = time.time()
    if state.status == "created":
        return "Created"
    if state.running:
        text = f"Up {_ago(now - _parse_time(state.started_at))}"
        return text + " (Paused)" if state.status == "paused" else text
    return f"Exited ({state.exit_code}) {_ago(now - _parse_time(state.finished_at))} ago"


def _arch() -> str:
    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


def _os_name() -> str:
    try:
        with open("/etc/os-release") as f:
            for line in f:
                if line.startswith("PRETTY_NAME="):
                    return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return "Linux"


def _mem_total() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0
