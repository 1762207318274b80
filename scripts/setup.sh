#!/usr/bin/env bash
# Idempotent set-up for tests, benchmarks and the demo, on Debian 12 / Ubuntu as root:
#   - Debian packages rabbitmq-server, dnsmasq, postfix (smtp-sink/smtp-source),
#     prometheus, redis-server, postgresql, unbound and ldnsutils, installed only when missing and never left running as system services
#     (the tests start private instances on their own ports);
#   - .venv with python3 >= 3.11 and `pip install -e '.[test]'`, re-run when
#     pyproject.toml changes.
# Safe to run again: does nothing when everything is in place. Needs no stdin.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
export DEBIAN_FRONTEND=noninteractive
export PIP_DISABLE_PIP_VERSION_CHECK=1

log() { echo "setup: $*" >&2; }
die() { echo "setup: ERROR: $*" >&2; exit 1; }

APT_PACKAGES=(rabbitmq-server dnsmasq postfix prometheus redis-server swaks libnet-ssleay-perl postgresql chromium
              unbound ldnsutils)  # (DANE's tests: a private validating resolver, a zone signed per run)
# services those packages may start at install time (when no policy-rc.d forbids it)
SERVICES=(rabbitmq-server epmd.socket epmd dnsmasq postfix prometheus prometheus-node-exporter redis-server postgresql
          unbound)
MIN_PY=(3 11)

is_installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

py_ok() {  # $1: interpreter; true when it exists and is >= 3.11
    command -v "$1" >/dev/null 2>&1 &&
        "$1" -c "import sys; sys.exit(0 if sys.version_info[:2] >= (${MIN_PY[0]}, ${MIN_PY[1]}) else 1)" 2>/dev/null
}

pick_python() {
    local c
    for c in python3.13 python3.12 python3.11 python3; do
        if py_ok "$c"; then command -v "$c"; return 0; fi
    done
    return 1
}

service_active() {  # $1: unit/service name
    if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
        systemctl is-active --quiet "$1" 2>/dev/null
    elif command -v service >/dev/null 2>&1 && [ -e "/etc/init.d/${1%.socket}" ]; then
        service "${1%.socket}" status >/dev/null 2>&1
    else
        return 1
    fi
}

service_stop() {
    if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
        systemctl stop "$1" 2>/dev/null || true
        systemctl disable "$1" >/dev/null 2>&1 || true
    elif command -v service >/dev/null 2>&1; then
        service "${1%.socket}" stop >/dev/null 2>&1 || true
    fi
}

tcp_listening() {  # $1: host, $2: port
    (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null
}

# Processes a package install started: a system RabbitMQ node (private test nodes always
# set RABBITMQ_MNESIA_BASE to their own directory), dnsmasq run by its init script (ours run
# in the foreground with -k), epmd on the default port (ours set ERL_EPMD_PORT).
system_pids() {
    local d cmd env pid base
    for d in /proc/[0-9]*; do
        pid=${d#/proc/}
        cmd=$( { tr '\0' ' ' < "$d/cmdline"; } 2>/dev/null) || continue
        base=${cmd%% *}
        base=${base##*/}
        case "$base" in
            beam.smp)
                case "$cmd" in *"rabbit boot"*) ;; *) continue;; esac
                env=$( { tr '\0' '\n' < "$d/environ"; } 2>/dev/null) || continue
                case "$env" in
                    *RABBITMQ_MNESIA_BASE=/var/lib/rabbitmq*) echo "$pid rabbitmq";;
                    *RABBITMQ_MNESIA_BASE=*) ;;
                    *) echo "$pid rabbitmq";;
                esac;;
            epmd)
                case "$cmd" in *" -daemon"*) ;; *) continue;; esac
                env=$( { tr '\0' '\n' < "$d/environ"; } 2>/dev/null) || continue
                case "$env" in *ERL_EPMD_PORT=*) ;; *) echo "$pid epmd";; esac;;
            dnsmasq)
                case " $cmd " in *" -k "*|*" --keep-in-foreground "*) ;; *) echo "$pid dnsmasq";; esac;;
        esac
    done
}

