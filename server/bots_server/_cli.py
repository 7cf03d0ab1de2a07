"""The `bots` command line: serve, health check, pool management, export and import.

Exit codes: 0 success, 1 server or connection error (or not SERVING for
``check``), 2 bad arguments or input files, 130 interrupted.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import math
import os
import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

import grpc
from bots_client import (
    BotsError,
    PoolConfig,
    PoolHeader,
    PoolInfo,
    SelectorClient,
    Task,
    TaskPosterior,
)

from bots_server._embed import add_embed_command
from bots_server._files import (
    CliError,
    UsageError,
    header_to_json,
    none_if_nan,
    posterior_to_json,
    read_export,
    read_tasks,
)
from bots_server._progress import Progress
from bots_server._settings import ServerSettings

DEFAULT_TARGET = "127.0.0.1:50051"
DEFAULT_TIMEOUT_S = 10.0
# Export and import stream a whole pool under one deadline.
DEFAULT_STREAM_TIMEOUT_S = 3600.0
PROGRESS_MIN_TASKS = 10_000

# Texts gRPC uses when no connection could be made (as opposed to a server
# that answered UNAVAILABLE, e.g. because its store is down).
_CONNECT_FAILURES = (
    "failed to connect",
    "connection refused",
    "connect failed",
    "dns resolution failed",
    "name resolution",
    "socket closed",
    "connection reset",
    "empty address list",
)


# --- output helpers ------------------------------------------------------------


def pool_to_json(info: PoolInfo) -> dict[str, Any]:
    """A PoolInfo as a JSON-ready dict (NaN as null)."""
    out = dataclasses.asdict(info)
    out["config"] = info.config.to_dict()
    out["runs"] = [
        {k: none_if_nan(v) if isinstance(v, float) else v for k, v in run.items()}
        for run in out["runs"]
    ]
    return {k: none_if_nan(v) if isinstance(v, float) else v for k, v in out.items()}


def _fmt(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.4g}"


def format_pool(info: PoolInfo) -> str:
    """A human-readable description of a pool."""
    config = " ".join(f"{k}={v}" for k, v in info.config.to_dict().items())
    rows = [
        ("pool", info.name),
        ("tasks", f"{info.task_count} ({info.tasks_with_references} with reference rates)"),
        ("steps applied", str(info.steps_applied)),
        (
            "selections",
            f"{info.selections_opened} opened, {info.open_selections} open, "
            f"{info.selections_expired} expired",
        ),
        (
            "ETR",
            f"last {_fmt(info.last_effective_task_ratio)}, "
            f"rolling {_fmt(info.rolling_effective_task_ratio)}",
        ),
        ("capability", _fmt(info.capability)),
        ("mean posterior", _fmt(info.mean_posterior)),
        ("config", config),
    ]
    lines = [f"{k:<15} {v}" for k, v in rows]
    if info.runs:
        lines.append(f"runs ({len(info.runs)})")
        table = [("  RUN", "STEPS", "CAPABILITY", "ETR_LAST", "ETR_ROLLING", "ACTIVE", "LAST_SEEN")]
        for r in info.runs:
            seen = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.last_seen))
            table.append(
                (
                    f"  {r.run_id or '(no run id)'}",
                    str(r.steps),
                    _fmt(r.capability),
                    _fmt(r.last_effective_task_ratio),
                    _fmt(r.rolling_effective_task_ratio),
                    "yes" if r.active else "no",
                    seen,
                )
            )
        widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
        lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in table]
    return "\n".join(lines)


def format_pool_table(pools: Sequence[PoolInfo]) -> str:
    """One line per pool, with a header row."""
    rows = [("NAME", "TASKS", "STEPS", "OPEN", "MODE", "ROLLING_ETR")]
    for p in pools:
        mode = p.config.mode.value if p.config.mode is not None else "-"
        rows.append(
            (
                p.name,
                str(p.task_count),
                str(p.steps_applied),
                str(p.open_selections),
                mode,
                _fmt(p.rolling_effective_task_ratio),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, allow_nan=False))


# --- commands ------------------------------------------------------------------


# gRPC target schemes that do not take the host:port form (e.g. dns:///host:port).
_TARGET_SCHEMES = ("dns:", "ipv4:", "ipv6:", "unix:", "unix-abstract:", "vsock:")
_EXAMPLE_TARGET = "127.0.0.1:50051"


def check_target(target: str) -> str:
    """``target`` if gRPC can use it as written; a UsageError saying what is expected if not."""
    url = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://(.*)$", target)
    if url and url.group(1).lower() in ("http", "https", "grpc", "grpcs"):
        bare = url.group(2).split("/", 1)[0] or _EXAMPLE_TARGET
        tls = " (and --ca-file for TLS)" if url.group(1).lower() in ("https", "grpcs") else ""
        raise UsageError(f"--target expects host:port, not a URL: use --target {bare}{tls}")
    if target.startswith(_TARGET_SCHEMES):
        return target
    host, sep, port = target.rpartition(":")
    if target.startswith("[") and not host.endswith("]"):  # [::1] without a port
        sep = ""
    if not sep or not host or not port.isdigit():
        raise UsageError(
            f"--target {target!r} has no port: expected host:port, e.g. "
            f"{(target.rstrip(':') or '127.0.0.1')}:50051"
        )
    return target


def _client(args: argparse.Namespace) -> SelectorClient:
    return SelectorClient(
        check_target(args.target),
        timeout=args.timeout or DEFAULT_TIMEOUT_S,
        token=_token(args),
        root_certificates=_root_certificates(args),
    )


def _token(args: argparse.Namespace) -> str | None:
    return getattr(args, "token", None) or os.environ.get("BOTS_TOKEN") or None


def _root_certificates(args: argparse.Namespace) -> bytes | None:
    path = getattr(args, "ca_file", None) or os.environ.get("BOTS_CA_FILE")
    if not path:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read CA file {path}: {exc.strerror}") from None


def _progress(args: argparse.Namespace, label: str, total: int | None) -> Progress:
    # On a terminal by default, but not for work too small to watch.
    small = total is not None and total < PROGRESS_MIN_TASKS
    return Progress(label, total, enabled=True if args.progress else (False if small else None))


def cmd_serve(args: argparse.Namespace) -> int:
    overrides = {f.name: getattr(args, f"serve_{f.name}") for f in _settings_fields()}
    try:
        settings = ServerSettings.from_env(**overrides)
    except (ValueError, TypeError) as exc:
        raise UsageError(str(exc)) from None
    from bots_server._app import serve  # the server stack is only needed here

    return serve(settings)


def cmd_recover(args: argparse.Namespace) -> int:
    import logging

    from bots_server._embedded import recover_pool  # the store is only needed here
    from bots_server._errors import ServiceError

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    try:
        done = recover_pool(args.data_dir, args.pool)
    except (ServiceError, RuntimeError) as exc:
        raise CliError(str(exc)) from None
    if args.json:
        print(json.dumps(dataclasses.asdict(done), indent=2))
    else:
        print(
            f"pool {done.pool}: continues from {done.base} plus {done.records_kept} journal "
            f"records (last record {done.last_seq}); "
            + (f"dropped everything after {done.damage}" if done.damage else "no damage found")
        )
        print(f"old files kept in {Path(done.moved_aside[0]).parent}" if done.moved_aside else "")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    timeout = args.timeout or DEFAULT_TIMEOUT_S
    roots = _root_certificates(args)
    target = check_target(args.target)
    channel = (
        grpc.secure_channel(target, grpc.ssl_channel_credentials(roots))
        if roots is not None
        else grpc.insecure_channel(target)
    )
    with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            resp = stub.Check(health_pb2.HealthCheckRequest(service=args.service), timeout=timeout)
        except grpc.RpcError as err:
            code = err.code()
            if code == grpc.StatusCode.NOT_FOUND:
                raise CliError(
                    f"server {args.target} does not know service {args.service!r}"
                ) from None
            raise _rpc_failure(args, code, err.details() or "") from None
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
    print(status)
    return 0 if resp.status == health_pb2.HealthCheckResponse.SERVING else 1


def cmd_pool_create(args: argparse.Namespace) -> int:
    config = _parse_config(args.config)
    tasks = read_tasks(args.tasks) if args.tasks else []
    with _client(args) as client:
        client.create_pool(args.name, preset=args.preset, config=config)
        added = _upload(args, client, tasks)
        info = client.get_pool(args.name)
    if args.json:
        _print_json(pool_to_json(info))
    else:
        print(_added_line(info, added))
    return 0


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _added_line(info: PoolInfo, added: int) -> str:
    return (
        f"pool {info.name!r}: {_plural(added, 'new task')} added, "
        f"{_plural(info.task_count, 'task')} in total"
    )


def cmd_pool_add(args: argparse.Namespace) -> int:
    tasks = read_tasks(args.tasks)
    with _client(args) as client:
        added = _upload(args, client, tasks)
        info = client.get_pool(args.name)
    print(_added_line(info, added))
    return 0


def _upload(args: argparse.Namespace, client: SelectorClient, tasks: Sequence[Task]) -> int:
    added = 0
    size = args.chunk_size
    with _progress(args, "adding tasks", len(tasks)) as bar:
        for start in range(0, len(tasks), size):
            chunk = tasks[start : start + size]
            added += client.add_tasks(args.name, chunk, chunk_size=size)
            bar.update(len(chunk))
    return added


def cmd_pool_show(args: argparse.Namespace) -> int:
    with _client(args) as client:
        info = client.get_pool(args.name)
    if args.json:
        _print_json(pool_to_json(info))
    else:
        print(format_pool(info))
    return 0


def cmd_pool_list(args: argparse.Namespace) -> int:
    with _client(args) as client:
        pools = sorted(client.list_pools(), key=lambda p: p.name)
    if args.json:
        _print_json([pool_to_json(p) for p in pools])
    elif pools:
        print(format_pool_table(pools))
    else:
        print("no pools", file=sys.stderr)
    return 0


def cmd_pool_delete(args: argparse.Namespace) -> int:
    with _client(args) as client:
        client.delete_pool(args.name)
    print(f"deleted pool {args.name!r}")
    return 0


def cmd_pool_export(args: argparse.Namespace) -> int:
    if args.out == "-":
        _export_to(args, sys.stdout)
        return 0
    # Write beside the target and rename, so a failed export leaves no half file.
    tmp = f"{args.out}.part"
    try:
        try:
            with open(tmp, "w", encoding="utf-8") as out:
                count = _export_to(args, out)
            os.replace(tmp, args.out)
        except OSError as exc:
            raise UsageError(f"cannot write {args.out}: {exc.strerror or exc}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    print(f"exported pool {args.name!r}: {_plural(count, 'task')} to {args.out}")
    return 0


def _export_to(args: argparse.Namespace, out: TextIO) -> int:
    timeout = args.timeout or DEFAULT_STREAM_TIMEOUT_S
    count = 0
    header: PoolHeader | None = None
    with _client(args) as client, _progress(args, "exporting", None) as bar:
        for chunk_header, posteriors in client.export_posteriors(
            args.name, args.chunk_size, timeout=timeout
        ):
            if header is None:
                header = chunk_header
                bar.total = header.task_count or None
                out.write(json.dumps(header_to_json(header), allow_nan=False) + "\n")
            out.writelines(
                json.dumps(posterior_to_json(p), allow_nan=False) + "\n" for p in posteriors
            )
            count += len(posteriors)
            bar.update(len(posteriors))
    return count


def cmd_pool_import(args: argparse.Namespace) -> int:
    try:
        with open(args.file, encoding="utf-8") as f:
            info = _import_from(args, f)
    except OSError as exc:
        raise UsageError(f"cannot read {args.file}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise UsageError(f"{args.file}: not UTF-8 text ({exc.reason})") from None
    print(f"imported pool {info.name!r}: {_plural(info.task_count, 'task')}")
    return 0


def _import_from(args: argparse.Namespace, f: TextIO) -> PoolInfo:
    timeout = args.timeout or DEFAULT_STREAM_TIMEOUT_S
    header, posteriors = read_export(args.file, f)
    with _client(args) as client, _progress(args, "importing", header.task_count) as bar:

        def counted() -> Iterator[TaskPosterior]:
            for p in posteriors:
                bar.update(1)
                yield p

        return client.import_posteriors(
            header, counted(), name=args.name, chunk_size=args.chunk_size, timeout=timeout
        )


def _parse_config(items: Sequence[str]) -> PoolConfig | None:
    if not items:
        return None
    values: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--config expects key=value, got {item!r}")
        values[key.strip().replace("-", "_")] = value.strip()
    try:
        return PoolConfig.from_dict(values)
    except ValueError as exc:
        raise UsageError(f"--config: {exc}") from None


# --- errors --------------------------------------------------------------------


def _rpc_failure(args: argparse.Namespace, code: grpc.StatusCode | None, details: str) -> CliError:
    target = args.target
    if code == grpc.StatusCode.UNAVAILABLE:
        low = details.lower()
        if not details or any(s in low for s in _CONNECT_FAILURES):
            return CliError(f"server {target} is unreachable (UNAVAILABLE)")
        return CliError(f"server {target} is unavailable: {details} (UNAVAILABLE)")
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        timeout = args.timeout or DEFAULT_TIMEOUT_S
        return CliError(f"server {target} did not answer within {timeout:g}s (DEADLINE_EXCEEDED)")
    name = getattr(args, "name", None)
    if code == grpc.StatusCode.NOT_FOUND and name and (not details or "pool" in details):
        return CliError((details or f"pool {name!r} not found") + _near_pools(args, name))
    if code == grpc.StatusCode.UNAUTHENTICATED:
        if _token(args) is None:
            return CliError(
                f"{details or 'UNAUTHENTICATED'}; this server wants a token: "
                "pass --token TOKEN or set BOTS_TOKEN"
            )
        return CliError(f"{details or 'UNAUTHENTICATED'}: the server does not accept this token")
    if (
        code == grpc.StatusCode.ALREADY_EXISTS
        and getattr(args, "func", None) is cmd_pool_import
        and "already exists" in details
    ):
        return CliError(f"{details}; import it under another name with --name NEW_NAME")
    label = code.name if code is not None else "UNKNOWN"
    return CliError(details or f"request failed ({label})")


def _near_pools(args: argparse.Namespace, name: str) -> str:
    """'; did you mean ...' with the server's pool names closest to ``name``, if any."""
    try:
        with SelectorClient(check_target(args.target), timeout=3.0, token=_token(args),
                            root_certificates=_root_certificates(args)) as client:  # fmt: skip
            names = [p.name for p in client.list_pools()]
    except (BotsError, CliError):
        return ""
    near = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
    if not near:
        return "; `bots pool list` shows the pools" if names else "; the server has no pools"
    return "; did you mean " + " or ".join(repr(n) for n in near) + "?"


