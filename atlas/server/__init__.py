"""The web atlas: browse concepts, images, labels and timesteps in a browser, with a JSON API for every page.

    from atlas.server import create_app
    app = create_app("atlas")            # an ASGI app; `atlas serve` runs it with uvicorn

Every page has a `.json` twin (envelope `{"ok": true, ...}`, errors `{"ok": false, "error", "status"}`),
tables a `.csv` twin; the schema of the JSON API is at /openapi.json.
"""

from atlas.server.app import create_app

__all__ = ["create_app"]
