"""Gunicorn settings: one worker process holding the model, many threads serving it.

Every value can be overridden on the command line (`-b 127.0.0.1:9000`) or through the
environment variables named below.
"""

import os
import signal

# Listen on every interface by default; `-b` or GUNICORN_BIND overrides.
bind = os.environ.get("GUNICORN_BIND", "0.0.0.0:8000")

# One process: a second worker would load a second copy of the model onto the GPU.
workers = 1

# Threads share the one loaded model. Every request must get a thread at once, so that
# the app's admission (run lane + MAX_QUEUE images, then 429) decides, not a backlog of
# connections waiting for a thread: threads > MAX_CONCURRENT_GENERATIONS + MAX_QUEUE, plus
# room for probes, metrics and image downloads. A request holds one thread whether it
# asks for one image or ten, and the queue counts images, so this is always enough.
worker_class = "gthread"
_lane = max(1, int(os.environ.get("MAX_CONCURRENT_GENERATIONS", "1")))
_queue = int(os.environ.get("MAX_QUEUE", "32"))
threads = int(os.environ.get("GUNICORN_THREADS", str(_lane + _queue + 16)))

# Never import the app in the master: CUDA cannot be re-initialised in a forked child.
preload_app = False

# The gthread worker beats its heartbeat from its main loop, and the model loads in a
# background thread, so neither slow loads nor long generations trip this timeout.
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "60"))

# On SIGTERM, running and queued generations get this long to finish: above
# REQUEST_TIMEOUT_SECONDS (300 by default), which bounds each of them.
graceful_timeout = int(os.environ.get("GUNICORN_GRACEFUL_TIMEOUT", "330"))

# Keep idle client connections briefly so scripts that poll reuse them.
keepalive = 5

# Proxy headers are trusted by the app (TRUSTED_PROXIES through ProxyFix), in one place,
# not by Gunicorn as well.
forwarded_allow_ips = ""

# The app logs one access line per request (app/access_log.py: request id, latency,
# queue wait, images), so Gunicorn's own access log is off; its error log goes to stderr.
accesslog = None
errorlog = "-"
loglevel = os.environ.get("GUNICORN_LOG_LEVEL", "info")

# LOG_FORMAT=json: Gunicorn's own lines become JSON objects too, like the app's.
if os.environ.get("LOG_FORMAT", "text").strip().lower() == "json":
    logconfig_dict = {
        "root": {"level": "INFO", "handlers": []},  # the app adds its handler in the worker
        "loggers": {
            "gunicorn.error": {"level": loglevel.upper(), "handlers": ["json"], "propagate": False},
            "gunicorn.access": {"level": "INFO", "handlers": [], "propagate": False},
        },
        "handlers": {
            "json": {
                "class": "logging.StreamHandler",
                "formatter": "json",
                "stream": "ext://sys.stderr",
            },
        },
        "formatters": {"json": {"()": "app.logs.JsonFormatter"}},
    }


def close_listeners(worker):
    """Stop accepting and close this worker's copy of the listening sockets, now.

    On a full stop the master has closed its copy already, so the socket closes for good:
    a connection nginx opens meanwhile is refused at once and retried on another replica.
    Left open until the worker exits, it would sit unaccepted in the backlog and be reset
    once the worker exits, too late for nginx to retry (a 502). On a reload (SIGHUP) the
    master still holds the socket, and the new worker accepts on it.
    """
    if hasattr(worker, "set_accept_enabled"):  # gthread: unregister before closing
        worker.set_accept_enabled(False)
        for listener in worker.sockets:
            listener.close()


def post_worker_init(worker):
    """Drain on SIGTERM, and exit to be restarted after a fatal device error."""
    from app import drain

    app = worker.wsgi
    stop = signal.getsignal(signal.SIGTERM)

    def drain_then_stop(signum, frame):
        drain(app)
        stop(signum, frame)
        # Closed on the worker's main loop, between events, as gunicorn's own exit handler
        # defers its wake-up: closed here, inside the signal handler, a listener could be
        # closed between the loop's select() and its accept() (EBADF kills the worker).
        queue = getattr(worker, "method_queue", None)
        if queue is not None:
            queue.defer(close_listeners, worker)

    signal.signal(signal.SIGTERM, drain_then_stop)
    # A SIGTERM to ourselves drains the other requests; the master starts a new worker.
    app.extensions["engine"].on_fatal = lambda: os.kill(os.getpid(), signal.SIGTERM)
