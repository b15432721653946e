# Generated from ultrafastbert/model/base.py by `make folder-code`: edit the package, not this copy.
"""What every model family shares (crammedBERT / UltraFastBERT, FFF-BERT, UltraFastGPT): the switch of the FFF
execution path, strict loading and saving with the model code.

``FFFPreTrainedMixin`` goes first among the bases of each family's ``PreTrainedModel`` class (``class
CrammedBertPreTrainedModel(FFFPreTrainedMixin, PreTrainedModel)``), so that its ``from_pretrained`` and
``save_pretrained`` wrap ``transformers``' own. A family says what differs in class attributes and hooks: the
module that holds its FFF layers' types, its head parameters (which a checkpoint of another head may lack or carry),
a check of the checkpoint files before loading, and the package modules its saved folders carry.
"""

from __future__ import annotations

import os
from typing import Any, ClassVar

from safetensors import SafetensorError
from torch import nn

try:  # the installed ultrafastbert package, whose FFF layer has the compiled kernel
    from ultrafastbert.fff import FFF, check_impl
except ImportError:  # not installed: this folder's pure-PyTorch copy
    from .fff_layer import FFF, check_impl
from .model_loading import CheckpointError, check_finite_weights, check_loading_info


class FFFPreTrainedMixin:
    """``set_fff_impl``, strict ``from_pretrained`` and ``save_pretrained`` with the model code, for a
    ``PreTrainedModel`` subclass that lists this mixin first among its bases."""

    # The layer types whose ``impl`` ``set_fff_impl`` sets.
    fff_layer_types: ClassVar[tuple[type[nn.Module], ...]] = (FFF,)
    # The family's own package modules -> the folder files that carry them (``portable.py`` adds the shared ones).
    folder_files: ClassVar[dict[str, str]] = {}

    @classmethod
    def is_head_key(cls, key: str) -> bool:
        """Whether parameter ``key`` belongs to a task head: a checkpoint may lack it (a fresh head) or carry
        another head's (loading a classifier from a masked-LM checkpoint). None by default."""
        return False

    @classmethod
    def check_checkpoint_files(cls, source: Any) -> None:
        """Checks of the checkpoint's files before they load (``CheckpointError``); none by default."""

    def check_fff_impl(self, impl: str) -> str:
        """``impl`` if the model's FFF layers have that execution path, else a one-line ``ValueError``."""
        return check_impl(impl)

    def set_fff_impl(self, impl: str) -> None:
        """Select the execution path of every FFF layer (``"auto"``, ``"reference"``, ...), and record it in the
        config so that a saved model keeps it."""
        self.config.fff_impl = self.check_fff_impl(impl)
        for module in self.modules():
            if isinstance(module, self.fff_layer_types):
                module.impl = impl

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Any, *model_args: Any, **kwargs: Any) -> Any:
        """``PreTrainedModel.from_pretrained`` that refuses checkpoints that do not fit: missing parameters outside
        the heads, unexpected ones, mis-shaped ones (unless ``ignore_mismatched_sizes``, which re-initialises them),
        what ``check_checkpoint_files`` refuses, a corrupt file and weights holding NaN or infinity raise
        ``CheckpointError`` naming them (``transformers`` only warns, or says nothing)."""
        want_info = kwargs.pop("output_loading_info", False)
        ignore_mismatched_sizes = kwargs.pop("ignore_mismatched_sizes", False)
        source = pretrained_model_name_or_path
        try:
            cls.check_checkpoint_files(source)
            model, info = super().from_pretrained(  # type: ignore[misc]
                source, *model_args, output_loading_info=True, ignore_mismatched_sizes=True, **kwargs
            )
        except SafetensorError as error:  # a truncated file, a garbled header: name the checkpoint, not the parser
            raise CheckpointError(f"checkpoint {source} has a corrupt weights file: {error}") from error
        check_loading_info(model, info, source, ignore_mismatched_sizes, is_head=cls.is_head_key)
        check_finite_weights(model, source)
        return (model, info) if want_info else model
