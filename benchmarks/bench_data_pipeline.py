"""The training image pipeline against a bare torchvision one, images per second per worker.

    python benchmarks/bench_data_pipeline.py [--size 500x375] [--workers 0 1 2] [--repeats 8]

One folder of photo-like JPEGs (``--classes`` x ``--per-class``, ``--size``, quality 90:
smooth colour fields plus grain, so they compress and decode like photos; CUB and SOP
photos are mostly about 500 x 375) in CUB-200-2011's official layout (``images.txt``,
``image_class_labels.txt``, ``images/<class>/<name>.jpg``), whose ``images/`` folder is also
a torchvision ``ImageFolder``. Two pipelines read it, the same transforms on both:

- ``ours``: what ``python -m see_dml.train dataset=cub`` trains on: ``see_dml.data.cub.CUB200``
  in the datamodule (``RetrievalDataModule``, the config's data defaults: class-balanced
  batches of ``--batch`` = ``--batch / --m-per-class`` classes x ``--m-per-class``), its own
  ``train_dataloader()``;
- ``bare``: ``torchvision.datasets.ImageFolder(images/)`` + ``DataLoader(batch_size=--batch,
  shuffle=True, drop_last=True)``;

both with ``RandomResizedCrop(224, scale=(0.08, 1), bicubic)``, ``RandomHorizontalFlip``,
``ToTensor``, ``Normalize`` (ImageNet statistics): the datamodule's train transform, and for
``bare`` the same built here by hand (their ``repr`` must match).

For each ``num_workers`` in ``--workers``, ``--repeats`` epochs of each, alternating (ours,
bare, bare, ours, ...) so both see the same load; an epoch is timed from the iterator's
creation (worker start-up included, as in training without persistent workers) to its last
batch. Reported: images/s (wall), images per CPU second (this process plus its reaped
workers), the ratio ours / bare of each pair (median and range), and the scaling from one
worker to two. Then, one process, CPU time per image stage by stage, and the ecosystem's
ways to decode less: PIL's JPEG ``draft`` (DCT-domain downscaling) and a copy of the
images resized once to a shorter side of 256. Results: ``results/data_pipeline.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import datasets
from torchvision import transforms as T

from see_dml.data.cub import CUB200
from see_dml.data.datamodule import RetrievalDataModule
from see_dml.data.transforms import IMAGENET_MEAN, IMAGENET_STD

#: the data keys of ``conf/data/default.yaml`` that shape the train transform
TRANSFORMS = {"image_size": None, "resize": 256, "crop_scale": (0.08, 1.0), "hflip": True,
              "interpolation": "bicubic"}


def loadavg() -> str:
    """The 1, 5 and 15 minute load averages (the machine is shared)."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def cpu_seconds() -> float:
    """CPU time of this process and of its children that have been waited for (the
    DataLoader's workers, once an epoch ends)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def photo_like(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """Smooth colour fields (bilinear upsampling of a coarse grid) plus mild grain."""
    coarse = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
    field = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BILINEAR),
                       dtype=np.int16)
    grain = rng.normal(0, 12, size=(height, width, 3))
    return Image.fromarray(np.clip(field + grain, 0, 255).astype(np.uint8))


def write_cub(root: Path, classes: int, per_class: int, width: int, height: int) -> Path:
    """A CUB_200_2011 folder holding training classes ``1..classes`` only (no test class,
    so that ``images/`` as an ImageFolder holds exactly the training images)."""
    rng = np.random.default_rng(0)
    cub = root / "CUB_200_2011"
    images, labels = [], []
    for class_id in range(1, classes + 1):
        folder = f"{class_id:03d}.Class_{class_id}"
        (cub / "images" / folder).mkdir(parents=True, exist_ok=True)
        for k in range(per_class):
            rel = f"{folder}/Class_{class_id}_{k:04d}.jpg"
            photo_like(rng, width, height).save(cub / "images" / rel, quality=90)
            images.append(rel)
            labels.append(class_id)
    (cub / "images.txt").write_text(
        "".join(f"{i} {p}\n" for i, p in enumerate(images, 1)))
    (cub / "image_class_labels.txt").write_text(
        "".join(f"{i} {c}\n" for i, c in enumerate(labels, 1)))
    return cub


def ours_loader(cub: Path, batch: int, m_per_class: int, workers: int) -> DataLoader:
    """The datamodule's train DataLoader, as ``see_dml.train dataset=cub`` builds it (the
    config's data defaults; ImageNet normalisation, as a timm ResNet hands over)."""
    source = CUB200(cub, val_fraction=0.0, strict_counts=False)
    dm = RetrievalDataModule(source, batch_size=batch, m_per_class=m_per_class,
                             sampler="class_balanced", num_workers=workers,
                             transforms=dict(TRANSFORMS), mean=IMAGENET_MEAN,
                             std=IMAGENET_STD)
    dm.setup("fit")
    return dm.train_dataloader()


