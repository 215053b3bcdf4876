"""Replays of the attacks of issue 15 against the real services, each printing the figure
measured before the fix next to the one measured now.

Each module is one attack and a ``python -m bench.attacks.<name>`` entry point with a
``main(argv) -> int``; ``python -m bench.attacks`` runs them all in turn (``--quick``
for CI-sized runs). Where the defence is a policy knob, the "before" figure is measured
in the same run with the knob off; where the old code path is gone, the figure recorded
in issue 15 is printed and labelled as such. Modules import ``bench.rig``,
``bench.common`` and the product; never each other.
"""
