# bash completion for unilock(1), installed by `make install` as
# $(datadir)/bash-completion/completions/unilock.
#
# Options come from `unilock --help`, so the completion follows the installed command.

_unilock_options() {
    command unilock --help 2>/dev/null | sed -n '/^Options:/,/^$/p;/^ -b/,/^ -V/p' |
        grep -o -- '-\{1,2\}[a-zA-Z][a-zA-Z-]*' | sort -u
}

# The columns of --output (`unilock --list --output X` names them when X is unknown).
_unilock_columns="COMMAND PID TYPE SIZE INODE MAJ:MIN MODE M START END PATH BLOCKER HOLDERS HOST STARTTIME STALE REVISION LEASE WAITING KEY SINCE"

_unilock() {
    local cur=${COMP_WORDS[COMP_CWORD]}
    local prev=${COMP_WORDS[COMP_CWORD - 1]}
    COMPREPLY=()
    case $prev in
        -b | --backend)
            # A set is a comma-separated list: complete the last name.
            local done=${cur%"${cur##*,}"}
            local names=(flock ofd posix dotlock etcd) n
            for n in "${names[@]}"; do
                [[ $done$n == "$cur"* ]] && COMPREPLY+=("$done$n")
            done
            compopt -o nospace 2>/dev/null
            return
            ;;
        -c | --command)
            mapfile -t COMPREPLY < <(compgen -c -- "$cur")
            return
            ;;
        --output)
            local done=${cur%"${cur##*,}"} col
            done=${done#+}
            [[ $cur == +* ]] && done=+$done
            for col in $_unilock_columns; do
                [[ $done$col == "$cur"* ]] && COMPREPLY+=("$done$col")
            done
            compopt -o nospace 2>/dev/null
            return
            ;;
        --etcd-cacert | --etcd-cert | --etcd-key)
            mapfile -t COMPREPLY < <(compgen -f -- "$cur")
            return
            ;;
        --fd)
            local fd
            for fd in /proc/$$/fd/*; do
                fd=${fd##*/}
                [[ $fd == "$cur"* ]] && COMPREPLY+=("$fd")
            done
            return
            ;;
        -w | --wait | --timeout | -E | --conflict-exit-code | --range | --start | \
            --length | --stale | --mode | --lease-ttl | --etcd-user)
            return # a number, or a name: nothing to offer
            ;;
    esac
    # The first word that is not an option (nor an option's argument) is the file,
    # directory or descriptor; what follows it is the command and its arguments.
    local i word file_at=0
    for ((i = 1; i < COMP_CWORD; i++)); do
        word=${COMP_WORDS[i]}
        case $word in
            -b | --backend | -c | --command | --output | --fd | -w | --wait | --timeout | -E | \
                --conflict-exit-code | --range | --start | --length | --stale | --mode | \
                --etcd-cacert | --etcd-cert | --etcd-key | --etcd-user | --lease-ttl)
                ((i++))
                ;;
            -*) ;;
            *)
                file_at=$i
                break
                ;;
        esac
    done
    if ((file_at > 0)); then
        if ((COMP_CWORD == file_at + 1)); then
            mapfile -t COMPREPLY < <(compgen -c -- "$cur")
        else
            mapfile -t COMPREPLY < <(compgen -f -- "$cur")
        fi
        return
    fi
    if [[ $cur == -* ]]; then
        mapfile -t COMPREPLY < <(compgen -W "$(_unilock_options)" -- "$cur")
        return
    fi
    mapfile -t COMPREPLY < <(compgen -f -- "$cur")
}

complete -F _unilock unilock
