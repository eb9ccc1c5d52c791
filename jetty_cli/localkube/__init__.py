"""A real single-node Kubernetes on this machine, for the local cluster tier.

etcd, kube-apiserver, kube-controller-manager, kube-scheduler and a kubelet on
containerd + runc, every one bound to 127.0.0.1, state under ``.jetty/k8s/``.
The binaries come from ``deploy/k8s/local/build-k8s.sh`` (built once per version
from Debian's source package, cached outside the checkout); the Debian packages
from ``deploy/k8s/local/deps.sh``.

* :mod:`.pki` - the certificates, tokens and kubeconfigs;
* :mod:`.cluster` - start, wait, stop (and leave the machine as it was);
* :mod:`.hoststate` - what the machine looked like before, to check after.

``python -m jetty_cli.localkube up|down|status`` (``make k8s-up`` / ``k8s-down``).
"""
