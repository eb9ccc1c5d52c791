"""The first process inside a ``local`` sandbox: start the gateway relay, set the
limits, then become the agent.

Run by the sandbox's own ``/usr/bin/python3`` (standard library only, nothing of
the project is importable in there)::

    python3 -I -S inner_relay.py --port 18080 --socket /run/jetty/gw.sock \\
        --nproc 512 --fsize 1073741824 --data 4294967296 --nofile 1024 [--cpu 600] \\
        -- AGENT ARGV...

The sandbox has no network but loopback. The relay listens on
``127.0.0.1:<port>`` and forwards every connection to the unix socket the runner
serves at ``--socket`` (which leads to the gateway and nowhere else).

What must stay true:

* the listening socket is bound *before* the agent is started, so the agent's
  first request never races the relay;
* the relay runs in a grandchild (reparented to the sandbox's init, which reaps
  it), so the agent never sees an extra child of its own;
* the limits are set in the agent's process after the fork, inside the sandbox's
  user namespace: ``RLIMIT_NPROC`` then counts the sandbox's processes only, and
  the relay is not held to the agent's limits;
* the relay writes nothing to stdout (that is the agent's event stream).
"""

from __future__ import annotations

import os
import resource
import signal
import socket
import sys


class Options:
    """The launcher's options (parsed by hand: importing argparse would add
    ~30 ms to every sandbox's start)."""

    def __init__(self, argv: list[str]) -> None:
        if "--" not in argv:
            raise SystemExit("usage: inner_relay.py --port P --socket PATH [limits] -- COMMAND...")
        split = argv.index("--")
        pairs, self.command = argv[:split], argv[split + 1 :]
        if len(pairs) % 2 or not self.command:
            raise SystemExit(f"inner_relay.py: bad arguments {argv!r}")
        given = {pairs[i].removeprefix("--"): pairs[i + 1] for i in range(0, len(pairs), 2)}
        unknown = set(given) - {"port", "socket", "unset-ctype", *_RLIMITS}
        if unknown or not {"port", "socket"} <= set(given):
            raise SystemExit(f"inner_relay.py: bad options {sorted(given)}")
        self.port = int(given["port"])
        self.socket = given["socket"]
        self.unset_ctype = given.get("unset-ctype") == "1"
        self.limits = {name: int(given[name]) for name in _RLIMITS if name in given}


def _serve(listener: socket.socket, target: str) -> None:
    """The relay loop (in the grandchild). Imports asyncio only here, so the
    agent's start is not delayed by it."""
    import asyncio

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while chunk := await reader.read(65536):
                writer.write(chunk)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()
        except OSError:
            pass  # the other side went away: the connection ends with it

    async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            up_r, up_w = await asyncio.open_unix_connection(target)
        except OSError as exc:
            print(f"inner relay: cannot reach {target}: {exc}", file=sys.stderr)
            client_w.close()
            return
        try:
            await asyncio.gather(pipe(client_r, up_w), pipe(up_r, client_w))
        finally:
            for writer in (up_w, client_w):
                writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, sock=listener)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def _start_relay(port: int, target: str) -> None:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(128)
    child = os.fork()
    if child == 0:  # the intermediate child: fork the relay and leave at once
        try:
            if os.fork() == 0:
                os.setsid()
                devnull = os.open(os.devnull, os.O_RDWR)
                os.dup2(devnull, 0)
                os.dup2(devnull, 1)
                _serve(listener, target)
        finally:
            os._exit(0)
    os.waitpid(child, 0)
    listener.close()


CPU_GRACE_S = 5
_RLIMITS = {
    "nproc": resource.RLIMIT_NPROC,
    "fsize": resource.RLIMIT_FSIZE,
    "data": resource.RLIMIT_DATA,
    "cpu": resource.RLIMIT_CPU,
    "nofile": resource.RLIMIT_NOFILE,
}


def main(argv: list[str]) -> int:
    args = Options(argv)
    _start_relay(args.port, args.socket)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    for name, value in args.limits.items():
        # CPU: SIGXCPU at the limit, SIGKILL a few seconds later (equal soft
        # and hard limits would SIGKILL at once).
        hard = value + CPU_GRACE_S if name == "cpu" else value
        resource.setrlimit(_RLIMITS[name], (value, hard))
    # Python ignores these two at start-up and an exec keeps ignored signals: give
    # the agent the defaults (a pipeline's writer ends on SIGPIPE; a file past
    # RLIMIT_FSIZE stops its writer with SIGXFSZ).
    for sig in (signal.SIGPIPE, signal.SIGXFSZ):
        signal.signal(sig, signal.SIG_DFL)
    if args.unset_ctype:  # set by Python's own locale coercion, not by the command
        os.environ.pop("LC_CTYPE", None)
    try:
        os.execvp(args.command[0], args.command)
    except OSError as exc:
        print(f"cannot start {args.command[0]}: {exc}", file=sys.stderr)
        return 127
    return 0  # not reached: exec replaced us


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
