"""The atlas store: catalog, Parquet codes, DuckDB views, FAISS indexes (see atlas.store.atlas).

    from atlas.store import Atlas, open_atlas
    atlas = open_atlas("atlas")                      # read-only
    atlas.concepts(label="dog", t=1.0, block="mid")
    atlas.top_images("mid/1.0/412")
    atlas.sql("SELECT count(*) FROM codes").rows
"""

from atlas.store.atlas import Atlas, default_path, open_atlas, upgrade_atlas
from atlas.store.errors import (
    AtlasError,
    AtlasNotFoundError,
    BadConceptIdError,
    CatalogBusyError,
    CorruptFileError,
    InvalidInputError,
    NoIndexError,
    NoLabelsError,
    QueryTimeoutError,
    ReadOnlyAtlasError,
    ReadOnlySqlError,
    SchemaTooNewError,
    SchemaTooOldError,
    SqlError,
    UnknownLabelError,
    UnknownSaeError,
)
from atlas.store.ids import ConceptRef, concept_id, parse_concept_id
from atlas.store.reads import ConceptInfo, ImageHit, Neighbor
from atlas.store.views import QueryResult, SaeInfo

__all__ = [
    "Atlas", "AtlasError", "AtlasNotFoundError", "BadConceptIdError", "CatalogBusyError", "ConceptInfo", "ConceptRef",
    "CorruptFileError", "ImageHit", "InvalidInputError", "Neighbor", "NoIndexError", "NoLabelsError", "QueryResult",
    "QueryTimeoutError", "ReadOnlyAtlasError", "ReadOnlySqlError", "SaeInfo", "SchemaTooNewError",
    "SchemaTooOldError", "SqlError", "UnknownLabelError", "UnknownSaeError", "concept_id", "default_path",
    "open_atlas", "parse_concept_id", "upgrade_atlas",
]
