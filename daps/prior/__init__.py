"""Label-conditioned generative priors over a tokenizer's codes: autoregressive (``ar``) and discrete flow
matching (``dfm``), trained on ``daps export-codes`` output (see ``docs/priors.md``)."""

from daps.prior.nets import ARPrior, DFMPrior
from daps.prior.run import PriorConfig, evaluate_prior, generate, load_prior, train_prior

__all__ = ["ARPrior", "DFMPrior", "PriorConfig", "evaluate_prior", "generate", "load_prior", "train_prior"]
