#!/usr/bin/env python3
"""Runs `minivisor run GUEST` (Guests/echo) on a fresh pseudo-terminal and reports what a user would see.

Usage: console_pty.py MINIVISOR GUEST MODE, MODE one of:
  normal   types "ab", Ctrl-C, Ctrl-A Ctrl-A, then "q" (the guest powers off)
  quit     types "a", then Ctrl-A x
  sigterm  types "a", then sends SIGTERM to minivisor
Inside the pty a shell prints `stty -g` before and after minivisor and minivisor's status. Prints
key=value lines on stdout (IntegrationTests/ConsoleTerminalTests checks them):
  before=, after=   stty -g in the pty before and after minivisor
  status=           minivisor's exit status
  raw=              lflag ECHO,ICANON,ISIG seen on the pty while the guest ran ("off,off,off" in raw mode)
  rx=               the bytes the guest reported receiving, hex, comma separated
  error=            what went wrong in the driver itself (a timeout waiting for output)
Exit status 0 when the run completed, 1 when the driver gave up (error= says why), 3 when no pty.
"""
import os, pty, select, signal, sys, termios, time, re

def main():
    minivisor, guest, mode = sys.argv[1:4]
    inner = 'echo "mvpid=$$"; exec "$0" run --timeout 120 "$1"'
    script = ('echo "before=$(stty -g)"; sh -c \'%s\' "$0" "$1"; echo "status=$?"; '
              'echo "after=$(stty -g)"; echo "done=1"') % inner
    try:
        pid, fd = pty.fork()
    except OSError as e:
        print("error=no pty: %s" % e); sys.exit(3)
    if pid == 0:
        os.execvp("sh", ["sh", "-c", script, minivisor, guest])
    out = bytearray()
    def read_until(pattern, seconds=90):
        deadline = time.time() + seconds
        while time.time() < deadline:
            m = re.search(pattern, out)
            if m: return m
            r, _, _ = select.select([fd], [], [], 0.2)
            if r:
                try: data = os.read(fd, 4096)
                except OSError: data = b""
                if not data: break
                out.extend(data)
        m = re.search(pattern, out)
        if m: return m
        print("error=timeout waiting for %r; output so far %r" % (pattern, bytes(out)))
        finish(1)
    def finish(code):
        try: os.kill(pid, signal.SIGKILL)
        except OSError: pass
        sys.stdout.flush()
        os._exit(code)

    mvpid = int(read_until(rb"mvpid=(\d+)").group(1))
    read_until(rb"echo ready")
    lflag = termios.tcgetattr(fd)[3]   # the master shares the slave's settings
    print("raw=" + ",".join("on" if lflag & f else "off" for f in (termios.ECHO, termios.ICANON, termios.ISIG)))
    if mode == "normal":
        os.write(fd, b"ab\x03\x01\x01")
        read_until(rb"rx 0x01")
        os.write(fd, b"q")
    elif mode == "quit":
        os.write(fd, b"a")
        read_until(rb"rx 0x61")
        os.write(fd, b"\x01x")
    elif mode == "sigterm":
        os.write(fd, b"a")
        read_until(rb"rx 0x61")
        os.kill(mvpid, signal.SIGTERM)
    else:
        print("error=unknown mode " + mode); finish(1)
    read_until(rb"done=1")
    text = out.decode("utf-8", "replace")
    for key in ("before", "after", "status"):
        m = re.search(key + r"=([^\r\n]*)", text)
        print("%s=%s" % (key, m.group(1) if m else ""))
    print("rx=" + ",".join(re.findall(r"rx 0x([0-9a-f]{2})", text)))
    print("transcript=%r" % text)
    os.waitpid(pid, 0)
    sys.stdout.flush()
    sys.exit(0)

main()
