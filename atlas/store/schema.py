"""The catalog's tables as SQLAlchemy 2 ORM models: the schema at the newest migration (head).

The migrations in `migrations/versions` create and change these tables on disk; a test checks that
upgrading an empty catalog to head gives exactly these columns. Integer ids are assigned by the writer
as max(id) + 1 while it holds DuckDB's exclusive lock on the catalog file: DuckDB has no autoincrement,
and a Sequence would also be consumed by rows an `ON CONFLICT DO NOTHING` skips (ids stay dense and
follow insertion order, so images keep the order in which they were generated).

Big or constant-per-file data never lives here: codes are Parquet files under codes/ (listed in
`files`), masks are PNG files (objects.mask_path), FAISS indexes are files under index/.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, BigInteger, DateTime, Double, Integer, String, UniqueConstraint, func
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Model(Base):
    """A text-to-image model the atlas was built from."""

    __tablename__ = "models"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(String, unique=True)
    path: Mapped[str | None] = mapped_column(String)
    spec: Mapped[dict] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime, server_default=func.now())


class Prompt(Base):
    __tablename__ = "prompts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    text: Mapped[str] = mapped_column(String, unique=True)
    split: Mapped[str] = mapped_column(String)


class Image(Base):
    """One generated image; (prompt, seed, guidance, steps) identifies it, so adding it again is a no-op."""

    __tablename__ = "images"
    __table_args__ = (UniqueConstraint("prompt_id", "seed", "guidance", "steps"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    prompt_id: Mapped[int] = mapped_column(Integer)
    seed: Mapped[int] = mapped_column(BigInteger)
    guidance: Mapped[float] = mapped_column(Double)
    steps: Mapped[int] = mapped_column(Integer)
    path: Mapped[str | None] = mapped_column(String)


class Sae(Base):
    """A trained SAE; one per (block, t, branch, variant), which is what a concept id names (atlas.store.ids: the
    variant "" is the primary SAE of its (block, t, branch), others are named e.g. k20; added by migration 0003).

    value_qbase is the quantisation offset of its codes (see atlas.store.codes); grid_h x grid_w the
    spatial grid of the hooked block.
    """

    __tablename__ = "saes"
    __table_args__ = (UniqueConstraint("block", "t", "branch", "variant"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    block: Mapped[str] = mapped_column(String)
    t: Mapped[float] = mapped_column(Double)
    branch: Mapped[str] = mapped_column(String)
    variant: Mapped[str] = mapped_column(String, default="", server_default="")
    k: Mapped[int] = mapped_column(Integer)
    n_latents: Mapped[int] = mapped_column(Integer)
    d_in: Mapped[int] = mapped_column(Integer)
    grid_h: Mapped[int | None] = mapped_column(Integer)
    grid_w: Mapped[int | None] = mapped_column(Integer)
    metrics: Mapped[dict] = mapped_column(JSON, default=dict)
    path: Mapped[str | None] = mapped_column(String)
    value_qbase: Mapped[int | None] = mapped_column(Integer)
    n_codes: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime, server_default=func.now())


class Concept(Base):
    """One SAE latent: statistics from encoding, the best label from linking, a user-editable name and note."""

    __tablename__ = "concepts"
    sae_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    latent: Mapped[int] = mapped_column(Integer, primary_key=True)
    frequency: Mapped[float | None] = mapped_column(Double)
    mean_activation: Mapped[float | None] = mapped_column(Double)
    decoder_norm: Mapped[float | None] = mapped_column(Double)
    best_label: Mapped[str | None] = mapped_column(String)
    name: Mapped[str | None] = mapped_column(String)
    note: Mapped[str | None] = mapped_column(String)


class Label(Base):
    __tablename__ = "labels"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(String, unique=True)
    source: Mapped[str | None] = mapped_column(String)


class Object(Base):
    """An annotated object in an image: label, detector score, box (pixels) and a mask file."""

    __tablename__ = "objects"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    image_id: Mapped[int] = mapped_column(Integer)
    label_id: Mapped[int] = mapped_column(Integer)
    score: Mapped[float | None] = mapped_column(Double)
    x0: Mapped[float | None] = mapped_column(Double)
    y0: Mapped[float | None] = mapped_column(Double)
    x1: Mapped[float | None] = mapped_column(Double)
    y1: Mapped[float | None] = mapped_column(Double)
    mask_path: Mapped[str | None] = mapped_column(String)
    source: Mapped[str] = mapped_column(String, default="")


class ConceptLabel(Base):
    """How well one concept's activation maps predict one label's masks (filled by `atlas link`)."""

    __tablename__ = "concept_labels"
    sae_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    latent: Mapped[int] = mapped_column(Integer, primary_key=True)
    label_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    mean_iou: Mapped[float | None] = mapped_column(Double)
    hit_rate: Mapped[float | None] = mapped_column(Double)
    precision: Mapped[float | None] = mapped_column(Double)
    recall: Mapped[float | None] = mapped_column(Double)
    support: Mapped[int | None] = mapped_column(Integer)


class Intervention(Base):
    """The log of edits made with a concept (added by migration 0002)."""

    __tablename__ = "interventions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    created_at: Mapped[datetime] = mapped_column(DateTime, server_default=func.now())
    concept_id: Mapped[str] = mapped_column(String)
    sae_id: Mapped[int] = mapped_column(Integer)
    latent: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String)
    strength: Mapped[float | None] = mapped_column(Double)
    params: Mapped[dict] = mapped_column(JSON, default=dict)
    output_path: Mapped[str | None] = mapped_column(String)
    note: Mapped[str | None] = mapped_column(String)


class File(Base):
    """A finished file of the atlas (codes, FAISS index, ...): recorded only after it was renamed into place.

    kind is codes_by_latent (sae_id, bucket), codes_by_image (bucket), faiss_sae (sae_id), faiss_block
    (key = "<block>/<branch>", with "@<variant>" for a variant: atlas.store.ids.block_key), activations (the
    manifest of the capture the codes were encoded from), or only for its checksum (atlas.store.revisions.
    CONTENT_KINDS) image, mask or sae_checkpoint (sae_id: its weights and config files). sha256 is the file's
    checksum (added by migration 0004; NULL for files listed before).
    """

    __tablename__ = "files"
    path: Mapped[str] = mapped_column(String, primary_key=True)
    kind: Mapped[str] = mapped_column(String)
    sae_id: Mapped[int | None] = mapped_column(Integer)
    bucket: Mapped[int | None] = mapped_column(Integer)
    key: Mapped[str | None] = mapped_column(String)
    rows: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime, server_default=func.now())
    sha256: Mapped[str | None] = mapped_column(String)


class Stage(Base):
    """A finished pipeline stage: `atlas build` skips a stage whose row exists."""

    __tablename__ = "stages"
    name: Mapped[str] = mapped_column(String, primary_key=True)
    info: Mapped[dict] = mapped_column(JSON, default=dict)
    done_at: Mapped[datetime] = mapped_column(DateTime, server_default=func.now())


class Trajectory(Base):
    """A concept's activity when its SAE encodes the same images' activations at another captured step `at_t`
    (added by migration 0005, filled by `atlas evolve`): mass is its summed activation per image, active_fraction
    the share of images it fires on, mean_activation its mean where it fires. first_t, peak_t and fade_t are the
    concept's, repeated on each of its rows: the first t (in denoising order, from 1.0 down) at which it is active,
    the t of its largest mass, and the first t after the peak at which it no longer is (NULL: never, or never
    active)."""

    __tablename__ = "trajectories"
    sae_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    latent: Mapped[int] = mapped_column(Integer, primary_key=True)
    at_t: Mapped[float] = mapped_column(Double, primary_key=True)
    mass: Mapped[float | None] = mapped_column(Double)
    active_fraction: Mapped[float | None] = mapped_column(Double)
    mean_activation: Mapped[float | None] = mapped_column(Double)
    first_t: Mapped[float | None] = mapped_column(Double)
    peak_t: Mapped[float | None] = mapped_column(Double)
    fade_t: Mapped[float | None] = mapped_column(Double)


class Lineage(Base):
    """A link from a concept (parent) to one of the next denoising step's SAE of the same block, branch and variant
    (child; added by migration 0005, filled by `atlas evolve`): the cosine of their decoder directions, the
    coactivation (cosine of their activation maps over the same images and positions, each SAE on its own step's
    activations) and the score that ranks links (their geometric mean, negative cosines counting as 0)."""

    __tablename__ = "lineage"
    parent_sae_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    parent_latent: Mapped[int] = mapped_column(Integer, primary_key=True)
    child_sae_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    child_latent: Mapped[int] = mapped_column(Integer, primary_key=True)
    cosine: Mapped[float | None] = mapped_column(Double)
    coactivation: Mapped[float | None] = mapped_column(Double)
    score: Mapped[float | None] = mapped_column(Double)


TABLES = [cls.__tablename__ for cls in Base.__subclasses__()]
"""Every catalog table; each is published as a Parquet snapshot for readers (atlas.store.revisions.TABLES, which
readers use without loading SQLAlchemy, must name the same)."""
