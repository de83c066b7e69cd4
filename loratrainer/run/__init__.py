"""The contract between the launcher (GUI, CLI, queue) and the trainer: the run folder's file names, the event
stream (JSON lines) and what it folds into, the STOP file, process records and the owner mark, how a run ended.
Both sides import this package; neither imports the other. No torch here."""
