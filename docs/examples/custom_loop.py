"""The MI loss in your own training loop: one backward for both networks vs the two-step pattern.

Trains the demo's InfoMax VAE (``TrainConfig()`` defaults: latent 8, alpha 10, beta 2, Adam 5e-4)
on the digits (no download) with both patterns from the same seed and prints, per pattern, the
running MI estimate (the critic's bound, mean over the last epoch's batches) and the held-out
metrics of ``infomax_ext.evaluation.evaluate`` (``mi`` is a freshly trained chain's estimate).

    python docs/examples/custom_loop.py --epochs 150 --seed 0

``docs/custom-loop.md`` quotes what it printed.
"""
from __future__ import annotations

import argparse
import time
from typing import Any, Callable

import torch

import infomax_ext as im
from infomax_ext.data import load_digits, train_val_split
from infomax_ext.evaluation import evaluate
from infomax_ext.trainer import TrainConfig, build_model


def vae_terms(model: im.InfoMaxVAE, x: torch.Tensor,
              beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(recon + beta * kl, z)``: the VAE's own loss terms on x (N, 64) and its codes z (N, d)."""
    enc = model.vae.encoder(x)
    z = model.vae.sample_latent(enc)
    recon = -im.decoder_loglikelihood(x, z, model.vae.decoder, model.vae.decoder(z)).mean()
    kl = im.encoder_kl(model.vae.encoder, enc).mean()
    return recon + beta * kl, z


Optimizers = dict[str, torch.optim.Optimizer]


def single_backward(model: im.InfoMaxVAE, x: torch.Tensor, opt: Optimizers,
                    cfg: TrainConfig) -> float:
    """One loss, one backward: the critic takes the gradient of ``-alpha * MI`` too."""
    loss, z = vae_terms(model, x, cfg.beta)
    mi = im.variational_mutual_info(model.mi, x, z)
    loss = loss - cfg.alpha * mi
    opt["vae"].zero_grad()
    opt["mi"].zero_grad()
    loss.backward()
    opt["vae"].step()
    opt["mi"].step()
    return float(mi.detach())


def two_step(model: im.InfoMaxVAE, x: torch.Tensor, opt: Optimizers, cfg: TrainConfig) -> float:
    """VAE step with the critic's gradient thrown away, then the critic's own step on detached
    codes with its own loss ``-MI``."""
    loss, z = vae_terms(model, x, cfg.beta)
    loss = loss - cfg.alpha * im.variational_mutual_info(model.mi, x, z)
    opt["vae"].zero_grad()
    loss.backward()
    opt["vae"].step()
    mi = im.variational_mutual_info(model.mi, x, z.detach())
    opt["mi"].zero_grad()
    (-mi).backward()
    opt["mi"].step()
    return float(mi.detach())


Step = Callable[[im.InfoMaxVAE, torch.Tensor, Optimizers, TrainConfig], float]


def run(step: Step, optimizer: str, cfg: TrainConfig, epochs: int, sgd_lr: float) -> dict[str, Any]:
    torch.manual_seed(cfg.seed)
    data = load_digits()
    train, val = train_val_split(data, cfg.val_fraction, cfg.seed)
    x_train = torch.as_tensor(train.x[:], dtype=torch.float32)  # the digits are in memory
    model = build_model(cfg, x_train.shape[1:])
    make: Callable[[Any, float], torch.optim.Optimizer] = {
        "adam": lambda p, lr: torch.optim.Adam(p, lr),
        "sgd": lambda p, lr: torch.optim.SGD(p, lr, momentum=0.9)}[optimizer]
    lr = cfg.lr if optimizer == "adam" else sgd_lr
    opt = {"vae": make(model.vae.parameters(), lr), "mi": make(model.mi.parameters(), lr)}
    start = time.perf_counter()
    for epoch in range(epochs):
        estimates = [step(model, x_train[b], opt, cfg)
                     for b in torch.randperm(len(x_train)).split(cfg.batch_size)]
    running = sum(estimates) / len(estimates)
    x_val = torch.as_tensor(val.x[:], dtype=torch.float32)
    y_train = train.y
    y_val = val.y
    model.eval()
    metrics = evaluate(model, x_train, x_val, y_train, y_val, seed=cfg.seed)
    return {"running_mi": running, "seconds": time.perf_counter() - start, **metrics}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=150)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--optimizer", choices=["adam", "sgd"], default="adam")
    parser.add_argument("--sgd-lr", type=float, default=1e-3,
                        help="SGD (momentum 0.9) learning rate")
    parser.add_argument("--alpha", type=float, default=10.0)
    args = parser.parse_args()
    cfg = TrainConfig(seed=args.seed, alpha=args.alpha)
    for name, step in (("single backward", single_backward), ("two-step", two_step)):
        m = run(step, args.optimizer, cfg, args.epochs, args.sgd_lr)
        print(f"{name:16s} {args.optimizer} alpha {cfg.alpha:g}: running MI "
              f"{m['running_mi']:7.2f}, held-out fresh-chain MI {m['mi']:5.2f}, active units "
              f"{m['active_units']}, probe {m.get('probe_accuracy', float('nan')):.2f}, "
              f"recon {m['recon_loglik']:.1f}, KL {m['kl']:.1f} ({m['seconds']:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