def bare_transform() -> T.Compose:
    return T.Compose([
        T.RandomResizedCrop(224, scale=(0.08, 1.0), interpolation=T.InterpolationMode.BICUBIC),
        T.RandomHorizontalFlip(),
        T.ToTensor(),
        T.Normalize(mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD)),
    ])


def bare_loader(cub: Path, batch: int, workers: int) -> DataLoader:
    dataset = datasets.ImageFolder(str(cub / "images"), transform=bare_transform())
    return DataLoader(dataset, batch_size=batch, shuffle=True, drop_last=True,
                      num_workers=workers)


def epoch(loader: DataLoader) -> tuple[int, float, float]:
    """``(images, wall s, CPU s)`` of one epoch, worker start-up and shut-down included."""
    wall, cpu = time.perf_counter(), cpu_seconds()
    n = 0
    for images, *_ in loader:
        n += len(images)
    return n, time.perf_counter() - wall, cpu_seconds() - cpu


def compare(cub: Path, args: argparse.Namespace, workers: int) -> dict[str, Any]:
    """Interleaved epochs of both pipelines at ``workers`` workers."""
    loaders = {"ours": ours_loader(cub, args.batch, args.m_per_class, workers),
               "bare": bare_loader(cub, args.batch, workers)}
    sampler = loaders["ours"].batch_sampler
    runs: dict[str, dict[str, list[float]]] = {
        a: {"img_per_s": [], "img_per_cpu_s": []} for a in loaders}
    for loader in loaders.values():
        epoch(loader)  # warm-up: imports, page cache
    for r in range(args.repeats):
        order = ["ours", "bare"] if r % 2 == 0 else ["bare", "ours"]
        for arm in order:
            if arm == "ours":
                sampler.set_epoch(r + 1)  # what Lightning does each epoch
            n, wall, cpu = epoch(loaders[arm])
            runs[arm]["img_per_s"].append(n / wall)
            runs[arm]["img_per_cpu_s"].append(n / cpu)
        print(f"workers={workers} repeat {r}: ours {runs['ours']['img_per_s'][-1]:.0f} img/s "
              f"({runs['ours']['img_per_cpu_s'][-1]:.0f} per CPU s), bare "
              f"{runs['bare']['img_per_s'][-1]:.0f} img/s "
              f"({runs['bare']['img_per_cpu_s'][-1]:.0f} per CPU s), load {loadavg()}",
              flush=True)
    row: dict[str, Any] = {"num_workers": workers, "images_per_epoch": n}
    for metric in ("img_per_s", "img_per_cpu_s"):
        ratios = [o / b for o, b in zip(runs["ours"][metric], runs["bare"][metric],
                                        strict=True)]
        row[f"ratio_{metric}_median"] = statistics.median(ratios)
        row[f"ratio_{metric}_range"] = [min(ratios), max(ratios)]
        row[f"ratios_{metric}"] = ratios
        for arm in loaders:
            row[f"{arm}_{metric}_median"] = statistics.median(runs[arm][metric])
            row[f"{arm}_{metric}"] = runs[arm][metric]
    return row


def cpu_ms(fn: Callable[[int], Any], n: int) -> float:
    """CPU milliseconds per call of ``fn(i)``, ``i`` in ``0..n-1``."""
    start = time.process_time()
    for i in range(n):
        fn(i)
    return (time.process_time() - start) / n * 1e3


