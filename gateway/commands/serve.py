"""``gateway serve``: the web app in werkzeug's threaded development server.

For production run it under gunicorn, several processes sharing the store::

    GATEWAY_CONFIG=/etc/gateway/gateway.toml gunicorn -w 4 -b 0.0.0.0:8080 "gateway.web:create_app()"

behind a TLS-terminating proxy (design.md: JSON over HTTPS).
"""

from __future__ import annotations

import click


@click.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535))
@click.pass_obj
def serve_command(obj, host: str, port: int) -> None:
    """Serve the department API, health, metrics and /openapi.json (development server)."""
    from werkzeug.serving import make_server

    from ..web import create_app

    app = create_app(obj.site)
    server = make_server(host, port, app, threaded=True)
    click.echo(
        f"serving on http://{host}:{server.server_port} (development server; "
        'production: gunicorn "gateway.web:create_app()")',
        err=True,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
