#!/usr/bin/env bash
# Runs the load scenarios against edgegate and the Node peers (ws, Socket.IO, uWebSockets.js)
# in one go, each server pinned to core 0 and the generator to core 1, and prints one table per
# figure (benches/README.md).
#
#   benches/compare.sh            # full run (about 17 minutes)
#   QUICK=1 benches/compare.sh    # smaller N and shorter windows (about 5 minutes)
#
# Results are also appended as JSON lines to target/load-results.jsonl.
set -euo pipefail
cd "$(dirname "$0")/.."

# npm packages of the peers (ws 8.23, Socket.IO 4.8, and uWebSockets.js v20 binaries from the
# npm package `uwebsockets` 3.0.6, a third-party republish used for this local comparison
# only; see benches/README.md).
npm ci --prefix benches/peers --no-audit --no-fund >/dev/null 2>&1 || npm install --prefix benches/peers --no-audit --no-fund >/dev/null
cargo build --release --bin edgegate
cargo bench --bench load --no-run

OUT=target/load-results.jsonl
: >"$OUT"
if [ -n "${QUICK:-}" ]; then
  SUBS=300 RATE=50 SECS=5 IDLE=2000 STEPS=8
else
  SUBS=1000 RATE=50 SECS=10 IDLE=10000 STEPS=14
fi
# Other work on a shared machine takes CPU from the pinned server and generator; a higher
# scheduling share (niceness -10, root) keeps each on its core. NICE=0 to leave it alone.
NICE=${NICE:--10}
load() { cargo bench --bench load -q -- "$@" --nice "$NICE" | tee /dev/stderr | grep '^{' >>"$OUT"; }

for s in edgegate ws socketio uws; do
  load broadcast --server $s --transport ws --subs $SUBS --rate $RATE --secs $SECS
done
load broadcast --server edgegate --transport wt --subs $SUBS --rate $RATE --secs $SECS
for s in edgegate ws socketio uws; do
  load saturation --server $s --transport ws --subs $SUBS --steps $STEPS
done
load saturation --server edgegate --transport wt --subs $SUBS --steps $STEPS
for s in edgegate ws socketio uws; do
  load idle --server $s --transport ws --conns $IDLE
done
load idle --server edgegate --transport wt --conns $((IDLE / 2))
load broadcast --server edgegate --transport wt --datagram --subs $SUBS --rate 100 --secs $SECS
load rooms --server edgegate --transport wt --secs $SECS
# Three regions as one mesh (one node each, all on the server core), every mesh link through
# the WAN relay: 20 ms one way.
load cross-region --transport ws --subs 300 --rate 50 --secs $SECS --wan-delay-ms 20

echo
echo "## Results ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores)"
python3 - "$OUT" <<'PY'
import json, sys
runs = [json.loads(l) for l in open(sys.argv[1]) if l.startswith('{')]
def who(r): return f"{r['server']} ({r['transport']})"
print("\n| server | deliveries/s | p50 ms | p99 ms | server CPU % | µs/delivery | loss |")
print("|---|---|---|---|---|---|---|")
for r in runs:
    if r['scenario'] == 'broadcast':
        l = r['latency']
        print(f"| {who(r)} | {r['deliveries_per_s']:.0f} | {l['p50_ms']:.2f} | {l['p99_ms']:.2f} | {r['server_cpu_pct']:.0f} | {r['server_us_per_delivery']:.2f} | {r['loss']:.4%} |")
def edgegate_ws(scenario):
    return next((r for r in runs if r['scenario'] == scenario and r['server'] == 'edgegate' and r['transport'] == 'ws'), None)
def ratio(r, base, key):
    # this server's figure / edgegate (ws)'s, same run; '-' without a base.
    return f"{r[key] / base[key]:.2f}x" if base and base[key] and r[key] else "-"
base = edgegate_ws('broadcast')
if base:
    print("\nCPU per delivery relative to edgegate (ws), same run:")
    for r in runs:
        if r['scenario'] == 'broadcast' and r['server_us_per_delivery']:
            print(f"- {who(r)}: {ratio(r, base, 'server_us_per_delivery')}")
base = edgegate_ws('saturation')
print("\n| server | max sustained deliveries/s | peak deliveries/s | sustained vs edgegate (ws) |")
print("|---|---|---|---|")
for r in runs:
    if r['scenario'] == 'saturation':
        print(f"| {who(r)} | {r['max_sustained_deliveries_per_s']:.0f} | {r['peak_deliveries_per_s']:.0f} | {ratio(r, base, 'max_sustained_deliveries_per_s')} |")
base = edgegate_ws('idle')
print("\n| server | idle connections | bytes per connection | vs edgegate (ws) |")
print("|---|---|---|---|")
for r in runs:
    if r['scenario'] == 'idle':
        print(f"| {who(r)} | {r['conns']} | {r['bytes_per_conn']:.0f} | {ratio(r, base, 'bytes_per_conn')} |")
for r in runs:
    if r['scenario'] in ('datagram', 'rooms'):
        l = r['latency']
        print(f"\n{r['scenario']} {who(r)}: {r['deliveries_per_s']:.0f} deliveries/s, loss {r['loss']:.4%}, p99 {l['p99_ms']:.2f} ms, server CPU {r['server_cpu_pct']:.0f}%")
for r in runs:
    if r['scenario'] == 'cross-region':
        print(f"\ncross-region {who(r)}, {r['nodes']} nodes, {r['mode']}, link one-way {r['link_delay_ms']:g} ms: "
              f"{r['deliveries_per_s']:.0f} deliveries/s, server CPU {r['server_cpu_pct']:.0f}% (all nodes), {r['server_us_per_delivery']:.2f} µs/delivery")
        for g in r['regions']:
            l = g['latency']
            print(f"- {g['region']} ({g['role']}): {g['deliveries_per_s']:.0f}/s, loss {g['loss']:.4%}, p50 {l['p50_ms']:.2f} ms, p99 {l['p99_ms']:.2f} ms, link {g['link_delay_ms']:g} ms, p50 - link {g['p50_minus_link_ms']:.2f} ms")
PY
