"""Tests that start Ray or other processes (Ray Train runs, mp.spawn, the console script, a
wheel build), and the multi-second ones marked ``slow``. Each is marked ``integration``."""
