"""One module per page group; each defines `PAGE` (atlas.server.pages.Page) holding its routes."""
