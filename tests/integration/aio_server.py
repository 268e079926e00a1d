"""An asyncio server in a thread of its own, for the scripted servers of
the tests (milter_server.py, test_lmtp.py): the tests stay synchronous
while the server answers from its event loop."""

import asyncio
import os
import threading


class AioServer:
    """Serves `handler(reader, writer)`, one task per connection, on the
    UNIX-domain socket `path` or else on TCP `host`:`port` (port 0: a free
    one, read back from `port` once started). `stop` closes the listener,
    cancels the connections, waits for them and joins the thread; the
    socket file is removed. A stopped server can be started again."""

    def __init__(self, handler, host="127.0.0.1", port=0, path=None, what="server"):
        self.handler = handler
        self.host, self.port, self.path = host, port, path
        self.what = what
        self.loop = None
        self.thread = None
        self.server = None

    def start(self, timeout=10):
        assert self.thread is None, "%s already started" % self.what
        ready = threading.Event()
        failed = []
        self.loop = asyncio.new_event_loop()

        def run():
            asyncio.set_event_loop(self.loop)
            try:
                if self.path is not None:
                    coro = asyncio.start_unix_server(self.handler, path=str(self.path))
                else:
                    coro = asyncio.start_server(self.handler, self.host, self.port)
                self.server = self.loop.run_until_complete(coro)
            except Exception as e:  # reported by start, in the test's thread
                failed.append(e)
                ready.set()
                self.loop.close()
                return
            if self.path is None:
                self.port = self.server.sockets[0].getsockname()[1]
            ready.set()
            self.loop.run_forever()
            self.loop.close()

        self.thread = threading.Thread(target=run, daemon=True, name=self.what)
        self.thread.start()
        if not ready.wait(timeout):
            raise RuntimeError("%s did not start in %ss" % (self.what, timeout))
        if failed:
            self.thread.join(timeout)
            self.thread = None
            raise RuntimeError("%s did not start: %r" % (self.what, failed[0]))
        return self

    def stop(self, timeout=10):
        if self.thread is None:
            return

        async def shut():
            self.server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shut(), self.loop).result(timeout)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout)
        self.thread = None
        if self.path is not None and os.path.exists(self.path):
            os.unlink(self.path)