# --- parser --------------------------------------------------------------------


# Short spellings of some `bots serve` flags.
_FLAG_ALIASES = {"redis_url": ("--redis",)}


def _settings_fields() -> list[dataclasses.Field[Any]]:
    return list(dataclasses.fields(ServerSettings))


def _settings_help() -> dict[str, str]:
    """Per-field help taken from the Attributes section of ServerSettings' docstring."""
    doc = ServerSettings.__doc__ or ""
    return dict(re.findall(r"^\s+(\w+): (.+)$", doc, flags=re.MULTILINE))


def _add_client_options(p: argparse.ArgumentParser, *, suppress: bool) -> None:
    default: Any = argparse.SUPPRESS if suppress else None
    p.add_argument(
        "--target",
        default=argparse.SUPPRESS if suppress else os.environ.get("BOTS_TARGET", DEFAULT_TARGET),
        help="server address host:port (env BOTS_TARGET, default %(default)s)"
        if not suppress
        else "server address host:port (env BOTS_TARGET)",
    )
    p.add_argument(
        "--token",
        default=default,
        metavar="TOKEN",
        help="bearer token for a server with auth (env BOTS_TOKEN; sent in clear without TLS)",
    )
    p.add_argument(
        "--ca-file",
        default=default,
        metavar="PEM",
        help="root certificate(s) to trust; switches to TLS (env BOTS_CA_FILE)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=default,
        metavar="S",
        help=f"deadline per call in seconds (default {DEFAULT_TIMEOUT_S:g}; "
        f"{DEFAULT_STREAM_TIMEOUT_S:g} for export/import)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `bots`."""
    parser = argparse.ArgumentParser(
        prog="bots", description="BOTS task-selection service: server and tools."
    )
    _add_client_options(parser, suppress=False)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the gRPC server")
    helps = _settings_help()
    for f in _settings_fields():
        flag = "--" + f.name.replace("_", "-")
        text = f"{helps.get(f.name, '').rstrip('.')} (default {f.default!r}, env BOTS_{f.name.upper()})"
        if str(f.type) == "bool":
            serve.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=None,
                dest=f"serve_{f.name}", help=text,
            )  # fmt: skip
        else:
            kind: Callable[[str], Any] = {"int": int, "float": float}.get(str(f.type), str)
            flags = [flag, *_FLAG_ALIASES.get(f.name, ())]
            serve.add_argument(
                *flags, type=kind, default=None, dest=f"serve_{f.name}",
                metavar=f.name.upper(), help=text,
            )  # fmt: skip
    serve.set_defaults(func=cmd_serve)

    sub.add_parser(
        "simulate",
        help="compare selection methods on a simulated learner (see `bots simulate --help`)",
        add_help=False,
    )
    from bots_refs._cli import add_parser as add_refs_parser  # torch etc. load only when measuring

    add_refs_parser(sub)
    add_embed_command(sub)
    check = sub.add_parser("check", help="health check: exit 0 when the server is SERVING")
    _add_client_options(check, suppress=True)
    check.add_argument("--service", default="", help="service to check (default: the server)")
    check.set_defaults(func=cmd_check)

    recover = sub.add_parser(
        "recover",
        help="make a damaged embedded-store pool serve again from its last intact record "
        "(server stopped)",
    )
    recover.add_argument("pool", help="pool name")
    recover.add_argument(
        "--data-dir", default=ServerSettings.data_dir, help="the server's data directory"
    )
    recover.add_argument("--json", action="store_true", help="print what was done as JSON")
    recover.set_defaults(func=cmd_recover)

    pool = sub.add_parser("pool", help="manage pools")
    pool_sub = pool.add_subparsers(dest="pool_command", required=True, metavar="ACTION")

    def pool_cmd(name: str, help_text: str, func: Callable[[argparse.Namespace], int]) -> Any:
        p = pool_sub.add_parser(name, help=help_text)
        _add_client_options(p, suppress=True)
        p.set_defaults(func=func)
        return p

    def chunk_option(p: argparse.ArgumentParser) -> None:
        p.add_argument("--chunk-size", type=_positive_int, default=10_000, help="tasks per request")
        p.add_argument("--progress", action="store_true", help="show progress even off a terminal")

    p = pool_cmd(
        "create", "create a pool (no-op if it exists identically) and add tasks", cmd_pool_create
    )
    p.add_argument("name", help="pool name")
    p.add_argument(
        "--tasks", metavar="FILE", help="JSONL or CSV: key, weak, strong, prior_alpha, prior_beta"
    )
    p.add_argument(
        "--preset",
        default="bots",
        help="bots, explicit_only, implicit_only, uniform, similarity or bots+similarity",
    )
    p.add_argument(
        "--config", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
        help="config overrides, e.g. forgetting=0.2 mode=greedy",
    )  # fmt: skip
    p.add_argument("--json", action="store_true", help="print the pool as JSON")
    chunk_option(p)

    p = pool_cmd("add", "add tasks to a pool (identical existing tasks are skipped)", cmd_pool_add)
    p.add_argument("name", help="pool name")
    p.add_argument("--tasks", metavar="FILE", required=True, help="JSONL or CSV task file")
    chunk_option(p)

    p = pool_cmd("show", "show a pool's config and statistics", cmd_pool_show)
    p.add_argument("name", help="pool name")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = pool_cmd("list", "list pools", cmd_pool_list)
    p.add_argument("--json", action="store_true", help="print JSON")

    p = pool_cmd("delete", "delete a pool and all its state", cmd_pool_delete)
    p.add_argument("name", help="pool name")

    p = pool_cmd("export", "write a pool's posteriors to a JSONL file", cmd_pool_export)
    p.add_argument("name", help="pool name")
    p.add_argument("--out", required=True, metavar="FILE", help="output file ('-' for stdout)")
    chunk_option(p)

    p = pool_cmd("import", "create a pool from an export file", cmd_pool_import)
    p.add_argument("file", help="file written by 'bots pool export'")
    p.add_argument("--name", help="import under this name instead of the exported one")
    chunk_option(p)
    return parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """Runs `bots` with ``argv`` (default: the process arguments); returns the exit code."""
    raw = list(sys.argv[1:] if argv is None else argv)
    if raw[:1] == ["simulate"]:
        # The evaluation harness has its own parser (and its own --help).
        from bots_eval import main as simulate

        return simulate(raw[1:])
    args = build_parser().parse_args(raw)
    try:
        code: int = args.func(args)
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except BotsError as exc:
        print(f"error: {_rpc_failure(args, exc.code, exc.details)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # Output piped into e.g. `head`: stop quietly, and keep Python from
        # complaining again when it flushes stdout at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except Exception as exc:  # a bug: still one line, as promised, but say what it was
        print(f"error: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return code
