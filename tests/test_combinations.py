"""Every model family composes with every prior, posterior and objective that makes sense, and
each combination that does not is refused before training with a one-paragraph reason.

Each combination is composed from the real configs, checked and built as vae-train does
(train.checked_model), then its objective is evaluated once on real-shaped data:
built combinations give finite terms and a true ELBO at least as low as the loss's bound.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from vae_lightning.errors import ConfigError
from vae_lightning.train import checked_model

MODELS = ("mlp", "conv", "hvae", "cvae")
PRIORS = ("standard", "mog", "vamp")
POSTERIORS = ("gaussian", "planar", "iaf")
OBJECTIVES = ("elbo", "iwae", "beta_tc", "capacity")
SMALL = {"mog": ["prior.num_components=3"], "vamp": ["prior.num_components=4"]}

# What is refused, and the word its reason must contain.
REFUSED = {
    ("hvae", "prior"): "hvae",  # the hierarchy has its own prior p(z2) p(z1|z2) ...
    ("hvae", "posterior"): "hvae",  # ... and posterior q(z1|x) q(z2|z1)
    ("cvae", "vamp"): "vamp",  # pseudo-inputs have no labels
    ("beta_tc", "closed_form"): "beta_tc",  # needs a factorised Gaussian q and N(0, I)
}


def expected_refusal(model: str, prior: str, posterior: str, objective: str) -> str | None:
    if model == "hvae" and prior != "standard":
        return REFUSED["hvae", "prior"]
    if model == "hvae" and posterior != "gaussian":
        return REFUSED["hvae", "posterior"]
    if model == "cvae" and prior == "vamp":
        return REFUSED["cvae", "vamp"]
    if objective == "beta_tc" and (
        model == "hvae" or prior != "standard" or posterior != "gaussian"
    ):
        return REFUSED["beta_tc", "closed_form"]
    return None


@pytest.mark.parametrize("model", MODELS)
def test_every_combination_builds_or_is_refused_with_its_reason(compose_train, model):
    wrong = []
    for prior, posterior, objective in itertools.product(PRIORS, POSTERIORS, OBJECTIVES):
        overrides = [
            f"model={model}",
            f"prior={prior}",
            f"posterior={posterior}",
            f"objective={objective}",
            *SMALL.get(prior, []),
        ]
        refusal = expected_refusal(model, prior, posterior, objective)
        try:
            module = checked_model(compose_train(overrides))
        except ConfigError as err:
            if refusal is None or refusal not in str(err):
                wrong.append(f"{overrides}: refused: {err}")
            continue
        if refusal is not None:
            wrong.append(f"{overrides}: built, expected a refusal naming {refusal!r}")
            continue
        torch.manual_seed(0)
        images = torch.bernoulli(torch.full((4, 1, 28, 28), 0.3))
        labels = torch.arange(4) if module.net.conditional else None
        terms = module.objective(module.net, module.likelihood, images, 1.0, labels=labels)
        values = torch.stack([terms.loss, terms.rec, terms.kl, terms.elbo, terms.bound])
        if not torch.isfinite(values).all():
            wrong.append(f"{overrides}: non-finite terms {values.tolist()}")
    assert not wrong, "\n".join(wrong)
