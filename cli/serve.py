"""`atlas serve`: the web atlas over one atlas directory (registered by cli/main.py)."""

from __future__ import annotations

import click

from atlas.cli.common import CONTEXT, atlas_option, one_line_errors


@click.command(context_settings=CONTEXT)
@atlas_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0 for all).")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535),
              help="Port to listen on (0 picks a free one).")
@click.option("--read-only", is_flag=True, help="Turn off the only writes: renaming concepts and running edits.")
@click.option("--allowed-host", "allowed_hosts", multiple=True, metavar="NAME",
              help="Another name the server may be reached by (repeatable); requests naming any other host than "
                   "this, --host and localhost are refused (against DNS rebinding).")
@click.option("--threads", default=0, type=click.IntRange(min=0), help="DuckDB threads (0 = all cores).")
@one_line_errors
def serve(atlas_dir: str | None, host: str, port: int, read_only: bool, allowed_hosts: tuple[str, ...],
          threads: int) -> None:
    """Serve the atlas in a browser: concepts, labels, images, search, SQL and edits, each page with a JSON twin.

    \b
    Examples:
      atlas serve --atlas demo/atlas            # then open http://127.0.0.1:8000/
      atlas serve --read-only --port 8080
      atlas serve --host 0.0.0.0 --allowed-host atlas.lab.example
      curl http://127.0.0.1:8000/concept/mid/1.0/12.json
    """
    import socket

    import uvicorn

    from atlas.server import create_app, server_config
    from atlas.store import default_path

    app = create_app(atlas_dir or default_path(), read_only=read_only, threads=threads or None, host=host,
                     allowed_hosts=allowed_hosts)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:  # bind first, so the printed URL has the real port
        sock = socket.create_server((host, port), family=family)
    except OSError as err:
        raise click.ClickException(f"cannot listen on {host}:{port}: {err.strerror or err}; choose another --host "
                                   "or --port (0 picks a free one)") from None
    with sock:
        bound = sock.getsockname()[1]
        shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
        click.echo(f"serving {app.state.atlas.root} at http://{shown}:{bound}/ (Ctrl-C stops)")
        config = server_config(app, log_level="warning", access_log=False)
        uvicorn.Server(config).run(sockets=[sock])
