"""Train a tutorial model in plain float PyTorch and save its state_dict (docs/import.md).

    python examples/import/train_float.py small_vgg --epochs 2 --out build/tutorial/vgg.pt

This is the user's side of the tutorial: any training script that ends in `torch.save(
model.state_dict(), ...)` does. Images are `uint8` scaled to [0, 1], as `epim import` feeds them.
"""

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
import models  # noqa: E402  (the tutorial's models, next to this file)


def main() -> int:
    from epim.sw.chip import data

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", choices=["small_vgg", "small_resnet"])
    ap.add_argument("--data", default="mnist")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--limit", type=int, help="first N training images")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(2)
    x, y = data.load(args.data, "train", args.limit)
    xt, yt = data.load(args.data, "test")
    model = getattr(models, args.model)()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    steps = args.epochs * ((len(x) + 127) // 128)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 2e-3, total_steps=steps)
    for epoch in range(args.epochs):
        t0 = time.time()
        model.train()
        order = torch.randperm(len(x))
        for i in range(0, len(x), 128):
            idx = order[i:i + 128]
            xb = torch.as_tensor(x[idx.numpy()], dtype=torch.float32) / 255
            loss = F.cross_entropy(model(xb), torch.as_tensor(y[idx.numpy()]))
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        model.eval()
        with torch.no_grad():
            pred = torch.cat([model(torch.as_tensor(xt[i:i + 1000], dtype=torch.float32) / 255)
                              .argmax(1) for i in range(0, len(xt), 1000)])
        acc = float((pred.numpy() == yt).mean())
        print(f"epoch {epoch + 1}/{args.epochs}: test accuracy {acc:.4f} "
              f"({time.time() - t0:.0f} s)")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
