#!/usr/bin/env bash
# A one-node Slurm 22.05 cluster on 127.0.0.1, for trying sweeps on one machine and for the tests.
#
#   sudo scripts/slurm-local.sh up       # install (apt) if needed, start munge, MariaDB, slurmdbd,
#                                        # slurmctld and slurmd by hand (no systemd), wait until idle
#   sudo scripts/slurm-local.sh down     # stop them again, by the pids they wrote
#   scripts/slurm-local.sh status        # exit 0 when the cluster answers
#
# Everything but /etc/slurm/{slurm,slurmdbd}.conf (where sbatch looks) lives in $STATE
# (default /var/lib/reprolab-slurm). Slurm's state is kept across up/down, so job ids keep growing.
# Every daemon binds to loopback only. Waits are bounded; a step that does not come up fails `up`.
set -euo pipefail

STATE=${REPROLAB_SLURM_STATE:-/var/lib/reprolab-slurm}
CLUSTER=reprolab
NODE=reprolab
DB_PORT=${REPROLAB_SLURM_DB_PORT:-3307}
WAIT_S=${REPROLAB_SLURM_WAIT_S:-60}
PACKAGES=(slurm-wlm slurmdbd munge mariadb-server)

say() { echo "slurm-local: $*" >&2; }
die() { say "$*"; exit 1; }

wait_for() {  # wait_for WHAT COMMAND...: retry COMMAND for up to WAIT_S seconds
  local what=$1; shift
  for _ in $(seq $((WAIT_S * 5))); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.2
  done
  die "$what did not come up within ${WAIT_S}s (logs in $STATE/log)"
}

install_packages() {
  local missing=0
  for binary in slurmctld slurmd slurmdbd munged mariadbd sbatch; do
    command -v "$binary" >/dev/null 2>&1 || [ -x "/usr/sbin/$binary" ] || missing=1
  done
  [ "$missing" = 0 ] && return 0
  command -v apt-get >/dev/null || die "Slurm is not installed and there is no apt-get to install it"
  say "installing ${PACKAGES[*]} (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  timeout 600 apt-get update -q >"$STATE/log/apt.log" 2>&1 || die "apt-get update failed (see $STATE/log/apt.log)"
  timeout 900 apt-get install -y -q --no-install-recommends "${PACKAGES[@]}" >>"$STATE/log/apt.log" 2>&1 \
    || die "apt-get install failed (see $STATE/log/apt.log)"
}

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

start_munge() {
  alive "$STATE/munged.pid" && return 0
  [ -f /etc/munge/munge.key ] || { /usr/sbin/mungekey --create --keyfile=/etc/munge/munge.key; chown munge:munge /etc/munge/munge.key; }
  install -d -o munge -g munge -m 0755 /run/munge "$STATE/munge"
  runuser -u munge -- /usr/sbin/munged --pid-file="$STATE/munge/munged.pid" \
    --socket=/run/munge/munge.socket.2 --log-file="$STATE/munge/munged.log" --seed-file="$STATE/munge/munged.seed"
  wait_for munged test -s "$STATE/munge/munged.pid"
  cp "$STATE/munge/munged.pid" "$STATE/munged.pid"
  wait_for munge sh -c 'munge -n | unmunge'
}

db_password() {
  [ -s "$STATE/db.password" ] || (umask 077; head -c 24 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' >"$STATE/db.password")
  cat "$STATE/db.password"
}

start_mariadb() {
  alive "$STATE/mysqld/mariadb.pid" && return 0
  if [ ! -d "$STATE/mysql/mysql" ]; then
    install -d -o mysql -g mysql "$STATE/mysql"
    mariadb-install-db --user=mysql --datadir="$STATE/mysql" --auth-root-authentication-method=socket \
      >"$STATE/log/mariadb-install.log" 2>&1 || die "mariadb-install-db failed (see $STATE/log)"
  fi
  install -d -o mysql -g mysql "$STATE/mysqld"  # socket and pid file, written as mysql
  chown mysql:mysql "$STATE/log"
  /usr/sbin/mariadbd --user=mysql --datadir="$STATE/mysql" --socket="$STATE/mysqld/mysqld.sock" \
    --pid-file="$STATE/mysqld/mariadb.pid" --bind-address=127.0.0.1 --port="$DB_PORT" \
    --log-error="$STATE/log/mariadb.log" --innodb-buffer-pool-size=32M >/dev/null 2>&1 &
  wait_for MariaDB mariadb --socket="$STATE/mysqld/mysqld.sock" -u root -e 'select 1'
  mariadb --socket="$STATE/mysqld/mysqld.sock" -u root <<SQL
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$(db_password)';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
SQL
}

write_config() {
  local cpus memory
  cpus=$(nproc)
  memory=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 9 / 10 ))
  install -d /etc/slurm "$STATE/ctld" "$STATE/slurmd"
  cat >/etc/slurm/slurm.conf <<EOF
# Written by reprolab's scripts/slurm-local.sh: a one-node cluster on 127.0.0.1.
ClusterName=$CLUSTER
SlurmctldHost=localhost(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CommunicationParameters=NoCtldInAddrAny,NoInAddrAny
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/slurmd
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
KillWait=30
MinJobAge=300
NodeName=$NODE NodeAddr=127.0.0.1 NodeHostname=localhost CPUs=$cpus RealMemory=$memory State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
  (umask 077; cat >/etc/slurm/slurmdbd.conf <<EOF
# Written by reprolab's scripts/slurm-local.sh.
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
CommunicationParameters=NoCtldInAddrAny,NoInAddrAny
SlurmUser=root
PidFile=$STATE/slurmdbd.pid
LogFile=$STATE/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$(db_password)
StorageLoc=slurm_acct_db
EOF
  )
}

node_ready() { sinfo -h -N -o '%t' 2>/dev/null | grep -Eq '^(idle|mix|alloc)'; }

up() {
  [ "$(id -u)" = 0 ] || die "must run as root (it installs packages and starts daemons)"
  install -d "$STATE" "$STATE/log"
  install_packages
  start_munge
  start_mariadb
  write_config
  if ! alive "$STATE/slurmdbd.pid"; then
    /usr/sbin/slurmdbd
    wait_for slurmdbd sacctmgr -n list cluster
  fi
  sacctmgr -i add cluster "$CLUSTER" >/dev/null 2>&1 || true  # already there after the first up
  alive "$STATE/slurmctld.pid" || /usr/sbin/slurmctld
  wait_for slurmctld scontrol ping
  alive "$STATE/slurmd.pid" || /usr/sbin/slurmd -N "$NODE"
  wait_for "node $NODE" node_ready
  say "up: partition debug, node $NODE ($(nproc) CPUs); sbatch, squeue and sacct work now"
}

stop() {  # stop NAME PIDFILE: SIGTERM by pid, then wait (bounded), then SIGKILL
  local name=$1 file=$2 pid
  alive "$file" || { rm -f "$file"; return 0; }
  pid=$(cat "$file")
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then say "$name ($pid) did not stop in 10 s; killing it"; kill -9 "$pid" 2>/dev/null || true; fi
  rm -f "$file"
}

down() {
  stop slurmd "$STATE/slurmd.pid"
  stop slurmctld "$STATE/slurmctld.pid"
  stop slurmdbd "$STATE/slurmdbd.pid"
  stop mariadb "$STATE/mysqld/mariadb.pid"
  stop munged "$STATE/munged.pid"
  say "down"
}

status() { scontrol ping >/dev/null 2>&1 && node_ready; }

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
