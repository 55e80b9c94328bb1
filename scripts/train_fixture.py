"""Train a small CIFAR-10 fixture model from the zoo, or write the bundled CIFAR-10 eval/calibration data.

The fixtures give accuracy-drift checks a real signal: a trained model whose top-1 falls when an export
goes wrong. Recipe: the CIFAR-10 training images (``train/<class>/<nnnn>.jpg``, 32x32 JPEG, read from the
tar.gz) are split, seeded and stratified, into 4500 train / 500 validation images per class; every image
is decoded once and resized to 64x64 with PIL bilinear, exactly as edgehybrid's image pipeline does with
the fixture's preprocessing (resize=64, crop=64x64, bilinear), then normalized with the zoo spec's
mean/std/value_scale. Training: random crop (8 px reflect padding) and horizontal flip on the GPU,
AdamW, linear warmup then cosine decay, label smoothing, bf16 autocast on CUDA. The checkpoint is stored
as float16 (integer buffers stay int64); the reported accuracy is measured with those fp16-rounded weights
loaded back into a float32 model through the zoo loader.

    python scripts/train_fixture.py --model mobilevit_xxs --data cifar10-train.tar.gz --out models_zoo/fixtures
    python scripts/train_fixture.py --export-data edgehybrid/data/cifar10 --data cifar10-train.tar.gz

``--time-budget S`` picks the epoch count after the second epoch (still inside the fixed warmup, so the
schedule up to then does not depend on it): as many epochs as fit in S seconds of training. The
chosen count is recorded; ``--epochs N`` reproduces it.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import multiprocessing as mp
import sys
import tarfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from models_zoo import load_model  # noqa: E402
from models_zoo.registry import CIFAR10_CLASSES as CLASSES  # noqa: E402
from models_zoo.registry import CIFAR10_SIZE as SIZE  # noqa: E402
from models_zoo.registry import Preprocessing, cifar10_fixture  # noqa: E402


def read_tar(path: str, max_per_class: int | None = None) -> tuple[list[str], np.ndarray, list[bytes]]:
    """All ``train/<class>/<nnnn>.jpg`` members, sorted: (relative names, labels, JPEG bytes)."""
    items = []
    with tarfile.open(path, "r:gz") as tar:
        for m in tar:
            parts = m.name.split("/")
            if m.isfile() and len(parts) == 3 and parts[1] in CLASSES and parts[2].endswith(".jpg"):
                items.append((m.name, CLASSES.index(parts[1]), tar.extractfile(m).read()))
    items.sort()
    if max_per_class:  # tiny local test runs
        items = [it for it in items if int(Path(it[0]).stem) < max_per_class]
    return [i[0] for i in items], np.array([i[1] for i in items], dtype=np.int64), [i[2] for i in items]


def decode(data: bytes) -> np.ndarray:
    """JPEG bytes -> 64x64x3 uint8, resized as edgehybrid does (PIL bilinear, shorter side to 64)."""
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB").resize((SIZE, SIZE), resample=Image.Resampling.BILINEAR))


def split(labels: np.ndarray, seed: int, val_frac: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Seeded stratified split: ``val_frac`` of each class (500 of 5000) for validation."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in range(len(CLASSES)):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_val = round(len(idx) * val_frac)
        val.append(np.sort(idx[:n_val]))
        train.append(np.sort(idx[n_val:]))
    return np.concatenate(train), np.concatenate(val)


def fixture_preprocessing(model: str, zoo_pre: Preprocessing) -> Preprocessing:
    """The fixture tag's preprocessing: the zoo's normalization at the 32 -> 64 bilinear resize."""
    return cifar10_fixture(model, zoo_pre).preprocessing


def normalize(x_uint8_nhwc: torch.Tensor, pre: Preprocessing) -> torch.Tensor:
    x = x_uint8_nhwc.permute(0, 3, 1, 2).float() / pre.value_scale
    mean = torch.tensor(pre.mean, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(pre.std, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def augment(x: torch.Tensor, pad: int = 8) -> torch.Tensor:
    """Random crop with reflect padding and horizontal flip, per sample, on uint8 NHWC on the device."""
    n = x.shape[0]
    xp = F.pad(x.permute(0, 3, 1, 2).float(), (pad,) * 4, mode="reflect").permute(0, 2, 3, 1)
    oy = torch.randint(0, 2 * pad + 1, (n, 1), device=x.device)
    ox = torch.randint(0, 2 * pad + 1, (n, 1), device=x.device)
    ar = torch.arange(SIZE, device=x.device)
    rows, cols = oy + ar, ox + ar
    flip = torch.rand(n, 1, device=x.device) < 0.5
    cols = torch.where(flip, cols.flip(1), cols)
    out = xp[torch.arange(n, device=x.device)[:, None, None], rows[:, :, None], cols[:, None, :]]
    return out.to(torch.uint8)


@torch.no_grad()
def evaluate(model, x: torch.Tensor, y: torch.Tensor, pre: Preprocessing, bs: int, amp: bool) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(x), bs):
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            logits = model(normalize(x[i:i + bs], pre))
        correct += (logits.argmax(1) == y[i:i + bs]).sum().item()
    return correct / len(x)


def lr_at(step: int, total: int, warmup: int, base: float) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    return base * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def export_data(args, names: list[str], labels: np.ndarray, blobs: list[bytes]) -> None:
    """Bundle 50 validation images per class (eval/) and 200 train images, 20 per class (calib/),
    as the original JPEG bytes."""
    train_idx, val_idx = split(labels, args.split_seed)
    rng = np.random.default_rng(args.seed)
    out = Path(args.export_data)
    chosen = {"eval": {}, "calib": {}}
    for c, cls in enumerate(CLASSES):
        ev = np.sort(rng.choice(val_idx[labels[val_idx] == c], 50, replace=False))
        cal = np.sort(rng.choice(train_idx[labels[train_idx] == c], 20, replace=False))
        (out / "eval" / cls).mkdir(parents=True, exist_ok=True)
        (out / "calib").mkdir(parents=True, exist_ok=True)
        for i in ev:
            (out / "eval" / cls / Path(names[i]).name).write_bytes(blobs[i])
        for i in cal:
            (out / "calib" / f"{cls}_{Path(names[i]).name}").write_bytes(blobs[i])
        chosen["eval"][cls] = [int(Path(names[i]).stem) for i in ev]
        chosen["calib"][cls] = [int(Path(names[i]).stem) for i in cal]
    print(f"wrote {out}/eval (500) and {out}/calib (200); split seed {args.split_seed}, choice seed {args.seed}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="mobilevit_xxs")
    p.add_argument("--data", required=True, help="CIFAR-10 training tar.gz (train/<class>/<nnnn>.jpg)")
    p.add_argument("--out", default="models_zoo/fixtures")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--time-budget", type=float, default=None, help="seconds of training; sets --epochs")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--warmup-epochs", type=int, default=3)
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--clip-grad", type=float, default=5.0, help="gradient norm clip (a safety net; 0 = off)")
    p.add_argument("--input-size", type=int, default=64, help="fixtures are 64x64 (32x32 upsampled)")
    p.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    p.add_argument("--seed", type=int, default=0, help="training seed (also the bundle's choice seed)")
    p.add_argument("--split-seed", type=int, default=0, help="train/validation split seed")
    p.add_argument("--max-per-class", type=int, default=None, help="use only the first N images per class")
    p.add_argument("--max-steps", type=int, default=None, help="stop after N steps (smoke tests)")
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--export-data", default=None, help="write the eval/calib bundle to this folder and exit")
    args = p.parse_args()
    if args.input_size != SIZE:
        p.error("fixtures are trained at 64x64")

    t0 = time.time()
    names, labels, blobs = read_tar(args.data, args.max_per_class)
    if args.export_data:
        return export_data(args, names, labels, blobs)
    with mp.Pool(args.workers) as pool:
        images = np.stack(pool.map(decode, blobs, chunksize=256))
    train_idx, val_idx = split(labels, args.split_seed)
    print(f"decoded {len(images)} images in {time.time() - t0:.1f}s; train {len(train_idx)}, val {len(val_idx)}")

    dev = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                       ("cpu" if args.device == "auto" else args.device))
    amp = dev.type == "cuda"
    torch.backends.cudnn.benchmark = amp
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "random weights": we are about to train them
        loaded = load_model(args.model, weights="random", num_classes=10, input_size=(SIZE, SIZE))
    model, pre = loaded.model.to(dev), fixture_preprocessing(args.model, loaded.spec.preprocessing)
    x_tr, y_tr = torch.from_numpy(images[train_idx]).to(dev), torch.from_numpy(labels[train_idx]).to(dev)
    x_va, y_va = torch.from_numpy(images[val_idx]).to(dev), torch.from_numpy(labels[val_idx]).to(dev)

    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay, fused=amp)
    steps_per_epoch = len(x_tr) // args.batch_size  # drop the last partial batch
    epochs, step, t_train = args.epochs, 0, time.time()
    warmup = args.warmup_epochs * steps_per_epoch
    gen = torch.Generator(device=dev).manual_seed(args.seed)
    epoch = 0
    while epoch < epochs:
        model.train()
        t_ep, loss_sum = time.time(), torch.zeros((), device=dev)
        perm = torch.randperm(len(x_tr), device=dev, generator=gen)
        for i in range(steps_per_epoch):
            idx = perm[i * args.batch_size:(i + 1) * args.batch_size]
            xb = normalize(augment(x_tr[idx]), pre)
            for g in opt.param_groups:
                g["lr"] = lr_at(step, epochs * steps_per_epoch, warmup, args.lr)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
                loss = F.cross_entropy(model(xb), y_tr[idx], label_smoothing=args.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if args.clip_grad:
                torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip_grad)
            opt.step()
            loss_sum += loss.detach()
            step += 1
            if args.max_steps and step >= args.max_steps:
                break
        acc = evaluate(model, x_va, y_va, pre, 1000, amp)
        dt = time.time() - t_ep
        epoch += 1
        print(f"epoch {epoch}/{epochs} loss {loss_sum.item() / max(1, i + 1):.3f} val {acc:.4f} "
              f"{dt:.1f}s {(i + 1) * args.batch_size / dt:.0f} img/s", flush=True)
        if args.time_budget and epoch == min(2, args.warmup_epochs):  # inside the warmup: schedule unaffected
            left = args.time_budget - (time.time() - t_train)
            epochs = max(args.warmup_epochs + 1, epoch + int(left / dt))
            print(f"time budget {args.time_budget:.0f}s at {dt:.1f}s/epoch -> {epochs} epochs", flush=True)
        if args.max_steps and step >= args.max_steps:
            break
    train_s = time.time() - t_train
    acc_fp32 = evaluate(model, x_va, y_va, pre, 1000, amp=False)

    # store float16 (integer buffers as they are), then measure what a user loads: the fp16-rounded
    # weights in a float32 model, through the zoo's own loader, in float32
    from safetensors.torch import save_file
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"{args.model}.cifar10"
    state = {k: (v.half() if v.is_floating_point() else v).contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, f"{stem}.safetensors", metadata={"model": args.model, "dataset": "cifar10"})
    Path(f"{stem}.safetensors").chmod(0o644)
    if dev.type == "cuda":
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    reloaded = load_model(args.model, weights=f"{stem}.safetensors", num_classes=10, input_size=(SIZE, SIZE)).model
    acc_fp16 = evaluate(reloaded.to(dev), x_va, y_va, pre, 1000, amp=False)
    print(f"val top-1: fp32 weights {acc_fp32:.4f}, fp16-stored weights {acc_fp16:.4f}; training {train_s:.0f}s")

    hardware = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU"
    val_files = {cls: [int(Path(names[i]).stem) for i in val_idx if labels[i] == c] for c, cls in enumerate(CLASSES)}
    card = {
        "model": args.model, "tag": "cifar10", "classes": list(CLASSES), "num_classes": len(CLASSES),
        "input_size": [SIZE, SIZE], "preprocessing": pre.to_dict(),
        "val_top1": round(acc_fp16, 4), "val_top1_fp32_weights": round(acc_fp32, 4), "val_images": len(val_idx),
        "epochs": epoch, "seed": args.seed, "split_seed": args.split_seed,
        "recipe": {"optimizer": "AdamW", "lr": args.lr, "weight_decay": args.weight_decay,
                   "batch_size": args.batch_size, "warmup_epochs": args.warmup_epochs, "schedule": "cosine",
                   "label_smoothing": args.label_smoothing, "augmentation": "random crop (reflect pad 8), hflip",
                   "clip_grad_norm": args.clip_grad,
                   "precision": "bf16 autocast" if amp else "fp32"},
        "train_seconds": round(train_s), "hardware": hardware, "torch": torch.__version__,
        "weights_dtype": "float16",
    }
    files = ",\n".join(f'  "{cls}": {json.dumps(v)}' for cls, v in val_files.items())  # one line per class
    text = json.dumps(card, indent=1)[:-2] + ',\n "val_files": {\n  "pattern": "train/<class>/<nnnn>.jpg",\n'
    Path(f"{stem}.json").write_text(text + files + "\n }\n}\n")
    Path(f"{stem}.md").write_text(f"""# {args.model}.cifar10

