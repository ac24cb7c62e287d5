# shellcheck shell=bash
# Sourced by launch/*.sh.
shquote() {  # shquote ARGS...: one line that a POSIX shell reads back as ARGS
  local arg out=() q="'"
  for arg in "$@"; do
    if [[ "$arg" =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then
      out+=("$arg")
    elif [[ "$arg" == *$'\n'* ]]; then
      out+=("$(printf '%q' "$arg")")  # $'...': keeps the line single
    else
      out+=("$q${arg//$q/$q\\$q$q}$q")
    fi
  done
  echo "${out[*]}"
}
