"""Regenerate the model code that saved folders carry (``folder_code/``, see ``portable.py``), at development time.

``make folder-code`` runs ``main(["--write"])``: the flat files of every model family, generated from the package's
sources, replace the committed ones. ``--check`` only compares and exits 1, naming the stale file, as
``tests/test_portable.py`` does. This module imports the families, so ``portable.py`` (which ``base.py`` imports)
cannot hold it without an import cycle.
"""

from __future__ import annotations

import argparse
import sys

from .crammedbert import CrammedBertPreTrainedModel
from .fffbert import FFFBertPreTrainedModel
from .portable import FOLDER_CODE, generate_folder_code, stale_files, stale_message, write_folder_code
from .ultrafastgpt import UltraFastGPTPreTrainedModel

# One model class of each family: its ``folder_files`` name the package modules its folders carry.
FAMILIES = (CrammedBertPreTrainedModel, FFFBertPreTrainedModel, UltraFastGPTPreTrainedModel)


def generate() -> dict[str, str]:
    """Folder file name -> source for every family's folder files and the kernel stand-in."""
    return generate_folder_code(FAMILIES)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Regenerate (--write) or compare (--check) " + str(FOLDER_CODE))
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--write", action="store_true", help="write the generated files, remove the extra ones")
    action.add_argument("--check", action="store_true", help="exit 1, naming the first stale file, if any is")
    args = parser.parse_args(argv)
    generated = generate()
    if args.check:
        stale = stale_files(generated)
        if stale:
            print(stale_message(stale), file=sys.stderr)
            return 1
        print(f"{len(generated)} files in {FOLDER_CODE.name}/ are up to date")
        return 0
    changed = write_folder_code(generated)
    written = ", ".join(changed) + " written" if changed else "unchanged"
    print(f"{len(generated)} files in {FOLDER_CODE.name}/: {written}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
