"""The cluster simulator: the live scheduler object on a discrete-event clock, with hardware profiles.

Imports no torch except in measure.py (`torpor profile`); never starts processes or sockets.
"""
