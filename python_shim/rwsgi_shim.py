"""rwsgi-gw worker shim: imports one WSGI app and serves the requests the master
sends over this process's stdin, answering on its stdout (docs/protocol.md).

Standard library only, Python 3.8+ and PyPy. The master embeds this file and
runs it as `python -c BOOTSTRAP APP THREADS [PYTHONPATH_DIR ...]`, the bootstrap
compiling this source from the environment (src/worker.rs).
"""

import collections
import faulthandler
import os
import queue
import select
import struct
import sys
import threading
import traceback

# ---------------------------------------------------------------- protocol

PROTOCOL_VERSION = 1
MAX_FRAME = 16 << 20
MAX_CHUNK = 1 << 20
EXIT_OUT_OF_MEMORY = 4

# master -> worker
REQUEST, BODY, CANCEL = 1, 2, 3
# worker -> master
HELLO, BOOT_ERROR, START, BODY_OUT, ERROR, READ = 10, 11, 12, 13, 14, 15


class ProtocolError(Exception):
    pass


def _pure_packb(msg):
    """Encode a flat list of None/bool/int/str/bytes: all the shim ever sends."""
    out = [b"\xdc" + struct.pack(">H", len(msg)) if len(msg) > 15 else bytes((0x90 | len(msg),))]
    for v in msg:
        if v is True:
            out.append(b"\xc3")
        elif v is False:
            out.append(b"\xc2")
        elif v is None:
            out.append(b"\xc0")
        elif isinstance(v, int):
            out.append(bytes((v,)) if 0 <= v < 128 else b"\xcf" + struct.pack(">Q", v))
        else:
            if isinstance(v, str):
                v = v.encode("utf-8")
                head = b"\xdb"
            else:
                head = b"\xc6"
            out.append(head + struct.pack(">I", len(v)))
            out.append(v)
    return b"".join(out)


def _pure_unpackb(data):
    """Decode one array of None/bool/uint/bin: the shape of every master frame."""
    pos, n = _read_array_len(data)
    items = []
    for _ in range(n):
        t = data[pos]
        if t < 0x80:
            items.append(t)
            pos += 1
        elif t == 0xC3 or t == 0xC2:
            items.append(t == 0xC3)
            pos += 1
        elif t == 0xC0:
            items.append(None)
            pos += 1
        elif t in _UINT:
            size, fmt = _UINT[t]
            items.append(struct.unpack_from(fmt, data, pos + 1)[0])
            pos += 1 + size
        elif t in _BIN:
            size, fmt = _BIN[t]
            length = struct.unpack_from(fmt, data, pos + 1)[0]
            pos += 1 + size
            items.append(data[pos:pos + length])
            pos += length
        else:
            raise ProtocolError("unexpected MessagePack type 0x%02x" % t)
    return items


def _read_array_len(data):
    t = data[0]
    if 0x90 <= t <= 0x9F:
        return 1, t & 0x0F
    if t == 0xDC:
        return 3, struct.unpack_from(">H", data, 1)[0]
    raise ProtocolError("frame is not a MessagePack array")


_UINT = {0xCC: (1, ">B"), 0xCD: (2, ">H"), 0xCE: (4, ">I"), 0xCF: (8, ">Q")}
_BIN = {0xC4: (1, ">B"), 0xC5: (2, ">H"), 0xC6: (4, ">I")}


def _pick_codec():
    if os.environ.get("RWSGI_SHIM_CODEC") != "pure":
        try:
            import msgpack

            return "msgpack", msgpack.Packer(use_bin_type=True).pack, msgpack.unpackb
        except ImportError:
            pass
    return "pure", _pure_packb, _pure_unpackb


CODEC, packb, unpackb = _pick_codec()
_LEN = struct.Struct(">I")


def frame(msg):
    data = packb(msg)
    return _LEN.pack(len(data)) + data


def chunk_frame(fields, chunk, final):
    """The buffers of the frame `fields + [chunk, final]`, built around the
    chunk so that a large body is never copied: `fields` packs as a fixarray,
    whose length byte is raised by two for the bin chunk and the bool."""
    packed = packb(fields)
    head = bytes((0x90 | (len(fields) + 2),)) + packed[1:] + b"\xc6" + _LEN.pack(len(chunk))
    return [_LEN.pack(len(head) + len(chunk) + 1) + head, chunk, b"\xc3" if final else b"\xc2"]


if hasattr(os, "writev"):
    _writev = os.writev
