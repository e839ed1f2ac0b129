#!/usr/bin/env bash
# The device tool copies the working tree to the device machine (tracked files and untracked files
# git does not ignore, 64 MiB in all, carried paths included). With the paper-size weights shipped
# (67.5 MB in two files) the tracked tree alone is over that, so for a lease the large shipped
# weights are taken out of the index and ignored locally, then put back:
#
#   scripts/lease_tree.sh size      what would travel now (bytes), with work/gpu16 carried
#   scripts/lease_tree.sh hide      untrack + ignore the shipped weights over 16 MB (before the device calls;
#                                   HIDE_OVER_MB=1 hides the small models too, for a snapshot made with
#                                   CONTINUE16, which carries weights)
#   scripts/lease_tree.sh restore   track them again and drop the ignore lines (right after the calls)
#
# The files stay on disk throughout; only the index and .git/info/exclude change. `hide` writes the
# paths it hid after a marker line at the end of the exclude file, and `restore` puts back exactly
# those and removes everything from the marker on (add no lines of your own in between). A commit
# while they are hidden would delete them: `hide` installs a pre-commit hook that refuses one (where
# the repository has no hook of its own), `restore` removes it; `hide` refuses to run twice, and
# `restore` is safe to run at any time.
set -euo pipefail
cd "$(dirname "$0")/.."
MODELS=src/coordformer/resources/models
EXCLUDE=$(git rev-parse --git-path info/exclude)
HOOK=$(git rev-parse --git-path hooks/pre-commit)
MARK="# lease_tree.sh hide"
hidden() { [ -f "$EXCLUDE" ] && sed -n "/^$MARK\$/,\$p" "$EXCLUDE" | sed -n 's|^/||p' || true; }

case ${1:-} in
size)
  { git ls-files -z; git ls-files -z -o --exclude-standard; } | xargs -0 -r du -cb 2>/dev/null | tail -1 | cut -f1 \
    | { read -r tree; carry=$(du -sb work/gpu16 2>/dev/null | cut -f1 || echo 0)
        echo "tree $tree + carried work/gpu16 ${carry:-0} = $((tree + ${carry:-0})) bytes (limit 67108864)"
        [ $((tree + ${carry:-0})) -le 67108864 ] || { echo "over the limit: run scripts/lease_tree.sh hide"; exit 1; }; }
  ;;
hide)
  [ -z "$(hidden)" ] || { echo "already hidden: $(hidden | tr '\n' ' ')(scripts/lease_tree.sh restore first)"; exit 1; }
  # tracked weights over HIDE_OVER_MB; an untracked one is only ignored
  mb=${HIDE_OVER_MB:-16}
  [[ $mb =~ ^[0-9]+$ ]] || { echo "HIDE_OVER_MB must be a whole number of MB, not $mb"; exit 2; }
  mapfile -t files < <(find $MODELS -name '*.pt*' -size +${mb}M | sort)
  [ ${#files[@]} -gt 0 ] || { echo "no shipped weights over $mb MB"; exit 0; }
  git rm -q --cached --ignore-unmatch -- "${files[@]}"
  mkdir -p "$(dirname "$EXCLUDE")"
  { echo "$MARK"; printf '/%s\n' "${files[@]}"; } >> "$EXCLUDE"   # gitignore has no trailing comments
  # a commit now would delete the weights: a pre-commit hook refuses one until `restore` (if no hook is there)
  if [ ! -e "$HOOK" ]; then
    mkdir -p "$(dirname "$HOOK")"   # a fresh clone may have no hooks folder
    printf '#!/bin/sh\n%s\necho "shipped weights are hidden for a device lease: scripts/lease_tree.sh restore first" >&2\nexit 1\n' "$MARK" > "$HOOK"
    chmod +x "$HOOK"
  fi
  echo "hidden from the device copy: ${files[*]}"; echo "run scripts/lease_tree.sh restore after the device calls"
  ;;
restore)
  mapfile -t files < <(hidden | grep -v "^$MARK\$" || true)
  # back into the index as HEAD has them (a path HEAD lacks was untracked before `hide`)
  for f in "${files[@]}"; do git cat-file -e "HEAD:$f" 2>/dev/null && git reset -q -- "$f"; done
  if [ -f "$EXCLUDE" ]; then
    sed "/^$MARK\$/,\$d" "$EXCLUDE" > "$EXCLUDE.tmp" && mv "$EXCLUDE.tmp" "$EXCLUDE"
  fi
  grep -qxF "$MARK" "$HOOK" 2>/dev/null && rm -f "$HOOK"
  git status --short -- $MODELS
  echo "restored: ${files[*]:-nothing was hidden}"
  ;;
*)
  echo "usage: $0 size|hide|restore" >&2; exit 2 ;;
esac
