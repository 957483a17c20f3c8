"""The atlas store: catalog, Parquet codes, DuckDB views, FAISS indexes (see atlas.store.atlas).

Reading, with an `Atlas` (it has no write methods and never opens the catalog file):

    from atlas.store import open_atlas, open_writer
    store = open_atlas("demo/atlas")
    store.concepts(label="dog", t=1.0, block="mid")
    store.top_images("mid/1.0/412")
    store.query("SELECT id FROM saes WHERE block = ?", ["mid"])   # the API's own SQL: parameterised, uncapped
    store.sql("SELECT count(*) FROM codes").rows                  # user SQL: sandboxed, time limit, row cap

Writing, with a `Writer` opened explicitly (atlas.store.writer); its `with` block finalizes and releases:

    with open_writer("demo/atlas") as w:          # or Atlas.create(path), then `with atlas.writer() as w:`
        w.catalog.rename_concept("mid/1.0/412", "dog ears")   # rows: models, prompts, images, SAEs, labels, ...
        w.codes.write(sae_id, image_id, row, col, latent, value); w.codes.finalize()
        w.objects.add([{"image_id": 3, "label": "dog", "mask": mask}], source="sam")
        w.index.add(sae_id, decoder)
"""

from atlas.lazy import lazy_face

_ERRORS = ("AtlasError", "AtlasNotFoundError", "BadConceptIdError", "CatalogBusyError", "CorruptFileError",
           "InvalidInputError", "NoIndexError", "NoLabelsError", "QueryMemoryError", "QueryTimeoutError",
           "ReadOnlySqlError", "ResultTooLargeError", "SchemaTooNewError", "SchemaTooOldError", "SqlError",
           "UnknownLabelError", "UnknownSaeError")
_NAMES = {
    **dict.fromkeys(("Atlas", "default_path", "open_atlas", "open_writer", "upgrade_atlas"), "atlas.store.atlas"),
    **dict.fromkeys(_ERRORS, "atlas.store.errors"),
    **dict.fromkeys(("ConceptRef", "concept_id", "parse_concept_id"), "atlas.store.ids"),
    **dict.fromkeys(("ConceptInfo", "ImageHit", "Neighbor"), "atlas.store.reads"),
    **dict.fromkeys(("QueryResult", "SaeInfo", "SqlStream"), "atlas.store.views"),
    "Writer": "atlas.store.writer",
}
__all__ = sorted(_NAMES)
__getattr__, __dir__ = lazy_face(__name__, _NAMES)
