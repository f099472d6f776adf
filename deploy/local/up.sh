#!/usr/bin/env bash
# `make up`: the whole system on this machine, like the original's `forego start`. Starts a
# throwaway Postgres and Redis (data in .data/up, wiped at each start; Redis with AOF and
# appendfsync always), migrates, then runs the api, the streamer, consumer0, consumer1, two
# history members (history0, history1: one Redis consumer group) and the simulator with failure
# simulation on, every line prefixed with its process's name. The log has LOG_PARTITIONS (4)
# partitions.
# REDIS_MODE=cluster runs a Redis Cluster instead of one Redis: 3 masters and 3 replicas on
# ports REDIS_PORT..REDIS_PORT+5. PROMETHEUS=1 also runs a Prometheus scraping every service
# (deploy/monitoring/prometheus.yml, with the chart's alerts), UI on :9090. Ctrl-C stops
# everything it started.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD

PROFILE=${PROFILE:-release}
PG_PORT=${PG_PORT:-55432}
REDIS_PORT=${REDIS_PORT:-56379}
API_PORT=${API_PORT:-50051}
RIDES_PER_SECOND=${RIDES_PER_SECOND:-20}
FAILURE_RATE=${FAILURE_RATE:-0.1}
export LOG_PARTITIONS=${LOG_PARTITIONS:-4}
REDIS_MODE=${REDIS_MODE:-standalone}
case $REDIS_MODE in
  standalone) redis_ports=("$REDIS_PORT") ;;
  cluster) redis_ports=($(seq "$REDIS_PORT" $((REDIS_PORT + 5)))) ;;
  *) echo "REDIS_MODE must be standalone or cluster, not $REDIS_MODE" >&2; exit 2 ;;
esac

bash deploy/local/install-deps.sh
if [ "${PROMETHEUS:-0}" = 1 ]; then
  command -v prometheus >/dev/null || { echo "PROMETHEUS=1 needs prometheus (apt-get install prometheus)" >&2; exit 2; }
  # Debian's package may start its own server on :9090 (systemctl disable --now prometheus).
  if (exec 3<>/dev/tcp/127.0.0.1/9090) 2>/dev/null; then
    echo "PROMETHEUS=1: something already listens on :9090 (Debian's prometheus service?)" >&2
    exit 2
  fi
fi
cargo build --bins $([ "$PROFILE" = release ] && echo --release)
bin=$root/target/$PROFILE

data=$root/.data/up
rm -rf "$data"
mkdir -p "$data/pg" "$data/redis"
pg_bin=$(dirname "$(ls -d /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -n1)")
[ -x "$pg_bin/initdb" ] || pg_bin=$(dirname "$(command -v initdb)")

# Postgres refuses to run as root: run it as the postgres user then.
as_pg() {
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}
[ "$(id -u)" -ne 0 ] || chown -R postgres: "$data/pg"

# Starts a process in the background, each line of its output prefixed with its name.
pids=()
run() {
  local name=$1; shift
  "$@" > >(sed -u "s/^/$(printf '%-10s' "$name") | /") 2>&1 &
  pids+=($!)
}

