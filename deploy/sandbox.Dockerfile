# The sandbox image every runbook Job runs: Node 20 with the pinned agent CLIs in
# /opt/agents, python3 (standard library only) for /opt/jetty/podentry.py, tini as
# PID 1, git and ripgrep, uid 1000. Built by `make images` (deploy/images/build.sh)
# with buildah and no registry pull: a Debian rootfs from mmdebstrap, the official
# Node binary and npm from the npm registry (`npm pack`, on the host), the agents
# installed offline from the host's npm cache.

# Stage 1: Node and npm unpacked, the agents installed with npm ci.
FROM scratch AS build
ADD rootfs-sandbox.tar /
ENV PATH=/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
RUN --mount=type=bind,source=dl,target=/dl \
    mkdir -p /opt/node /opt/npm \
 && tar -xzf /dl/node.tgz -C /opt/node --strip-components=1 package/bin \
 && tar -xzf /dl/npm.tgz -C /opt/npm --strip-components=1
COPY agents/package.json agents/package-lock.json /opt/agents/
WORKDIR /opt/agents
RUN --mount=type=bind,source=npmcache,target=/npmcache,rw \
    PATH=/opt/node/bin:$PATH node /opt/npm/bin/npm-cli.js ci --omit=dev --offline \
      --cache /npmcache --no-audit --no-fund --ignore-scripts --loglevel=error \
 && cd node_modules/@anthropic-ai/claude-code && PATH=/opt/node/bin:$PATH node install.cjs

# Stage 2: the runtime, without npm.
FROM scratch
ADD rootfs-sandbox.tar /
COPY --from=build /opt/node/bin/node /usr/local/bin/node
COPY --from=build /opt/agents /opt/agents
COPY services/runner/sandbox/podentry.py /opt/jetty/podentry.py
ENV PATH=/opt/agents/node_modules/.bin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
RUN echo 'agent:x:1000:1000:agent:/home/agent:/bin/sh' >> /etc/passwd \
 && echo 'agent:x:1000:' >> /etc/group \
 && mkdir -p /workspace /home/agent && chown 1000:1000 /workspace /home/agent \
 && node --version && claude --version && codex --version && gemini --version
# The Job runs as 1000:1000 with a read-only root filesystem and emptyDirs for
# /workspace, /home/agent and /tmp.
USER 1000:1000
WORKDIR /workspace
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["python3", "-I", "/opt/jetty/podentry.py"]