else:  # PyPy has no writev: one copy instead.
    def _writev(fd, buffers):
        return os.write(fd, b"".join(buffers))


class ClientGone(IOError):
    """The master cancelled the request: its client disconnected, or the
    request body stalled, grew past --limit-request-body or broke its framing
    (the master has answered the client itself)."""

    def __init__(self):
        IOError.__init__(self, "the request was cancelled: the client disconnected or its body could not be read")


class Channel:
    """The protocol stream: frames in from the master, frames out to it."""

    def __init__(self, infd, outfd):
        self.infd = infd
        self.outfd = outfd
        self.buffer = bytearray()
        self.send_lock = threading.Lock()
        # REQUEST frames that arrived while the current request was running.
        self.pending = collections.deque()
        self.cancelled = set()

    def recv(self):
        """The next REQUEST frame, or None when the master closed the pipe."""
        while True:
            msg = self.pending.popleft() if self.pending else self._read_frame(block=True)
            if msg is None or msg[0] == REQUEST:
                return msg
            # A CANCEL or BODY that raced the end of its request: nothing to do.

    def _read_frame(self, block):
        """The next frame; None at the end of the stream, or if `block` is false
        and no whole frame is there yet."""
        buf = self.buffer
        while True:
            wanted = 4
            if len(buf) >= 4:
                (length,) = _LEN.unpack_from(buf)
                if length > MAX_FRAME:
                    raise ProtocolError("frame of %d bytes exceeds the limit" % length)
                wanted = 4 + length
                if len(buf) >= wanted:
                    data = bytes(buf[4:wanted])
                    del buf[:wanted]
                    return unpackb(data)
            if not block and not select.select([self.infd], [], [], 0)[0]:
                return None
            data = os.read(self.infd, max(wanted - len(buf), 1 << 16))
            if not data:
                return None
            buf += data

    def send(self, *msgs):
        self.send_buffers([frame(m) for m in msgs])

    def send_buffers(self, buffers):
        with self.send_lock:
            while buffers:
                written = _writev(self.outfd, buffers)
                while buffers and written >= len(buffers[0]):
                    written -= len(buffers[0])
                    buffers.pop(0)
                if written:
                    buffers[0] = memoryview(buffers[0])[written:]

    def check_client(self, req_id):
        """Raise ClientGone if the master cancelled `req_id`; never blocks."""
        while True:
            msg = self._read_frame(block=False)
            if msg is None:
                break
            self._stash(msg)
        if req_id in self.cancelled:
            raise ClientGone()

    def read_body(self, req_id, size):
        """Ask the master for more of request `req_id`'s body: (chunk, more)."""
        self.send([READ, req_id, size])
        while True:
            msg = self._read_frame(block=True)
            if msg is None:
                raise IOError("the master closed the pipe while the request body was being read")
            if msg[0] == BODY and msg[1] == req_id:
                return msg[2], msg[3]
            self._stash(msg)
            if req_id in self.cancelled:
                raise ClientGone()

    def _stash(self, msg):
        if msg[0] == REQUEST:
            self.pending.append(msg)
        elif msg[0] == CANCEL:
            self.cancelled.add(msg[1])
        else:
            raise ProtocolError("unexpected frame type %r" % (msg[0],))

    def done(self, req_id):
        self.cancelled.discard(req_id)


class RoutedChannel(Channel):
    """The channel of a worker with threads: the main thread alone reads the
    pipe and hands each request's BODY and CANCEL frames to its thread."""

    def __init__(self, infd, outfd):
        Channel.__init__(self, infd, outfd)
        self.bodies = {}

    def next_request(self):
        """The next REQUEST; routes every other frame on the way."""
        while True:
            msg = self._read_frame(block=True)
            if msg is None or msg[0] == REQUEST:
                if msg is not None:
                    self.bodies[msg[1]] = queue.SimpleQueue()
                return msg
            inbox = self.bodies.get(msg[1])
            if msg[0] == CANCEL:
                self.cancelled.add(msg[1])
                if inbox is not None:
                    inbox.put(None)
            elif msg[0] == BODY and inbox is not None:
                inbox.put((msg[2], msg[3]))
            elif msg[0] != BODY:
                raise ProtocolError("unexpected frame type %r" % (msg[0],))

    def check_client(self, req_id):
        if req_id in self.cancelled:
            raise ClientGone()

    def read_body(self, req_id, size):
        self.send([READ, req_id, size])
        body = self.bodies[req_id].get()
        if body is None:
            raise ClientGone()
        return body

    def done(self, req_id):
        self.bodies.pop(req_id, None)
        self.cancelled.discard(req_id)