def stages(cub: Path, n: int) -> dict[str, Any]:
    """CPU ms per image, stage by stage, in this process; and the ways to decode less."""
    paths = sorted((cub / "images").rglob("*.jpg"))[:n]
    tf = bare_transform()
    rrc, flip, to_tensor, normalize = tf.transforms

    def decode(i: int, draft: int = 1, source: list[Path] = paths) -> Image.Image:
        with Image.open(source[i]) as img:
            if draft > 1:  # JPEG DCT-domain scaling: decodes at 1/2, 1/4 or 1/8 scale
                img.draft("RGB", (img.width // draft, img.height // draft))
            return img.convert("RGB")

    decoded = [decode(i) for i in range(n)]
    cropped = [rrc(im) for im in decoded]
    tensors = [to_tensor(im) for im in cropped]
    out: dict[str, Any] = {
        "decode": cpu_ms(decode, n),
        "RandomResizedCrop": cpu_ms(lambda i: rrc(decoded[i]), n),
        "RandomHorizontalFlip": cpu_ms(lambda i: flip(cropped[i]), n),
        "ToTensor": cpu_ms(lambda i: to_tensor(cropped[i]), n),
        "Normalize": cpu_ms(lambda i: normalize(tensors[i].clone()), n),
        "full": cpu_ms(lambda i: tf(decode(i)), n),
    }
    # Ways to decode less. PIL's draft picks the largest JPEG scale (1/2, 1/4, 1/8) that
    # keeps the image at least the size asked for.
    from torchvision.io import decode_jpeg, read_file

    out["decode_draft_half"] = cpu_ms(lambda i: decode(i, 2), n)
    out["full_draft_half"] = cpu_ms(lambda i: tf(decode(i, 2)), n)
    out["decode_torchvision_io_cpu"] = cpu_ms(lambda i: decode_jpeg(read_file(str(paths[i]))), n)
    small_dir = cub.parent / "resized256"
    small_dir.mkdir(exist_ok=True)
    small = []
    for i in range(len(paths)):  # a copy written once: shorter side 256, quality 90
        target = small_dir / f"{i}.jpg"
        T.Resize(256, interpolation=T.InterpolationMode.BICUBIC)(decoded[i]).save(
            target, quality=90)
        small.append(target)
    with Image.open(small[0]) as img:
        out["resized_copy_size"] = list(img.size)
    out["decode_resized_copy"] = cpu_ms(lambda i: decode(i, 1, small), n)
    out["full_resized_copy"] = cpu_ms(lambda i: tf(decode(i, 1, small)), n)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="500x375", help="JPEG width x height")
    parser.add_argument("--classes", type=int, default=30)
    parser.add_argument("--per-class", type=int, default=20)
    parser.add_argument("--batch", type=int, default=60)
    parser.add_argument("--m-per-class", type=int, default=2)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--repeats", type=int, default=8, help="epochs of each, per workers")
    parser.add_argument("--stage-images", type=int, default=200)
    parser.add_argument("--gpu-result", type=Path,
                        default=Path(__file__).parent / "results" / "gpu"
                        / "see_overhead_h200_resnet50_bf16.json",
                        help="a GPU step time to size the workers for (SEE-off ResNet-50)")
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).parent / "results" / "data_pipeline.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    width, height = (int(v) for v in args.size.split("x"))
    load_start = loadavg()
    with tempfile.TemporaryDirectory() as tmp:
        cub = write_cub(Path(tmp), args.classes, args.per_class, width, height)
        sizes = [p.stat().st_size for p in (cub / "images").rglob("*.jpg")]
        ours_tf = ours_loader(cub, args.batch, args.m_per_class, 0).dataset.transform
        assert repr(ours_tf) == repr(bare_transform()), (ours_tf, bare_transform())
        rows = [compare(cub, args, w) for w in args.workers]
        per_stage = stages(cub, args.stage_images)
    by_workers = {r["num_workers"]: r for r in rows}
    result: dict[str, Any] = {
        "jpeg_size": [width, height], "jpeg_kib_mean": statistics.mean(sizes) / 1024,
        "images": len(sizes), "batch": args.batch, "m_per_class": args.m_per_class,
        "transform": repr(ours_tf), "torch_threads": 1, "cpu_count": os.cpu_count(),
        "comparisons": rows,
        "cpu_ms_per_image_by_stage": per_stage,
        "loadavg_start": load_start, "loadavg_end": loadavg(),
    }
    if 1 in by_workers and 2 in by_workers:
        result["scaling_1_to_2_workers"] = {
            arm: by_workers[2][f"{arm}_img_per_s_median"]
            / by_workers[1][f"{arm}_img_per_s_median"] for arm in ("ours", "bare")}
    if args.gpu_result.exists():
        gpu_rows = json.loads(args.gpu_result.read_text())
        gpu = min(gpu_rows, key=lambda r: r["step_off_ms"])
        need = gpu["batch"] / (gpu["step_off_ms"] / 1e3)
        # the whole pipeline per CPU second at the most workers measured (workers' start-up,
        # collation and the hand-over to this process included), not the stages alone
        per_core = rows[-1]["ours_img_per_cpu_s_median"]
        result["gpu_step"] = {
            "file": str(args.gpu_result.relative_to(Path(__file__).parent)),
            "device": gpu["device"], "backbone": gpu["backbone"],
            "precision": gpu["precision"], "batch": gpu["batch"], "step_ms": gpu["step_off_ms"],
            "img_per_s_needed": need, "img_per_cpu_s": per_core,
            "img_per_cpu_s_at_workers": rows[-1]["num_workers"],
            "cores_needed": need / per_core}
    print(json.dumps({k: v for k, v in result.items() if k != "comparisons"}, indent=1))
    for r in rows:
        print(json.dumps({k: v for k, v in r.items() if not isinstance(v, list)}))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
