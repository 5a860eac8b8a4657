"""Scores of generated examples by the dataset's classifier (:func:`daps.metrics.classifier.classifier_for`).

- ``accuracy``: the share of decoded samples the classifier assigns to the label they were generated for.
- ``frechet``: the Frechet distance between Gaussians fitted to the classifier's penultimate features of the
  samples and of the whole real test split ("classifier FD"; a small-network analogue of FID, not comparable
  with Inception FIDs).

Every number comes with its reference points at the same sample count n, so a reader can place it:

- ``real_frechet``: n real *training* examples (the same number of each class) against the test split: the floor a
  perfect generator would reach at n samples.
- ``recon_frechet`` / ``recon_accuracy``: the tokenizer's reconstructions of those n training examples: what a
  prior that generated the training codes exactly would reach (the tokenizer's ceiling).
- ``random_frechet``: n uniform-random codes decoded by the tokenizer (the paper's "decode random codes" figure);
  ``random_top_class``: the share of them the classifier puts in its most frequent class.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from daps.errors import UserError
from daps.methods.types import Method
from daps.metrics.classifier import SEEN_IN_TRAINING, Classifier
from daps.metrics.fid import frechet_distance
from daps.prior.nets import ARPrior, DFMPrior

Prior = ARPrior | DFMPrior

log = logging.getLogger("daps")

Stats = tuple[np.ndarray, np.ndarray]


def batched(fn, x: torch.Tensor, size: int = 500) -> torch.Tensor:
    """``fn`` applied to ``x`` in chunks of ``size`` along the first dimension, the results concatenated."""
    return torch.cat([fn(x[s : s + size]) for s in range(0, len(x), size)])


def uniform_codes(model: Method, n: int, generator: torch.Generator) -> torch.Tensor:
    """n codes ``(n, T)`` with every token uniform over the tokenizer's V codes (on the generator's device)."""
    assert model.vocab_size is not None, "a tokenizer with discrete codes"
    t = model.input_spec.num_tokens
    return torch.randint(int(model.vocab_size), (n, int(t or 0)), generator=generator, device=generator.device)


def decoded_images(model: Method, codes: torch.Tensor) -> torch.Tensor:
    """Decoder means of ``codes (N, T)`` on the unit scale ``(N, C, H, W)`` in [0, 1], on the CPU (for figures)."""
    from daps.data import dataset_spec

    spec = dataset_spec(model.config.data.name)
    return spec.standardize.to_unit(model.decode(codes)).clamp(0, 1).cpu()


@torch.no_grad()
def features(classifier: Classifier, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    classifier.eval()
    return batched(lambda b: classifier.embed(b.float()).double(), images, batch_size)


def stats(feats: torch.Tensor) -> Stats:
    f = feats.cpu().numpy()
    return f.mean(0), np.cov(f, rowvar=False)


@torch.no_grad()
def predictions(classifier: Classifier, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    classifier.eval()
    return batched(lambda b: classifier(b.float()).argmax(-1), images, batch_size)


class Judge:
    """The classifier of a tokenizer's dataset and the statistics of the real test split, computed once."""

    def __init__(self, tokenizer: Method, classifier: Classifier, device: torch.device | str = "cpu"):
        from daps.data import dataset_spec, labelled_split

        self.tokenizer, self.classifier, self.device = tokenizer, classifier.to(device), device
        data = tokenizer.config.data
        self.spec = dataset_spec(data.name)
        if data.name in SEEN_IN_TRAINING:
            log.warning("%s's images are all in the training split of its classifier: the classifier scores are on "
                        "its own training data (optimistic); compare them only with each other", data.name)
        self.test = labelled_split(data, "test")
        self.train = labelled_split(data, "train")
        every_test = torch.arange(len(self.test.labels), device="cpu")  # indexes the host-side split
        self.real = stats(features(self.classifier, self._examples(self.test, every_test)))
        self.num_test = len(self.test.labels)

    def _examples(self, split, idx: torch.Tensor) -> torch.Tensor:
        return self.spec.standardize(split.raw(idx)).to(self.device)

    def score(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, float]:
        """``frechet`` of model-scale ``images`` against the test split, and ``accuracy`` against ``labels``."""
        out = {"frechet": frechet_distance(*stats(features(self.classifier, images)), *self.real)}
        if labels is not None:
            out["accuracy"] = float((predictions(self.classifier, images).cpu() == labels.cpu()).float().mean())
        return out

    def check_balanced(self, n: int, flag: str = "--n") -> None:
        """UserError unless the training split has enough examples of every class for n balanced ones."""
        counts = torch.bincount(self.train.labels)
        if n > len(counts) * int(counts.min()):
            raise UserError(f"{flag} {n}: the training split has {int(counts.min())} examples of its smallest class, "
                            f"so at most {len(counts) * int(counts.min())} class-balanced real examples to compare")

    def balanced_train_subset(self, n: int, seed: int) -> torch.Tensor:
        """n training indices, classes in turn (as the samples are generated), drawn at random within a class."""
        self.check_balanced(n)
        g = torch.Generator().manual_seed(seed)
        labels = self.train.labels
        classes = int(labels.max()) + 1
        pools = [torch.nonzero(labels == c)[:, 0] for c in range(classes)]
        pools = [p[torch.randperm(len(p), generator=g, device=g.device)] for p in pools]
        return torch.stack([pools[i % classes][i // classes] for i in range(n)])

    @torch.no_grad()
    def references(self, n: int, seed: int = 0) -> dict[str, float]:
        """The floor, ceiling and random-code points at n examples (see the module doc)."""
        idx = self.balanced_train_subset(n, seed)
        real = self._examples(self.train, idx)
        labels = self.train.labels[idx]
        g = torch.Generator(self.device).manual_seed(seed)
        recon = batched(lambda b: self.tokenizer.reconstruct(b, g).x_hat, real)
        random = batched(self.tokenizer.decode, uniform_codes(self.tokenizer, n, g))
        out = {"real_frechet": self.score(real)["frechet"]}
        r = self.score(recon, labels)
        out.update(recon_frechet=r["frechet"], recon_accuracy=r["accuracy"])
        out["random_frechet"] = self.score(random)["frechet"]
        counts = torch.bincount(predictions(self.classifier, random).cpu())
        out["random_top_class"] = float(counts.max() / n)
        return out

    def protocol(self, n: int) -> str:
        return (f"classifier features; Frechet against all {self.num_test} test examples; n = {n} generated "
                "(classes in turn); reference points at the same n: real training examples (real_frechet), the "
                "tokenizer's reconstructions of them (recon_*), uniform-random codes decoded (random_*); decoder "
                "means")


def sample_statistics(samples: torch.Tensor, train_codes: torch.Tensor) -> dict[str, float]:
    """Share of distinct code sequences among ``samples (N, T)``, and share of samples that occur verbatim among
    ``train_codes (M, T)`` (copies of training codes)."""
    seen = {tuple(row) for row in train_codes.tolist()}
    rows = [tuple(row) for row in samples.tolist()]
    return {"unique_fraction": len(set(rows)) / len(rows), "copied_fraction": sum(r in seen for r in rows) / len(rows)}


@torch.no_grad()
def score_prior(model: Prior, euler_steps: int, train_codes: torch.Tensor, n: int, guidance: float, seed: int,
                judge: Judge | None = None, device: torch.device | str = "cpu") -> dict[str, float]:
    """Generate n codes (classes in turn) at guidance ``guidance``; their uniqueness and copies of the training
    codes, and, with a :class:`Judge`, the classifier accuracy and Frechet distance of their decodings."""
    from daps.prior.run import generate

    classes = model.num_classes
    labels = torch.arange(n, device=device) % classes
    codes = generate(model, labels, guidance, 1.0, torch.Generator(device).manual_seed(seed), euler_steps)
    out = sample_statistics(codes.cpu(), train_codes.cpu())
    if judge is not None:
        images = batched(judge.tokenizer.decode, codes)
        out.update(judge.score(images, labels))
    return out


@torch.no_grad()
def inception_fid(judge: Judge, images: torch.Tensor, n: int, seed: int = 0,
                  weights: str | None = None) -> dict[str, float | str]:
    """Inception FID (the standard pool3 network, :mod:`daps.metrics.fid`) of model-scale ``images`` against n
    test images (a fixed random subset), with the real-vs-real floor (n training examples against the same test
    images) at the same n. Small n inflates FID; the two numbers are comparable with each other, not with
    50k-sample FIDs in papers."""
    from daps.metrics.fid import inception_features
    from daps.nets.inception import load_fid_inception

    net = load_fid_inception(weights or None, judge.device)
    to_unit = judge.spec.standardize.to_unit
    test_idx = torch.randperm(judge.num_test, generator=torch.Generator().manual_seed(seed), device="cpu")[:n]
    reference = stats(inception_features(net, to_unit(judge._examples(judge.test, test_idx))).double())
    train = to_unit(judge._examples(judge.train, judge.balanced_train_subset(n, seed)))
    return {
        "inception_fid": frechet_distance(*stats(inception_features(net, to_unit(images[:n])).double()), *reference),
        "inception_fid_real": frechet_distance(*stats(inception_features(net, train).double()), *reference),
        "inception_fid_protocol": f"Inception pool3 FID, {min(n, len(images))} samples vs {n} test images "
                                  f"(fixed subset, seed {seed}); real floor: {n} training images vs the same",
    }
