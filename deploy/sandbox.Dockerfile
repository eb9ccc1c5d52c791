# The sandbox image every runbook Job runs: node 20 with the pinned agent CLIs in
# /opt/agents, python3 (standard library only) for /opt/jetty/podentry.py, tini as
# PID 1, and uid 1000. Not built in this repository's CI; build with
#   docker build -f deploy/sandbox.Dockerfile -t registry.example/jetty-sandbox:latest .
FROM node:20-bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 tini ca-certificates git ripgrep \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/agents
COPY agents/package.json agents/package-lock.json ./
RUN npm ci --omit=dev --ignore-scripts=false && npm cache clean --force
COPY services/runner/sandbox/podentry.py /opt/jetty/podentry.py
# The node image's "node" user has uid 1000; the Job runs as 1000:1000 with a
# read-only root filesystem and emptyDirs for /workspace, /home/agent and /tmp.
RUN mkdir -p /workspace /home/agent && chown 1000:1000 /workspace /home/agent
USER 1000:1000
WORKDIR /workspace
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["python3", "-I", "/opt/jetty/podentry.py"]