# ---------------------------------------------------------------- wsgi

class Input:
    """wsgi.input: the request body, pulled from the master as the app reads it."""

    def __init__(self, channel, req_id, body, more):
        self._channel = channel
        self._id = req_id
        self._buf = body
        self._pos = 0
        self._more = more

    def _fetch(self, wanted):
        chunk, self._more = self._channel.read_body(self._id, wanted)
        self._buf = self._buf[self._pos:] + chunk
        self._pos = 0

    def read(self, size=-1):
        if size is None or size < 0:
            parts = [self._buf[self._pos:]]
            while self._more:
                chunk, self._more = self._channel.read_body(self._id, 1 << 16)
                parts.append(chunk)
            self._buf, self._pos = b"", 0
            return b"".join(parts)
        while self._more and len(self._buf) - self._pos < size:
            self._fetch(size - (len(self._buf) - self._pos))
        data = self._buf[self._pos:self._pos + size]
        self._pos += len(data)
        return data

    def readline(self, size=-1):
        limit = size if size is not None and size >= 0 else None
        while True:
            end = self._buf.find(b"\n", self._pos)
            available = len(self._buf) - self._pos
            if end >= 0:
                wanted = end + 1 - self._pos
                return self.read(wanted if limit is None else min(wanted, limit))
            if not self._more or (limit is not None and available >= limit):
                return self.read(available if limit is None else min(limit, available))
            self._fetch(1 << 16)

    def readlines(self, hint=-1):
        lines, total = [], 0
        for line in self:
            lines.append(line)
            total += len(line)
            if 0 < hint <= total:
                break
        return lines

    def __iter__(self):
        return self

    def __next__(self):
        line = self.readline()
        if not line:
            raise StopIteration
        return line


class FileWrapper:
    """wsgi.file_wrapper: iterates a file-like object in blocks."""

    def __init__(self, filelike, blksize=MAX_CHUNK):
        self.filelike = filelike
        self.blksize = blksize
        if hasattr(filelike, "close"):
            self.close = filelike.close

    def __iter__(self):
        read = self.filelike.read
        while True:
            block = read(self.blksize)
            if not block:
                return
            yield block


class Response:
    """start_response, write() and the held-back status and headers of one request."""

    def __init__(self, channel, req_id):
        self.channel = channel
        self.id = req_id
        self.status = None
        self.headers = None
        self.sent = False

    def start_response(self, status, headers, exc_info=None):
        if exc_info:
            try:
                if self.sent:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None
        elif self.status is not None:
            raise AssertionError("start_response() called twice without exc_info")
        if type(status) is not str:
            raise TypeError("status must be a str, got %r" % (status,))
        self.status = status.encode("latin-1")
        self.headers = "\0".join(h for pair in headers for h in pair).encode("latin-1")
        return self.write

    def write(self, data):
        """Send one body chunk now (also the app's path for each chunk it yields)."""
        if type(data) is not bytes:
            raise TypeError("the app sent %s as body, not bytes" % type(data).__name__)
        if data:
            self.channel.check_client(self.id)
            self.channel.send_buffers(self.frames(data, final=False))

    def frames(self, data, final):
        """The buffers of the frames that carry `data`, starting the response
        if it has not started; chunks over MAX_CHUNK are split without copies."""
        if self.status is None:
            raise AssertionError("the app returned or wrote a body before calling start_response()")
        view = memoryview(data) if len(data) > MAX_CHUNK else data
        buffers = []
        for offset in range(0, max(len(data), 1), MAX_CHUNK):
            chunk = view[offset:offset + MAX_CHUNK] if view is not data else data
            last = final and offset + MAX_CHUNK >= len(data)
            if self.sent:
                buffers += chunk_frame([BODY_OUT, self.id], chunk, last)
            else:
                buffers += chunk_frame([START, self.id, self.status, self.headers], chunk, last)
                self.sent = True
        return buffers


