#!/bin/sh
# ferry's vmkfstools wrapper for the SSH clone method (ESXI_CLONE_METHOD=ssh).
#
# ferry's copy-offload populator uploads this file as /vmfs/volumes/<datastore>/secure-vmkfstools-wrapper
# and runs it through the forced command of a restricted root key in
# /etc/ssh/keys-root/authorized_keys, which puts the command line in $SSH_ORIGINAL_COMMAND.
# Commands and answers are those of Forklift's wrapper, so one authorized_keys line serves both:
#
#   --clone -s <source .vmdk> -t <device>   start vmkfstools in the background; its task id
#   --task-get -i <id>                      the task: pid, exit code, last output line, XCOPY used
#   --task-clean -i <id>                    forget an ended task, remove its RDM descriptor
#   --version
#
# Arguments arrive split on blanks, so blanks and % in paths come percent-encoded (%20, %09,
# %25). Each answer is one esxcli-style XML structure: status 0 with a JSON message, or another
# status with what went wrong (and a non-zero exit). Paths must lie under /vmfs/volumes/ or
# /vmfs/devices/disks/ and have no "..". Written for ESXi's busybox sh (POSIX only).
#
# VMFS_ROOT, VMKFSTOOLS and VSISH are where /vmfs, vmkfstools and vsish are: unset on ESXi (the
# host's own), set by ferry's tests, whose sshd stands in for the host's.

set -f
VERSION="0.3.1+ferry.1"
VMKFSTOOLS=${VMKFSTOOLS:-/bin/vmkfstools}
VSISH=${VSISH:-vsish}
TASKS=/tmp/vmkfstools-wrapper-

log() {
    logger -t ferry-vmkfstools-wrapper "$*" 2>/dev/null || true
}

# XML text: & < > escaped.
xml_text() {
    printf '%s' "$1" | sed -e 's/&/\&amp;/g' -e 's/</\&lt;/g' -e 's/>/\&gt;/g'
}

answer() {
    printf '<?xml version="1.0" ?>\n<output xmlns="http://www.vmware.com/Products/ESX/5.0/esxcli/">\n'
    printf '<structure typeName="result"><field name="status"><string>%s</string></field>' "$1"
    printf '<field name="message"><string>%s</string></field></structure>\n</output>\n' "$(xml_text "$2")"
}

# A JSON string (quotes included) of the text on stdin: backslashes and quotes escaped (by sed:
# awks differ on backslashes in replacements), other control characters as blanks, lines
# joined with \n.
json_of() {
    sed -e 's/\\/\\\\/g' -e 's/"/\\"/g' |
        awk 'BEGIN { ORS = ""; print "\"" }
            {
                gsub(/[\001-\037]/, " ")
                if (NR > 1) print "\\n"
                print
            }
            END { print "\"" }'
}

# The path, normalized, when it is allowed; else a message on stdout and status 1.
checked() {
    p=$(printf '%s' "$1" | sed -e 's|//*|/|g' -e 's|/\./|/|g' -e 's|/$||')
    case "$p" in
        *..*) echo "path traversal refused: $p"; return 1 ;;
        /vmfs/volumes/?*|/vmfs/devices/disks/?*) printf '%s' "$p" ;;
        *) echo "path not under /vmfs/volumes/ or /vmfs/devices/disks/: $p"; return 1 ;;
    esac
}

# A task id of the usual UUID form.
new_id() {
    h=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
    echo "$h" | sed 's/^\(........\)\(....\)\(....\)\(....\)\(............\)$/\1-\2-\3-\4-\5/'
}

# Sets dir to the directory of task $1; else answers why not (status 1).
task_of() {
    case "$1" in
        ''|*[!0-9a-fA-F-]*)
            answer 1 "{\"stdErr\": \"a task id is needed (-i)\"}"
            return 1
            ;;
    esac
    dir="$TASKS$1"
    if [ ! -d "$dir" ]; then
        answer 1 "{\"taskId\": \"$1\", \"stdErr\": \"no task $1 on this host\", \"xcopyUsed\": false}"
        return 1
    fi
}

clone() {
    src=$(checked "$1") || { answer 1 "source: $src"; return 1; }
    dst=$(checked "$2") || { answer 1 "target: $dst"; return 1; }
    case "$src" in
        /vmfs/volumes/*.vmdk) ;;
        *) answer 1 "source: not a disk on a datastore: $src"; return 1 ;;
    esac
    case "$dst" in
        /vmfs/devices/disks/*) ;;
        *) answer 1 "target: not a device: $dst"; return 1 ;;
    esac
    [ -f "$VMFS_ROOT$src" ] || { answer 1 "source: no such disk: $src"; return 1; }
    id=$(new_id)
    [ -n "$id" ] || { answer 1 "cannot make a task id"; return 1; }
    dir="$TASKS$id"
    if ! mkdir -m 700 "$dir" 2>/dev/null; then
        answer 1 "cannot create the task directory $dir (is /tmp full?)"
        return 1
    fi
    rdm="$src-rdmdisk-$$"
    : >"$dir/out"
    : >"$dir/err"
    printf '%s\n' "$rdm" >"$dir/rdm"
    printf '%s\n' "${dst##*/}" >"$dir/device"
    log "task $id: $VMKFSTOOLS -i $src -d rdm:$dst $rdm"
    # In a session of its own, away from the SSH channel (which closes with this answer); the
    # exit code lands in "exit" only once complete.
    launch=setsid
    command -v setsid >/dev/null 2>&1 || launch=
    $launch sh -c '"$1" -i "$2" -d "rdm:$3" "$4" >"$5/out" 2>"$5/err" </dev/null
        echo $? >"$5/exit.new" && mv "$5/exit.new" "$5/exit"' \
        vmkfstools "$VMKFSTOOLS" "$src" "$dst" "$rdm" "$dir" </dev/null >/dev/null 2>&1 &
    pid=$!
    printf '%s\n' "$pid" >"$dir/pid"
    answer 0 "{\"taskId\": \"$id\", \"pid\": $pid, \"xcopyUsed\": false}"
}

