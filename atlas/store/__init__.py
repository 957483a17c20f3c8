"""The atlas store: catalog, Parquet codes, DuckDB views, FAISS indexes (see atlas.store.atlas).

    from atlas.store import open_atlas
    store = open_atlas("demo/atlas")                 # read-only
    store.concepts(label="dog", t=1.0, block="mid")
    store.top_images("mid/1.0/412")
    store.sql("SELECT count(*) FROM codes").rows     # user SQL, sandboxed
    store.query("SELECT id FROM saes WHERE block = ?", ["mid"])   # internal, parameterised
"""

from atlas.lazy import lazy_face

_ERRORS = ("AtlasError", "AtlasNotFoundError", "BadConceptIdError", "CatalogBusyError", "CorruptFileError",
           "InvalidInputError", "NoIndexError", "NoLabelsError", "QueryTimeoutError", "ReadOnlyAtlasError",
           "ReadOnlySqlError", "SchemaTooNewError", "SchemaTooOldError", "SqlError", "UnknownLabelError",
           "UnknownSaeError")
_NAMES = {
    **dict.fromkeys(("Atlas", "default_path", "open_atlas", "upgrade_atlas"), "atlas.store.atlas"),
    **dict.fromkeys(_ERRORS, "atlas.store.errors"),
    **dict.fromkeys(("ConceptRef", "concept_id", "parse_concept_id"), "atlas.store.ids"),
    **dict.fromkeys(("ConceptInfo", "ImageHit", "Neighbor"), "atlas.store.reads"),
    **dict.fromkeys(("QueryResult", "SaeInfo"), "atlas.store.views"),
}
__all__ = sorted(_NAMES)
__getattr__, __dir__ = lazy_face(__name__, _NAMES)
