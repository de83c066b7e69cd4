"""What this machine offers a run, the same on every OS: child processes (start, find, stop a whole tree through
psutil) and whether the 8-bit optimizers can run here. Used by the launcher, the trainer and the tools alike;
no torch at import."""
