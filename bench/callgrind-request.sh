#!/bin/bash
# usage: bash bench/callgrind-request.sh BINARY N OUT [full|stream]
# The gateway (one worker, epoll) under callgrind in front of sluice-mock (next to
# BINARY), N sequential 1 KB keep-alive chat requests, then SIGINT; prints the collected
# instruction count. With `stream`: N sequential event streams instead (a small prompt,
# "stream":true, CHUNKS events of 40 bytes 1 ms apart, default CHUNKS=20, each read to its
# last chunk), and the request future's instructions per stream.
# The gateway runs bench/configs.sh's `bare` config; with `full`, its `full` config (compare.sh's
# sluice_full: a required key with limits, the SQLite ledger, the JSON access log to a file,
# metrics), one callgrind file per thread (OUT-01, OUT-02, ...), and the instructions per
# request of the worker's request future and of the ledger writer's inserts. See bench/README.md, "Instructions per request".
set -e
BIN=$1; N=$2; OUT=$3; MODE=${4:-bare}
KEY=sk-sluice-bench-full-0123456789
D=$(mktemp -d)
MP=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
GP=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
"$(dirname "$BIN")/sluice-mock" --listen 127.0.0.1:$MP --workers 1 >/dev/null 2>&1 &
MOCK=$!
GW=
# Whatever happens, the processes started here are stopped by PID.
trap 'kill $MOCK $GW 2>/dev/null; rm -rf "$D"' EXIT
AP=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
# shellcheck source=bench/configs.sh
. "$(dirname "$0")/configs.sh"
AUTH= THREADS=
if [ "$MODE" = full ]; then
  sluice_bench_config full "127.0.0.1:$GP" "127.0.0.1:$AP" "$MP" "$D" "$KEY" >$D/s.toml
  AUTH="authorization: Bearer $KEY"
  THREADS="--separate-threads=yes"
else
  sluice_bench_config bare "127.0.0.1:$GP" "127.0.0.1:$AP" "$MP" "" "" >$D/s.toml
fi
# The access log (stdout) goes to a file; valgrind's own lines to another.
SLUICE_DRIVER=epoll valgrind --tool=callgrind --callgrind-out-file=$OUT --dump-instr=no $THREADS --log-file=$D/out.txt $BIN serve --config $D/s.toml >$D/access.jsonl 2>&1 &
GW=$!
python3 - $GP $N "$AUTH" "$MODE" "${CHUNKS:-20}" <<'P'
import socket,sys,time
port=int(sys.argv[1]); n=int(sys.argv[2]); auth=sys.argv[3].encode()+b"\r\n" if sys.argv[3] else b""
stream=sys.argv[4]=="stream"; chunks=int(sys.argv[5])
for _ in range(600):
    try:
        s=socket.create_connection(("127.0.0.1",port)); break
    except OSError: time.sleep(0.1)
body=b'{"model":"mock-fast","stream":false,"messages":[{"role":"user","content":"'+b'x'*900+b'"}]}'
mock=b"x-mock-chunks: 20\r\nx-mock-chunk-size: 40\r\n"
if stream:
    body=b'{"model":"mock-fast","stream":true,"messages":[{"role":"user","content":"'+b'x'*100+b'"}]}'
    mock=b"x-mock-chunks: %d\r\nx-mock-chunk-size: 40\r\nx-mock-chunk-delay-ms: 1\r\n"%chunks
req=b"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\n"+auth+b"content-type: application/json\r\ncontent-length: %d\r\n"%len(body)+mock+b"\r\n"+body
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
for i in range(n):
    s.sendall(req)
    buf=b""
    while b"\r\n\r\n" not in buf: buf+=s.recv(65536)
    h,_,rest=buf.partition(b"\r\n\r\n")
    assert h.startswith(b"HTTP/1.1 200"), h[:100]
    if stream:
        assert b"transfer-encoding: chunked" in h.lower(), h
        while not rest.endswith(b"0\r\n\r\n"): rest+=s.recv(65536)
        assert rest.count(b"data: ")>=chunks, rest[-200:]
        continue
    cl=int([l.split(b":")[1] for l in h.split(b"\r\n") if l.lower().startswith(b"content-length")][0])
    while len(rest)<cl: rest+=s.recv(65536)
s.close()
P
kill -INT $GW; wait $GW || true
GW=
kill $MOCK; wait $MOCK 2>/dev/null || true
grep -E "Collected" $D/out.txt | tail -1
if [ "$MODE" = stream ]; then
  incl=$(callgrind_annotate --inclusive=yes --threshold=100 "$OUT" 2>/dev/null)
  req=$(echo "$incl" | grep -m1 'listen::conn::serve_request::{{closure}}' | awk '{gsub(",","",$1); print $1}')
  [ -n "$req" ] && echo "serve_request per stream $((req / N)) (${CHUNKS:-20} chunks)"
fi
if [ "$MODE" = full ]; then
  echo "access log lines: $(grep -c 'sluice::access' $D/access.jsonl || true)"
  # Per thread: its total, and the inclusive count per request of the request future
  # (worker) and of the ledger's inserts (writer), as bench/README.md describes.
  for f in "$OUT"-*; do
    total=$(grep -E '^(summary|totals):' "$f" | head -1 | awk '{print $2}')
    incl=$(callgrind_annotate --inclusive=yes --threshold=100 "$f" 2>/dev/null)
    req=$(echo "$incl" | grep -m1 'listen::conn::serve_request::{{closure}}' | awk '{gsub(",","",$1); print $1}')
    ins=$(echo "$incl" | grep -m1 'Sqlite as sluice_proxy::store::Backend>::insert_usage' | awk '{gsub(",","",$1); print $1}')
    line="$f: total $total"
    [ -n "$req" ] && line="$line; serve_request per request $((req / N))"
    [ -n "$ins" ] && line="$line; insert_usage per row $((ins / N)); thread per row $((total / N))"
    echo "$line"
  done
fi
