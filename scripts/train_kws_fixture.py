"""Train the keyword-spotting fixture ``conformer_kws.spoken_commands`` (seeded; CPU is enough).

    PYTHONPATH=. python scripts/train_kws_fixture.py --data ../shared/data/spoken-commands.tar.gz \
        --out models_zoo/fixtures --bundle edgehybrid/data/speech

Data: 6,000 one-word clips (the ten Speech Commands core words, 600 each), synthesized with espeak-ng from
8 English accents x 81 voice variants. The split is by voice variant: a seeded draw of variants is held out
and none of their clips is heard in training, so validation measures voices the model never met.

Recipe, as a keyword-spotting recipe would (the clips are clean; devices hear noise):
- time shift: the word lands anywhere in the 1 s window where it fits (at inference it is centred);
- speed: x0.85-1.15 (resampled, so pitch moves with it, as a faster talker's would not: a coarse but common
  perturbation);
- gain: -12..+6 dB;
- background noise at a random SNR of 0-30 dB, on 80% of the clips: no noise corpus is at hand, so the noise is
  synthetic: white, pink or brown (1/f^a spectra, a random pick), plus a slow random-amplitude hum at 50/60 Hz;
- SpecAugment on the log-mel features: two frequency masks (<= 6 mels), two time masks (<= 10 frames).
AdamW, cosine schedule with warmup, label smoothing 0.1. The weights are stored as float16 safetensors with a
model card (.json, .md); the reported accuracy is measured with those fp16-rounded weights, loaded the way a
user loads them. ``--bundle`` also writes a small labelled evaluation set from the validation voices and
calibration clips from training voices, as FLAC, for the package.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import tarfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from calibration.audio import fit, resample
from models_zoo import get_spec, load_model
from models_zoo.conformer import FRONT_END, SPEECH_COMMANDS

RATE, CLIP = FRONT_END.sample_rate, FRONT_END.clip_samples


def read_corpus(path: Path) -> tuple[list[np.ndarray], np.ndarray, list[dict]]:
    """Every clip (trimmed float32 samples), its label, and its metadata row, from the tarball."""
    import soundfile

    clips, labels, rows = [], [], []
    with tarfile.open(path) as tar:
        members = {m.name.split("spoken-commands/", 1)[-1]: m for m in tar.getmembers() if m.isfile()}
        meta = list(csv.DictReader(io.TextIOWrapper(tar.extractfile(members["metadata.csv"]), "utf-8")))
        for row in meta:
            data, rate = soundfile.read(io.BytesIO(tar.extractfile(members[row["file"]]).read()), dtype="float32")
            assert rate == RATE, (row["file"], rate)
            clips.append(data if data.ndim == 1 else data.mean(axis=1))
            labels.append(SPEECH_COMMANDS.index(row["word"]))
            rows.append(row)
    return clips, np.array(labels), rows


def split_by_variant(rows: list[dict], seed: int, val_frac: float) -> tuple[np.ndarray, np.ndarray, list[str]]:
    variants = sorted({r["variant"] for r in rows})
    rng = np.random.default_rng(seed)
    held = set(rng.choice(variants, round(len(variants) * val_frac), replace=False).tolist())
    val = np.array([r["variant"] in held for r in rows])
    return np.flatnonzero(~val), np.flatnonzero(val), sorted(held)


def coloured_noise(rng: np.random.Generator, n: int) -> np.ndarray:
    alpha = rng.choice([0.0, 1.0, 2.0])  # white, pink, brown
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.arange(len(spec), dtype=np.float64)
    f[0] = 1.0
    noise = np.fft.irfft(spec / f ** (alpha / 2), n)
    if rng.random() < 0.3:  # mains hum with a slowly varying level
        t = np.arange(n) / RATE
        hum = np.sin(2 * np.pi * rng.choice([50.0, 60.0]) * t) * (0.5 + 0.5 * np.sin(2 * np.pi * rng.random() * t))
        noise = noise / (noise.std() + 1e-9) + hum * rng.uniform(0.2, 1.0)
    return noise / (noise.std() + 1e-9)


def augment(clip: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    x = clip.astype(np.float64)
    speed = rng.uniform(0.85, 1.15)
    x = resample(x, RATE, round(RATE / speed)) if abs(speed - 1) > 1e-3 else x
    x = x[:CLIP]
    out = np.zeros(CLIP)
    start = rng.integers(0, CLIP - len(x) + 1)
    out[start:start + len(x)] = x * 10 ** (rng.uniform(-12, 6) / 20)
    if rng.random() < 0.8:
        speech = out[start:start + len(x)]
        power = max(float(np.mean(speech ** 2)), 1e-10)
        snr = rng.uniform(0, 30)
        out += coloured_noise(rng, CLIP) * np.sqrt(power / 10 ** (snr / 10))
    return np.clip(out, -1, 1).astype(np.float32)


def centred(clips: list[np.ndarray], idx: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.stack([fit(clips[i], CLIP) for i in idx]).astype(np.float32))


def spec_augment(feats: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    n, mels, frames = feats.shape
    feats = feats.clone()
    for _ in range(2):
        w = torch.randint(0, 7, (n,), generator=gen)
        f0 = (torch.rand(n, generator=gen) * (mels - w)).long()
        band = torch.arange(mels)[None, :]
        feats = feats.masked_fill(((band >= f0[:, None]) & (band < (f0 + w)[:, None]))[:, :, None], 0.0)
        w = torch.randint(0, 11, (n,), generator=gen)
        t0 = (torch.rand(n, generator=gen) * (frames - w)).long()
        span = torch.arange(frames)[None, :]
        feats = feats.masked_fill(((span >= t0[:, None]) & (span < (t0 + w)[:, None]))[:, None, :], 0.0)
    return feats


def forward_features(model, feats):
    return model.head(model.encoder(model.subsample(feats)).mean(dim=1))


@torch.no_grad()
def evaluate(model, x: torch.Tensor, y: np.ndarray) -> float:
    model.eval()
    pred = torch.cat([model(x[i:i + 256]).argmax(1) for i in range(0, len(x), 256)]).numpy()
    return float((pred == y).mean())


def noisy(x: torch.Tensor, snr_db: float, seed: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    out = x.numpy().copy()
    for i in range(len(out)):
        speech = out[i][np.abs(out[i]) > 0]
        power = max(float(np.mean(speech ** 2)) if speech.size else 1e-10, 1e-10)
        out[i] += coloured_noise(rng, CLIP) * np.sqrt(power / 10 ** (snr_db / 10))
    return torch.from_numpy(np.clip(out, -1, 1).astype(np.float32))


def write_flac(path: Path, samples: np.ndarray) -> None:
    import soundfile

    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(str(path), samples, RATE, subtype="PCM_16", format="FLAC")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="../shared/data/spoken-commands.tar.gz")
    ap.add_argument("--out", default="models_zoo/fixtures")
    ap.add_argument("--bundle", default=None, help="write the bundled eval/calibration clips under this folder")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--val-frac", type=float, default=0.2)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)

    t0 = time.perf_counter()
    clips, labels, rows = read_corpus(Path(args.data))
    tr, va, held = split_by_variant(rows, args.seed, args.val_frac)
    print(f"{len(clips)} clips read in {time.perf_counter() - t0:.0f}s; train {len(tr)}, validation {len(va)} "
          f"({len(held)} held-out voice variants)", flush=True)
    x_va, y_va = centred(clips, va), labels[va]

    model = get_spec("conformer_kws").build()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    steps_per_epoch = len(tr) // args.batch
    total, warmup = args.epochs * steps_per_epoch, steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (
        1 + np.cos(np.pi * min(s, total) / max(total, 1))))
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.1)
    gen = torch.Generator().manual_seed(args.seed)
    t_train = time.perf_counter()
    for epoch in range(args.epochs):
        model.train()
        order = rng.permutation(tr)
        seen, loss_sum = 0, 0.0
        for b in range(steps_per_epoch):
            idx = order[b * args.batch:(b + 1) * args.batch]
            x = torch.from_numpy(np.stack([augment(clips[i], rng) for i in idx]))
            y = torch.from_numpy(labels[idx])
            feats = spec_augment(model.frontend(x), gen)
            loss = loss_fn(forward_features(model, feats), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
            sched.step()
            seen += len(idx)
            loss_sum += loss.item() * len(idx)
        acc = evaluate(model, x_va, y_va)
        print(f"epoch {epoch + 1}/{args.epochs}: loss {loss_sum / seen:.4f}, val top-1 {acc:.4f}, "
              f"{time.perf_counter() - t_train:.0f}s", flush=True)
    train_s = time.perf_counter() - t_train
    acc_fp32 = evaluate(model, x_va, y_va)

    from safetensors.torch import save_file

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / "conformer_kws.spoken_commands"
    state = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in model.state_dict().items()}
    save_file(state, f"{stem}.safetensors", metadata={"model": "conformer_kws", "dataset": "spoken-commands"})
    reloaded = load_model("conformer_kws", weights=f"{stem}.safetensors").model
    acc = evaluate(reloaded, x_va, y_va)
    acc_noisy = {snr: evaluate(reloaded, noisy(x_va, snr, 1), y_va) for snr in (20, 10, 5)}
    print(f"val top-1: fp32 weights {acc_fp32:.4f}, fp16-stored {acc:.4f}; noisy {acc_noisy}; {train_s:.0f}s")

    card = {
        "model": "conformer_kws", "tag": "spoken_commands", "classes": list(SPEECH_COMMANDS),
        "num_classes": len(SPEECH_COMMANDS), "input_size": [CLIP], "front_end": FRONT_END.to_dict(),
        "val_top1": round(acc, 4), "val_top1_fp32_weights": round(acc_fp32, 4),
        "val_top1_noisy": {f"{k} dB SNR": round(v, 4) for k, v in acc_noisy.items()},
        "val_clips": len(va), "train_clips": len(tr), "val_variants": held, "epochs": args.epochs,
        "seed": args.seed, "recipe": {
            "optimizer": "AdamW", "lr": args.lr, "weight_decay": 0.05, "batch_size": args.batch,
            "warmup_epochs": 1, "schedule": "cosine", "label_smoothing": 0.1, "clip_grad_norm": 5.0,
            "augmentation": "time shift (anywhere in the window), speed x0.85-1.15, gain -12..+6 dB, synthetic "
                            "white/pink/brown noise (+ mains hum) at 0-30 dB SNR on 80%, SpecAugment 2x(F<=6, T<=10)"},
        "train_seconds": round(train_s), "hardware": "CPU", "torch": torch.__version__, "weights_dtype": "float16",
    }
    Path(f"{stem}.json").write_text(json.dumps(card, indent=1) + "\n")
    Path(f"{stem}.md").write_text(f"""# conformer_kws.spoken_commands

