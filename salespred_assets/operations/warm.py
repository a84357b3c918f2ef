"""Imported last by the step executor's forkserver (``definitions.PRELOAD``): builds the code location once
there, so each step process forked from it starts with the definitions built, rather than building them again
(a tenth of a second or more of CPU per step, some forty steps per full refresh)."""

from salespred_assets.definitions import environment_definitions

environment_definitions()
