#!/usr/bin/env bash
# A real single-node SLURM cluster on 127.0.0.1 for the integration tests.
#   tests/slurm/cluster.sh start   # install (Debian packages) if missing, configure, start; prints SLURM_CONF
#   tests/slurm/cluster.sh stop    # stop the daemons this script started (and only those)
# Needs root (apt-get, munge user). State lives in $FLOWBENCH_SLURM_DIR (default /tmp/flowbench-slurm).
# Facts for this sandbox: proctrack/linuxproc and task/none work; munged runs as the munge user;
# slurmdbd reads slurmdbd.conf next to SLURM_CONF and wants mode 600; sacct needs the cluster
# registered with sacctmgr.
set -euo pipefail
DIR=${FLOWBENCH_SLURM_DIR:-/tmp/flowbench-slurm}
CONF=$DIR/etc/slurm.conf
NODE=$(hostname -s)
CPUS=$(nproc)
MEM_MB=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))

log() { echo "cluster.sh: $*" >&2; }
STARTED=$DIR/started   # "name pid" of every daemon this script started, for stop

started() {  # started NAME: record the pid of the daemon just started under NAME
  # the daemon proper, from its pid file where it writes one (after daemonizing), else the process of that
  # name whose parent is init; not a starter that forks and exits, nor slurmctld's helper slurmscriptd
  local pid="" file=""
  case "$1" in
    slurmctld|slurmd|slurmdbd) file=$DIR/run/$1.pid ;;
    munged) file=/run/munge/munged.pid ;;
  esac
  for _ in $(seq 60); do
    if [ -n "$file" ]; then pid=$(cat "$file" 2>/dev/null || true); else pid=$(pgrep -o -x -P 1 "$1" || true); fi
    if [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$1" ]; then
      sleep 0.5
      [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$1" ] && break
    fi
    pid=""
    sleep 0.25
  done
  if [ -n "$pid" ]; then echo "$1 $pid" >> "$STARTED"; fi
}

install() {
  local need=()
  for cmd in slurmctld slurmd slurmdbd sbatch munged mariadbd; do
    command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ] || need+=("$cmd")
  done
  [ ${#need[@]} -eq 0 ] && return 0
  log "installing SLURM, munge and MariaDB (missing: ${need[*]})"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq slurmctld slurmd slurmdbd slurm-client munge mariadb-server >/dev/null
}

write_config() {
  mkdir -p "$DIR"/{etc,state,spool,log,run}
  cat > "$CONF" <<CONF
ClusterName=flowbench
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
JobRequeue=1
KillWait=5
MinJobAge=600
SlurmctldTimeout=30
SlurmdTimeout=60
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
JobAcctGatherType=jobacct_gather/none
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
CONF
  cat > "$DIR/etc/slurmdbd.conf" <<CONF
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StorageUser=slurm
StoragePass=flowbench
StorageLoc=slurm_acct_db
PidFile=$DIR/run/slurmdbd.pid
LogFile=$DIR/log/slurmdbd.log
CONF
  chmod 600 "$DIR/etc/slurmdbd.conf"
}

wait_for() {  # wait_for SECONDS COMMAND...
  local t=$1; shift
  for _ in $(seq $((t * 4))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.25; done
  return 1
}

start() {
  install
  write_config
  export SLURM_CONF=$CONF
  mkdir -p /run/munge && chown munge:munge /run/munge
  if ! pgrep -x munged >/dev/null; then
    runuser -u munge -- /usr/sbin/munged --force
    wait_for 10 pgrep -x munged && started munged
  fi
  wait_for 10 munge -n || { log "munged did not start"; exit 1; }
  if ! pgrep -x mariadbd >/dev/null && ! pgrep -x mysqld >/dev/null; then
    mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
    (setsid /usr/sbin/mariadbd --user=mysql --bind-address=127.0.0.1 >"$DIR/log/mariadb.log" 2>&1 &)
    wait_for 30 mysqladmin ping && started mariadbd
  fi
  wait_for 30 mysqladmin ping || { log "MariaDB did not start; see $DIR/log/mariadb.log"; exit 1; }
  mysql -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db; CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'flowbench'; CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'flowbench'; GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1'; FLUSH PRIVILEGES;"
  pgrep -x slurmdbd >/dev/null || { /usr/sbin/slurmdbd && started slurmdbd; }
  wait_for 30 sacctmgr -i list cluster || { log "slurmdbd did not answer; see $DIR/log/slurmdbd.log"; exit 1; }
  sacctmgr -i add cluster flowbench >/dev/null 2>&1 || true
  pgrep -x slurmctld >/dev/null || { /usr/sbin/slurmctld && started slurmctld; }
  wait_for 30 scontrol ping || { log "slurmctld did not answer; see $DIR/log/slurmctld.log"; exit 1; }
  pgrep -x slurmd >/dev/null || { /usr/sbin/slurmd -N "$NODE" && started slurmd; }
  wait_for 30 bash -c "sinfo -h -o %T | grep -qE '^(idle|mixed|allocated)'" || {
    scontrol update nodename="$NODE" state=resume >/dev/null 2>&1 || true
    wait_for 15 bash -c "sinfo -h -o %T | grep -qE '^(idle|mixed|allocated)'" || { log "node not idle: $(sinfo -h -o %T)"; exit 1; }
  }
  echo "SLURM_CONF=$CONF"
}

stop() {  # the daemons start() started, newest first; a pid that is no longer that daemon is left alone
  [ -f "$STARTED" ] || return 0
  tac "$STARTED" | while read -r name pid; do
    [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$name" ] || continue
    if [ "$name" = mariadbd ]; then
      mysqladmin shutdown >/dev/null 2>&1 || kill "$pid" 2>/dev/null || true
    else
      kill "$pid" 2>/dev/null || true
    fi
    for _ in $(seq 40); do [ -d "/proc/$pid" ] || break; sleep 0.25; done
  done
  rm -f "$STARTED"
}

case "${1:-start}" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
