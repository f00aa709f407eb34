"""ftkubectl: the ``kubectl finetune`` plugin (``plugin/kubectl-finetune``); see plugin/README.md.

* :mod:`ftkubectl.cli`: the commands and their arguments;
* :mod:`ftkubectl.render`: what they print (pure functions of a FineTuneJob);
* :mod:`ftkubectl.kube`: kubectl, the plugin's only way to the cluster.

Standard library only, plus the contract's names (``crds/ftcrd/names.py``, ``conditions.py``).
"""