# vmkfstools rewrites its progress line with carriage returns: the text after the last line
# break or carriage return that has some.
last_line() {
    [ -f "$1" ] || return 0
    tail -c 4096 "$1" | tr '\r' '\n' | sed '/^[[:space:]]*$/d' | tail -n 1
}

# true or false: whether the device counted XCOPY clone writes; nothing when unknown.
xcopy_used() {
    stats=$("$VSISH" -r -e cat "/storage/scsifw/devices/$1/stats" 2>/dev/null) || return 0
    v=$(printf '%s\n' "$stats" | grep -i 'clonewriteops' | head -n 1 | cut -d: -f2 | tr -d ' \t')
    case "$v" in
        0x*) n=$(printf '%d' "$v" 2>/dev/null) || return 0 ;;
        *) return 0 ;;
    esac
    if [ "$n" -gt 0 ]; then echo true; else echo false; fi
}

task_get() {
    task_of "$1" || return 1
    pid=$(cat "$dir/pid" 2>/dev/null)
    code=$(cat "$dir/exit" 2>/dev/null)
    if [ -z "$code" ] && ! kill -0 "$pid" 2>/dev/null; then
        # Gone: its exit code may have landed since.
        code=$(cat "$dir/exit" 2>/dev/null)
        [ -n "$code" ] || code=1
    fi
    used=$(xcopy_used "$(cat "$dir/device" 2>/dev/null)")
    [ -n "$used" ] || used=null
    line=$(last_line "$dir/out" | json_of)
    err=$(json_of <"$dir/err")
    answer 0 "{\"taskId\": \"$1\", \"pid\": ${pid:-0}, \"exitCode\": \"$code\", \"lastLine\": $line, \"xcopyUsed\": $used, \"stdErr\": $err}"
}

task_clean() {
    task_of "$1" || return 1
    rdm=$(cat "$dir/rdm" 2>/dev/null)
    if [ -n "$rdm" ] && [ -f "$VMFS_ROOT$rdm" ]; then
        # The descriptor names its mapping file (VMFSRDM "<name>"), next to it.
        mapping=$(sed -n 's/.*VMFSRDM "\([^"/]*\)".*/\1/p' "$VMFS_ROOT$rdm" | head -n 1)
        [ -n "$mapping" ] && rm -f "$VMFS_ROOT${rdm%/*}/$mapping"
        rm -f "$VMFS_ROOT$rdm"
    fi
    if ! rm -rf "$dir"; then
        answer 1 "cannot remove $dir"
        return 1
    fi
    log "task $1 cleaned"
    answer 0 ""
}

# An argument as sent: blanks and % percent-encoded (%20, %09, %25), as the command line is
# split on blanks.
decoded() {
    printf '%s' "$1" | sed -e 's/%20/ /g' -e "s/%09/$(printf '\t')/g" -e 's/%25/%/g'
}

main() {
    if [ -n "$SSH_ORIGINAL_COMMAND" ]; then
        # Words split on blanks; globbing is off (set -f).
        # shellcheck disable=SC2086
        set -- $SSH_ORIGINAL_COMMAND
    fi
    cmd=
    src=
    dst=
    id=
    while [ $# -gt 0 ]; do
        case "$1" in
            --clone|--task-get|--task-clean|--version|-v)
                if [ -n "$cmd" ]; then
                    answer 1 "one command at a time: $cmd and $1"
                    exit 1
                fi
                cmd=$1
                shift
                ;;
            -s|--source-vmdk|-t|--target-lun|-i|--task-id)
                if [ $# -lt 2 ]; then
                    answer 1 "$1 needs a value"
                    exit 1
                fi
                case "$1" in
                    -s|--source-vmdk) [ -z "$src" ] || { answer 1 "$1 given twice"; exit 1; }; src=$(decoded "$2") ;;
                    -t|--target-lun) [ -z "$dst" ] || { answer 1 "$1 given twice"; exit 1; }; dst=$(decoded "$2") ;;
                    *) [ -z "$id" ] || { answer 1 "$1 given twice"; exit 1; }; id=$2 ;;
                esac
                shift 2
                ;;
            *) answer 1 "unknown option: $1"; exit 1 ;;
        esac
    done
    case "$cmd" in
        --clone)
            if [ -z "$src" ] || [ -z "$dst" ]; then
                answer 1 "--clone needs -s <source> and -t <target>"
                exit 1
            fi
            clone "$src" "$dst"
            ;;
        --task-get) task_get "$id" ;;
        --task-clean) task_clean "$id" ;;
        --version|-v) answer 0 "{\"version\": \"$VERSION\"}" ;;
        *) answer 1 "no command (--clone, --task-get, --task-clean, --version)"; exit 1 ;;
    esac
}

main "$@"
