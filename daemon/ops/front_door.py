"""The front door: nginx in front of the API, its config rendered from the settings into the run dir.

A gunicorn thread is held for as long as its client takes to send a request, and gunicorn times out neither
headers nor bodies, so a few dozen slow clients could take every thread. nginx holds a slow or idle client in
its event loop for a few kilobytes, times out headers and bodies, buffers each request body whole before the
API sees it (a gunicorn thread only ever gets a complete request), refuses bodies over `api.max_body_bytes`
before reading them, terminates TLS when `api.tls_cert_file` and `api.tls_key_file` are set, and answers
its own errors in the API's JSON shape.

With `api.auth_token_file` set, nginx answers 401 itself to a request that has a body, or a method other
than GET and HEAD, without the token (`_token_gate`), before it reads a byte of the body: a stranger's upload
is neither buffered nor spilled, and an `Expect: 100-continue` client is never asked to send it. Bodiless
GET and HEAD requests go on to the API, which keeps the one rule of which paths are open (the probes, the
status page's files) and checks the token again, in constant time, for everything else. nginx compares the
token with a regular expression in a `map`, which every nginx build has (`auth_request`, a subrequest to
the API per request, is missing from some builds and would cost an API thread per request). A regex match
can stop at the first wrong byte; over a network, through nginx's own work per request, that difference is
far below what can be measured, and the API's constant-time check stays the one that decides. The rendered
config then holds the token: it is written 0600 in the 0700 run dir, readable only by the appliance's user.

Bodies larger than BODY_BUFFER spill to files in `<run_dir>/BODY_DIR`. Under systemd the run dir is
/run/inferd, on the tmpfs the whole host shares; the unit mounts a tmpfs of its own, bounded and seen only by
the service, on that folder (systemd/inferd.service, TemporaryFileSystem=), so a flood of uploads can fill
only inferd's spill space: further uploads get 500 until it drains, and nothing else on the host notices.

The contract with the API, all of it here:
- nginx listens where clients connect (`api.host`, `api.port`); the API runs as API_INSTANCES gunicorn
  instances on unix sockets in the 0700 run dir (`api_socket`), so nothing but nginx reaches them. When one
  instance dies or restarts, nginx sends its requests to the other, /predict included (see the comment in
  the rendered config), so a restarting API costs no request.
- nginx stamps each request with ARRIVED_HEADER, the unix time at which the complete request was in hand,
  overwriting whatever a client sent under that name; the API counts the request's deadline from it
  (`deadline_from_arrival`), so time spent waiting for a free API thread counts against the deadline.
"""

from __future__ import annotations

import grp
import json
import logging
import math
import os
import pwd
import resource
import shutil
import subprocess
from pathlib import Path

from daemon.errors import ConfigError
from daemon.ops.client_limits import client_limit_lines
from daemon.ops.run_dir import RUN_DIR_ENV
from daemon.settings import Settings

log = logging.getLogger(__name__)

API_INSTANCES = 2
"""gunicorn instances behind nginx: while one restarts, the other serves."""
API_INSTANCE_ENV = "INFERD_API_INSTANCE"
"""Which instance (0 or 1) a gunicorn process is; supervisord sets it per program."""
ARRIVED_HEADER = "X-Inferd-Arrived"
NGINX_CONF = "nginx.conf"
NGINX_DIR = "nginx"
"""nginx's prefix in the run dir: its temporary files."""
BODY_DIR = "body"
"""Where nginx spills request bodies, in the run dir: under systemd a bounded tmpfs of its own."""
NGINX_WORKER_PROCESSES = 1
"""One event loop holds tens of thousands of connections and proxies far more requests than the API tier
decodes; one process also makes `api.max_connections` an exact bound."""
KEEPALIVE_TIMEOUT_S = 60
"""How long an idle kept-alive client connection stays open."""
PROBE_TIMEOUT_S = 5
"""Longest a probe waits for an API instance before nginx tries the other one, then answers 504."""
UPSTREAM_MARGIN_S = 5
"""Beyond api.request_timeout_s, how long nginx waits on the API before giving up: the API answers its own
504 at the deadline, so this only fires when an instance hangs."""
OPEN_FILES_RESERVE = 1024
"""Descriptors beyond one per connection: listening sockets, logs, temporary body files, Python's own."""
LISTEN_BACKLOG = 4096
BODY_BUFFER = "256k"
"""Body bytes nginx keeps in memory per request; bigger bodies go to a temporary file in the run dir."""
TLS12_AEAD = ("AES128-GCM-SHA256", "AES256-GCM-SHA384", "CHACHA20-POLY1305")
TLS12_CIPHERS = ":".join(f"ECDHE-{key}-{aead}" for aead in TLS12_AEAD for key in ("ECDSA", "RSA"))
"""TLS 1.2's ciphers: forward-secret and AEAD only (Mozilla's "intermediate" list without DHE), so no CBC
mode and no RSA key exchange; TLS 1.3's own suites are all AEAD already."""


