"""The names of the finetuning tasks, apart from the code that builds them (``tasks.py``): the command line
checks ``--tasks`` while it parses flags, and must not load numpy or torch to do so."""

LOCAL_TASKS = ("wn-pos", "wn-supersense", "wn-supersense-noun", "wn-sense-match", "fortune-topic")
GLUE_NAMES = ("cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte")  # the keys of tasks.GLUE_TASKS
# every task name ``finetune`` takes: the local tasks, then GLUE's
TASK_NAMES = (*LOCAL_TASKS, *GLUE_NAMES)


def glue_key(name: str) -> str:
    """GLUE's spelling (``SST-2``) to the key used here (``sst2``)."""
    return name.lower().replace("-", "")


def task_name(name: str) -> str:
    """The canonical name of a local or GLUE task (GLUE's are also accepted as spelled by GLUE: ``SST-2``), or a
    ``ValueError`` listing the known tasks."""
    if name in LOCAL_TASKS:
        return name
    if glue_key(name) in GLUE_NAMES:
        return glue_key(name)
    raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(TASK_NAMES)}")
