"""``rapport serve``: export the service's bundle, start the service."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from rapport.app import (
    _error,
    _guard,
    _progress,
    console,
    serve_app,
    settings,
)

# --- serve ----------------------------------------------------------------------------------------



@serve_app.command("export")
def serve_export(
    output: Annotated[Path, typer.Option(help="Directory to write the bundle to (replaced if it is a bundle).")] = Path("bundle"),
) -> None:
    """Write the serving bundle: the champion models, the scoring snapshot at the CLV champion's cutoff,
    every customer's scores (the rows of rapport score, which customer_scores looks up) and the
    identity map. The service needs nothing else (no store, no tracking server)."""
    from training.bundle import export_bundle

    with _progress() as progress:
        task = progress.add_task("bundle", total=None)
        # BundleError is a RapportError: _guard prints it as one line.
        manifest = _guard(lambda: export_bundle(settings(), output,
                                                progress=lambda text: progress.update(task, description=text)))
    models = ", ".join(f"{m['name']} v{m['version']}" for m in manifest["models"].values())
    counts = manifest["counts"]
    console.print(f"bundle written to {output}: {models}; snapshot {manifest['snapshot_date']}, "
                  f"{counts['customers']:,} customers, {counts['items']:,} items, default lists of "
                  f"{counts.get('default_lists', 0):,} customers")


@serve_app.command("start")
def serve_start(
    bundle: Annotated[Path, typer.Option(help="Bundle directory (rapport serve export).")] = Path("bundle"),
    port: Annotated[int, typer.Option(min=1, max=65535, help="HTTP port.")] = 3000,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
) -> None:
    """Run the service on a bundle (bentoml serve serving.service:Rapport); the OpenAPI page is at /.

    Every file of the bundle is checked against its manifest (size, SHA-256) first: a bundle that
    cannot be served is refused here, with the file named, not by workers failing one after the
    other. BentoML runs in its own process group; SIGTERM and SIGINT (Ctrl+C) are passed on to the
    whole group, and whatever is left of it when the server has stopped is ended."""
    import contextlib
    import signal
    import subprocess

    import psutil

    from serving.runtime import worker_count
    from training.bundle import verify_bundle

    _guard(lambda: verify_bundle(bundle))
    workers = _guard(lambda: worker_count(settings().serving.workers))
    env = {**os.environ, "RAPPORT_BUNDLE_DIR": str(bundle.resolve()), "RAPPORT_SERVING__WORKERS": str(workers)}
    command = [sys.executable, "-m", "bentoml", "serve", "serving.service:Rapport", "--host", host, "--port", str(port)]
    console.print(f"serving {bundle} on http://{host}:{port} with {workers} worker(s) (OpenAPI page at /, "
                  "Ctrl+C to stop)")
    server = subprocess.Popen(command, env=env, process_group=0)
    # BentoML's arbiter starts each worker in a session of its own (circus), out of reach of a signal
    # to the group: the workers are remembered while the server runs, so that none outlives it.
    started: dict[int, psutil.Process] = {}
    asked: list[int] = []

    def remember() -> None:
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(server.pid).children(recursive=True):
                started.setdefault(child.pid, child)

    def forward(signum: int, _frame: object) -> None:
        asked.append(signum)
        remember()
        with contextlib.suppress(ProcessLookupError):  # the group has ended already
            os.killpg(server.pid, signum)

    def end_all(grace: float = 10.0) -> None:
        # What is left of the server's group and of its workers once the arbiter is gone: given
        # ``grace`` seconds, then killed.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)
        left = [p for p in started.values() if p.is_running()]
        for process in left:
            with contextlib.suppress(psutil.Error):
                process.terminate()
        _, alive = psutil.wait_procs(left, timeout=grace)
        for process in alive:
            with contextlib.suppress(psutil.Error):
                process.kill()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGKILL)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    try:
        while True:
            try:
                code = server.wait(timeout=1)
                break
            except subprocess.TimeoutExpired:
                remember()
    finally:
        end_all()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if asked:
        raise typer.Exit(0)
    _error(f"the service stopped by itself (exit code {code}): see its log above")
    raise typer.Exit(code if code > 0 else 1)  # killed by a signal: a negative code
