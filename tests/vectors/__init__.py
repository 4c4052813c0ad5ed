"""Packet vectors as data (STYLE rule 8): numbered cases shared by unit tests, netns tests and bench."""
