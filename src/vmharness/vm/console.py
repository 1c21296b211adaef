"""A VM's serial console, kept within a bound: at most CONSOLE_LIMIT bytes of console.log.

qemu's own file chardev writes without a limit: a guest writing to its serial port as fast as
it can filled 10 MB in 30 s under TCG (~600 MB over a 30-minute run, times the VMs at once, and
on a pool copied back too). So qemu writes the serial port to its stdout, a pipe, and a thread
of ours writes console.log from it:

- the file grows as the guest writes (the host polls it for the agent's markers, people follow
  it with `tail -f`) until it holds CONSOLE_LIMIT bytes; from then on nothing more is written
  while the VM runs, and the last CONSOLE_TAIL bytes are kept in memory;
- when the VM ends, if output was dropped, the file is cut back to its first CONSOLE_HEAD bytes,
  then one line says how many bytes were dropped, then come the last CONSOLE_TAIL bytes.

The beginning (boot, the agent's start and its markers) and the end (how the run ended) are
what tell a run's story; the middle of a flood does not. The pipe is always drained, also when
console.log cannot be written (a full disk), so a guest never stalls on its serial port
because of us.
"""

from __future__ import annotations

import contextlib
import os
import select
import threading
from collections import deque
from pathlib import Path
from typing import BinaryIO

CONSOLE_LIMIT = 8 << 20
CONSOLE_HEAD = 4 << 20
CONSOLE_TAIL = CONSOLE_LIMIT - CONSOLE_HEAD
READ_BYTES = 1 << 16
DROPPED_LINE = (
    "\n[vmharness: {dropped} bytes of console output dropped here; console.log keeps the "
    "first {head} and the last {tail} bytes of the VM's output]\n"
)


class ConsoleLog:
    """Copies a VM's console from qemu's stdout to `path` in a thread, bounded as the module
    says. `append`: after what the file already holds (a restored VM's console follows its
    snapshot's boot), which counts toward the first CONSOLE_HEAD bytes."""

    def __init__(
        self,
        path: Path,
        *,
        append: bool = False,
        head: int = CONSOLE_HEAD,
        tail: int = CONSOLE_TAIL,
    ) -> None:
        self.path = path
        self._source: BinaryIO | None = None
        self._fd = os.open(
            path,
            # never through a symlink: the VM universe helper writes as root into a job's sandbox
            os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | (0 if append else os.O_TRUNC),
            0o644,
        )
        self._base = os.lseek(self._fd, 0, os.SEEK_END)
        # The file's first `_head_end` bytes are kept whatever comes; the stream's first
        # `_head_stream` bytes are among them.
        self._head_end = max(self._base, head)
        self._head_stream = self._head_end - self._base
        self._live_limit = self._head_end + tail  # the file stops growing here
        self._tail = tail
        self._ring: deque[bytes] = deque()
        self._ring_bytes = 0
        self.received = 0  # bytes of the stream so far
        self.dropped = 0  # of them, not in the file (known once the VM has ended)
        self._written = self._base  # the file's size
        self.error: OSError | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._copy, name=f"console {path}", daemon=True)

    def fileno(self) -> int:
        return self._fd

    def start(self, source: BinaryIO) -> ConsoleLog:
        """Copy from `source` (qemu's stdout) until it ends; the log owns it from now on."""
        self._source = source
        self._thread.start()
        return self

    def abandon(self) -> None:
        """Never started (qemu did not start): let the file go."""
        if not self._thread.is_alive():
            with contextlib.suppress(OSError):
                os.close(self._fd)

    def close(self, timeout: float = 10.0) -> None:
        """After the VM has ended: take what is left in the pipe, then put the file in its final
        shape. Does not wait for ever on a pipe that another process still holds open."""
        self._stop.set()
        self._thread.join(timeout)

    def _copy(self) -> None:
        assert self._source is not None
        fd = self._source.fileno()
        try:
            while True:
                ready, _, _ = select.select([fd], [], [], 0.2)
                if not ready:
                    if self._stop.is_set():  # qemu has ended and the pipe is empty
                        break
                    continue
                chunk = os.read(fd, READ_BYTES)
                if not chunk:
                    break
                self._take(chunk)
        except OSError as exc:  # the pipe itself failed: keep what we have
            self.error = self.error or exc
        finally:
            self._finish()
            with contextlib.suppress(OSError):
                self._source.close()

    def _take(self, chunk: bytes) -> None:
        start = self.received
        self.received += len(chunk)
        if self.received > self._head_stream:  # beyond the head: a candidate for the tail
            self._keep(chunk[max(0, self._head_stream - start) :])
        room = self._live_limit - self._written
        if room > 0 and self.error is None:
            self._write(chunk[:room])

    def _keep(self, data: bytes) -> None:
        self._ring.append(data)
        self._ring_bytes += len(data)
        while self._ring_bytes - len(self._ring[0]) >= self._tail:
            self._ring_bytes -= len(self._ring.popleft())
        if self._ring_bytes > self._tail:  # cut the oldest piece to size
            cut = self._ring_bytes - self._tail
            self._ring[0] = self._ring[0][cut:]
            self._ring_bytes -= cut

    def _write(self, data: bytes) -> None:
        try:
            view = memoryview(data)
            while view:
                n = os.write(self._fd, view)
                self._written += n
                view = view[n:]
        except OSError as exc:  # e.g. a full disk: stop writing, keep draining
            self.error = exc

    def _finish(self) -> None:
        try:
            kept_head = min(self._head_end, self._written)  # less if writing failed early
            head = kept_head - self._base
            if self.received > self._live_limit - self._base:  # something did not fit
                os.ftruncate(self._fd, kept_head)
                os.lseek(self._fd, kept_head, os.SEEK_SET)
                self._written, self.error = kept_head, None
                self.dropped = self.received - head - self._ring_bytes
                line = DROPPED_LINE.format(dropped=self.dropped, head=head, tail=self._ring_bytes)
                self._write(line.encode())
                for piece in self._ring:
                    self._write(piece)
            elif self.error is not None:  # a full disk, say: what could not be written is lost
                self.dropped = self.received - (self._written - self._base)
                self._write(f"\n[vmharness: console.log: {self.error}]\n".encode())
        except OSError as exc:
            self.error = exc
        finally:
            os.close(self._fd)
