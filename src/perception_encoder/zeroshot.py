"""Zero-shot classification: class names x prompt templates -> classifier -> probabilities.

Convention (CLIP_benchmark, as used for PE): for each class, every template is filled with the class name
and encoded; each embedding is normalised, the template embeddings are averaged and the mean renormalised.
Logits are ``100 * normalised image embedding @ classifier`` (or ``logit_scale.exp()`` if asked).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from .finite import check_finite

# A compact set of prompt templates (a subset of the 80 ImageNet ones) used when none are given.
DEFAULT_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a bad photo of a {}.",
    "a photo of many {}.",
    "a photo of the large {}.",
    "a photo of the small {}.",
    "a rendering of a {}.",
    "a drawing of a {}.",
    "itap of a {}.",
)


def check_template(template: str) -> str:
    """``template`` after checking it holds exactly one ``{}`` (where the class name goes) and no other
    brace, which ``str.format`` would read as a field; else ``ValueError`` naming it."""
    rest = template.replace("{}", "")
    if template.count("{}") != 1 or "{" in rest or "}" in rest:
        raise ValueError(
            f"template {template!r} must contain exactly one '{{}}' for the class name and no other braces"
        )
    return template


def _fill(template: str | Callable[[str], str], classname: str) -> str:
    return template(classname) if callable(template) else check_template(template).format(classname)


def zero_shot_prompts(
    classnames: Sequence[str], templates: Sequence[str | Callable[[str], str]]
) -> list[str]:
    """Every template filled with every class name, class by class: ``len(classnames) * len(templates)``
    prompts (``ValueError`` for no class, no template, or a template that is not ``check_template``'s)."""
    if not classnames:
        raise ValueError("zero-shot classification needs at least one class name")
    if not templates:
        raise ValueError("zero-shot classification needs at least one prompt template")
    return [_fill(t, c) for c in classnames for t in templates]


def classifier_from_prompts(prompt_embeddings: torch.Tensor, num_classes: int) -> torch.Tensor:
    """The classifier ``(D, C)`` from the L2-normalised embeddings ``(C * T, D)`` of ``zero_shot_prompts``:
    each class's template embeddings averaged, the mean renormalised."""
    per_prompt = prompt_embeddings.float().view(num_classes, -1, prompt_embeddings.shape[-1])
    return F.normalize(per_prompt.mean(dim=1), dim=-1).T.contiguous()


@torch.no_grad()
def zero_shot_classifier(
    model,
    classnames: Sequence[str],
    templates: Sequence[str | Callable[[str], str]] = ("{}",),
    tokenizer: Callable[[list[str]], torch.Tensor] | None = None,
    *,
    batch_size: int = 256,
) -> torch.Tensor:
    """Build the classifier ``(embed_dim, num_classes)`` from a CLIP model.

    ``templates`` are format strings with one ``{}`` and no other brace (``check_template``), or callables
    ``classname -> prompt``; ``tokenizer``
    defaults to the CLIP tokenizer at the model's context length.
    """
    prompts = zero_shot_prompts(classnames, templates)
    if tokenizer is None:
        from .tokenization import tokenizer as make_tokenizer

        tokenizer = make_tokenizer(model.text.context_length)
    device = model.logit_scale.device
    embs = []
    for i in range(0, len(prompts), batch_size):
        ids = tokenizer(prompts[i : i + batch_size]).to(device)
        emb = model.encode_text(ids, normalize=True).float()
        embs.append(check_finite(emb, f"the prompt {prompts[i]!r} (or its batch)", model))
    return classifier_from_prompts(torch.cat(embs), len(classnames))


def zero_shot_logits(
    image_embeddings: torch.Tensor, classifier: torch.Tensor, scale: float = 100.0
) -> torch.Tensor:
    """``(B, D)`` image embeddings (normalised here) x ``(D, C)`` classifier -> ``(B, C)`` logits."""
    img = F.normalize(image_embeddings.float(), dim=-1)
    return scale * img @ classifier.to(img.device, img.dtype)


def zero_shot_probs(
    image_embeddings: torch.Tensor, classifier: torch.Tensor, scale: float = 100.0
) -> torch.Tensor:
    """Class probabilities ``(B, C)``: softmax of ``zero_shot_logits``."""
    return zero_shot_logits(image_embeddings, classifier, scale).softmax(dim=-1)
