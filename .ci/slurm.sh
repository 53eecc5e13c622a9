#!/usr/bin/env bash
# A real single-node SLURM cluster on localhost, for the integration test
# tests/test_slurm.py (`make test-slurm`), on a Debian 12 machine without systemd, as root.
#
#   .ci/slurm.sh up      install (apt) and start munged, [mariadbd, slurmdbd,] slurmctld, slurmd
#   .ci/slurm.sh down    stop the daemons this script started, newest first, by their pid files
#   .ci/slurm.sh status  what is running
#
# Several checkouts on one machine share the one cluster: `up` while a cluster this script
# started is running joins it (a user count under /run, updated under a lock) and `down`
# stops the daemons only when its last user leaves (`down --force`: now). `up` exits 2,
# touching nothing, when a SLURM this script did not start is running: use it, never stop it.
#
# Environment: SLURM_WITH_DBD=1 (default) also starts mariadb + slurmdbd so that `sacct`
# works (the executor plugin's default status command); SLURM_WITH_DBD=0 starts only munge,
# slurmctld and slurmd (the profile then needs `slurm-status-command: squeue`).
# The node advertises one fake GPU (GRES gpu:1 backed by /dev/null) so that GPU rules can be
# scheduled on a machine without one. Facts behind each setting: ../shared/docs/slurm-single-node.md.
# Exit status of `up`: 0 when the node is idle and accepts jobs, non-zero with a reason on
# stderr otherwise (the test then skips and prints the reason).
set -euo pipefail

WITH_DBD=${SLURM_WITH_DBD:-1}
NODE=$(hostname -s)
CONF=/etc/slurm
LOGS=/var/log/slurm
STATE=/var/lib/slurm
PIDS=(/run/slurmd.pid /run/slurmctld.pid /run/slurmdbd.pid /run/mysqld/mysqld.pid /run/munge/munged.pid)
USERS=/run/psgfm-slurm.users # how many `up`s share the running cluster
LOCK=/run/psgfm-slurm.lock

die() { echo "slurm.sh: $*" >&2; exit 1; }
log() { echo "slurm.sh: $*"; }

# wait_for SECONDS CMD...: retry CMD every 0.5 s until it succeeds or SECONDS pass
wait_for() {
  local limit=$(($1 * 2)); shift
  for _ in $(seq "$limit"); do "$@" >/dev/null 2>&1 && return 0; sleep 0.5; done
  "$@" >/dev/null 2>&1
}

install_packages() {
  local pkgs=(slurm-wlm slurmctld slurmd slurm-client munge)
  [ "$WITH_DBD" = 1 ] && pkgs+=(slurmdbd mariadb-server)
  local missing=()
  for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  command -v apt-get >/dev/null || die "apt-get not found: install ${missing[*]} yourself"
  log "installing ${missing[*]}"
  # apt never starts services here (no systemd; policy-rc.d), which is what we want
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    "${missing[@]}" >/tmp/slurm-apt.log 2>&1; then
    DEBIAN_FRONTEND=noninteractive apt-get update -q >>/tmp/slurm-apt.log 2>&1 || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
      "${missing[@]}" >>/tmp/slurm-apt.log 2>&1 ||
      die "apt-get install ${missing[*]} failed (log: /tmp/slurm-apt.log)"
  fi
}

munge_ok() { munge -n | unmunge; }

start_munge() {
  [ -s /etc/munge/munge.key ] || mungekey --create --keyfile /etc/munge/munge.key
  chown munge:munge /etc/munge/munge.key
  chmod 0400 /etc/munge/munge.key
  install -d -o munge -g munge -m 0755 /run/munge
  munge_ok >/dev/null 2>&1 || runuser -u munge -- /usr/sbin/munged 9>&-
  wait_for 10 munge_ok || die "munged did not start"
}

write_slurm_conf() {
  # CPUs/sockets/cores/threads and memory exactly as slurmd detects them; RealMemory a little
  # below the detected value (more than detected puts the node in INVAL)
  local detected topo mem accounting
  detected=$(slurmd -C | head -1)
  topo=$(grep -o 'CPUs=.*ThreadsPerCore=[0-9]*' <<<"$detected")
  mem=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$detected")
  if [ "$WITH_DBD" = 1 ]; then
    accounting="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
AccountingStorageTRES=gres/gpu
AccountingStoreFlags=job_comment
JobAcctGatherType=jobacct_gather/linux"
  else
    accounting="AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none"
  fi
  mkdir -p "$CONF" "$STATE/slurmctld" "$STATE/slurmd" "$LOGS"
  cat >"$CONF/slurm.conf" <<EOF
# written by psgfm .ci/slurm.sh: a single-node cluster on loopback, no cgroups
ClusterName=psgfmci
SlurmctldHost=${NODE}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$STATE/slurmctld
SlurmdSpoolDir=$STATE/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
MinJobAge=600
JobCompType=jobcomp/none
GresTypes=gpu
${accounting}
NodeName=${NODE} NodeAddr=127.0.0.1 ${topo} RealMemory=$((mem - 1024)) Gres=gpu:1 State=UNKNOWN
PartitionName=debug Nodes=${NODE} Default=YES MaxTime=INFINITE State=UP
EOF
  # a fake GPU: File= is required (without it slurmd reports 0 GPUs and the node goes INVAL)
  echo "NodeName=${NODE} Name=gpu File=/dev/null" >"$CONF/gres.conf"
}