stop() {
  trap - INT TERM EXIT
  echo "stopping..."
  kill -TERM "${pids[@]}" 2>/dev/null || true
  as_pg "$pg_bin/pg_ctl" stop -D "$data/pg" -m fast -s 2>/dev/null || true
  for port in "${redis_ports[@]}"; do redis-cli -p "$port" shutdown nosave 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap stop INT TERM EXIT

as_pg "$pg_bin/initdb" -D "$data/pg" -U postgres -A trust --no-sync >/dev/null
run postgres as_pg "$pg_bin/postgres" -D "$data/pg" -p "$PG_PORT" \
  -c listen_addresses=127.0.0.1 -c unix_socket_directories="$data/pg"
for port in "${redis_ports[@]}"; do
  cluster_args=()
  # The cluster bus listens on port - 10000 (the default, port + 10000, may not exist).
  [ "$REDIS_MODE" = cluster ] && cluster_args=(--cluster-enabled yes --cluster-port $((port - 10000))
    --cluster-config-file nodes.conf --cluster-node-timeout 5000)
  mkdir -p "$data/redis/$port"
  run "redis$([ "$REDIS_MODE" = cluster ] && echo ":$port")" redis-server --port "$port" --bind 127.0.0.1 \
    --dir "$data/redis/$port" --appendonly yes --appendfsync always --save "" \
    --maxmemory 256mb --maxmemory-policy noeviction "${cluster_args[@]}"
done

redis_up() {
  for port in "${redis_ports[@]}"; do redis-cli -p "$port" ping >/dev/null 2>&1 || return 1; done
}
for _ in $(seq 100); do
  pg_isready -q -h 127.0.0.1 -p "$PG_PORT" && redis_up && break
  sleep 0.1
done
if [ "$REDIS_MODE" = cluster ]; then
  redis-cli --cluster create $(printf '127.0.0.1:%s ' "${redis_ports[@]}") --cluster-replicas 1 \
    --cluster-yes >/dev/null
  for _ in $(seq 100); do
    redis-cli -p "$REDIS_PORT" cluster info | grep -q cluster_state:ok && break
    sleep 0.1
  done
fi
psql -q -h 127.0.0.1 -p "$PG_PORT" -U postgres -c "CREATE DATABASE rocketrides"

export DATABASE_URL=postgres://postgres@127.0.0.1:$PG_PORT/rocketrides
REDIS_URL=$(printf 'redis://127.0.0.1:%s,' "${redis_ports[@]}")
export REDIS_URL=${REDIS_URL%,}
"$bin/rocket-rides-api" migrate

run api env LISTEN_ADDR=127.0.0.1:$API_PORT METRICS_ADDR=127.0.0.1:9101 OTEL_SERVICE_NAME=rocket-rides-api "$bin/rocket-rides-api"
run streamer env LISTEN_ADDR=127.0.0.1:50053 METRICS_ADDR=127.0.0.1:9102 DOUBLE_SEND_RATE=$FAILURE_RATE \
  OTEL_SERVICE_NAME=rocket-rides-streamer "$bin/rocket-rides-streamer"
run consumer0 env LISTEN_ADDR=127.0.0.1:50052 METRICS_ADDR=127.0.0.1:9103 CONSUMER_NAME=consumer0 CRASH_RATE=$FAILURE_RATE \
  OTEL_SERVICE_NAME=rocket-rides-consumer "$bin/rocket-rides-consumer"
run consumer1 env LISTEN_ADDR=127.0.0.1:50062 METRICS_ADDR=127.0.0.1:9104 CONSUMER_NAME=consumer1 CRASH_RATE=$FAILURE_RATE \
  OTEL_SERVICE_NAME=rocket-rides-consumer "$bin/rocket-rides-consumer"
for i in 0 1; do
  run history$i env LISTEN_ADDR=127.0.0.1:$((50055 + i)) METRICS_ADDR=127.0.0.1:$((9105 + i)) CONSUMER_INSTANCE=history$i \
    OTEL_SERVICE_NAME=rocket-rides-history "$bin/rocket-rides-history"
done
if [ "${PROMETHEUS:-0}" = 1 ]; then
  run prometheus prometheus --config.file=deploy/monitoring/prometheus.yml \
    --web.listen-address=127.0.0.1:9090 --storage.tsdb.path="$data/prometheus" --log.level=warn
fi
run simulator env LISTEN_ADDR=127.0.0.1:50054 API_URL=http://127.0.0.1:$API_PORT \
  RIDES_PER_SECOND=$RIDES_PER_SECOND CONSUMER_URLS=http://127.0.0.1:50052,http://127.0.0.1:50062 \
  OTEL_SERVICE_NAME=rocket-rides-simulator "$bin/rocket-rides-simulator"

cat <<BANNER
------------------------------------------------------------------------------------------------
Rocket Rides Log is up. The simulator prints both consumers' totals every 5 s. Try:
  grpcurl -plaintext -d '{"distance": 12.5}' 127.0.0.1:$API_PORT rocketrides.v1.RideService/CreateRide
  grpcurl -plaintext 127.0.0.1:50052 rocketrides.v1.ConsumerService/GetTotal
  grpcurl -plaintext -d '{"ride_id": 1}' 127.0.0.1:50055 rocketrides.v1.HistoryService/GetRide
  psql $DATABASE_URL -c 'SELECT SUM(distance), COUNT(*) FROM rides'
  DATABASE_URL=$DATABASE_URL REDIS_URL=$REDIS_URL target/$PROFILE/rocket-rides-log consumers   (or tail, info)
Metrics: curl 127.0.0.1:9101/metrics (api), :9102 (streamer: backlog, stream length, consumer lag),
         :9103 (consumer0), :9104 (consumer1), :9105/:9106 (history0/1)
Prometheus: $([ "${PROMETHEUS:-0}" = 1 ] && echo "http://127.0.0.1:9090" || echo "off; start with PROMETHEUS=1")
Traces: ${OTEL_EXPORTER_OTLP_ENDPOINT:-off; run a Jaeger all-in-one and start with OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4317}
Ctrl-C stops everything.
------------------------------------------------------------------------------------------------
BANNER
wait