A `{args.model}` from the edgehybrid zoo trained from scratch on CIFAR-10 (10 classes) at 64x64, as a
real fixture for accuracy-drift checks. Not a benchmark model.

- **Validation top-1: {acc_fp16:.2%}** on {len(val_idx)} held-out images (fp16-stored weights loaded into a
  float32 model; {acc_fp32:.2%} with the float32 weights before storing).
- Classes, in output order: {", ".join(CLASSES)}.
- Input: 3x64x64 RGB. Preprocessing: the 32x32 image resized to 64x64 (PIL bilinear; the centre crop to
  64x64 is a no-op), pixels / {pre.value_scale:g}, mean {list(pre.mean)}, std {list(pre.std)}.
- Data: the CIFAR-10 training set (50,000 JPEG images). Split (seed {args.split_seed}, stratified,
  `numpy.random.default_rng(seed).permutation` per class): {len(train_idx)} train / {len(val_idx)} validation;
  the validation file numbers per class are in `{stem.name}.json` (`val_files`).
- Recipe: {epoch} epochs, batch {args.batch_size}, AdamW (lr {args.lr:g}, weight decay {args.weight_decay:g}),
  {args.warmup_epochs} warmup epochs then cosine to 0, label smoothing {args.label_smoothing:g}, random crop
  (8 px reflect padding) and horizontal flip, {"bf16 autocast" if amp else "fp32"}; seed {args.seed}.
- Training time: {train_s:.0f}s on {hardware} (torch {torch.__version__}).
- Weights: float16 safetensors (integer buffers int64), timm key layout.

Reproduce: `python scripts/train_fixture.py --model {args.model} --data cifar10-train.tar.gz --epochs {epoch} \\
--batch-size {args.batch_size} --lr {args.lr:g} --seed {args.seed} --split-seed {args.split_seed}` (GPU results vary slightly).
""")
    print(f"wrote {stem}.safetensors/.json/.md")


if __name__ == "__main__":
    main()
