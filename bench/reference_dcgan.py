"""The reference to beat: the DCGAN training loop of pytorch/examples, re-implemented for timing.

    python -m bench.reference_dcgan --data DIR --steps 40

This is our own rewrite of the well-known example (``dcgan/main.py`` in pytorch/examples), kept
faithful in everything that costs time: the same layers (64 px, ngf=ndf=64, nz=100), images
decoded from files by ``torchvision.datasets.ImageFolder`` with Resize/CenterCrop/ToTensor/
Normalize in a ``DataLoader`` with 2 worker processes and batch 64, fp32, ``BCELoss`` on a
sigmoid output, D updated on the real batch and the detached fakes with two backward passes, G
updated through D (whose weight gradients are computed and thrown away), and five ``.item()``
host syncs plus a progress line every step. It is not a GAN we train with: it exists so
``bench/vs_reference.py`` can time it next to ganlib's ``dcgan`` preset on the same machine.
"""

from __future__ import annotations

import argparse
import time

import torch
import torchvision.datasets as dset
import torchvision.transforms as transforms
from torch import nn


class ReferenceGenerator(nn.Module):
    def __init__(self, nz: int = 100, ngf: int = 64, nc: int = 3):
        super().__init__()
        layers: list[nn.Module] = []
        widths = [nz, ngf * 8, ngf * 4, ngf * 2, ngf]
        for i, (cin, cout) in enumerate(zip(widths, widths[1:])):
            layers += [nn.ConvTranspose2d(cin, cout, 4, 1 if i == 0 else 2, 0 if i == 0 else 1, bias=False),
                       nn.BatchNorm2d(cout), nn.ReLU(True)]
        layers += [nn.ConvTranspose2d(ngf, nc, 4, 2, 1, bias=False), nn.Tanh()]
        self.main = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.main(z)


class ReferenceDiscriminator(nn.Module):
    def __init__(self, ndf: int = 64, nc: int = 3):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(nc, ndf, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, inplace=True)]
        widths = [ndf, ndf * 2, ndf * 4, ndf * 8]
        for cin, cout in zip(widths, widths[1:]):
            layers += [nn.Conv2d(cin, cout, 4, 2, 1, bias=False), nn.BatchNorm2d(cout),
                       nn.LeakyReLU(0.2, inplace=True)]
        layers += [nn.Conv2d(ndf * 8, 1, 4, 1, 0, bias=False), nn.Sigmoid()]
        self.main = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x).view(-1, 1).squeeze(1)


def _init(m: nn.Module) -> None:
    name = type(m).__name__
    if "Conv" in name:
        nn.init.normal_(m.weight, 0.0, 0.02)
    elif "BatchNorm" in name:
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


def make_loader(root: str, image_size: int = 64, batch_size: int = 64, workers: int = 2):
    dataset = dset.ImageFolder(root=root, transform=transforms.Compose([
        transforms.Resize(image_size), transforms.CenterCrop(image_size), transforms.ToTensor(),
        transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))]))
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers,
                                       drop_last=True, persistent_workers=workers > 0)


def run(root: str, steps: int, warmup: int = 5, batch_size: int = 64, workers: int = 2, quiet: bool = True,
        seed: int = 0) -> dict[str, float]:
    """Train ``warmup + steps`` iterations of the reference loop; images/s over the timed ``steps``."""
    torch.manual_seed(seed)
    device = torch.device("cpu")
    net_g, net_d = ReferenceGenerator(), ReferenceDiscriminator()
    net_g.apply(_init)
    net_d.apply(_init)
    criterion = nn.BCELoss()
    opt_d = torch.optim.Adam(net_d.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_g = torch.optim.Adam(net_g.parameters(), lr=2e-4, betas=(0.5, 0.999))
    loader = make_loader(root, batch_size=batch_size, workers=workers)
    done, t0 = 0, None
    while done < warmup + steps:
        for data in loader:
            if done == warmup:
                t0 = time.perf_counter()
            # (1) D: maximise log D(x) + log(1 - D(G(z)))
            net_d.zero_grad()
            real = data[0].to(device)
            label = torch.full((real.size(0),), 1.0, device=device)
            output = net_d(real)
            err_d_real = criterion(output, label)
            err_d_real.backward()
            d_x = output.mean().item()
            noise = torch.randn(real.size(0), 100, 1, 1, device=device)
            fake = net_g(noise)
            label.fill_(0.0)
            output = net_d(fake.detach())
            err_d_fake = criterion(output, label)
            err_d_fake.backward()
            d_g_z1 = output.mean().item()
            err_d = err_d_real + err_d_fake
            opt_d.step()
            # (2) G: maximise log D(G(z))
            net_g.zero_grad()
            label.fill_(1.0)
            output = net_d(fake)
            err_g = criterion(output, label)
            err_g.backward()
            d_g_z2 = output.mean().item()
            opt_g.step()
            line = (f"[{done}] Loss_D: {err_d.item():.4f} Loss_G: {err_g.item():.4f} D(x): {d_x:.4f} "
                    f"D(G(z)): {d_g_z1:.4f} / {d_g_z2:.4f}")
            if not quiet:
                print(line)
            done += 1
            if done == warmup + steps:
                break
    seconds = time.perf_counter() - t0
    return {"images_per_sec": steps * batch_size / seconds, "ms_per_step": 1000 * seconds / steps}


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.reference_dcgan", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="an ImageFolder root (one sub-folder per class)")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args()
    result = run(args.data, args.steps, workers=args.workers, quiet=False)
    print(f"reference DCGAN: {result['images_per_sec']:.1f} images/s, {result['ms_per_step']:.0f} ms/step")


if __name__ == "__main__":
    main()