class Worker:
    def __init__(self, app, channel, threads):
        self.app = app
        self.channel = channel
        self.threads = threads
        self.base_environ = {
            "wsgi.version": (1, 0),
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": threads > 1,
            "wsgi.multiprocess": True,
            "wsgi.run_once": False,
            "wsgi.file_wrapper": FileWrapper,
            "wsgi.input_terminated": True,
        }

    def run(self):
        while True:
            msg = self.channel.recv()
            if msg is None:
                return
            self.handle(*msg[1:5])

    def run_threaded(self):
        """Like gunicorn's gthread: requests run on a pool of threads, in the
        order they arrive, while this thread routes the frames."""
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(self.threads, thread_name_prefix="rwsgi-request") as pool:
            while True:
                msg = self.channel.next_request()
                if msg is None:
                    return
                pool.submit(self.handle, *msg[1:5])

    def handle(self, req_id, environ_blob, body, more):
        parts = environ_blob.decode("latin-1").split("\0")
        environ = dict(zip(parts[0::2], parts[1::2]))
        environ.update(self.base_environ)
        environ["wsgi.input"] = Input(self.channel, req_id, body, more)
        response = Response(self.channel, req_id)
        try:
            # A request queued behind another may have lost its client meanwhile.
            self.channel.check_client(req_id)
            result = self.app(environ, response.start_response)
            try:
                self.send_body(response, result)
            finally:
                if hasattr(result, "close"):
                    result.close()
        except ClientGone:
            self.channel.send([ERROR, req_id, b"the client disconnected"])
        except Exception as error:
            self.channel.send([ERROR, req_id, traceback.format_exc().encode("utf-8", "backslashreplace")])
            if isinstance(error, MemoryError):
                # A process that ran out of memory may be left half-broken:
                # the master replaces a worker that exits.
                sys.stderr.write("The app ran out of memory; this worker exits and a fresh one replaces it.\n")
                sys.stderr.flush()
                os._exit(EXIT_OUT_OF_MEMORY)
        finally:
            self.channel.done(req_id)

    def send_body(self, response, result):
        if type(result) in (list, tuple) and all(type(c) is bytes for c in result):
            # The whole body is in hand: one write for every frame.
            body = result[0] if len(result) == 1 else b"".join(result)
            self.channel.send_buffers(response.frames(body, final=True))
            return
        for data in result:
            response.write(data)
        self.channel.send_buffers(response.frames(b"", final=True))


# ---------------------------------------------------------------- boot

def load_app(spec):
    """Import APP: `module`, `module:name`, `module:name.attr` or `module:factory(args)`."""
    import ast
    import importlib

    module_name, _, expr = spec.partition(":")
    expr = expr or "application"
    target = "%s:%s" % (module_name, expr)
    call_args = None
    if expr.endswith(")") and "(" in expr:
        expr, _, args = expr[:-1].partition("(")
        call = ast.parse("f(%s)" % args, mode="eval").body
        call_args = ([ast.literal_eval(a) for a in call.args], {k.arg: ast.literal_eval(k.value) for k in call.keywords})
    obj = importlib.import_module(module_name)
    for name in expr.split("."):
        try:
            obj = getattr(obj, name)
        except AttributeError:
            raise AttributeError("module %r has no attribute %r (APP was %r)" % (module_name, expr, spec)) from None
    if call_args is not None:
        obj = obj(*call_args[0], **call_args[1])
    if not callable(obj):
        raise TypeError("%s is %r, which is not a WSGI callable" % (target, obj))
    return obj


def take_protocol_fds(channel_class):
    """Keep fds 0 and 1 for the protocol; give the app /dev/null and stderr instead."""
    infd, outfd = os.dup(0), os.dup(1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)
    for fd in (infd, outfd):
        os.set_inheritable(fd, False)
    sys.stdout.reconfigure(line_buffering=True)
    return channel_class(infd, outfd)


def main():
    app_spec, threads, paths = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    channel = take_protocol_fds(RoutedChannel if threads > 1 else Channel)
    # On SIGABRT (the master's timeout) or a crash, every thread's traceback
    # goes to stderr, which the master logs.
    faulthandler.enable(file=sys.stderr, all_threads=True)
    # sys.path[0] is '' under -c: the app directory, absolute, replaces it.
    sys.path[0:1] = [os.getcwd()] + paths
    try:
        app = load_app(app_spec)
    except BaseException:
        channel.send([BOOT_ERROR, traceback.format_exc().encode("utf-8", "backslashreplace")])
        return 3
    channel.send([HELLO, PROTOCOL_VERSION, os.getpid(), sys.version.split()[0], CODEC])
    worker = Worker(app, channel, threads)
    if threads > 1:
        worker.run_threaded()
    else:
        worker.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
