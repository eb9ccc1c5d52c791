# Shared settings of the local-cluster scripts (sourced, not run).
K8S_VERSION=${K8S_VERSION:-1.20.2}
if [ -z "${JETTY_CACHE:-}" ]; then
  if [ "$(id -u)" = 0 ]; then JETTY_CACHE=/var/cache/jetty; else JETTY_CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/jetty; fi
fi
K8S_CACHE=$JETTY_CACHE/k8s/v$K8S_VERSION
