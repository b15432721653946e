"""UltraFastBERT: crammedBERT with fast feedforward (FFF) layers run as conditional matrix multiplication.

Importing the package is cheap: its public names import their modules (torch, transformers) on first use, so
the command line starts in a fraction of a second. ``import ultrafastbert`` still makes the ``transformers`` Auto
classes resolve ``model_type = "crammedBERT"``: the classes are registered now if transformers' Auto classes are
loaded already, and otherwise as soon as the import that loads them is done.
"""

from __future__ import annotations

import importlib
import sys
import threading
from typing import Any

from .lazy import lazy_exports

# The public names, by the module that defines them: the one list, imported on first use (``lazy.py``).
_EXPORTS = {
    ".fff": ("FFF",),
    ".model": (
        "CheckpointError",
        "CrammedBertConfig",
        "CrammedBertForMaskedLM",
        "CrammedBertForQuestionAnswering",
        "CrammedBertForSequenceClassification",
        "CrammedBertForTokenClassification",
        "CrammedBertModel",
        "CrammedBertTokenizer",
        "UltraFastGPTConfig",
        "UltraFastGPTForCausalLM",
        "convert_checkpoint",
    ),
}
__all__ = [*(name for names in _EXPORTS.values() for name in names), "__version__"]
_public_name, __dir__ = lazy_exports(__name__, _EXPORTS)


def __getattr__(name: str) -> Any:
    if name == "__version__":  # pyproject.toml owns the version; the installed metadata carries it
        from importlib.metadata import version

        return version(__name__)
    return _public_name(name)


# Loaded with every Auto class (the model, tokenizer and pipeline mappings import it).
_AUTO_CLASSES = "transformers.models.auto.configuration_auto"


class _AutoClassRegistration:
    """A ``sys.meta_path`` entry that imports ``ultrafastbert.model`` (which registers the classes with the Auto
    classes) once the outermost ``transformers`` import that loaded the Auto classes has finished. Not earlier:
    ``from transformers import PreTrainedModel`` loads them while ``modeling_utils`` is still executing, and the
    registration imports that module. It finds nothing itself: it asks the other finders and wraps the loader
    of each ``transformers`` module to count the ones executing."""

    def __init__(self) -> None:
        self.executing = threading.local()  # .depth: transformers modules executing in this thread, nested

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if name.partition(".")[0] != "transformers":
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                if hasattr(spec.loader, "exec_module"):
                    spec.loader = _CountingLoader(spec.loader, self)
                return spec
        return None

    def imported(self) -> None:
        """After a ``transformers`` module executed without error in this thread, with none left executing."""
        if _AUTO_CLASSES in sys.modules and self in sys.meta_path:
            sys.meta_path.remove(self)
            _register_auto_classes()


class _CountingLoader:
    """A ``transformers`` module's own loader, counting the modules executing around ``exec_module``."""

    def __init__(self, loader: Any, registration: _AutoClassRegistration) -> None:
        self.loader, self.registration = loader, registration

    def create_module(self, spec: Any) -> Any:
        return self.loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        executing = self.registration.executing
        executing.depth = getattr(executing, "depth", 0) + 1
        try:
            self.loader.exec_module(module)
        finally:
            executing.depth -= 1
        if executing.depth == 0:
            self.registration.imported()

    def __getattr__(self, name: str) -> Any:  # get_source, get_resource_reader, ...: the module's own loader's
        return getattr(self.loader, name)


def _register_auto_classes() -> None:
    # ``ultrafastbert.model`` registers on import; when the registration was set off by that package's own first
    # import of transformers, this returns the half-imported package, which registers when it finishes.
    importlib.import_module(".model", __name__)


if _AUTO_CLASSES in sys.modules:
    _register_auto_classes()
else:
    sys.meta_path.insert(0, _AutoClassRegistration())