start_dbd() {
  install -d -o mysql -g root /run/mysqld
  if ! mariadb-admin --silent ping >/dev/null 2>&1; then
    # mariadbd does not daemonise: detach it, with a pid file for `down`
    setsid /usr/sbin/mariadbd --user=mysql --bind-address=127.0.0.1 \
      --pid-file=/run/mysqld/mysqld.pid --socket=/run/mysqld/mysqld.sock \
      >"$LOGS/mariadbd.log" 2>&1 </dev/null 9>&- &
  fi
  wait_for 30 mariadb-admin --silent ping || die "mariadbd did not start ($LOGS/mariadbd.log)"
  mariadb -e "CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'psgfm-ci';
              GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"
  cat >"$CONF/slurmdbd.conf" <<EOF
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=6819
SlurmUser=root
DebugLevel=info
LogFile=$LOGS/slurmdbd.log
PidFile=/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StoragePort=3306
StorageUser=slurm
StoragePass=psgfm-ci
StorageLoc=slurm_acct_db
EOF
  chmod 600 "$CONF/slurmdbd.conf" # slurmdbd refuses a group- or world-readable file
  /usr/sbin/slurmdbd 9>&-
  wait_for 30 sacctmgr -n show cluster || die "slurmdbd did not answer ($LOGS/slurmdbd.log)"
}

node_idle() { sinfo -h -n "$NODE" -o %T | grep -qx idle; }
node_usable() { sinfo -h -n "$NODE" -o %T | grep -Eqx 'idle|mixed|allocated'; }
ctld_up() { scontrol ping | grep -q 'is UP'; }

ctld_running() { [ -s /run/slurmctld.pid ] && kill -0 "$(cat /run/slurmctld.pid)" 2>/dev/null; }
users() { cat "$USERS" 2>/dev/null || echo 0; }

up() {
  [ "$(id -u)" = 0 ] || die "needs root (installs packages and starts daemons)"
  exec 9>"$LOCK" # (daemons are started with 9>&- so they do not inherit the lock)
  flock 9
  if ctld_running || pgrep -x slurmctld >/dev/null; then
    if [ "$(users)" -gt 0 ] && ctld_running && node_usable; then
      echo $(($(users) + 1)) >"$USERS"
      log "joined the running cluster ($(users) users): $(sinfo -h -o '%P %a %D %T %N %G')"
      return 0
    fi
    echo "slurm.sh: a SLURM not started by this script is running; using it as it is" >&2
    exit 2
  fi
  install_packages
  start_munge
  write_slurm_conf
  [ "$WITH_DBD" = 1 ] && start_dbd
  /usr/sbin/slurmctld 9>&-
  wait_for 30 ctld_up || die "slurmctld did not come up ($LOGS/slurmctld.log)"
  /usr/sbin/slurmd 9>&-
  if ! wait_for 30 node_idle; then
    sinfo -R >&2 || true
    tail -20 "$LOGS/slurmd.log" >&2 || true
    die "node $NODE did not become idle"
  fi
  echo 1 >"$USERS"
  log "up: $(sinfo -h -o '%P %a %D %T %N %G')"
}

stop_pidfile() {
  local file=$1 pid
  [ -s "$file" ] || return 0
  pid=$(cat "$file")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    for _ in $(seq 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    if kill -0 "$pid" 2>/dev/null; then
      log "$file: $pid still alive after 10 s, SIGKILL"
      kill -KILL "$pid"
    fi
  fi
  rm -f "$file"
}

down() {
  exec 9>"$LOCK"
  flock 9
  local left=$(($(users) - 1))
  if [ "${1:-}" != "--force" ] && [ "$left" -gt 0 ]; then
    echo "$left" >"$USERS"
    log "left the cluster; $left user(s) remain, daemons kept"
    return 0
  fi
  rm -f "$USERS"
  for f in "${PIDS[@]}"; do stop_pidfile "$f"; done
  # a fresh cluster next time: job ids restart at 1 (accounting rows stay in the database)
  rm -rf "${STATE:?}/slurmctld/"*
  log "down"
}

status() {
  echo "users: $(users)"
  for f in "${PIDS[@]}"; do
    if [ -s "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null; then
      echo "$f: $(cat "$f") running"
    else
      echo "$f: not running"
    fi
  done
  command -v sinfo >/dev/null && sinfo 2>&1 || true
}

case "${1:-}" in
  up) up ;;
  down) down "${2:-}" ;;
  status) status ;;
  *) die "usage: $0 up | down [--force] | status" ;;
esac
