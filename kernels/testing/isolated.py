"""``--isolate``: an implementation run in a subprocess of its own, so it cannot reach or patch the judge.

``isolated(name)`` returns a ``Provider`` whose functions send each call's arguments (pickled, copied: no memory
is shared) to a worker process that loaded ``name`` and return its outputs; the op's documented in-place
arguments (``OpSpec.writes``) are copied back. Whatever the implementation patches, walks or opens, it does so
in the worker: the oracle, the comparison and the timer live in the parent. Declines (``Unsupported``) and
errors travel back as exceptions. CPU tensors only (a GPU run's measured path times in process).
"""
from __future__ import annotations

import dataclasses
import multiprocessing
import pickle
import threading

from kernels.impls import Provider, load
from kernels.ops import registry
from kernels.runtime import configure_triton


class _Worker:
    """One spawned process serving calls of one implementation, one at a time."""
    def __init__(self, name: str):
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=serve, args=(name, child), daemon=True, name=f"isolated {name}")
        self.proc.start()
        child.close()
        self.lock = threading.Lock()

    def ask(self, message):
        with self.lock:
            self.conn.send_bytes(pickle.dumps(message))
            kind, payload = pickle.loads(self.conn.recv_bytes())
        if kind == "error":
            raise payload
        return payload


def isolated(name: str) -> Provider:
    """The provider ``name`` (anything ``kernels.impls.load`` takes), served by a worker process."""
    worker = _Worker(name)
    meta = worker.ask(("describe",))

    def proxy(op: str):
        writes = getattr(registry().get(op), "writes", ())

        def call(*args, **kwargs):
            out, written = worker.ask(("call", op, args, kwargs, writes))
            for i, value in written.items():
                args[i].copy_(value)
            return out

        call.__name__ = op
        return call

    functions = {op: proxy(op) for op in meta.pop("provides")}
    meta["description"] += " (isolated in a subprocess)"
    return Provider(name=name, functions=functions, **meta)


def serve(name: str, conn) -> None:
    """The worker: load ``name`` (the interpreter switched on first, as in the parent) and answer calls."""
    configure_triton()

    provider = load(name)
    while True:
        try:
            message = pickle.loads(conn.recv_bytes())
        except EOFError:
            return
        try:
            if message[0] == "describe":  # every field but the functions (declines are raised by the worker's)
                reply = {f.name: getattr(provider, f.name) for f in dataclasses.fields(provider)
                         if f.name not in ("name", "functions", "unsupported")}
                reply["provides"] = [op for op in registry() if provider.provides(op)]
            else:
                _, op, args, kwargs, writes = message
                out = provider.op(op)(*args, **kwargs)
                reply = (out, {i: args[i] for i in writes})
            conn.send_bytes(pickle.dumps(("ok", reply)))
        except Exception as exc:  # noqa: BLE001 - any failure of the implementation travels back to the judge
            try:
                data = pickle.dumps(("error", exc))
            except Exception:  # noqa: BLE001 - an exception that does not pickle: its text
                data = pickle.dumps(("error", RuntimeError(f"{type(exc).__name__}: {exc}")))
            conn.send_bytes(data)
