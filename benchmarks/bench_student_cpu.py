"""Students on the CPU in bf16 against fp32: inference images/s and agreement, and training steps/s.

    .venv/bin/python benchmarks/bench_student_cpu.py [--limit 6] [--variants light,resnet101_v2] [--train-steps 3]

Inference: ``StudentLabeler(precision="bf16")`` (backbone and head from a bf16 channels_last copy, the frozen
text classifier and the softmax in fp32) against the default fp32 labeler on the COCO sample's val photos, 20
VOC classes, random weights (``_common.random_student``, BatchNorm statistics fitted to the photos); both label
every batch in rotating order. Agreement: cosine similarity of the dense features (``model.embed``) per
position on the first photo, pixel agreement of the labels and the number of classes present in the fp32
labels (agreement is reported as null when fewer than ``--min-classes`` win pixels). With random text
embeddings a random student labels everything with one class, so the class embeddings are its own fp32
features at random positions of the photos: many classes win pixels, but a random student's features all point
nearly the same way, so the classes' cosines differ by ~1e-5 and many pixels sit on a tie: for the light
student (MobileNetV3) the pixel agreement then measures ties (0.45 at a feature cosine of 0.999996), and the
feature cosine is the meaningful figure; centring the embeddings leaves only 2 classes. Trained students
separate classes by far more than bf16's rounding.

Training (``--train-steps`` > 0): SGD steps on random 2 x 3 x 320 x 320 crops with random labels, fp32 against
``torch.autocast("cpu", torch.bfloat16)`` around the forward pass (loss and backward as ``student.train``),
steps/s each, alternating. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import STUDENT_VARIANTS, add_image_arguments, load_images, machine, random_student  # noqa: E402
from bench_cpu_paths import cpu_features, cpu_model  # noqa: E402

from maskclip_core.student import StudentLabeler  # noqa: E402
from maskclip_core.student.inference import low_precision_embedder  # noqa: E402
from maskclip_core.student.preprocess import image_to_tensor, network_size, normalize, resize_image  # noqa: E402


def features(model, image: np.ndarray, bf16: bool) -> torch.Tensor:
    size = network_size(image.shape[0], image.shape[1], 448, 32)
    with torch.inference_mode():
        pixels = normalize(resize_image(image_to_tensor(image, "cpu"), size)[None])
        if bf16:
            body = low_precision_embedder(model)
            return body(pixels.to(dtype=torch.bfloat16, memory_format=torch.channels_last)).float()
        return model.embed(pixels)


def spread_vocabulary(model, images: list[np.ndarray]) -> None:
    """Class embeddings = the student's own fp32 features at random positions of the photos, so that many
    classes win pixels (with random text embeddings a random student labels everything with one class)."""
    feats = torch.cat([features(model, im, False)[0].flatten(1) for im in images], dim=1)
    picks = torch.randperm(feats.shape[1], generator=torch.Generator().manual_seed(0))[: model.vocabulary.num_classes]
    model.set_vocabulary(feats[:, picks].T.contiguous(), model.vocabulary)


def fit_batchnorm(model, images: list[np.ndarray]) -> None:
    """BatchNorm running statistics from the photos (three train-mode passes, no gradient), as a trained
    student's would fit its inputs: at their initial values a random MobileNetV3's features are near-constant."""
    crops = []
    for im in images[:4]:
        size = network_size(im.shape[0], im.shape[1], 448, 32)
        crops.append(normalize(resize_image(image_to_tensor(im, "cpu"), size)[:, :448, :448]))
    batch = torch.stack(crops)  # one batch: BatchNorm in training mode needs more than one value per channel
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(batch, upsample=False)
    model.eval()


def inference(variant: str, images: list[np.ndarray], batch: int, min_classes: int) -> dict:
    model = random_student(variant, "cpu")
    fit_batchnorm(model, images)
    spread_vocabulary(model, images)
    labelers = {"fp32": StudentLabeler(model, batch_size=batch), "bf16": StudentLabeler(model, precision="bf16")}
    labelers["bf16"].batch_size = batch
    first = {}
    for name, labeler in labelers.items():
        t0 = time.perf_counter()
        labeler.label(images[:batch])
        first[name] = round(time.perf_counter() - t0, 1)
    names = list(labelers)
    seconds = dict.fromkeys(names, 0.0)
    results: dict[str, list] = {n: [] for n in names}
    for b, start in enumerate(range(0, len(images), batch)):
        for name in names[b % 2 :] + names[: b % 2]:
            t0 = time.perf_counter()
            results[name].extend(labelers[name].label(images[start : start + batch]))
            seconds[name] += time.perf_counter() - t0
    reference = results["fp32"]
    present = np.unique(np.concatenate([r.labels.ravel() for r in reference]))
    meaningful = len(present) >= min_classes
    same = sum(int((r.labels == e.labels).sum()) for r, e in zip(results["bf16"], reference, strict=True))
    cos = F.cosine_similarity(features(model, images[0], True), features(model, images[0], False), dim=1).flatten()
    return {
        "fp32_images_per_second": round(len(images) / seconds["fp32"], 3),
        "bf16_images_per_second": round(len(images) / seconds["bf16"], 3),
        "bf16_speedup_vs_fp32": round(seconds["fp32"] / seconds["bf16"], 3),
        "dense_cosine": {"mean": round(float(cos.mean()), 6), "min": round(float(cos.min()), 6)},
        "classes_in_fp32_labels": int(len(present)),
        "pixel_agreement_vs_fp32": round(same / sum(e.labels.size for e in reference), 5) if meaningful else None,
        "first_call_seconds": first,
    }


def training(variant: str, steps: int) -> dict:
    model = random_student(variant, "cpu").train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    images = torch.randn(2, 3, 320, 320, generator=g)
    labels = torch.randint(0, model.vocabulary.num_classes, (2, 320, 320), generator=g)

    def step(bf16: bool) -> float:
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(images)
        loss = F.cross_entropy(logits.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return time.perf_counter() - t0

    step(False), step(True)  # warm-up
    times: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for i in range(steps):
        for name in ("fp32", "bf16") if i % 2 == 0 else ("bf16", "fp32"):
            times[name].append(step(name == "bf16"))
    med = {n: statistics.median(t) for n, t in times.items()}
    return {
        "batch": "2 x 3 x 320 x 320",
        "fp32_steps_per_second": round(1 / med["fp32"], 3),
        "bf16_autocast_steps_per_second": round(1 / med["bf16"], 3),
        "bf16_speedup_vs_fp32": round(med["fp32"] / med["bf16"], 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_image_arguments(parser, limit=6)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--variants", default="light,resnet101_v2", help=f"from {', '.join(STUDENT_VARIANTS)}")
    parser.add_argument("--train-steps", type=int, default=3, help="timed training steps per precision (0: none)")
    parser.add_argument("--min-classes", type=int, default=3)
    args = parser.parse_args()
    images = load_images(args.images, args.limit)
    report = {}
    for variant in args.variants.split(","):
        report[variant] = {"inference": inference(variant, images, args.batch, args.min_classes)}
        if args.train_steps:
            report[variant]["training"] = training(variant, args.train_steps)
    print(
        json.dumps(
            {
                "benchmark": "bench_student_cpu",
                "images": len(images),
                "machine": f"{machine()}, {cpu_model()}",
                "cpu_features": cpu_features(),
                "torch": torch.__version__,
                "students": report,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