def api_socket(run_dir: Path, instance: int) -> Path:
    """The unix socket gunicorn instance `instance` listens on."""
    return run_dir / f"api{instance}.sock"


def instance_workers(total: int, instance: int) -> int:
    """gunicorn processes of one instance: `api.workers` shared between the instances, at least one each."""
    return max(1, (total + API_INSTANCES - 1 - instance) // API_INSTANCES)


def deadline_from_arrival(arrived: str | None, timeout_s: float, wall_now: float, mono_now: float) -> float:
    """The request's deadline on the monotonic clock, counted from the front door's ARRIVED_HEADER (unix
    seconds, millisecond resolution); from now when there is none, as under the unit tests' client."""
    waited = 0.0
    if arrived:
        try:
            waited = wall_now - float(arrived)
        except ValueError:
            waited = 0.0
    # nginx and the API share one host and one wall clock, so the difference is the wait; the clamp keeps a
    # wall clock stepped by NTP between the two readings from granting more than the budget, or less than 0.
    if not math.isfinite(waited):
        waited = 0.0
    waited = min(max(waited, 0.0), timeout_s)
    return mono_now - waited + timeout_s


# -- starting nginx -----------------------------------------------------------------------------------------
def nginx_binary() -> str:
    """Debian installs nginx in /usr/sbin, which is not on every user's PATH."""
    return shutil.which("nginx") or "/usr/sbin/nginx"


def check_tls_files(settings: Settings) -> None:
    """Both TLS files are readable by this user (the one nginx runs as); which is set is checked in `validate`."""
    for key, path in (
        ("api.tls_cert_file", settings.api.tls_cert_file),
        ("api.tls_key_file", settings.api.tls_key_file),
    ):
        if path is None:
            continue
        try:
            with path.open("rb") as handle:
                handle.read(1)
        except OSError as exc:
            raise ConfigError(f"{key} = {str(path)!r} cannot be read: {exc.strerror}") from None


def raise_open_files_limit(wanted: int) -> int:
    """Raise this process's descriptor limit (inherited by supervisord and nginx) towards `wanted`; returns
    the soft limit obtained: the hard limit caps it unless we are root."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= wanted:
        return soft
    target_hard = hard if hard == resource.RLIM_INFINITY else max(hard, wanted)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, target_hard))
        return wanted
    except (ValueError, OSError):
        capped = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (capped, hard))
        return capped


def open_files_wanted(settings: Settings) -> int:
    return settings.api.max_connections + OPEN_FILES_RESERVE


def worker_connections(settings: Settings, open_files: int) -> int:
    """`api.max_connections`, or fewer when the descriptor limit cannot hold them (logged)."""
    fit = max(64, open_files - OPEN_FILES_RESERVE)
    if fit < settings.api.max_connections:
        log.warning(
            "inferd: the open-files limit (%d) holds only %d of api.max_connections = %d; raise the hard "
            "limit (ulimit -Hn, LimitNOFILE=) to allow more",
            open_files,
            fit,
            settings.api.max_connections,
        )
    return min(settings.api.max_connections, fit)


def check_nginx_conf(conf: Path, prefix: Path) -> None:
    """`nginx -t` on the rendered config, so a certificate nginx cannot load stops the start with its reason."""
    result = subprocess.run(
        [nginx_binary(), "-t", "-q", "-p", f"{prefix}/", "-c", str(conf), "-e", "stderr"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if result.returncode != 0:
        reason = " ".join(result.stderr.split())
        raise ConfigError(f"nginx refuses the front door's config ({conf}): {reason}")


# -- the config ---------------------------------------------------------------------------------------------
def _quoted(text: str) -> str:
    """A string literal for nginx.conf: single-quoted, so JSON's double quotes need no escaping."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _listen_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def door_errors(settings: Settings) -> dict[int, tuple[int, str]]:
    """nginx's own error statuses -> the status and message a client gets, in the API's JSON shape."""
    limit = settings.api.max_body_bytes
    return {
        400: (400, "malformed HTTP request"),
        401: (401, "missing or wrong bearer token"),
        494: (400, "request headers too large"),
        497: (400, "this port speaks TLS: use https://"),
        408: (408, "the request was not sent in time"),
        413: (413, f"the request body is larger than the {limit}-byte limit"),
        414: (414, "the request URI is too long"),
        429: (429, "too many requests from this client address; retry shortly"),
        500: (500, "internal error at the front door"),
        502: (503, "the API is not accepting requests (starting or restarting); retry shortly"),
        504: (504, "the API did not answer in time; the appliance is overloaded or stuck"),
    }


ERROR_URI = "/_inferd/error/"
"""Internal locations of nginx's own error answers: a URI, not a named location, because nginx can redirect
a request whose request line did not even parse only to a URI."""


def _error_locations(settings: Settings) -> list[str]:
    lines = []
    for status, (answer, message) in door_errors(settings).items():
        body = json.dumps({"success": False, "error": message})
        lines.append(f"        error_page {status} ={answer} {ERROR_URI}{status};")
        lines.append(f"        location = {ERROR_URI}{status} {{")
        lines.append("            internal;")
        if answer in (429, 503):
            lines.append("            add_header Retry-After 1 always;")
        if answer == 401:
            lines.append("            add_header WWW-Authenticate Bearer always;")
        lines.append(f"            return {answer} {_quoted(body)};")
        lines.append("        }")
    return lines


def _nginx_user(settings: Settings) -> str | None:
    """`user` for nginx's workers when it starts as root (they would default to nobody, who cannot reach the
    0700 run dir); None otherwise: nginx runs as whoever started it (paths.service_user, if set)."""
    if os.geteuid() != 0 or settings.paths.service_user:
        return None
    return f"{pwd.getpwuid(os.geteuid()).pw_name} {grp.getgrgid(os.getegid()).gr_name}"


def token_pattern(token: str) -> str:
    """A regex (an nginx `map` key) matching the Authorization values the API accepts for `token`: the
    scheme in any case, the token exactly, blanks around it."""
    scheme = "".join(f"[{letter.upper()}{letter.lower()}]" for letter in "bearer")
    literal = "".join(char if char.isalnum() else "\\" + char for char in token)
    return f"~^{scheme} [ \\t]*{literal}[ \\t]*$"


def _token_gate(token: str | None) -> list[str]:
    """The maps that set $inferd_refused for a request with a body or a method beyond GET and HEAD and
    without the token (see the module's docstring); nothing when auth is off."""
    if not token:
        return []
    return [
        "",
        "    # api.auth_token_file: no token, no body. Answered 401 before a byte of the body is read; bodiless",
        "    # GET and HEAD go on to the API, which says which paths are open and checks the token itself.",
        "    map $http_authorization $inferd_token_ok {",
        "        default 0;",
        f"        {_quoted(token_pattern(token))} 1;",
        "    }",
        '    map "$inferd_token_ok:$request_method:$http_content_length$http_transfer_encoding" $inferd_refused {',
        "        default 1;",
        '        "~^1:" 0;',
        '        "0:GET:" 0;',
        '        "0:HEAD:" 0;',
        "    }",
    ]


def render_nginx_conf(settings: Settings, open_files: int) -> str:
    """nginx.conf for the front door: foreground, logging to stderr, every path in the run dir."""
    api, run_dir = settings.api, settings.paths.run_dir
    temp = run_dir / NGINX_DIR
    upstream_s = math.ceil(api.request_timeout_s) + UPSTREAM_MARGIN_S
    tls = api.tls_cert_file is not None and api.tls_key_file is not None
    user = _nginx_user(settings)
    limits_http, limits_server = client_limit_lines(settings)
    lines = [
        "# Rendered by `inferd run` from the settings (daemon/ops/front_door.py) at each start: edit the settings.",
        "daemon off;",
        *([f"user {user};"] if user else []),
        f"worker_processes {NGINX_WORKER_PROCESSES};",
        f"worker_rlimit_nofile {open_files};",
        f"pid {_quoted(str(run_dir / 'nginx.pid'))};",
        # nginx clears its workers' environment; the marker lets the next launcher find any it orphaned.
        f"env {RUN_DIR_ENV};",
        "error_log stderr warn;",
        # In-flight requests get their answer on a graceful stop (QUIT), up to the API's own deadline.
        f"worker_shutdown_timeout {upstream_s}s;",
        "",
        "events {",
        f"    worker_connections {worker_connections(settings, open_files)};",
        "}",
        "",
        "http {",
        "    types { }",
        "    default_type application/json;",
        "    charset utf-8;",
        "    server_tokens off;",
        "    access_log off;  # the API counts and times every request in /metrics",
        f"    client_body_temp_path {_quoted(str(run_dir / BODY_DIR))};",
        f"    proxy_temp_path {_quoted(str(temp / 'proxy'))};",
        f"    fastcgi_temp_path {_quoted(str(temp / 'fastcgi'))};",
        f"    uwsgi_temp_path {_quoted(str(temp / 'uwsgi'))};",
        f"    scgi_temp_path {_quoted(str(temp / 'scgi'))};",
        "",
        "    # A slow client costs a timer here, not an API thread: headers must arrive within, and a body",
        "    # must not pause for longer than, api.client_timeout_s; then nginx closes the connection.",
        f"    client_header_timeout {api.client_timeout_s:g}s;",
        f"    client_body_timeout {api.client_timeout_s:g}s;",
        f"    send_timeout {api.client_timeout_s:g}s;",
        f"    keepalive_timeout {KEEPALIVE_TIMEOUT_S}s;",
        "    reset_timedout_connection on;",
        f"    client_max_body_size {api.max_body_bytes};",
        f"    client_body_buffer_size {BODY_BUFFER};",
        *_token_gate(settings.secrets.auth_token),
        "",
        *limits_http,
        "",
        "    upstream inferd_api {",
        *(
            f"        server {_quoted(f'unix:{api_socket(run_dir, i)}')} max_fails=1 fail_timeout=1s;"
            for i in range(API_INSTANCES)
        ),
        "    }",
        "",
        "    server {",
        f"        listen {_listen_address(api.host, api.port)}{' ssl' if tls else ''} backlog={LISTEN_BACKLOG};",
    ]
    if tls:
        lines += [
            f"        ssl_certificate {_quoted(str(api.tls_cert_file))};",
            f"        ssl_certificate_key {_quoted(str(api.tls_key_file))};",
            "        ssl_protocols TLSv1.2 TLSv1.3;",
            f"        ssl_ciphers {TLS12_CIPHERS};",
            "        ssl_prefer_server_ciphers off;",
            "        ssl_session_cache shared:inferd_tls:10m;",
        ]
    # In each location that proxies, not in the server: there it would refuse the 401's own error page too.
    gate = ["            if ($inferd_refused) {", "                return 401;", "            }"]
    gate = gate if settings.secrets.auth_token else []
    lines += [
        *limits_server,
        "",
        "        # The whole body is read before the API gets the request (for chunked uploads too, which the",
        "        # API then receives with a Content-Length); answers are buffered here, so a slow reader does",
        "        # not hold an API thread either.",
        "        proxy_request_buffering on;",
        "        proxy_buffering on;",
        "        proxy_set_header Host $host;",
        "        proxy_set_header X-Forwarded-For $remote_addr;",
        "        proxy_set_header X-Forwarded-Proto $scheme;",
        "        # Set here, it replaces any value a client sent under the same name: the API trusts only ours.",
        f"        proxy_set_header {ARRIVED_HEADER} $msec;",
        "        proxy_connect_timeout 2s;",
        f"        proxy_send_timeout {upstream_s}s;",
        f"        proxy_read_timeout {upstream_s}s;",
        "        proxy_next_upstream_tries 2;",
        "",
        *_error_locations(settings),
        "",
        "        location = /predict {",
        *gate,
        "            # /predict is idempotent (the same image gets the same answer, and an answer nobody collects",
        "            # only costs compute), so a request an API instance dropped when it died is sent to the",
        "            # other one; nginx does that by default only for GET and HEAD.",
        "            proxy_next_upstream error timeout non_idempotent;",
        "            proxy_pass http://inferd_api;",
        "        }",
        "",
        "        # The probes get a short wait of their own: a jammed instance costs them PROBE_TIMEOUT_S, then",
        "        # the other instance answers.",
        "        location ~ ^/(healthz|readyz)$ {",
        *gate,
        f"            proxy_read_timeout {PROBE_TIMEOUT_S}s;",
        "            proxy_pass http://inferd_api;",
        "        }",
        "",
        "        location / {",
        *gate,
        "            proxy_pass http://inferd_api;",
        "        }",
        "    }",
        "}",
    ]
    return "\n".join(lines) + "\n"


def write_nginx_conf(settings: Settings, open_files: int) -> Path:
    """Render nginx.conf into the run dir (0600: it names the TLS key and holds the token) and make nginx's
    temporary folders."""
    run_dir = settings.paths.run_dir
    (run_dir / NGINX_DIR).mkdir(mode=0o700, exist_ok=True)
    # Under systemd, BODY_DIR is already there: the unit's own tmpfs, mounted before the launcher runs.
    (run_dir / BODY_DIR).mkdir(mode=0o700, exist_ok=True)
    conf = run_dir / NGINX_CONF
    fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(render_nginx_conf(settings, open_files))
    return conf
