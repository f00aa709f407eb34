"""The chaos benchmark's engine (bench/chaos.py) and its test: jobs on the local cluster while a seeded schedule of
faults hits the operator, the apiserver, trainer pods, Jobs and the process node.

* :mod:`tests.chaos.schedule`: the seeded plan (pure);
* :mod:`tests.chaos.faults`: making the faults;
* :mod:`tests.chaos.observe`: watching Jobs and pods through them (duplicates) and finding stray processes;
* :mod:`tests.chaos.verdict`: the judgement (pure): stuck, duplicates, unverified artifacts, orphans;
* :mod:`tests.chaos.run`: one run, start to verdict.
"""
