"""Converting a trained BERT's feedforward layers into FFFs (``ultrafastbert fffify``, ``docs/fffify.md``):
``source`` checks and loads the BERT, ``init`` seeds each FFF from its layer's real inputs and outputs,
``distill`` trains it to reproduce them, ``job`` runs the whole conversion and saves the FFF-BERT folder."""
