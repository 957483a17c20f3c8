"""The web atlas: browse concepts, images, labels and timesteps in a browser, with a JSON API for every page.

    from atlas.server import create_app
    app = create_app("demo/atlas")       # an ASGI app; `atlas serve` runs it with uvicorn

Every page has a `.json` twin (envelope `{"ok": true, ...}`, errors `{"ok": false, "error", "status"}`),
tables a `.csv` twin; the schema of the JSON API is at /openapi.json.
"""

from atlas.lazy import lazy_face

__getattr__, __dir__ = lazy_face(__name__, {"create_app": "atlas.server.app", "server_config": "atlas.server.app"})
__all__ = ["create_app", "server_config"]
