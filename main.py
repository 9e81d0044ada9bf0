"""Start queuechat: the embedded Redis (unless REDIS_URL is set), the Dramatiq workers, and the UI + API.

    uv run main.py                 # everything, on http://127.0.0.1:8080
    uv run main.py --no-workers    # UI + API only; workers run elsewhere: `dramatiq tasks.actors`
    uv run main.py keys create NAME [--max-priority P] [--max-waiting N] [--rate N] [--quota N] [--admin]
    uv run main.py keys list | keys revoke ID_OR_NAME
    uv run main.py demo [--offline]   # the scripted demo in Chromium (demo/), screenshots in docs/demo/

Ctrl-C stops every child process; so does any death of this process (each child gets a death signal from the
kernel, see tasks/supervisor.py). Workers that die are restarted within seconds, and a worker that froze while
holding a lease is killed before its job is handed to another (tasks.supervisor.WorkerPool).
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import sys
from pathlib import Path

from tasks.broker import worker_environment
from tasks.settings import settings
from tasks.supervisor import WorkerPool

log = logging.getLogger("queuechat")
ROOT = Path(__file__).resolve().parent


WEAK_SECRETS = {"queuechat-dev-secret", "secret", "changeme", "change-me", "password"}


def start_redis():
    """The embedded Redis, when REDIS_URL is unset: private to this user (a unix socket in a 0700 folder, files
    0600). Its URL goes to every child through the environment, never on a command line."""
    from tasks.redis_server import RedisServer, RedisServerError

    try:
        server = RedisServer(settings.data_dir / "redis", private=True).start()
    except RedisServerError as error:
        sys.exit(f"queuechat: {error}")
    settings.redis_url = os.environ["REDIS_URL"] = server.url
    log.info("embedded Redis on %s (data in %s)", server.url, server.data_dir)
    return server


def storage_secret() -> str:
    """STORAGE_SECRET, or a random one made on first start and kept in DATA_DIR/secret (0600). A guessable
    secret lets anyone forge a session cookie and read another browser's conversations: refused when the app
    listens beyond this machine."""
    secret = settings.storage_secret
    if secret:
        if (secret in WEAK_SECRETS or len(secret) < 16) and settings.host not in ("127.0.0.1", "localhost", "::1"):
            sys.exit(f"queuechat: STORAGE_SECRET is too easy to guess for an app listening on {settings.host}: "
                     "unset it (a random one is made) or use 16+ random characters.")
        return secret
    path = settings.data_dir / "secret"
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        path.chmod(0o600)  # made by hand or by an older version: whoever can read it can forge sessions
        secret = path.read_text().strip()
        if len(secret) >= 32:
            return secret
        path.unlink()  # empty or cut short (a crash while it was written): a new one, and new sessions
        return storage_secret()
    with os.fdopen(descriptor, "w") as file:
        file.write(secrets.token_urlsafe(32))
    return path.read_text().strip()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="queuechat: a queue-fronted AI chat",
                                     epilog="uv run main.py demo [--offline]: the scripted demo (demo/tour.py)")
    parser.add_argument("--no-workers", action="store_true", help="run the UI and API only")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # the health poll would log every 2 s
    secret = storage_secret()
    redis_server = None if settings.redis_url else start_redis()
    workers = None if args.no_workers else WorkerPool(
        settings.worker_processes, settings.worker_threads, env={**worker_environment(settings.worker_threads),
                                                                  **os.environ}, cwd=str(ROOT)).start()

    from nicegui import app, ui

    from ui import admin, api, bus, pages, security, sessions

    # Browser sessions (language, choices) live in Redis, so that every app instance shares them, on the app's
    # own connection pool, and a visit that changes nothing leaves nothing behind (ui/sessions.py).
    sessions.install()

    def stop_workers() -> None:
        if workers:
            workers.stop()

    def stop_children() -> None:
        stop_workers()
        if redis_server:
            redis_server.stop()

    api.create(app)
    app.add_middleware(security.SecurityHeaders)
    bus.create()
    pages.create()
    admin.create()
    # Redis only once ui.run has returned: NiceGUI closes its sessions' Redis connections in a shutdown handler of
    # its own, after ours, and a Redis stopped before that filled every Ctrl-C with tracebacks.
    app.on_shutdown(stop_workers)
    print(f"queuechat: open http://{settings.host}:{settings.port}", flush=True)
    try:
        # proxy_headers off: X-Forwarded-For is believed from TRUSTED_PROXIES only, by ui/identity.py.
        ui.run(host=settings.host, port=settings.port, title="queuechat", favicon="💬", reload=False, show=False,
               storage_secret=secret, show_welcome_message=False, uvicorn_logging_level="warning",
               fastapi_docs=True, proxy_headers=False,
               binding_refresh_interval=None)  # no active links (ui/ binds only bindable properties): no 10 Hz loop
    finally:
        stop_children()


def keys_command(argv: list[str]) -> int:
    """``main.py keys create|list|revoke``: API keys, on this install's Redis (started for the moment if need be)."""
    parser = argparse.ArgumentParser(prog="main.py keys", description="Manage API keys")
    commands = parser.add_subparsers(dest="command", required=True)
    create = commands.add_parser("create", help="make a key (its plaintext is shown once)")
    create.add_argument("name")
    create.add_argument("--max-priority", choices=("high", "normal", "low"), default="normal")
    create.add_argument("--max-waiting", type=int, default=0, help="jobs waiting at once (0: the default)")
    create.add_argument("--rate", type=int, default=0, help="requests per minute (0: API_RATE_PER_MIN)")
    create.add_argument("--quota", type=int, default=0, help="jobs per day (0: no quota)")
    create.add_argument("--admin", action="store_true", help="may use /admin")
    commands.add_parser("list", help="show the keys (not their plaintext)")
    revoke = commands.add_parser("revoke", help="revoke a key")
    revoke.add_argument("key", help="its id or name")
    args = parser.parse_args(argv)

    from tasks import identities
    from tasks.redis_server import RedisServer, RedisServerError

    server = None
    if not settings.redis_url:
        embedded = RedisServer(settings.data_dir / "redis", private=True)
        if embedded.socket_path.exists():
            settings.redis_url = embedded.url  # main.py is running: use its Redis
        else:
            try:
                server = embedded.start()
            except RedisServerError as error:
                sys.exit(f"queuechat: {error}")
            settings.redis_url = server.url
    try:
        if args.command == "create":
            plaintext, key = identities.create_key(args.name, max_priority=args.max_priority,
                                                   max_waiting=args.max_waiting, rate_per_min=args.rate,
                                                   quota_per_day=args.quota, admin=args.admin)
            print(f"key {key.key_id} ({key.name}), max priority {key.max_priority}"
                  f"{', admin' if key.admin else ''}:\n\n    {plaintext}\n\nKeep it: it is not stored and can't be "
                  "shown again. Send it as 'Authorization: Bearer <key>'.")
        elif args.command == "list":
            for key in identities.list_keys():
                print(f"{key.key_id}  {key.name:20}  max {key.max_priority:6}  waiting {key.max_waiting or '-':>4}  "
                      f"rate {key.rate_per_min or '-':>4}/min  quota {key.quota_per_day or '-':>5}/day"
                      f"{'  admin' if key.admin else ''}{'  REVOKED' if key.revoked else ''}")
        else:
            revoked = identities.revoke_key(args.key)
            print("\n".join(f"revoked {key.key_id} ({key.name})" for key in revoked) or f"no live key {args.key!r}")
            return 0 if revoked else 1
    finally:
        if server is not None:
            server.stop()
    return 0


if __name__ in {"__main__", "__mp_main__"}:
    if sys.argv[1:2] == ["keys"]:
        sys.exit(keys_command(sys.argv[2:]))
    if sys.argv[1:2] == ["demo"]:
        from demo.tour import main as demo

        sys.exit(demo(sys.argv[2:]))
    try:
        run(parse_args())
    except KeyboardInterrupt:  # Ctrl-C: uvicorn raises it again once everything has stopped; no traceback for it
        sys.exit(130)