A keyword-spotting Conformer (`conformer_kws`: log-mel front end in the graph, convolutional subsampling, 4
Conformer layers of width 64, mean pooling, 10 classes) trained by `scripts/train_kws_fixture.py` on the ten
Speech Commands core words ({", ".join(SPEECH_COMMANDS)}), spoken by espeak-ng voices.

- **Validation top-1: {acc:.2%}** on {len(va)} clips from {len(held)} voice variants never heard in training
  (fp16-stored weights loaded into a fresh model); with synthetic background noise:
  {", ".join(f"{v:.2%} at {k} dB SNR" for k, v in acc_noisy.items())}.
- Training: {len(tr)} clips, {args.epochs} epochs, {train_s:.0f} s on CPU ({args.threads} threads), seed {args.seed};
  recipe in `conformer_kws.spoken_commands.json`.
- Input: 1 s of 16 kHz mono samples in -1..1 (a shorter clip is centred and zero-padded, a longer one
  centre-cropped), front end as the spec says (`edgehybrid info conformer_kws.spoken_commands`).
- Limits: synthetic voices (espeak-ng) only; no "silence" or "unknown word" class, so every clip is one of the
  ten words; noise during training was synthetic. Not for production keyword spotting.
- Weights: float16 safetensors, torchaudio's Conformer key layout under `encoder.`.
""")
    print(f"wrote {stem}.safetensors/.json/.md")

    if args.bundle:  # a small labelled evaluation set (validation voices) and calibration clips (training voices)
        bundle = Path(args.bundle)
        pick = np.random.default_rng(args.seed + 1)
        for c, word in enumerate(SPEECH_COMMANDS):
            own = va[labels[va] == c]
            for i in np.sort(pick.choice(own, 20, replace=False)):
                write_flac(bundle / "eval" / word / f"{rows[i]['file'].split('/')[-1]}", clips[i])
        for i in np.sort(pick.choice(tr, 64, replace=False)):
            write_flac(bundle / "calib" / f"{rows[i]['word']}_{rows[i]['file'].split('/')[-1]}", clips[i])
        print(f"wrote 200 evaluation and 64 calibration clips under {bundle}")


if __name__ == "__main__":
    main()
