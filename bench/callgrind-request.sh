#!/bin/bash
# usage: bash bench/callgrind-request.sh BINARY N OUT
# The gateway (bare config, one worker, epoll) under callgrind in front of sluice-mock (next to
# BINARY), N sequential 1 KB keep-alive chat requests, then SIGINT; prints the collected
# instruction count. See bench/README.md, "Instructions per request".
set -e
BIN=$1; N=$2; OUT=$3
D=$(mktemp -d)
MP=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
GP=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
"$(dirname "$BIN")/sluice-mock" --listen 127.0.0.1:$MP --workers 1 >/dev/null 2>&1 &
MOCK=$!
GW=
# Whatever happens, the processes started here are stopped by PID.
trap 'kill $MOCK $GW 2>/dev/null; rm -rf "$D"' EXIT
cat > $D/s.toml <<T
auth = "none"
[server]
listen = "127.0.0.1:$GP"
workers = 1
pin_workers = false
[log]
level = "warn"
format = "json"
access_log = false
[admin]
enabled = false
[[providers]]
name = "mock"
kind = "openai"
base_url = "http://127.0.0.1:$MP/v1"
[[models]]
name = "mock-fast"
deployments = [{ provider = "mock", model = "mock-model" }]
T
SLUICE_DRIVER=epoll valgrind --tool=callgrind --callgrind-out-file=$OUT --dump-instr=no $BIN serve --config $D/s.toml >$D/out.txt 2>&1 &
GW=$!
python3 - $GP $N <<'P'
import socket,sys,time
port=int(sys.argv[1]); n=int(sys.argv[2])
for _ in range(600):
    try:
        s=socket.create_connection(("127.0.0.1",port)); break
    except OSError: time.sleep(0.1)
body=b'{"model":"mock-fast","stream":false,"messages":[{"role":"user","content":"'+b'x'*900+b'"}]}'
req=b"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: %d\r\nx-mock-chunks: 20\r\nx-mock-chunk-size: 40\r\n\r\n"%len(body)+body
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
for i in range(n):
    s.sendall(req)
    buf=b""
    while b"\r\n\r\n" not in buf: buf+=s.recv(65536)
    h,_,rest=buf.partition(b"\r\n\r\n")
    assert h.startswith(b"HTTP/1.1 200"), h[:100]
    cl=int([l.split(b":")[1] for l in h.split(b"\r\n") if l.lower().startswith(b"content-length")][0])
    while len(rest)<cl: rest+=s.recv(65536)
s.close()
P
kill -INT $GW; wait $GW || true
GW=
kill $MOCK; wait $MOCK 2>/dev/null || true
grep -E "Collected" $D/out.txt | tail -1
