"""Evaluation: perplexity and JS divergence (:mod:`.perplexity`), zero-shot multiple choice
(:mod:`.zeroshot`) and the lm-evaluation-harness bridge (:mod:`.lm_eval`)."""

from .perplexity import js_divergence, perplexity

__all__ = ["js_divergence", "perplexity"]
