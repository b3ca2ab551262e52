"""The summary of a labeling run: counts, per-class shares, failures; as a dict, table rows and markdown."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from maskclip_core.labeling.run_records import BatchOutcome, BatchStats, FailedBatch

# A run with millions of images and a broken bucket could fail many batches; the summary keeps the first
# ones in detail and counts the rest, so it stays small.
MAX_FAILED_BATCHES_LISTED = 50


@dataclass
class RunSummary:
    """Aggregated as batches finish; everything here is O(classes + listed failures), not O(images)."""

    run_id: str
    source: str
    dataset: str
    config_hash: str
    labeler: str
    classes: tuple[str, ...] = ()
    listed: int = 0  # files the listing yielded (after extension / glob filters): "images seen"
    unchanged: int = 0  # skipped without reading: (uri, version) already done under the config
    gone: list[str] = field(default_factory=list)  # uris that left the source since the last run
    submitted_images: int = 0
    batches_submitted: int = 0
    batches_done: int = 0
    stats: BatchStats = field(default_factory=BatchStats)
    failed_batches: list[FailedBatch] = field(default_factory=list)
    failed_batch_count: int = 0
    failed_batch_images: int = 0
    thumbnails: list[dict[str, str]] = field(default_factory=list)
    listing_complete: bool = False
    error: str | None = None  # what stopped the run early (e.g. the listing failed), besides failed batches
    started_at: float = field(default_factory=time.monotonic)
    elapsed_s: float | None = None
    report_urls: dict[str, str] = field(default_factory=dict)
    worker_pids: set[int] = field(default_factory=set)  # processes that ran batches

    # --- updates ----------------------------------------------------------------------------------------

    def add_batch(self, outcome: BatchOutcome) -> None:
        self.batches_done += 1
        self.stats.merge(outcome.stats)
        self.thumbnails.extend(outcome.thumbnails)
        self.worker_pids.add(outcome.pid)

    def add_failed_batch(self, failed: FailedBatch) -> None:
        self.batches_done += 1
        self.failed_batch_count += 1
        self.failed_batch_images += failed.images
        if len(self.failed_batches) < MAX_FAILED_BATCHES_LISTED:
            self.failed_batches.append(failed)

    def add(self, done: BatchOutcome | FailedBatch) -> None:
        """One finished batch, labeled or failed."""
        if isinstance(done, FailedBatch):
            self.add_failed_batch(done)
        else:
            self.add_batch(done)

    def stop(self, error: str) -> None:
        """Record what stopped the run early; the report then says so instead of "completed"."""
        self.error = error if self.error is None else f"{self.error}; {error}"

    def finish(self) -> None:
        self.elapsed_s = time.monotonic() - self.started_at

    # --- totals -----------------------------------------------------------------------------------------

    @property
    def skipped(self) -> int:
        return self.unchanged + self.stats.skipped

    @property
    def labeled(self) -> int:
        return self.stats.labeled

    @property
    def rejected(self) -> int:
        return sum(self.stats.rejected.values())

    @property
    def failed(self) -> int:
        return sum(self.stats.failed.values()) + self.failed_batch_images

    @property
    def processed_images(self) -> int:
        """Images of finished batches (done or failed)."""
        return self.stats.seen + self.failed_batch_images

    def failed_images_note(self) -> str | None:
        """``"N of M images failed (reason: n, ...)"`` for the images the run tried to label, or None if none
        failed. M is what the run read or tried to (known files skipped unread do not count)."""
        if not self.failed:
            return None
        reasons = {
            **self.stats.failed,
            **({"batch_failed": self.failed_batch_images} if self.failed_batch_images else {}),
        }
        detail = ", ".join(f"{reason}: {n}" for reason, n in sorted(reasons.items()))
        return f"{self.failed} of {self.processed_images} images failed ({detail})"

    def failed_share(self) -> float:
        """Failed images over the images the run tried (0 when it tried none)."""
        return self.failed / self.processed_images if self.processed_images else 0.0

    @property
    def ok(self) -> bool:
        return self.failed_batch_count == 0 and self.error is None

    @property
    def finished(self) -> bool:
        return self.elapsed_s is not None

    @property
    def status(self) -> str:
        """``running``, ``completed`` or ``FAILED: <why>``: the one wording of every report, table and progress."""
        if not self.finished:
            return "running"
        problems = [self.error] if self.error else []
        if self.failed_batch_count:
            problems.append(f"{self.failed_batch_count} batch(es) failed")
        return "FAILED: " + "; ".join(problems) if problems else "completed"

    def per_class(self) -> list[dict[str, Any]]:
        total = self.stats.labeled_pixels
        names = list(self.classes) + sorted(set(self.stats.class_pixels) - set(self.classes))
        out = []
        for name in names:
            pixels = int(self.stats.class_pixels.get(name, 0))
            conf = self.stats.class_confidence.get(name, 0.0)
            out.append(
                {
                    "class": name,
                    "pixels": pixels,
                    "pixel_share": round(pixels / total, 4) if total else 0.0,
                    "mean_confidence": round(conf / pixels, 4) if pixels else None,
                }
            )
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "source": self.source,
            "dataset": self.dataset,
            "config_hash": self.config_hash,
            "labeler": self.labeler,
            "ok": self.ok,
            "status": self.status,
            "images_seen": self.listed,
            "labeled": self.labeled,
            "skipped": self.skipped,
            "skipped_unchanged": self.unchanged,
            "skipped_known_content": self.stats.skipped,
            "gone": len(self.gone),
            "gone_uris": self.gone[:100],
            "rejected": self.rejected,
            "rejected_by_reason": dict(sorted(self.stats.rejected.items())),
            "failed": self.failed,
            "failed_by_reason": {
                **dict(sorted(self.stats.failed.items())),
                **({"batch_failed": self.failed_batch_images} if self.failed_batch_images else {}),
            },
            "converted": self.stats.converted,
            "memory_deferred": list(self.stats.memory_deferred),  # waited for the worker's memory budget
            "annotations": self.stats.annotations,
            "batches": {"submitted": self.batches_submitted, "done": self.batches_done},
            "failed_batches": [vars(b) for b in self.failed_batches],
            "failed_batch_count": self.failed_batch_count,
            "classes": self.per_class(),
            "thumbnails": list(self.thumbnails),
            "seconds": {k: round(v, 3) for k, v in sorted(self.stats.seconds.items())},
            "elapsed_s": None if self.elapsed_s is None else round(self.elapsed_s, 3),
            "reports": dict(self.report_urls),
            "worker_pids": sorted(self.worker_pids),
        }

    # --- renderings -------------------------------------------------------------------------------------

    def table_rows(self) -> list[dict[str, Any]]:
        """One table: image counts (rejected and failed by reason), then one row per class."""
        rows: list[dict[str, Any]] = []

        def count(item: str, value: int) -> None:
            rows.append({"item": item, "images": value, "pixel_share": None, "mean_confidence": None})

        count("images seen", self.listed)
        count("labeled", self.labeled)
        count("skipped (already labeled)", self.skipped)
        count("rejected", self.rejected)
        for reason, n in sorted(self.stats.rejected.items()):
            count(f"rejected: {reason}", n)
        count("failed", self.failed)
        for reason, n in sorted(self.stats.failed.items()):
            count(f"failed: {reason}", n)
        if self.failed_batch_images:
            count(f"failed: batch_failed ({self.failed_batch_count} batches)", self.failed_batch_images)
        for c in self.per_class():
            rows.append(
                {
                    "item": f"class: {c['class']}",
                    "images": None,
                    "pixel_share": c["pixel_share"],
                    "mean_confidence": c["mean_confidence"],
                }
            )
        return rows

    def headline(self) -> str:
        """One line for the table artifact's description and logs."""
        return f"Labeling of {self.source} -> {self.dataset}: {self.status}"

    def progress_percent(self) -> float:
        """Share of the listed work done; 100 once the run has ended (every submitted batch has ended too)."""
        if self.finished:
            return 100.0
        percent = 100.0 * self.processed_images / self.submitted_images if self.submitted_images else 0.0
        return percent if self.listing_complete else min(percent, 99.0)

    def progress_text(self) -> str:
        """The progress artifact's description: counts, and what the run is doing or how it ended."""
        counts = f"{self.labeled} labeled, {self.skipped} skipped, {self.rejected} rejected, {self.failed} failed"
        if self.finished and self.ok and not self.submitted_images:
            return f"completed: nothing new ({self.listed} images seen, {self.skipped} already labeled)"
        stage = self.status if self.finished else ("listing complete" if self.listing_complete else "listing")
        return (
            f"{stage}: {self.processed_images}/{self.submitted_images} images in {self.batches_done}/"
            f"{self.batches_submitted} batches; {counts}"
        )

    def markdown(self, max_thumbnails: int = 8, image_sources: Mapping[str, str] | None = None) -> str:
        """The report. ``image_sources`` maps thumbnail URLs to what a browser loads (``report_images``: inline
        ``data:`` URIs or presigned links), for the Prefect artifact; without it thumbnails are linked relative
        to ``reports/<run>.md``, for the stored report."""
        status = "completed" if self.status == "completed" else f"**{self.status}**"
        lines = [
            f"# Labeling run `{self.run_id}`: {status}",
            "",
            f"- source: `{self.source}`",
            f"- dataset: `{self.dataset}`",
            f"- labeler: `{self.labeler}`, config hash `{self.config_hash}`",
            f"- images seen {self.listed}, labeled {self.labeled}, skipped {self.skipped}, "
            f"rejected {self.rejected}, failed {self.failed}",
        ]
        if self.elapsed_s is not None:
            lines.append(f"- elapsed {self.elapsed_s:.1f} s")
        if self.stats.rejected or self.stats.failed or self.failed_batch_images:
            lines += ["", "| outcome | reason | images |", "| --- | --- | ---: |"]
            lines += [f"| rejected | {r} | {n} |" for r, n in sorted(self.stats.rejected.items())]
            lines += [f"| failed | {r} | {n} |" for r, n in sorted(self.stats.failed.items())]
            if self.failed_batch_images:
                lines.append(f"| failed | batch_failed | {self.failed_batch_images} |")
        if self.failed_batches:
            lines += ["", "## Failed batches (picked up again by the next run)", ""]
            lines += [f"- batch {b.index} ({b.images} images): {b.error}" for b in self.failed_batches]
        lines += ["", "## Classes", "", "| class | pixel share | mean confidence |", "| --- | ---: | ---: |"]
        for c in self.per_class():
            conf = "" if c["mean_confidence"] is None else f"{c['mean_confidence']:.3f}"
            lines.append(f"| {c['class']} | {c['pixel_share']:.2%} | {conf} |")
        if self.thumbnails:
            lines += ["", "## Examples", ""]
            for t in self.thumbnails[:max_thumbnails]:
                name = t["uri"].rsplit("/", 1)[-1]
                if image_sources is None:
                    src = self._relative_to_reports(t["url"])
                    lines.append(f"[![{name}]({src})]({src}) `{t['uri']}`")
                elif t["url"] in image_sources:
                    lines.append(f"![{name}]({image_sources[t['url']]}) `{t['uri']}`")
                else:
                    continue  # could not be read: named nowhere rather than shown broken
                lines.append("")
        return "\n".join(lines).rstrip() + "\n"

    def card_line(self, image_sources: Mapping[str, str], max_thumbnails: int = 3) -> str:
        """One markdown line for the report artifact's description, which Prefect's Artifacts tab shows on the
        artifact's card (its first line only): the status and the first thumbnails, so they show without
        opening the report."""
        images = [
            f"![{t['uri'].rsplit('/', 1)[-1]}]({image_sources[t['url']]})"
            for t in self.thumbnails
            if t["url"] in image_sources
        ][:max_thumbnails]
        return " ".join([f"Labeling run report: {self.status}", *images])

    def _relative_to_reports(self, url: str) -> str:
        """``../thumbnails/<run>/x.jpg`` for a thumbnail under the dataset (the report is in ``reports/``)."""
        root = self.dataset.rstrip("/") + "/"
        return "../" + url[len(root) :] if url.startswith(root) else url
