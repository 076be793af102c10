"""Analysis: layer similarity (CKA) of tied applications and DEQ iterates."""

from .cka import MinibatchCKA, linear_cka, unbiased_hsic
from .features import application_outputs, cka_matrix

__all__ = ["MinibatchCKA", "application_outputs", "cka_matrix", "linear_cka", "unbiased_hsic"]