# ------------------------------------------------------------------ packages
missing=()
for p in "${APT_PACKAGES[@]}"; do
    # MTA_SETUP_FORCE_APT=1 takes the install path anyway (to test this script)
    if ! is_installed "$p" || [ "${MTA_SETUP_FORCE_APT:-}" = 1 ]; then missing+=("$p"); fi
done

PY=$(pick_python || true)
if [ ! -x .venv/bin/python ]; then
    if [ -z "$PY" ]; then
        missing+=(python3 python3-venv)
    elif ! "$PY" -c "import ensurepip, venv" >/dev/null 2>&1; then
        ver=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
        if apt-cache show "python${ver}-venv" >/dev/null 2>&1; then
            missing+=("python${ver}-venv")
        else
            missing+=(python3-venv)
        fi
    fi
fi

if [ ${#missing[@]} -gt 0 ]; then
    [ "$(id -u)" = 0 ] || die "missing packages (${missing[*]}): run this script as root"
    command -v apt-get >/dev/null || die "missing packages (${missing[*]}) and no apt-get"
    log "installing: ${missing[*]}"
    # Keep the install from starting services: a temporary policy-rc.d (invoke-rc.d and
    # deb-systemd-invoke honour it) unless the machine already has one.
    created_policy=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\n# temporary, scripts/setup.sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        created_policy=1
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    if command -v debconf-set-selections >/dev/null 2>&1; then
        printf '%s\n' \
            "postfix postfix/main_mailer_type select No configuration" \
            "postfix postfix/mailname string localhost" | debconf-set-selections
    fi
    apt-get update -q
    apt-get install -y -q --no-install-recommends \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "${missing[@]}"
    if [ -n "$created_policy" ]; then
        rm -f /usr/sbin/policy-rc.d
        trap - EXIT
    fi
    # Check, do not assume: nothing the install started may keep running.
    for svc in "${SERVICES[@]}"; do
        if service_active "$svc"; then
            log "stopping system service $svc started by the package install"
            service_stop "$svc"
        fi
    done
    case " ${missing[*]} " in *" rabbitmq-server "*) fresh_rabbit=1;; *) fresh_rabbit="";; esac
    case " ${missing[*]} " in *" dnsmasq "*) fresh_dnsmasq=1;; *) fresh_dnsmasq="";; esac
    leftovers=$(system_pids)
    # epmd only goes with a system node: an epmd alone may serve somebody's private node
    case "$leftovers" in *" rabbitmq"*) ;; *) leftovers=$(grep -v " epmd$" <<<"$leftovers" || true);; esac
    while read -r pid what; do
        [ -n "${pid:-}" ] || continue
        case "$what" in
            rabbitmq|epmd) [ -n "$fresh_rabbit" ] || continue;;
            dnsmasq) [ -n "$fresh_dnsmasq" ] || continue;;
        esac
        log "stopping system $what process $pid left running by the package install"
        kill "$pid" 2>/dev/null || true
    done <<<"$leftovers"
    for port in 5672 25672 4369 53 25 9090 5432; do
        if tcp_listening 127.0.0.1 "$port"; then
            log "warning: something still listens on 127.0.0.1:$port (not started by the tests)"
        fi
    done
    PY=$(pick_python || true)
fi

# ------------------------------------------------------------------ venv
if [ ! -x .venv/bin/python ]; then
    [ -n "$PY" ] || die "no python3 >= ${MIN_PY[0]}.${MIN_PY[1]} found"
    log "creating .venv with $PY ($("$PY" --version 2>&1))"
    "$PY" -m venv .venv
fi
py_ok .venv/bin/python || die ".venv/bin/python is older than ${MIN_PY[0]}.${MIN_PY[1]}: remove .venv and re-run"

STAMP=.venv/.setup-stamp
need_pip=""
if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ]; then
    need_pip=1
elif ! .venv/bin/python -c "import aio_pika, aiosmtpd, asyncpg, dns.resolver, pytest, pytest_timeout, xdist, hypothesis, yaml, mta" >/dev/null 2>&1; then
    need_pip=1
fi
if [ -n "$need_pip" ]; then
    log "pip install -e '.[test]'"
    .venv/bin/python -m pip install -q -e "$ROOT[test]"
    touch "$STAMP"
fi
log "ready"
