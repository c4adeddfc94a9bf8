"""The small core every layer stands on: exit codes, atomic files, ids, subprocesses, console, run directory.

Nothing here knows about video, training or results; everything above imports from here.
"""
