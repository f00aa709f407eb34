"""processnode: a kubelet stand-in that runs the pods bound to one Node as local processes.

It is the "node" of the local development cluster (``localcluster/cluster.sh``) for tests and the demo, not
a production node (no images, no isolation, no resource limits: see ``localcluster/README.md``). It registers
``Node/process-node`` with configurable capacity (cpu, memory, pods, ``nvidia.com/gpu``), keeps it
Ready with a Lease in ``kube-node-lease`` and periodic status updates, and for every pod bound to it

* **ignores the container image** and runs the container's ``command`` + ``args`` (``$(VAR)``
  expanded like the kubelet does) as a local process with **the project's environment**: the
  project's virtualenv ``bin/`` first on ``PATH`` and the source folders on ``PYTHONPATH``, plus the
  pod's ``env``/``envFrom`` (downward API, ConfigMap and Secret references) and
  ``KUBERNETES_SERVICE_HOST=127.0.0.1``/``KUBERNETES_SERVICE_PORT``;
* materialises the pod's volumes (ConfigMap, Secret, projected service-account token/CA/downward
  API, downwardAPI, emptyDir incl. ``medium: Memory`` as a sized tmpfs, hostPath, and
  PersistentVolumeClaims bound to hostPath/local PersistentVolumes) under
  ``$STATE/pods/<ns>_<name>_<uid>/``;
* starts every container inside its own private mount namespace (``unshare -m --propagation
  private``) where :mod:`processnode.launch` bind-mounts the volumes at the container's real
  ``mountPath`` (read-only where asked), a per-container termination-message file at
  ``terminationMessagePath`` and a per-pod ``/etc/hosts`` resolving the pod's hostname and every
  ``<hostname>.<subdomain>[.<ns>.svc[.cluster.local]]`` of the namespace's pods to 127.0.0.1 (all
  pods share the host network);
* reports real pod status (phase, container states, exit codes, termination messages, conditions)
  through ``pods/status``, restarts containers per ``restartPolicy`` with back-off, and on deletion
  kills the process group (SIGTERM, then SIGKILL after the grace period), tears the volumes down
  and removes the pod, as the kubelet does.

Start it with ``python -m processnode --kubeconfig <node kubeconfig> --state-dir <dir>``;
``localcluster/cluster.sh up`` does that after the control plane is ready. See ``docs/local-cluster.md``.

Modules, and who may import whom (no import circle; ``tests/test_imports.py`` checks):

* ``__main__`` (command line) -> ``node`` (the Node object, heartbeats, watches, one worker per pod)
* ``node`` -> ``worker`` (one pod's thread; it sees the node only through ``worker.PodHost``), ``hosts``
  (``/etc/hosts`` files), ``logserver`` (``kubectl logs``; it sees the node only through a ``LocateLog``
  callable), ``nodeconfig``
* ``worker`` -> ``podstatus`` (pure status computation), ``container`` (process lifecycle), ``launchspec``
  (what ``launch.py`` gets), ``volumes``, ``probes``, ``envvars``, ``kube``
* ``launch`` runs by path inside each container's mount namespace: standard library only, imports nothing here.
"""

__all__ = ["__version__"]
__version__ = "0.1.0"
