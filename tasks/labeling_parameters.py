"""The parameters of a labeling run (the flow's ``options``): how it is carried out, none of it in the config hash.

The Prefect form shows these fields with their bounds and descriptions; the CLI's options are built from them."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from maskclip_core.dataset.lease import DEFAULT_TTL_S
from maskclip_core.labeling.decode import DEFAULT_MAX_PIXELS
from maskclip_core.labeling.memory_budget import DEFAULT_MEMORY_BUDGET
from maskclip_core.storage.fs import DEFAULT_IMAGE_EXTENSIONS


class LabelingRunParameters(BaseModel):
    """How a run is carried out (none of this changes the labels, so none of it is in the config hash)."""

    model_config = ConfigDict(extra="forbid")

    glob: str | None = Field(None, description="Only files whose path relative to the source matches (`**/*.jpg`)")
    extensions: list[str] | None = Field(
        default_factory=lambda: list(DEFAULT_IMAGE_EXTENSIONS),
        description="File extensions to list (case-insensitive); null lists every file",
    )
    batch_size: int = Field(16, ge=1, le=4096, description="Images per batch task (one part file per batch)")
    concurrency: int = Field(2, ge=1, le=256, description="Batches running at once in the default thread pool")
    workers: int | None = Field(
        None, ge=1, le=1024, description="Run batches on a local Dask cluster of this many worker processes"
    )
    dask_address: str | None = Field(None, description="Run batches on an existing Dask scheduler (tcp://host:8786)")
    max_in_flight: int | None = Field(
        None, ge=1, le=100_000, description="Batches submitted but not finished (default: twice the parallelism)"
    )
    chunk_batches: int = Field(
        64,
        ge=1,
        le=100_000,
        description="Batches per `label-chunk` sub-run (Prefect's per-task bookkeeping is freed as each one ends)",
    )
    retries: int = Field(3, ge=0, le=50, description="Retries of a batch or storage call that failed")
    retry_delay_seconds: float = Field(
        2.0, ge=0.0, le=3600.0, description="Delay before the first retry; it doubles on each further retry"
    )
    thumbnails: int = Field(6, ge=0, le=200, description="Overlay thumbnails written to DATASET/thumbnails/")
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, ge=1, description="Images with more pixels are rejected (bombs)")
    memory_budget_mb: int = Field(
        DEFAULT_MEMORY_BUDGET >> 20,
        ge=64,
        le=1 << 24,
        description="Decoded images a worker process holds at once, in MB (larger images wait; any that can never "
        "fit fails with over_memory_budget)",
    )
    lease_wait_s: float = Field(
        0.0, ge=0.0, le=86_400.0, description="Wait this long for another run's lease on the dataset, then exit"
    )
    lease_ttl_s: float = Field(
        DEFAULT_TTL_S, ge=1.0, le=86_400.0, description="Lease expiry: a killed run frees the dataset after this long"
    )
    force_lease: bool = Field(False, description="Take the dataset's lease even from a live run")
    max_gone_fraction: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="A complete listing that misses more than this share of the dataset's files from the source "
        "marks nothing gone and fails the run (an unmounted folder, a wrong prefix); 1 accepts any deletion",
    )
    max_failed_fraction: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="A run in which more than this share of the images it tried failed (missing, unreadable, "
        "undecodable) ends Failed, so alerting on Failed runs sees a vanished or broken source; any failed image "
        "is logged at warning level. 1 never fails for failed images",
    )
    source_storage_options: dict[str, Any] = Field(
        default_factory=dict, description="fsspec options for the source (default: AWS environment / profile)"
    )
    dataset_storage_options: dict[str, Any] = Field(
        default_factory=dict, description="fsspec options for the dataset (default: AWS environment / profile)"
    )

    @model_validator(mode="after")
    def _one_runner(self) -> LabelingRunParameters:
        if self.workers is not None and self.dask_address:
            raise ValueError("give `workers` (a local Dask cluster) or `dask_address` (an existing one), not both")
        return self

    @property
    def uses_dask(self) -> bool:
        return self.workers is not None or bool(self.dask_address)

    def parallelism(self) -> int:
        return self.workers or (4 if self.dask_address else self.concurrency)

    def in_flight_limit(self) -> int:
        return self.max_in_flight or 2 * self.parallelism()
